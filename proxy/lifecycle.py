"""Start-up, signals, config reload, and the graceful drain.

The drain starts at the first of: ``POST /drain`` on the admin port (the agent container's preStop
sends it, so the drain starts when the pod starts terminating, not when the agent is gone), SIGTERM
or SIGINT. From that moment /readyz answers 503 and every answer says ``Connection: close``, so
keep-alive clients reconnect, while new connections are still accepted for ``server.drain_delay``
(Kubernetes takes a moment to remove the endpoint). Then the listener closes and idle keep-alive
connections close. The process exits only after a signal: in-flight requests and streams then have
``server.shutdown_grace`` to finish before they are cut; exit 0. A second signal skips what is
left of both waits (one Ctrl-C drains, a second one cuts).

SIGHUP, or the config file changing on disk (a ConfigMap update swaps a symlink): reload; an
invalid new config is rejected with the same errors as ``--check`` and the old one stays.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from . import config as C
from . import gcpolicy, logs
from .app import Runtime, start_servers

log = logging.getLogger("proxy.lifecycle")


def _file_id(path: str):
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap swap changes the target
        return (st.st_ino, st.st_mtime_ns, st.st_size, os.path.realpath(path))
    except OSError:
        return None


class Lifecycle:
    """Owns the running proxy: servers, background tasks, signals, reload and drain."""

    def __init__(self, cfg: C.Config, config_path: str | None, ready_file: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.ready_file = ready_file
        self.stop = asyncio.Event()       # first signal: exit once drained
        self.cut = asyncio.Event()        # second signal: skip the remaining waits
        self.signals = 0
        self.rt: Runtime | None = None
        self.tasks: list[asyncio.Task] = []
        self.servers = None               # (traffic, tserver, runner) once bound
        self.drain_started: float | None = None   # loop time
        self.accepting_closed = asyncio.Event()
        self._drain_task: asyncio.Task | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.rt = rt = Runtime(self.cfg, config_path=self.config_path)
        try:
            traffic, tserver, runner, ports = await start_servers(rt, on_drain=self.begin_drain)
        except C.BindError:
            await rt.pool.close()
            await rt.websocket.close()
            raise
        self.servers = (traffic, tserver, runner)
        self.tasks.append(loop.create_task(self._lag_monitor()))
        self.tasks.append(loop.create_task(gcpolicy.periodic(lambda: self.rt.cfg.server.gc_full_interval)))
        if self.config_path:
            self.tasks.append(loop.create_task(self._watch_config()))
        from .probes import ProbeRunner
        rt.probes = ProbeRunner(rt)
        rt.probes.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        rt.state = "ready"
        log.info("proxy started", extra={"fields": {
            "listen": self.cfg.server.listen, "admin_listen": self.cfg.server.admin_listen,
            "traffic_port": ports[0], "admin_port": ports[1], "upstream": C.summary(self.cfg)["upstream"]["url"],
            "routes": len(rt.pipeline.table.names), "layers": rt.pipeline.layer_names}})
        if self.ready_file:
            with open(self.ready_file + ".tmp", "w") as f:
                f.write(f"{ports[0]} {ports[1]}\n")
            os.replace(self.ready_file + ".tmp", self.ready_file)
        await self.stop.wait()
        await self.shutdown()
        return 0

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals == 1:
            self.begin_drain(signal.Signals(sig).name)
            self.stop.set()
        else:
            log.warning("second signal: skipping the rest of the drain", extra={"fields": {
                "signal": signal.Signals(sig).name, "in_flight": self.rt.active}})
            self.cut.set()

    def begin_drain(self, reason: str) -> dict:
        """Start draining (idempotent); returns the drain's state for ``POST /drain``."""
        rt = self.rt
        loop = asyncio.get_running_loop()
        delay = rt.cfg.server.drain_delay
        if self.drain_started is None:
            self.drain_started = loop.time()
            rt.state = "draining"     # /readyz 503; Runtime.handle answers with Connection: close
            rt.metrics.ready.set(0)
            log.info("draining: readiness is now 503", extra={"fields": {
                "reason": reason, "drain_delay": delay, "shutdown_grace": rt.cfg.server.shutdown_grace,
                "in_flight": rt.active}})
            self._drain_task = loop.create_task(self._stop_accepting(delay))
        remaining = max(0.0, self.drain_started + delay - loop.time())
        return {"state": rt.state, "accepting": not self.accepting_closed.is_set(),
                "drain_delay_remaining_seconds": round(remaining, 3), "in_flight": rt.active}

    async def _stop_accepting(self, delay: float) -> None:
        """After drain_delay (the endpoints had time to update): no new connections."""
        cutter = asyncio.ensure_future(self.cut.wait())
        try:
            await asyncio.wait([cutter], timeout=delay)
        finally:
            cutter.cancel()
        traffic, tserver, _ = self.servers
        tserver.close()                     # stop accepting
        traffic.pre_shutdown()              # idle keep-alive connections close now, busy ones after their request
        self.accepting_closed.set()
        if self.rt.probes is not None:
            await self.rt.probes.stop()
        log.info("stopped accepting connections", extra={"fields": {"in_flight": self.rt.active}})

    async def shutdown(self) -> None:
        rt = self.rt
        cfg = rt.cfg
        traffic, _, runner = self.servers
        loop = asyncio.get_running_loop()
        await self._drain_task
        if rt.active:
            log.info("waiting for in-flight requests", extra={"fields": {"in_flight": rt.active}})
            waiter = loop.create_task(rt.wait_idle())
            stopper = loop.create_task(self.cut.wait())
            await asyncio.wait([waiter, stopper], timeout=cfg.server.shutdown_grace,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        if rt.active:
            log.warning("shutdown grace over: cutting in-flight requests", extra={"fields": {"in_flight": rt.active}})
            # end them as cut by the proxy (SSE: a last `event: error` of type shutdown), not as
            # if their clients had left; shutdown() below gives them 0.5 s to write that
            rt.cut_in_flight()
        await traffic.shutdown(0.5)
        if rt.canceller.tasks:
            await asyncio.wait(list(rt.canceller.tasks), timeout=2)
        for t in self.tasks:
            t.cancel()
        await runner.cleanup()
        await rt.pool.close()
        await rt.websocket.close()
        rt.records.flush()
        rt.access_log.flush()
        log.info("stopped")

    async def reload(self, reason: str) -> bool:
        rt = self.rt
        try:
            cfg = C.load(self.config_path)
        except C.ConfigError as e:
            rt.metrics.config_reloads.labels("failure").inc()
            # the problems are already redacted with the *new* config's secrets (C.parse)
            log.error("config reload rejected; keeping the running config", extra={"fields": {
                "reason": reason, "problems": e.problems}})
            return False
        needs_restart = rt.apply(cfg)
        self.cfg = cfg
        # the whole log setup follows the new config: format and level of every logger, and the
        # secrets to redact (lines of the reload itself already use them)
        logs.setup(cfg.logging.level, cfg.logging.format, cfg.secrets)
        if rt.probes is not None and self.drain_started is None:
            rt.probes.reconfigure()
        rt.metrics.config_reloads.labels("success").inc()
        log.info("config reloaded", extra={"fields": {"reason": reason, "needs_restart": needs_restart}})
        if needs_restart:
            log.warning("some changed settings take effect only after a restart",
                        extra={"fields": {"keys": needs_restart}})
        return True

    async def _watch_config(self) -> None:
        last = _file_id(self.config_path)
        while True:
            await asyncio.sleep(1.0)
            cur = _file_id(self.config_path)
            if cur is not None and cur != last:
                last = cur
                await self.reload("file changed")

    async def _lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.25)
            self.rt.loop_lag = max(0.0, loop.time() - t - 0.25)
