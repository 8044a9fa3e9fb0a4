"""Start-up, signals, config reload, and the graceful drain.

SIGTERM/SIGINT: /readyz turns 503 at once; connections are still accepted for
``server.drain_delay`` (Kubernetes takes a moment to remove the endpoint); then the listener
closes, idle keep-alive connections close, and in-flight requests and streams have
``server.shutdown_grace`` to finish before they are cut; exit 0.
SIGHUP, or the config file changing on disk (a ConfigMap update swaps a symlink): reload; an
invalid new config is rejected with the same errors as ``--check`` and the old one stays.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from . import config as C
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
        self.stop = asyncio.Event()
        self.rt: Runtime | None = None
        self.tasks: list[asyncio.Task] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.rt = rt = Runtime(self.cfg, config_path=self.config_path)
        rt.loop_lag = 0.0
        traffic, tserver, runner, ports = await start_servers(rt)
        self.tasks.append(loop.create_task(self._lag_monitor()))
        if self.config_path:
            self.tasks.append(loop.create_task(self._watch_config()))
        from .probes import ProbeRunner
        rt.probes = ProbeRunner(rt)
        rt.probes.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        rt.state = "ready"
        log.info("proxy started", extra={"fields": {
            "listen": self.cfg.server.listen, "admin_listen": self.cfg.server.admin_listen,
            "traffic_port": ports[0], "admin_port": ports[1], "upstream": self.cfg.upstream.url,
            "routes": len(rt.pipeline.table.names), "layers": rt.pipeline.layer_names}})
        if self.ready_file:
            with open(self.ready_file + ".tmp", "w") as f:
                f.write(f"{ports[0]} {ports[1]}\n")
            os.replace(self.ready_file + ".tmp", self.ready_file)
        await self.stop.wait()
        await self.drain(traffic, tserver, runner)
        return 0

    async def drain(self, traffic, tserver, runner) -> None:
        rt = self.rt
        cfg = rt.cfg
        rt.state = "draining"
        rt.metrics.ready.set(0)
        log.info("draining: readiness is now 503", extra={"fields": {
            "drain_delay": cfg.server.drain_delay, "shutdown_grace": cfg.server.shutdown_grace,
            "in_flight": rt.active}})
        # a second signal skips the wait
        second = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, second.set)
        try:
            await asyncio.wait_for(second.wait(), cfg.server.drain_delay)
        except TimeoutError:
            pass
        tserver.close()                     # stop accepting
        traffic.pre_shutdown()              # idle keep-alive connections close now, busy ones after their request
        if rt.probes is not None:
            await rt.probes.stop()
        if rt.active:
            log.info("waiting for in-flight requests", extra={"fields": {"in_flight": rt.active}})
            waiter = loop.create_task(rt.wait_idle())
            stopper = loop.create_task(second.wait())
            await asyncio.wait([waiter, stopper], timeout=cfg.server.shutdown_grace,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        if rt.active:
            log.warning("shutdown grace over: cutting in-flight requests", extra={"fields": {"in_flight": rt.active}})
        await traffic.shutdown(0.5)
        if rt.canceller.tasks:
            await asyncio.wait(list(rt.canceller.tasks), timeout=2)
        for t in self.tasks:
            t.cancel()
        await runner.cleanup()
        await rt.pool.close()
        await rt.websocket.close()
        rt.access_log.flush()
        log.info("stopped")

    async def reload(self, reason: str) -> bool:
        rt = self.rt
        try:
            cfg = C.load(self.config_path)
        except C.ConfigError as e:
            rt.metrics.config_reloads.labels("failure").inc()
            log.error("config reload rejected; keeping the running config", extra={"fields": {
                "reason": reason, "problems": e.problems}})
            return False
        needs_restart = rt.apply(cfg)
        self.cfg = cfg
        if rt.probes is not None:
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
