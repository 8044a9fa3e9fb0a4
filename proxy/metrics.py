"""Every metric the sidecar exposes, declared in one table against a registry passed in.

Labels are bounded by construction: route names come from the route table (``other`` for the
rest), methods from a fixed set, status codes are whatever the upstream answered (a few dozen at
most), outcomes and kinds from the fixed vocabularies below. Never a path, id or user input.
"""
from __future__ import annotations

import platform
from bisect import bisect_left
from time import time

from prometheus_client import (CollectorRegistry, GCCollector, PlatformCollector,
                               ProcessCollector)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

# Fits LLM agents: a cached /ok in milliseconds, a tool-using run in minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Per-token latencies: a fast model streams a token every few ms, a loaded one every few hundred.
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# the methods with a label (and a precompiled route matcher); any other is labelled OTHER
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_LABELLED_METHODS = frozenset(METHODS)

STREAM_OUTCOMES = ("completed", "client_disconnect", "client_slow", "upstream_error", "idle_timeout",
                   "event_idle_timeout", "stream_timeout", "shutdown")
# client_write: the client read nothing for server.client_write_timeout (never an upstream failure)
TIMEOUT_KINDS = ("connect", "first_byte", "idle", "event_idle", "request", "stream", "client_write")
UPSTREAM_ERROR_KINDS = ("connect", "reset", "protocol")
SHED_REASONS = ("concurrency", "streams", "connections", "slow_client", "body_too_large", "headers_too_large",
                "breaker_open", "pool_exhausted")
# interrupted: the run's status after a clean end (a multitask interrupt); unknown: it could not be read
RUN_OUTCOMES = ("success", "run_error", "cancelled", "client_disconnect", "upstream_error", "interrupted",
                "unknown")
PROBE_RESULTS = ("passed", "failed", "timeout", "skipped_passive", "skipped_budget", "skipped_capacity")
RUN_CANCEL_RESULTS = ("cancelled", "not_found", "failed", "no_run_id", "kept", "stateless")
RELOAD_RESULTS = ("success", "failure")
BREAKER_STATES = ("closed", "half-open", "open")
# limits exported as sidecar_limit{name}: what a saturation ratio divides by (see configure())
LIMIT_NAMES = ("max_concurrent_requests", "max_concurrent_streams", "max_connections", "upstream_max_connections",
               "max_buffered_bytes")

# ---- the metric kinds: series updated in place, exported by prometheus-client ----
#
# prometheus-client's Counter, Gauge and Histogram guard every value with a threading.Lock and
# check, per update, that the metric is observable, and validate an exemplar at every observation:
# three to five Python calls and a lock per value, ten locked values a small GET (68,000 of its
# 424,000 instructions, 16%: docs/benchmarks.md). Every update here happens on the event loop's
# thread (nothing else in the process writes a metric), so a series is a plain slotted object and
# an update is one call. prometheus-client still owns the registry, the exposition formats and the
# process, platform and GC collectors: each kind below is a custom collector of that registry
# (``collect`` builds the samples its own kind would: names, labels, bucket order, exemplars; no
# ``_created`` series, which would double every counter's series and no dashboard here reads).

EXEMPLAR_MAX = 128  # OpenMetrics: an exemplar's label names and values, in characters


class _Kind:
    """One metric: its series by label values, created on first use and never dropped but by
    :meth:`remove`. An unlabelled metric has its one series from the start (exported as 0)."""

    def __init__(self, name: str, documentation: str, labelnames=(), registry: CollectorRegistry | None = None):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict = {}
        if not self.labelnames:
            self._series[()] = self._new()
        if registry is not None:
            registry.register(self)

    def labels(self, *values):
        """The series for these label values (every label, in order; prometheus-client's call)."""
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames} take {len(self.labelnames)} values, "
                                 f"not {len(key)}")
            series = self._series[key] = self._new()
        return series

    def remove(self, *values) -> None:
        self._series.pop(tuple(str(v) for v in values), None)

    @property
    def series(self):
        """The unlabelled metric's one series (what :func:`declare` exposes for it)."""
        return self._series[()]

    def describe(self):
        return [self._family()]

    def collect(self):
        fam = self._family()
        for key, series in list(self._series.items()):
            self._add(fam, list(key), series)
        return [fam]


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class Counter(_Kind):
    """A counter (its name without ``_total``; the exposition adds it, as prometheus-client's does)."""

    _new = CounterSeries

    def _family(self):
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    @staticmethod
    def _add(fam, labels, series) -> None:
        fam.add_metric(labels, series.value)


class GaugeSeries:
    __slots__ = ("value", "fn")

    def __init__(self):
        self.value = 0.0
        self.fn = None  # set_function: read at each scrape instead of value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, fn) -> None:
        self.fn = fn

    def get(self) -> float:
        return float(self.fn()) if self.fn is not None else self.value


class Gauge(_Kind):
    _new = GaugeSeries

    def _family(self):
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    @staticmethod
    def _add(fam, labels, series) -> None:
        fam.add_metric(labels, series.get())


class HistogramSeries:
    """Counts per bucket (not cumulative: the exposition adds them up), the sum, and each bucket's
    latest exemplar (a list made at the first one)."""

    __slots__ = ("bounds", "counts", "sum", "exemplars")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.exemplars = None

    def observe(self, amount: float, exemplar: dict | None = None) -> None:
        self.sum += amount
        if amount != amount:  # NaN: in no bucket, as prometheus-client counts it
            return
        i = bisect_left(self.bounds, amount)  # the first bucket with amount <= le (+Inf is last)
        self.counts[i] += 1
        if exemplar:
            if self.exemplars is None:
                self.exemplars = [None] * len(self.bounds)
            self.exemplars[i] = (exemplar, amount, time())


class Histogram(_Kind):
    def __init__(self, name: str, documentation: str, labelnames=(), registry: CollectorRegistry | None = None,
                 *, buckets):
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: buckets not in order")
        if not bounds or bounds[-1] != float("inf"):
            bounds += (float("inf"),)
        self.bounds = bounds
        self._le = [floatToGoString(b) for b in bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self):
        return HistogramSeries(self.bounds)

    def _family(self):
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, fam, labels, series) -> None:
        acc = 0
        buckets = []
        ex = series.exemplars
        for i, le in enumerate(self._le):
            acc += series.counts[i]
            e = ex[i] if ex is not None else None
            if e is not None and sum(len(k) + len(v) for k, v in e[0].items()) <= EXEMPLAR_MAX:
                buckets.append((le, float(acc), Exemplar(e[0], e[1], e[2])))
            else:
                buckets.append((le, float(acc)))
        fam.add_metric(labels, buckets, series.sum)


# name suffix, kind, help, labels, extra kwargs
TABLE = (
    ("requests_total", Counter, "Requests answered, by route template, method and status code.", ("route", "method", "code"), {}),
    ("request_duration_seconds", Histogram, "Time from request received to response complete.", ("route", "method"), {"buckets": LATENCY_BUCKETS}),
    ("upstream_time_to_first_byte_seconds", Histogram, "Time until the upstream's response headers.", ("route",), {"buckets": LATENCY_BUCKETS}),
    ("proxy_overhead_seconds", Histogram, "Time the proxy itself adds per request (total minus upstream time).", ("route",), {"buckets": OVERHEAD_BUCKETS}),
    ("request_bytes_total", Counter, "Request body bytes sent upstream.", ("route",), {}),
    ("response_bytes_total", Counter, "Response body bytes sent to clients.", ("route",), {}),
    ("in_flight_requests", Gauge, "Requests being served now.", ("route",), {}),
    ("in_flight_streams", Gauge, "SSE and WebSocket streams open now.", (), {}),
    ("upstream_connections", Gauge, "Upstream pool: connections busy or idle now, and requests waiting for one.", ("state",), {}),
    ("response_buffer_bytes", Gauge, "Bytes of whole upstream answers held for slow clients now (bounded by limits.max_buffered_bytes).", (), {}),
    ("stream_time_to_first_event_seconds", Histogram, "SSE: time from request to the first real event.", ("route",), {"buckets": LATENCY_BUCKETS}),
    ("stream_duration_seconds", Histogram, "SSE: total stream duration.", ("route",), {"buckets": LATENCY_BUCKETS + (1200, 1800, 3600)}),
    ("stream_events_total", Counter, "SSE events forwarded (comments and heartbeats excluded).", ("route",), {}),
    ("streams_total", Counter, "SSE streams ended, by outcome.", ("route", "outcome"), {}),
    ("timeouts_total", Counter, "Timeouts that fired, by kind.", ("route", "kind"), {}),
    ("upstream_errors_total", Counter, "Upstream failures other than timeouts, by kind.", ("route", "kind"), {}),
    ("shed_total", Counter, "Requests refused by a limit or an open breaker, by reason.", ("reason",), {}),
    ("upstream_connect_waits_total", Counter, "Upstream connects made again after upstream.connect_timeout because the upstream accepted or answered others meanwhile (its accept queue was full), instead of failing.", (), {}),
    ("retries_total", Counter, "Upstream attempts repeated after a safe-to-retry failure.", ("route",), {}),
    ("circuit_state", Gauge, "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ("breaker",), {}),
    ("circuit_transitions_total", Counter, "Circuit breaker state changes, by new state.", ("breaker", "to"), {}),
    ("runs_total", Counter, "LangGraph runs seen through the proxy, by outcome (errors inside a 200 included).", ("route", "outcome"), {}),
    ("run_cancels_total", Counter, "LangGraph runs the proxy cancelled upstream after their client left.", ("route", "result"), {}),
    ("websocket_messages_total", Counter, "WebSocket messages relayed, by direction.", ("route", "direction"), {}),
    ("build_info", Gauge, "Build information; always 1.", ("version", "python"), {}),
    ("config_reloads_total", Counter, "Config reloads, by result.", ("result",), {}),
    ("ready", Gauge, "1 when /readyz answers 200.", (), {}),
    ("probe_success", Gauge, "1 while the probe counts as passing.", ("probe",), {}),
    ("probe_duration_seconds", Histogram, "Synthetic probe duration.", ("probe",), {"buckets": LATENCY_BUCKETS}),
    ("probe_runs_total", Counter, "Probe runs by result.", ("probe", "result"), {}),
    ("probe_last_success_timestamp_seconds", Gauge, "Unix time of the probe's last pass.", ("probe",), {}),
    ("probe_time_to_first_event_seconds", Histogram, "Streaming probe: time to its first SSE event.", ("probe",), {"buckets": LATENCY_BUCKETS}),
    # LLM usage read off the agent's stream (proxy/llm.py)
    ("llm_tokens_total", Counter, "LLM tokens the agent used, read from its stream or answer; cache_read and cache_write are part of input.", ("type", "model", "route"), {}),
    ("llm_calls_total", Counter, "LLM calls seen, each once whatever the stream modes.", ("model", "route"), {}),
    ("llm_time_to_first_token_seconds", Histogram, "SSE: time from request to the first messages event with model output.", ("route",), {"buckets": LATENCY_BUCKETS}),
    ("llm_time_per_output_token_seconds", Histogram, "SSE: stream time after the first token divided by the output tokens.", ("route",), {"buckets": TPOT_BUCKETS}),
    ("llm_cost_total", Counter, "LLM cost from the llm.prices table, in the currency it is written in (priced models only).", ("model", "route"), {}),
    ("llm_events_unparsed_total", Counter, "Inspected events or wait answers whose usage could not be read (too big, bad JSON, not attributable); forwarded untouched.", ("route",), {}),
    ("limit", Gauge, "Configured limits, by config key (max_concurrent_streams only when set); saturation = usage / limit.", ("name",), {}),
)


def declare(target, entries, registry: CollectorRegistry, prefix: str) -> None:
    """Create each table entry on ``registry`` as an attribute of ``target``, named by its suffix
    (``requests_total`` → ``target.requests``: the exposition adds ``_total`` itself). A labelled
    entry is its metric (``.labels(...)`` gives a series); an unlabelled one is its one series."""
    for suffix, kind, doc, labels, kw in entries:
        name = f"{prefix}_{suffix}"
        if kind is Counter:
            name = name[: -len("_total")]
        metric = kind(name, doc, labels, registry=registry, **kw)
        setattr(target, suffix.removesuffix("_total") if kind is Counter else suffix,
                metric if labels else metric.series)


class Children(dict):
    """``children(metric, *labels)`` is ``metric.labels(*labels)``, cached: for series written at
    every stream end or event. Bounded as those series are (their labels come from bounded sets);
    series are never removed, so a cached child is never stale."""

    def __call__(self, metric, *labels):
        key = (metric, labels)
        ch = self.get(key)
        if ch is None:
            ch = self[key] = metric.labels(*labels)
        return ch


class Metrics:
    """All sidecar metrics on one registry; attributes are named by the table's suffixes.

    Hot-path helpers cache labelled children, since ``.labels()`` costs more than the update.
    """

    def __init__(self, registry: CollectorRegistry, prefix: str = "sidecar", version: str = "0"):
        self.registry = registry
        declare(self, TABLE, registry, prefix)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.build_info.labels(version, platform.python_version()).set(1)
        # A labelled counter has no series before its first increment, and rate()/increase() need
        # two samples, so a first failure would go unseen by alerts: every combination known up
        # front is exported as 0 from the start (here, and per config in configure()).
        for reason in SHED_REASONS:
            self.shed.labels(reason)
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self._req: dict = {}
        self._route: dict = {}
        self.child = Children()  # the series written at every stream end and run end
        self._limits: set[str] = set()

    def configure(self, cfg, table, breakers, probes) -> None:
        """Export the config's limits and pre-create the config-known counter series at 0.

        Called at start and after every applied reload with the route table (``routes``, ``other``),
        the breaker names and the probe names. Series are only added, never removed: a request
        that started under the old config may still record its old route.

        Per-route counters are pre-created only for the LangGraph run routes (``run_kind``) and
        ``other``, not for all ~50 routes x kinds (that alone was ~600 series and 10x the scrape
        time). Alerts read these counters summed over routes (``sum without (route)`` recorded,
        then ``increase``); the ``other`` series anchor every kind and outcome, so a route's first
        failure shows as a step of that sum instead of a series born non-zero, which rate() misses.
        """
        from .config import pool_size  # imported here: metrics stays a leaf module at import time
        lim = cfg.limits
        values = {"max_concurrent_requests": lim.max_concurrent_requests,
                  "max_concurrent_streams": lim.max_concurrent_streams,
                  "max_connections": cfg.server.max_connections,
                  "upstream_max_connections": pool_size(cfg),
                  "max_buffered_bytes": lim.max_buffered_bytes}
        for name in LIMIT_NAMES:
            if values[name] is not None:
                self.limit.labels(name).set(values[name])
                self._limits.add(name)
            elif name in self._limits:
                self.limit.remove(name)     # unset by a reload: no limit, no ratio
                self._limits.discard(name)
        anchored = [r for r in table.routes if r.run_kind is not None] + [table.other]
        for r in anchored:
            for kind in TIMEOUT_KINDS:
                self.timeouts.labels(r.name, kind)
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstream_errors.labels(r.name, kind)
            for outcome in RUN_OUTCOMES:
                self.runs.labels(r.name, outcome)
            if r.run_kind != "wait":
                for outcome in STREAM_OUTCOMES:
                    self.streams.labels(r.name, outcome)
        for r in table.routes:
            if r.cancel_on_disconnect:
                for result in RUN_CANCEL_RESULTS:
                    self.run_cancels.labels(r.name, result)
        for name in breakers:
            for state in BREAKER_STATES:
                self.circuit_transitions.labels(name, state)
        for name in probes:
            for result in PROBE_RESULTS:
                self.probe_runs.labels(name, result)

    def route_children(self, route: str):
        """(in_flight, ttfb, overhead, req_bytes, resp_bytes) children for a route, cached."""
        ch = self._route.get(route)
        if ch is None:
            ch = self._route[route] = (
                self.in_flight_requests.labels(route),
                self.upstream_time_to_first_byte_seconds.labels(route),
                self.proxy_overhead_seconds.labels(route),
                self.request_bytes.labels(route),
                self.response_bytes.labels(route),
            )
        return ch

    def stream_done(self, route: str, outcome: str, duration: float, events: int, first_event: float | None) -> None:
        """A stream ended (``outcome``: a STREAM_OUTCOMES value): its count, duration, events, time
        to first event."""
        child = self.child
        child(self.streams, route, outcome).inc()
        child(self.stream_duration_seconds, route).observe(duration)
        if events:
            child(self.stream_events, route).inc(events)
        if first_event is not None:
            child(self.stream_time_to_first_event_seconds, route).observe(first_event)

    def request_done(self, route: str, method: str, code: int, duration: float, exemplar=None) -> None:
        if method not in _LABELLED_METHODS:
            method = "OTHER"
        key = (route, method, code)
        ch = self._req.get(key)
        if ch is None:
            ch = self._req[key] = (self.requests.labels(route, method, str(code)),
                                   self.request_duration_seconds.labels(route, method))
        ch[0].inc()
        ch[1].observe(duration, exemplar)
