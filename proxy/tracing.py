"""W3C trace context for every request, and optional OTLP export of one span per request and run.

Each request gets a :class:`TraceContext`: a client's valid ``traceparent`` is continued (same trace
id, the client's span as parent, its ``tracestate`` passed through), anything else starts a new
trace (and drops ``tracestate``, as W3C Trace Context §3.3 asks). The proxy's own span id is what
it sends upstream in ``traceparent``, so the agent's spans hang under the proxy's. The trace id
goes into the access log and into exemplars.

Exporting spans needs the optional ``otel`` extra (``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http``). It is imported only when ``tracing.otlp_endpoint``
is set; without it the proxy runs unchanged (config validation says the extra is missing).
:class:`SpanExporter` writes one ``SERVER`` span per request whose id is the one sent upstream,
and for a LangGraph run a child ``invoke_agent`` span with the OpenTelemetry GenAI semantic
convention attributes (``gen_ai.usage.*``, ``gen_ai.response.model``, ``gen_ai.conversation.id``).
The SDK's batch processor exports from its own thread with a bounded queue (``max_queue``): the
event loop never waits on the collector, and spans beyond the queue are dropped.
"""
from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Optional


# ---- config (mounted as `tracing:` in proxy.config.Config) ----


@dataclass(frozen=True)
class TracingConfig:
    """Trace context propagation and the optional OTLP/HTTP span export."""
    enabled: bool = True                  # continue or start a W3C traceparent and send it upstream
    otlp_endpoint: Optional[config.HttpUrl] = None  # e.g. http://otel-collector:4318/v1/traces (needs the otel extra)
    otlp_headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization: "Bearer ${OTLP_TOKEN}"
    otlp_timeout: config.Duration = 10.0  # one export request
    service_name: str = "langgraph-sidecar"
    sample_ratio: float = 1.0             # of the traces the proxy starts; a client's sampled flag is kept
    max_queue: int = 2048                 # spans waiting for export; more are dropped

    def validate(self, path: str, fail) -> None:
        """Cross-key rules, reported like proxy.config's (``fail(key_path, message)``)."""
        if isinstance(self.sample_ratio, float) and not 0 <= self.sample_ratio <= 1:
            fail(f"{path}.sample_ratio", f"must be between 0 and 1, got {self.sample_ratio}")
        if isinstance(self.max_queue, int) and self.max_queue <= 0:
            fail(f"{path}.max_queue", f"must be > 0, got {self.max_queue}")
        if self.otlp_endpoint and not otel_available():
            fail(f"{path}.otlp_endpoint", "needs the optional OpenTelemetry packages: "
                                          "pip install 'langgraph-sidecar[otel]' (or leave it null)")


def otel_available() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


# ---- trace context ----

_TP = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACESTATE_MAX = 512   # W3C: at least 512 characters must be propagated; longer ones we drop
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_rand = random.Random(os.urandom(16))  # ids must be unique, not secret; fork-safe enough for one process


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a valid ``traceparent``, else None (W3C §3.2)."""
    if not value or len(value) < 55:
        return None
    m = _TP.match(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None  # ff is forbidden; version 00 has exactly four fields
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16)


class TraceContext:
    """One request's place in a trace: ``span_id`` is the proxy's span (the upstream's parent)."""

    __slots__ = ("trace_id", "span_id", "parent_id", "flags", "tracestate", "started")

    def __init__(self, trace_id: str, span_id: str, parent_id: str | None, flags: int,
                 tracestate: str | None, started: bool):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id      # the client's span, or None when the proxy started the trace
        self.flags = flags
        self.tracestate = tracestate
        self.started = started

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def traceparent(self) -> str:
        """The header value sent upstream: always version 00, the proxy's span as parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags & 0xff:02x}"

    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers to send upstream in place of the client's ``traceparent``/``tracestate``."""
        out = [(b"traceparent", self.traceparent().encode())]
        if self.tracestate:
            out.append((b"tracestate", self.tracestate.encode()))
        return out

    def exemplar(self) -> dict:
        """OpenMetrics exemplar labels (63 characters, within the 128 allowed)."""
        return {"trace_id": self.trace_id, "span_id": self.span_id}


def new_trace_id() -> str:
    return "%032x" % (_rand.getrandbits(128) or 1)


def new_span_id() -> str:
    return "%016x" % (_rand.getrandbits(64) or 1)


def continue_or_start(traceparent: str | None, tracestate: str | None = None,
                      sample_ratio: float = 1.0) -> TraceContext:
    """Continue a client's trace or start one. Pass None for a header that was absent or repeated
    (two ``traceparent`` headers make it invalid); repeated ``tracestate`` headers join with ``,``."""
    parsed = parse_traceparent(traceparent)
    if parsed is not None:
        trace_id, parent_id, flags = parsed
        ts = tracestate.strip() if tracestate else None
        if ts and (len(ts) > _TRACESTATE_MAX or not ts.isascii() or not ts.isprintable()):
            ts = None
        return TraceContext(trace_id, new_span_id(), parent_id, flags & 0xff, ts or None, False)
    return start(sample_ratio)


def start(sample_ratio: float = 1.0) -> TraceContext:
    """A new trace: one random draw gives the trace id and the proxy's span id."""
    sampled = sample_ratio >= 1 or _rand.random() < sample_ratio
    ids = (_rand.getrandbits(192) | (1 << 64) | 1).to_bytes(24, "big").hex()  # neither id all zero (invalid in W3C)
    return TraceContext(ids[:32], ids[32:], None, 1 if sampled else 0, None, True)


def from_headers(raw_headers, sample_ratio: float = 1.0) -> TraceContext:
    """:func:`continue_or_start` from a request's raw headers ((bytes, bytes) pairs as sent), so
    no case-insensitive mapping is built for it. Without a ``traceparent`` (most requests) its
    ``tracestate`` means nothing (W3C)."""
    tp = ts = None
    for k, v in raw_headers:
        n = len(k)
        if n == 11 and k.lower() == b"traceparent":
            tp = [v] if tp is None else tp + [v]
        elif n == 10 and k.lower() == b"tracestate":
            ts = [v] if ts is None else ts + [v]
    if tp is None:
        return start(sample_ratio)
    return continue_or_start(tp[0].decode("latin-1") if len(tp) == 1 else None,
                             b",".join(ts).decode("latin-1") if ts else None, sample_ratio)


# ---- export ----


@dataclass
class RunInfo:
    """What the sidecar knows of a LangGraph run, for its ``invoke_agent`` span."""
    run_id: str | None = None
    thread_id: str | None = None
    assistant_id: str | None = None
    outcome: str | None = None       # proxy.metrics.RUN_OUTCOMES


class SpanExporter:
    """Exports one span per request (and one per run) over OTLP/HTTP; needs the ``otel`` extra.

    ``export_request`` is cheap on the event loop (span objects are built and queued; the SDK's
    batch thread sends them). Call :meth:`shutdown` from a thread (or ``await aclose()``) at exit:
    it flushes what is queued within the config's timeout.
    """

    def __init__(self, cfg: TracingConfig, version: str = "0"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

        class _Ids(IdGenerator):
            """Hands the SDK the ids the proxy already chose (and sent upstream), else random ones."""
            span = None
            trace = None

            def generate_span_id(self) -> int:
                v, self.span = self.span, None
                return v if v is not None else _rand.getrandbits(64) or 1

            def generate_trace_id(self) -> int:
                v, self.trace = self.trace, None
                return v if v is not None else _rand.getrandbits(128) or 1

        self._t = trace
        self._Context = Context
        self._SpanContext, self._NonRecordingSpan, self._TraceFlags, self._TraceState = (
            SpanContext, NonRecordingSpan, TraceFlags, TraceState)
        self._SERVER, self._INTERNAL = SpanKind.SERVER, SpanKind.INTERNAL
        self._Status, self._ERROR = Status, StatusCode.ERROR
        self._ids = _Ids()
        self.timeout = cfg.otlp_timeout
        # the proxy decides sampling itself (ctx.sampled); the SDK records what it is given
        self.provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name,
                                                                 "service.version": version}),
                                       sampler=ALWAYS_ON, id_generator=self._ids)
        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=dict(cfg.otlp_headers) or None,
                                    timeout=cfg.otlp_timeout)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=cfg.max_queue,
                                                            export_timeout_millis=int(cfg.otlp_timeout * 1000)))
        self.tracer = self.provider.get_tracer("proxy", version)

    def export_request(self, ctx: TraceContext, *, method: str, route: str, path: str, status: int,
                       outcome: str, request_id: str, start: float, end: float, route_template: str | None = None,
                       llm=None, run: RunInfo | None = None) -> None:
        """One request's span (and its run's). ``start``/``end`` are ``time.monotonic()`` values;
        ``llm`` is a :class:`proxy.llm.LLMSummary`. Unsampled contexts export nothing."""
        if not ctx.sampled:
            return
        now_ns, now = time.time_ns(), time.monotonic()
        start_ns = now_ns - int((now - start) * 1e9)
        end_ns = now_ns - int((now - end) * 1e9)
        if ctx.parent_id is not None:
            parent = self._t.set_span_in_context(self._NonRecordingSpan(self._SpanContext(
                int(ctx.trace_id, 16), int(ctx.parent_id, 16), is_remote=True,
                trace_flags=self._TraceFlags(ctx.flags),
                trace_state=self._TraceState.from_header([ctx.tracestate]) if ctx.tracestate else None)))
        else:
            parent = self._Context()  # empty: a root span, whatever is current
            self._ids.trace = int(ctx.trace_id, 16)
        attrs = {"http.request.method": method, "http.response.status_code": status, "url.path": path,
                 "sidecar.route": route, "sidecar.outcome": outcome, "sidecar.request_id": request_id}
        if route_template:
            attrs["http.route"] = route_template
        if llm is not None and llm.calls:
            attrs.update(_gen_ai_usage(llm))
        self._ids.span = int(ctx.span_id, 16)
        span = self.tracer.start_span(f"{method} {route_template or route}", context=parent, kind=self._SERVER,
                                      attributes=attrs, start_time=start_ns)
        if status >= 500 or outcome not in ("ok", "client_disconnect"):
            span.set_status(self._Status(self._ERROR, outcome))
            span.set_attribute("error.type", outcome if outcome != "ok" else str(status))
        if run is not None:
            self._run_span(span, run, llm, start_ns, end_ns)
        span.end(end_time=end_ns)

    def _run_span(self, parent_span, run: RunInfo, llm, start_ns: int, end_ns: int) -> None:
        name = run.assistant_id or "agent"
        attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": name}
        if run.thread_id:
            attrs["gen_ai.conversation.id"] = run.thread_id
        if run.run_id:
            attrs["langgraph.run.id"] = run.run_id
        if run.outcome:
            attrs["langgraph.run.outcome"] = run.outcome
        if llm is not None:
            attrs.update(_gen_ai_usage(llm))
            if llm.ttft is not None:
                attrs["gen_ai.response.time_to_first_chunk"] = llm.ttft
        span = self.tracer.start_span(f"invoke_agent {name}", context=self._t.set_span_in_context(parent_span),
                                      kind=self._INTERNAL, attributes=attrs, start_time=start_ns)
        if run.outcome not in (None, "success"):
            span.set_status(self._Status(self._ERROR, run.outcome))
            span.set_attribute("error.type", run.outcome)
        span.end(end_time=end_ns)

    def force_flush(self, timeout: float | None = None) -> bool:
        """Blocks until queued spans are sent: call from a thread, never the event loop."""
        return self.provider.force_flush(int((timeout or self.timeout) * 1000))

    def shutdown(self) -> None:
        """Flush and stop the export thread (blocking: call from a thread)."""
        self.provider.shutdown()

    async def aclose(self) -> None:
        import asyncio
        await asyncio.to_thread(self.shutdown)


def _gen_ai_usage(llm) -> dict:
    """GenAI semantic-convention usage attributes of an :class:`proxy.llm.LLMSummary`."""
    attrs = {"gen_ai.usage.input_tokens": llm.input_tokens, "gen_ai.usage.output_tokens": llm.output_tokens}
    if llm.cache_read_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = llm.cache_read_tokens
    if llm.cache_write_tokens:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = llm.cache_write_tokens
    if len(llm.models) == 1:
        attrs["gen_ai.response.model"] = llm.models[0]
    if llm.models:
        attrs["sidecar.llm.models"] = list(llm.models)
    if len(llm.providers) == 1:
        attrs["gen_ai.provider.name"] = llm.providers[0]
    attrs["sidecar.llm.calls"] = llm.calls
    if llm.cost:
        attrs["sidecar.llm.cost"] = llm.cost
    return attrs


# Last, so either module can be imported first: proxy.config imports this module for its schema,
# and config.HttpUrl / config.Duration in the annotations above are only resolved when a config is loaded.
from . import config  # noqa: E402,F401
