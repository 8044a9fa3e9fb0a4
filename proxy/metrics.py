"""Every metric the sidecar exposes, declared in one table against a registry passed in.

Labels are bounded by construction: route names come from the route table (``other`` for the
rest), methods from a fixed set, status codes are whatever the upstream answered (a few dozen at
most), outcomes and kinds from the fixed vocabularies below. Never a path, id or user input.
"""
from __future__ import annotations

import platform

from prometheus_client import (CollectorRegistry, disable_created_metrics, Counter, Gauge, Histogram, GCCollector,
                               PlatformCollector, ProcessCollector)

# Fits LLM agents: a cached /ok in milliseconds, a tool-using run in minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

STREAM_OUTCOMES = ("completed", "client_disconnect", "client_slow", "upstream_error", "idle_timeout",
                   "event_idle_timeout", "stream_timeout", "shutdown")
# client_write: the client read nothing for server.client_write_timeout (never an upstream failure)
TIMEOUT_KINDS = ("connect", "first_byte", "idle", "event_idle", "request", "stream", "client_write")
UPSTREAM_ERROR_KINDS = ("connect", "reset", "protocol")
SHED_REASONS = ("concurrency", "streams", "connections", "slow_client", "body_too_large", "headers_too_large",
                "breaker_open", "pool_exhausted")
RUN_OUTCOMES = ("success", "run_error", "cancelled", "client_disconnect", "upstream_error")
PROBE_RESULTS = ("passed", "failed", "timeout", "skipped_passive", "skipped_budget")

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
)


# `_created` series double every counter's series count and no dashboard here uses them
disable_created_metrics()


class Metrics:
    """All sidecar metrics on one registry; attributes are named by the table's suffixes.

    Hot-path helpers cache labelled children, since ``.labels()`` costs more than the update.
    """

    def __init__(self, registry: CollectorRegistry, prefix: str = "sidecar", version: str = "0"):
        self.registry = registry
        for suffix, kind, doc, labels, kw in TABLE:
            name = f"{prefix}_{suffix}"
            if kind is Counter:
                name = name[: -len("_total")]
            setattr(self, suffix.removesuffix("_total") if kind is Counter else suffix,
                    kind(name, doc, labels, registry=registry, **kw))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.build_info.labels(version, platform.python_version()).set(1)
        self._req: dict = {}
        self._route: dict = {}

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

    def request_done(self, route: str, method: str, code: int, duration: float, exemplar=None) -> None:
        if method not in METHODS:
            method = "OTHER"
        key = (route, method, code)
        ch = self._req.get(key)
        if ch is None:
            ch = self._req[key] = (self.requests.labels(route, method, str(code)),
                                   self.request_duration_seconds.labels(route, method))
        ch[0].inc()
        ch[1].observe(duration, exemplar)
