"""W3C trace context (proxy/tracing.py) and OTLP span export to an in-test collector."""
from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from proxy import config
from proxy.llm import LLMSummary
from proxy.tracing import (RunInfo, TracingConfig, continue_or_start, from_headers, otel_available,
                           parse_traceparent)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
PID = "00f067aa0ba902b7"
TP = f"00-{TID}-{PID}-01"


@pytest.mark.parametrize("value, expected", [
    (TP, (TID, PID, 1)),
    (f"00-{TID}-{PID}-00", (TID, PID, 0)),
    (f"cc-{TID}-{PID}-09-what-the-future-adds", (TID, PID, 9)),  # a later version: read the first four fields
    (f"  {TP}", (TID, PID, 1)),
    (f"00-{TID}-{PID}-01-extra", None),                            # version 00 has exactly four fields
    (f"ff-{TID}-{PID}-01", None),
    (f"00-{TID.upper()}-{PID}-01", None),
    (f"00-{'0' * 32}-{PID}-01", None),
    (f"00-{TID}-{'0' * 16}-01", None),
    (f"00-{TID[:-1]}-{PID}-01", None),
    (f"00-{TID}-{PID}-1", None),
    (f"00_{TID}_{PID}_01", None),
    ("", None), (None, None), ("garbage" * 10, None),
])
def test_parse_traceparent(value, expected):
    assert parse_traceparent(value) == expected


def test_continue_a_clients_trace():
    ctx = continue_or_start(TP, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert (ctx.trace_id, ctx.parent_id, ctx.flags, ctx.started) == (TID, PID, 1, False)
    assert len(ctx.span_id) == 16 and ctx.span_id != PID and int(ctx.span_id, 16)
    assert ctx.traceparent() == f"00-{TID}-{ctx.span_id}-01"
    assert ctx.upstream_headers() == [(b"traceparent", ctx.traceparent().encode()),
                                      (b"tracestate", b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")]
    ex = ctx.exemplar()
    assert ex == {"trace_id": TID, "span_id": ctx.span_id} and sum(len(k) + len(v) for k, v in ex.items()) <= 128
    # an unsampled client trace stays unsampled; a later version is answered as version 00
    later = continue_or_start(f"cc-{TID}-{PID}-00-x")
    assert later.traceparent().startswith(f"00-{TID}-") and later.traceparent().endswith("-00") and not later.sampled


def test_start_a_trace_when_the_client_sent_none_or_garbage():
    seen = set()
    for tp in (None, "", "00-nope", f"00-{'0' * 32}-{PID}-01"):
        ctx = continue_or_start(tp, "vendor=dropped")  # tracestate without a valid traceparent is dropped
        assert ctx.started and ctx.parent_id is None and ctx.tracestate is None and ctx.sampled
        assert len(ctx.trace_id) == 32 and parse_traceparent(ctx.traceparent()) == (ctx.trace_id, ctx.span_id, 1)
        seen.add(ctx.trace_id)
    assert len(seen) == 4
    assert not any(continue_or_start(None, sample_ratio=0.0).sampled for _ in range(50))
    ratio = sum(continue_or_start(None, sample_ratio=0.5).sampled for _ in range(2000)) / 2000
    assert 0.4 < ratio < 0.6
    # a client's sampled trace is continued whatever our ratio for the ones we start
    assert continue_or_start(TP, sample_ratio=0.0).sampled


def test_bad_tracestate_is_dropped_not_forwarded():
    assert continue_or_start(TP, "k=" + "v" * 600).tracestate is None
    assert continue_or_start(TP, "k=v\x00").tracestate is None
    assert continue_or_start(TP, "k=é").tracestate is None
    blank = continue_or_start(TP, "   ")
    assert blank.tracestate is None and [k for k, _ in blank.upstream_headers()] == [b"traceparent"]


def test_from_request_headers():
    h = [(b"TraceParent", TP.encode()), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")]
    ctx = from_headers(h)
    assert ctx.trace_id == TID and ctx.tracestate == "a=1,b=2"
    # two traceparent headers make it invalid: a new trace, whose tracestate is dropped
    h = [(b"traceparent", TP.encode()), (b"TRACEPARENT", TP.encode()), (b"tracestate", b"a=1")]
    ctx = from_headers(h)
    assert ctx.started and ctx.trace_id != TID and ctx.tracestate is None
    assert from_headers([]).started
    assert from_headers([(b"X-Other", b"1")]).started


def test_config_loads_with_key_path_errors():
    loader = config._Loader({"TOKEN": "s3cret"})
    cfg = loader.build("tracing", TracingConfig, {"otlp_endpoint": "http://collector:4318/v1/traces",
                                                  "otlp_headers": {"Authorization": "Bearer ${TOKEN}"},
                                                  "otlp_timeout": "2s", "sample_ratio": 0.25})
    assert not loader.problems
    assert cfg.otlp_headers == {"Authorization": "Bearer s3cret"} and cfg.otlp_timeout == 2.0
    loader = config._Loader({})
    bad = loader.build("tracing", TracingConfig, {"otlp_endpoint": "collector:4318", "sample_ratio": 2,
                                                  "max_queue": 0, "sample": 1})
    problems = list(loader.problems)
    bad.validate("tracing", lambda p, m: problems.append(f"{p}: {m}"))
    assert sorted(p.split(":")[0] for p in problems) == ["tracing.max_queue", "tracing.otlp_endpoint", "tracing.sample",
                                                         "tracing.sample_ratio"]


def test_without_the_otel_extra_the_proxy_runs_unchanged():
    # a real interpreter in which the OpenTelemetry packages cannot be imported
    code = """
import sys
for name in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.sdk.trace", "opentelemetry.exporter",
             "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
    sys.modules[name] = None
import json, proxy.app, proxy.tracing as t
ctx = t.continue_or_start("00-%s-%s-01" % ("ab" * 16, "cd" * 8))
assert ctx.trace_id == "ab" * 16 and not t.otel_available()
problems = []
t.TracingConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces").validate("tracing", lambda p, m: problems.append(p + ": " + m))
t.TracingConfig().validate("tracing", lambda p, m: problems.append(p + ": " + m))
print(json.dumps(problems))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["tracing.otlp_endpoint: needs the optional OpenTelemetry packages: "
                                      "pip install 'langgraph-sidecar[otel]' (or leave it null)"]


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (protobuf, as the SDK's HTTP exporter sends)."""

    def __init__(self):
        self.requests = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                                ExportTraceServiceResponse)
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["Content-Type"] == "application/x-protobuf"
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(body)
        self.requests.append((dict(request.headers), msg))
        self.got.set()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def spans(self):
        out = []
        for _, req in self.requests:
            for rs in req.resource_spans:
                res = {a.key: _val(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        out.append((res, sp, {a.key: _val(a.value) for a in sp.attributes}))
        return out


def _val(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_val(x) for x in v.array_value.values]
    return getattr(v, kind)


@pytest.fixture
async def collector():
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    c.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/traces"
    try:
        yield c
    finally:
        await runner.cleanup()


@pytest.mark.skipif(not otel_available(), reason="the otel extra (opentelemetry-sdk, "
                                                 "opentelemetry-exporter-otlp-proto-http) is not installed")
async def test_otlp_spans_reach_a_collector(collector):
    from proxy.tracing import SpanExporter
    exp = SpanExporter(TracingConfig(otlp_endpoint=collector.url, otlp_headers={"Authorization": "Bearer t"},
                                     service_name="sidecar-test"), version="9.9")
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        import time
        start = time.monotonic() - 2.5
        llm = LLMSummary(calls=2, input_tokens=30, output_tokens=6, cache_read_tokens=4, cache_write_tokens=2,
                         models=("fake-small", "fake-large"), providers=("openai",), ttft=0.4, cost=0.001)
        cont = continue_or_start(TP, "congo=t61")
        exp.export_request(cont, method="POST", route="thread_run_stream", path="/threads/t1/runs/stream",
                           status=200, outcome="ok", request_id="req-1", start=start, end=start + 2.0,
                           route_template="/threads/{thread_id}/runs/stream", llm=llm,
                           run=RunInfo(run_id="run-1", thread_id="t1", assistant_id="agent", outcome="success"))
        new = continue_or_start(None)
        exp.export_request(new, method="GET", route="ok", path="/ok", status=502, outcome="upstream_error",
                           request_id="req-2", start=start, end=start + 0.1)
        exp.export_request(continue_or_start(f"00-{TID}-{PID}-00"), method="GET", route="ok", path="/ok",
                           status=200, outcome="ok", request_id="req-3", start=start, end=start + 0.1)
        assert loop.time() - t0 < 0.5  # queued, not sent on the loop
        assert await asyncio.to_thread(exp.force_flush, 10)
        await asyncio.wait_for(collector.got.wait(), 10)
    finally:
        await exp.aclose()
    headers, _ = collector.requests[0]
    assert headers["Authorization"] == "Bearer t"
    spans = {sp.name: (res, sp, attrs) for res, sp, attrs in collector.spans()}
    assert set(spans) == {"POST /threads/{thread_id}/runs/stream", "invoke_agent agent", "GET ok"}  # req-3 unsampled
    res, req, a = spans["POST /threads/{thread_id}/runs/stream"]
    assert res["service.name"] == "sidecar-test" and res["service.version"] == "9.9"
    # the exported span is the one the upstream was told about: its id went out in traceparent
    assert (req.trace_id.hex(), req.span_id.hex(), req.parent_span_id.hex()) == (TID, cont.span_id, PID)
    assert req.trace_state == "congo=t61" and req.kind == 2  # SPAN_KIND_SERVER
    assert abs((req.end_time_unix_nano - req.start_time_unix_nano) / 1e9 - 2.0) < 0.01
    assert a["http.request.method"] == "POST" and a["http.response.status_code"] == 200
    assert a["http.route"] == "/threads/{thread_id}/runs/stream" and a["sidecar.request_id"] == "req-1"
    assert a["gen_ai.usage.input_tokens"] == 30 and a["gen_ai.usage.output_tokens"] == 6
    _, run, r = spans["invoke_agent agent"]
    assert run.trace_id.hex() == TID and run.parent_span_id == req.span_id
    assert r["gen_ai.operation.name"] == "invoke_agent" and r["gen_ai.conversation.id"] == "t1"
    assert r["gen_ai.usage.cache_read.input_tokens"] == 4 and r["gen_ai.usage.cache_creation.input_tokens"] == 2
    assert r["gen_ai.response.time_to_first_chunk"] == 0.4 and r["gen_ai.provider.name"] == "openai"
    assert r["sidecar.llm.models"] == ["fake-small", "fake-large"] and "gen_ai.response.model" not in r
    assert r["langgraph.run.id"] == "run-1" and run.status.code == 0  # unset: the run succeeded
    _, root, g = spans["GET ok"]
    assert (root.trace_id.hex(), root.span_id.hex(), root.parent_span_id) == (new.trace_id, new.span_id, b"")
    assert root.status.code == 2 and g["error.type"] == "upstream_error"  # STATUS_CODE_ERROR
    assert not any(k.startswith("gen_ai.") for k in g)
