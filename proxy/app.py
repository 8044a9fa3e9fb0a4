"""Builds the traffic and admin servers. The layer order lives here, and only here."""
from __future__ import annotations

import asyncio
import logging
import socket
from time import monotonic

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import __version__
from . import config as C
from .accept import GuardedAppRunner, make_server
from .exchange import Exchange
from .forward import Forwarder
from .langgraph import RunCanceller, RunTracker
from .layers import Errors, RequestId, RouteMatch, TargetCheck
from .metrics import Metrics
from .policies.breaker import Breaker, BreakerPolicy
from .policies.limits import Limits
from .policies.retry import Retry, RetryBudget
from .policies.timeouts import Timeouts
from .routes import RouteTable
from .telemetry import AccessLog, Telemetry
from .upstream import UpstreamPool
from .websocket import WebSocketRelay

log = logging.getLogger("proxy")


class Pipeline:
    """Everything built from one config: the route table and the layer chain.

    A request holds the pipeline it started with, so a reload never changes the rules under an
    in-flight stream. Breakers and the connection pool live in :class:`Runtime` and survive
    reloads that leave their settings unchanged.
    """

    def __init__(self, cfg: C.Config, rt: "Runtime"):
        self.cfg = cfg
        self.table = RouteTable(cfg)
        breakers = rt.sync_breakers(self.table.breaker_settings(cfg)) if cfg.circuit_breaker.enabled else {}
        m = rt.metrics
        forward = Forwarder(rt.pool, max_body=cfg.limits.max_body_bytes,
                            body_read_timeout=cfg.server.body_read_timeout,
                            deadline_header=cfg.timeouts.deadline_header,
                            on_client_gone=rt.canceller.cancel_later, run_tracker=RunTracker(),
                            streams_gauge=m.in_flight_streams, websocket=rt.websocket, retries=m.retries)
        access = rt.access_log if cfg.logging.access_log else None
        budget = rt.retry_budget(cfg.retries)

        # The request path, outermost first. Each entry: (name, factory taking the next handler).
        layers = [
            # first, so every later error body and log line carries the id
            ("request_id", lambda nxt: RequestId(nxt)),
            # before telemetry, because metrics and logs are labelled by the route template
            ("route", lambda nxt: RouteMatch(nxt, self.table)),
            # every failure below becomes the one JSON error shape (or a clean abort mid-stream)
            ("errors", lambda nxt: Errors(nxt)),
            # inside errors, so it counts the status the client gets, sheds and timeouts included
            ("telemetry", lambda nxt: Telemetry(nxt, m, access, rt.loop, cfg.metrics.exemplars,
                                                on_success=rt.note_success)),
            # inside telemetry, so refused targets are counted; before anything is spent on them
            ("target_check", lambda nxt: TargetCheck(nxt)),
            # shed before spending anything on the request (no queue, no upstream connection)
            ("limits", lambda nxt: Limits(nxt, max_concurrent=cfg.limits.max_concurrent_requests,
                                          max_streams=cfg.limits.max_concurrent_streams,
                                          max_body=cfg.limits.max_body_bytes,
                                          max_header=cfg.limits.max_header_bytes, metrics=m)),
            # outside the breaker, so each attempt is judged (and may be refused) by it
            ("retry", lambda nxt: Retry(nxt, backoff=cfg.retries.backoff, max_backoff=cfg.retries.max_backoff,
                                        budget=budget, metrics=m)),
            # fail fast without touching an upstream that is failing
            ("breaker", lambda nxt: BreakerPolicy(nxt, breakers, metrics=m,
                                                  probe_may_trial=cfg.circuit_breaker.half_open_probe_trial)),
            # the total deadline, fixed once so retries share it; the forwarder arms the rest
            ("timeouts", lambda nxt: Timeouts(nxt, rt.loop)),
        ]
        if not cfg.circuit_breaker.enabled:
            layers = [entry for entry in layers if entry[0] != "breaker"]
        self.layer_names = [name for name, _ in layers] + ["forward"]
        handler = forward
        for _, make in reversed(layers):
            handler = make(handler)
        self.entry = handler


class Runtime:
    """Process-wide state: metrics, the upstream pool, breakers, readiness, in-flight count.

    Survives config reloads; ``pipeline`` is swapped atomically by :meth:`apply`.
    """

    def __init__(self, cfg: C.Config, registry: CollectorRegistry | None = None, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.metrics = Metrics(self.registry, cfg.metrics.prefix, __version__)
        self.access_log = AccessLog(cfg.logging.format)
        self.pool = self._make_pool(cfg.upstream)
        self.canceller = RunCanceller(self.pool, self.metrics)
        self.websocket = WebSocketRelay(cfg.upstream.url, self.metrics, cfg.upstream.connect_timeout)
        self.breakers: dict[str, Breaker] = {}
        self._budget = None
        self.state = "starting"          # starting → ready → draining
        self.active = 0                  # requests in flight (drain waits for 0)
        self._idle = asyncio.Event()
        self._idle.set()
        self.started_at = self.loop.time()
        self.probes = None               # set by the probe runner
        self.last_success: dict[str, float] = {}   # route name → loop time of last user success
        self.pipeline = Pipeline(cfg, self)

    def _make_pool(self, up: C.UpstreamConfig) -> UpstreamPool:
        pool = UpstreamPool(up.url, connect_timeout=up.connect_timeout, max_connections=C.pool_size(self.cfg),
                            keepalive_timeout=up.keepalive_timeout)
        pool.start()
        return pool

    def retry_budget(self, rc: C.RetriesConfig) -> RetryBudget:
        if self._budget is None or (self._budget.ratio, self._budget.floor) != (rc.budget, rc.min_per_second * RetryBudget.WINDOW):
            self._budget = RetryBudget(rc.budget, rc.min_per_second)
        return self._budget

    def sync_breakers(self, settings: dict[str, C.BreakerConfig]) -> dict[str, Breaker]:
        """Keep breakers whose settings did not change (their state survives a reload)."""
        out = {}
        for name, s in settings.items():
            old = self.breakers.get(name)
            out[name] = old if old is not None and old.settings == s else Breaker(name, s, self.metrics)
        self.breakers = out
        return out

    def note_success(self, route: str) -> None:
        self.last_success[route] = self.loop.time()

    def apply(self, cfg: C.Config) -> list[str]:
        """Swap in a new config; returns what needs a restart to take effect."""
        needs_restart = C.restart_changes(self.cfg, cfg)  # the keys marked restart=True in config.py
        if cfg.upstream != self.cfg.upstream:
            old = self.pool
            self.pool = self._make_pool(cfg.upstream)
            self.canceller = RunCanceller(self.pool, self.metrics)
            old_ws = self.websocket
            self.websocket = WebSocketRelay(cfg.upstream.url, self.metrics, cfg.upstream.connect_timeout)
            self.loop.call_later(max(cfg.server.shutdown_grace, 1), lambda: self.loop.create_task(old_ws.close()))
            self.loop.call_later(max(cfg.server.shutdown_grace, 1), lambda: self.loop.create_task(old.close()))
        self.access_log.fmt = cfg.logging.format
        logging.getLogger().setLevel(cfg.logging.level.upper())
        self.pipeline = Pipeline(cfg, self)
        self.cfg = cfg
        return needs_restart

    # ---- readiness ----
    def readiness(self) -> tuple[bool, list[dict]]:
        checks = [{"name": "lifecycle", "ok": self.state == "ready", "state": self.state}]
        if self.cfg.circuit_breaker.open_makes_unready:
            for name, br in self.breakers.items():
                st = br.state
                checks.append({"name": f"breaker:{name}", "ok": st != "open", "state": st})
        if self.probes is not None:
            checks.extend(self.probes.readiness_checks())
        ok = all(c["ok"] for c in checks)
        self.metrics.ready.set(1 if ok else 0)
        return ok, checks

    # ---- the traffic handler ----
    async def handle(self, request) -> web.StreamResponse:
        pipeline = self.pipeline  # this request keeps the config it started with
        ex = Exchange("", request.method, request.raw_path, monotonic())
        self.active += 1
        if self.active == 1:
            self._idle.clear()
        try:
            resp = await pipeline.entry(request, ex)
            if self.state == "draining" and not resp.prepared:
                resp.force_close()  # tell keep-alive clients to reconnect (elsewhere)
            return resp
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def status(self) -> dict:
        from .config import summary
        return {
            "version": __version__,
            "state": self.state,
            "uptime_seconds": round(self.loop.time() - self.started_at, 3),
            "in_flight_requests": self.active,
            "tasks": len(asyncio.all_tasks(self.loop)),
            "upstream_pool": self.pool.stats(),
            "breakers": {n: b.snapshot() for n, b in self.breakers.items()},
            "probes": self.probes.status() if self.probes is not None else {},
            "layers": self.pipeline.layer_names,
            "routes": self.pipeline.table.names,
            "config": summary(self.cfg),
        }


def _bind(key: str, hostport: str) -> socket.socket:
    """A listening socket for config key ``key``; :class:`config.BindError` names key and address."""
    host, port = C.parse_hostport(hostport)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(4096)
    except OSError as e:
        sock.close()
        raise C.BindError(key, hostport, e.strerror or str(e)) from None
    sock.setblocking(False)
    return sock


async def start_servers(rt: Runtime, on_drain=None):
    """Bind and serve the traffic and admin ports; returns (traffic server, admin runner, ports).

    ``on_drain(reason) -> dict`` starts the drain (admin ``POST /drain``); None: no such endpoint."""
    from .admin import admin_app
    cfg = rt.cfg
    tsock = _bind("server.listen", cfg.server.listen)
    try:
        asock = _bind("server.admin_listen", cfg.server.admin_listen)
    except C.BindError:
        tsock.close()
        raise
    traffic = make_server(rt, cfg.server)
    tserver = await rt.loop.create_server(traffic, sock=tsock, backlog=4096)  # uvloop re-listens: keep the backlog
    runner = GuardedAppRunner(admin_app(rt, on_drain), head_timeout=cfg.server.header_read_timeout,
                              max_connections=256, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, asock, backlog=1024)
    await site.start()
    rt.access_log.start(rt.loop)
    return traffic, tserver, runner, (tsock.getsockname()[1], asock.getsockname()[1])
