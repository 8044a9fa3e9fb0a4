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
from . import errors as E
from . import gcpolicy
from .accept import GuardedAppRunner, make_server
from .exchange import Exchange
from .forward import BufferBudget, Forwarder
from .langgraph import RunCanceller, RunTracker
from .llm import LLMTelemetry
from .layers import Deliver, Errors, LayerEntry, RequestId, RouteMatch, TargetCheck, Upgrade
from .metrics import Metrics
from .policies.breaker import Breaker, BreakerState
from .policies.deadline import Deadline
from .policies.limits import Counts, Limits
from .policies.retry import Retry, RetryBudget
from .probes import PendingProbe, ProbeRunner
from .routes import RouteTable
from .tracing import SpanExporter
from .telemetry import AccessLog, RecordQueue, Telemetry
from .upstream import UpstreamPool
from .websocket import WebSocketRelay

log = logging.getLogger("proxy")


class Pipeline:
    """Everything built from one config: the route table and the layer chain.

    A request holds the pipeline it started with, so a reload never changes the rules under an
    in-flight stream. Everything that counts or remembers (concurrency counts, breakers, the
    pool, the buffer budget, metrics, probe state) lives in :class:`Runtime` and survives reloads.
    """

    def __init__(self, cfg: C.Config, rt: "Runtime"):
        self.cfg = cfg
        self.table = RouteTable(cfg)
        breakers = rt.sync_breakers(self.table.breaker_settings(cfg)) if cfg.circuit_breaker.enabled else {}
        m = rt.metrics
        forward = Forwarder(rt.pool, limits=cfg.limits, server=cfg.server,
                            deadline_header=cfg.timeouts.deadline_header,
                            on_client_gone=rt.canceller.cancel_later, run_tracker=RunTracker(rt.pool),
                            metrics=m, buffers=rt.buffers, llm=rt.llm)

        # The request path, outermost first: (name, layer class, its settings). Each layer is
        # ``cls(next_handler, **settings)``; see the Handler contract in proxy/layers.py.
        layers: list[LayerEntry] = [
            # first, so every later error body and log line carries the id
            ("request_id", RequestId, {"probes": rt.pending_probes, "tracing": cfg.tracing}),
            # before telemetry, because metrics and logs are labelled by the route template
            ("route", RouteMatch, {"table": self.table}),
            # every failure below becomes the one JSON error shape (or a clean abort mid-stream)
            ("errors", Errors, {}),
            # inside errors, so it counts the status the client gets, sheds and timeouts included
            ("telemetry", Telemetry, {"metrics": m, "access_log": rt.access_log if cfg.logging.access_log else None,
                                      "exemplars": cfg.metrics.exemplars, "on_success": rt.note_success,
                                      "on_probe": rt.probe_finished, "exporter": rt.exporter,
                                      "records": rt.records}),
            # inside telemetry, so refused targets are counted; before anything is spent on them
            ("target_check", TargetCheck, {}),
            # outside the limits: a whole answer is written to a slow reader after its slot and
            # its upstream connection were given back (only its bounded buffer is held)
            ("deliver", Deliver, {"buffers": rt.buffers, "write_timeout": cfg.server.client_write_timeout,
                                  "loop": rt.loop, "draining": rt.is_draining}),
            # shed before spending anything on the request (no queue, no upstream connection)
            ("limits", Limits, {"counts": rt.counts, "max_concurrent": cfg.limits.max_concurrent_requests,
                                "max_streams": cfg.limits.max_concurrent_streams,
                                "max_body": cfg.limits.max_body_bytes,
                                "max_header": cfg.limits.max_header_bytes, "metrics": m}),
            # outside the breaker, so each attempt is judged (and may be refused) by it
            ("retry", Retry, {"backoff": cfg.retries.backoff, "max_backoff": cfg.retries.max_backoff,
                              "budget": rt.retry_budget(cfg.retries), "metrics": m}),
            # fail fast without touching an upstream that is failing
            ("breaker", Breaker, {"breakers": breakers, "metrics": m,
                                        "probe_may_trial": cfg.circuit_breaker.half_open_probe_trial}),
            # the total deadline, fixed once so retries share it; the forwarder arms the rest
            ("deadline", Deadline, {"loop": rt.loop}),
            # WebSocket upgrades are relayed by aiohttp's client; everything else by the pool
            ("upgrade", Upgrade, {"relay": rt.websocket}),
        ]
        if not cfg.circuit_breaker.enabled:
            layers = [entry for entry in layers if entry[0] != "breaker"]
        self.layers = layers
        self.layer_names = [name for name, _, _ in layers] + ["forward"]
        handler = forward
        for _, cls, settings in reversed(layers):
            handler = cls(handler, **settings)
        self.entry = handler

    def describe(self) -> list[dict]:
        """The layer list with each layer's plain settings, for /status."""
        out = []
        for name, cls, settings in self.layers:
            plain = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool)) or v is None}
            out.append({"name": name, "class": cls.__name__, "settings": plain})
        return out + [{"name": "forward", "class": "Forwarder", "settings": {}}]


class Runtime:
    """Process-wide state: metrics, the upstream pool, breakers, concurrency counts, the buffer
    budget, readiness, in-flight count, probes. Survives config reloads; ``pipeline`` is swapped
    atomically by :meth:`apply`.
    """

    def __init__(self, cfg: C.Config, registry: CollectorRegistry | None = None, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.metrics = Metrics(self.registry, cfg.metrics.prefix, __version__)
        self.access_log = AccessLog(cfg.logging.format)
        self.records = RecordQueue(self.loop, after=self.access_log.emit)  # ended exchanges' bookkeeping, a batch per loop turn
        self.pool = self._make_pool(cfg)
        self.canceller = RunCanceller(self.pool, self.metrics)
        self.websocket = WebSocketRelay(cfg.upstream.url, self.metrics, cfg.upstream.connect_timeout, self.pool.ssl)
        self.breakers: dict[str, BreakerState] = {}
        self.counts = Counts()
        self.buffers = BufferBudget(cfg.limits.max_buffered_bytes)
        self.llm = LLMTelemetry(cfg.llm, self.metrics)
        self.exporter = SpanExporter(cfg.tracing, __version__) if cfg.tracing.enabled and cfg.tracing.otlp_endpoint else None
        self._budget: RetryBudget | None = None
        self.state = "starting"          # starting → ready → draining
        self.active = 0                  # requests in flight (drain waits for 0)
        self._idle = asyncio.Event()
        self._idle.set()
        self.started_at = self.loop.time()
        self.loop_lag = 0.0              # set by the lifecycle's lag monitor
        self.probes: ProbeRunner | None = None  # set by the lifecycle
        self.pending_probes: dict[str, PendingProbe] = {}  # request id → the probe waiting on it
        self.traffic_address: tuple[str, int] | None = None   # where probes send their requests
        self.last_success: dict[str, float] = {}   # route name → loop time of last user success
        self._gauges()
        self.pipeline = Pipeline(cfg, self)
        self.metrics.configure(cfg, self.pipeline.table, list(self.breakers), [p.name for p in cfg.probes])

    def _gauges(self) -> None:
        m = self.metrics
        m.upstream_connections.labels("busy").set_function(lambda: len(self.pool.busy))
        m.upstream_connections.labels("idle").set_function(lambda: len(self.pool.idle))
        m.upstream_connections.labels("waiting").set_function(lambda: len(self.pool._waiters))
        m.response_buffer_bytes.set_function(lambda: self.buffers.used)

    def _make_pool(self, cfg: C.Config) -> UpstreamPool:
        up = cfg.upstream
        pool = UpstreamPool(up.url, connect_timeout=up.connect_timeout, max_connections=C.pool_size(cfg),
                            keepalive_timeout=up.keepalive_timeout, pool_timeout=up.pool_timeout)
        pool.on_connect_wait = self.metrics.upstream_connect_waits.inc
        pool.start()
        return pool

    def retry_budget(self, rc: C.RetriesConfig) -> RetryBudget:
        if self._budget is None or (self._budget.ratio, self._budget.floor) != (rc.budget, rc.min_per_second * RetryBudget.WINDOW):
            self._budget = RetryBudget(rc.budget, rc.min_per_second)
        return self._budget

    def sync_breakers(self, settings: dict[str, C.BreakerConfig]) -> dict[str, BreakerState]:
        """Keep every breaker that still exists, with its state; new settings apply in place
        (an open breaker stays open until its new reset timeout)."""
        out = {}
        for name, s in settings.items():
            br = self.breakers.get(name)
            if br is None:
                br = BreakerState(name, s, self.metrics)
            elif br.settings != s:
                br.update(s)
            out[name] = br
        self.breakers = out
        return out

    def note_success(self, route: str) -> None:
        self.last_success[route] = self.loop.time()

    def apply(self, cfg: C.Config) -> list[str]:
        """Swap in a new config; returns what needs a restart to take effect."""
        needs_restart = C.restart_changes(self.cfg, cfg)  # the keys marked restart=True in config.py
        self.buffers.limit = cfg.limits.max_buffered_bytes
        self.llm.configure(cfg.llm)
        if cfg.upstream.url == self.cfg.upstream.url:
            # same upstream: keep the pool and its connections, apply the new sizes in place
            p = self.pool
            p.connect_timeout, p.pool_timeout = cfg.upstream.connect_timeout, cfg.upstream.pool_timeout
            p.keepalive_timeout, p.max_connections = cfg.upstream.keepalive_timeout, C.pool_size(cfg)
        else:
            old = self.pool
            self.pool = self._make_pool(cfg)
            self.canceller = RunCanceller(self.pool, self.metrics)
            old_ws = self.websocket
            self.websocket = WebSocketRelay(cfg.upstream.url, self.metrics, cfg.upstream.connect_timeout, self.pool.ssl)
            self.loop.call_later(max(cfg.server.shutdown_grace, 1), lambda: self.loop.create_task(old_ws.close()))
            self.loop.call_later(max(cfg.server.shutdown_grace, 1), lambda: self.loop.create_task(old.close()))
        self.access_log.fmt = cfg.logging.format
        logging.getLogger().setLevel(cfg.logging.level.upper())
        self.pipeline = Pipeline(cfg, self)
        self.cfg = cfg
        self.metrics.configure(cfg, self.pipeline.table, list(self.breakers), [p.name for p in cfg.probes])
        return needs_restart

    # ---- readiness ----
    def readiness(self) -> tuple[bool, list[dict]]:
        checks = [{"name": "lifecycle", "ok": self.state == "ready", "state": self.state}]
        gates = self.cfg.circuit_breaker.open_makes_unready
        for name, br in self.breakers.items():
            # listed either way, so /readyz shows why clients get 503 circuit_open
            st = br.state
            checks.append({"name": f"breaker:{name}", "ok": st != "open" or not gates, "state": st,
                           "gates_readiness": gates})
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
            if ex.tail is not None:
                await ex.tail  # a stream's body, relayed after the layers returned (proxy/layers.py)
            elif self.state == "draining" and not resp.prepared:
                resp.force_close()  # tell keep-alive clients to reconnect (elsewhere)
            return resp
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    def is_draining(self) -> bool:
        return self.state == "draining"

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def cut_in_flight(self) -> int:
        """The shutdown grace ran out: end every exchange still talking to the upstream as cut by
        the proxy (SSE gets ``event: error`` of type ``shutdown``; outcome ``shutdown``)."""
        return self.pool.fail_busy(E.ShuttingDown("the proxy is shutting down and its shutdown_grace ran out"))

    def probe_finished(self, ex, status: int, outcome: str, who: str | None) -> None:
        """Telemetry's report on a probe's exchange, for the probe runner waiting on it."""
        pending = self.pending_probes.pop(ex.request_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result((status, outcome, who, ex))

    def status(self) -> dict:
        return {
            "version": __version__,
            "state": self.state,
            "uptime_seconds": round(self.loop.time() - self.started_at, 3),
            "in_flight_requests": self.active,
            "tasks": len(asyncio.all_tasks(self.loop)),
            "upstream_pool": self.pool.stats(),
            "capacity": {"in_flight": self.counts.active, "streams": self.counts.streams,
                         "buffered_bytes": self.buffers.used, "buffer_limit_bytes": self.buffers.limit},
            "breakers": {n: b.snapshot() for n, b in self.breakers.items()},
            "gc": gcpolicy.stats(),
            "probes": self.probes.status() if self.probes is not None else {},
            "layers": self.pipeline.describe(),
            "routes": self.pipeline.table.names,
            "config": C.summary(self.cfg),
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
    host = C.parse_hostport(cfg.server.listen)[0]
    # probes send their requests through this port, to the same layers as user traffic
    rt.traffic_address = ({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), tsock.getsockname()[1])
    tserver = await rt.loop.create_server(traffic, sock=tsock, backlog=4096)  # uvloop re-listens: keep the backlog
    runner = GuardedAppRunner(admin_app(rt, on_drain), head_timeout=cfg.server.header_read_timeout,
                              max_connections=256, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, asock, backlog=1024)
    await site.start()
    rt.access_log.start(rt.loop)
    return traffic, tserver, runner, (tsock.getsockname()[1], asock.getsockname()[1])
