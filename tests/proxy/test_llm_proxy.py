"""LLM telemetry and trace context through the real proxy (a LangGraph-shaped fault upstream):
tokens, cost and time to first token in /metrics, the W3C traceparent continued or started and
seen by the upstream, the trace id in the access log, OTLP spans at an in-test collector."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from proxy.tracing import otel_available
from proxy_harness import metric, scrape, wait_metric
from test_tracing_unit import collector  # noqa: F401 - the OTLP receiver fixture

PRICED = {"llm": {"prices": {"fake-large": {"input": 3.0, "output": 15.0}}}}
RUN = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "q"}]},
       "stream_mode": ["messages-tuple", "values"]}


async def test_tokens_cost_and_ttft_of_a_streamed_and_a_waited_run(upstream, make_proxy, session):
    p = make_proxy(upstream.url, PRICED)
    async with session.post(p.url + "/runs/stream", json=RUN) as r:
        body = await r.read()
        assert r.status == 200 and body.count(b"event: messages") == 3
    async with session.post(p.url + "/runs/wait", json={**RUN, "stream_mode": None}) as r:
        assert (await r.json())["messages"][-1]["content"] == "the answer"
    s = await wait_metric(p.admin, "sidecar_llm_tokens_total", 120, type="input", route="run_wait")
    for route in ("run_stream", "run_wait"):
        assert metric(s, "sidecar_llm_tokens_total", type="input", model="fake-large", route=route) == 120
        assert metric(s, "sidecar_llm_tokens_total", type="output", model="fake-large", route=route) == 3
        assert metric(s, "sidecar_llm_calls_total", model="fake-large", route=route) == 1
        assert metric(s, "sidecar_llm_cost_total", model="fake-large", route=route) == pytest.approx((120 * 3 + 3 * 15) / 1e6)
    # the values event repeats the stream's message: still one call
    assert metric(s, "sidecar_llm_time_to_first_token_seconds_count", route="run_stream") == 1
    assert metric(s, "sidecar_llm_time_per_output_token_seconds_count", route="run_stream") == 1
    assert metric(s, "sidecar_llm_events_unparsed_total") == 0
    await asyncio.sleep(1.2)
    lines = [ln for ln in p.access_lines() if ln["route"] in ("run_stream", "run_wait")]
    assert len(lines) == 2 and all(ln["input_tokens"] == 120 and ln["output_tokens"] == 3 for ln in lines)
    assert "ttft" in [ln for ln in lines if ln["route"] == "run_stream"][0]


async def test_a_malformed_or_huge_event_is_forwarded_untouched_and_counted(upstream, make_proxy, session):
    p = make_proxy(upstream.url, PRICED)
    async with session.post(p.url + "/runs/stream?bad=3000000", json=RUN) as direct_shape:
        body = await direct_shape.read()
    assert direct_shape.status == 200
    assert b'data: [{"type": "AIMessageChunk", "usage_metadata": {\r\n\r\n' in body  # byte for byte
    assert body.count(b"p" * 1000) >= 2999 and body.endswith(b"\r\n\r\n")
    s = await wait_metric(p.admin, "sidecar_llm_events_unparsed_total", 1, route="run_stream")
    assert metric(s, "sidecar_llm_events_unparsed_total", route="run_stream") >= 1
    # the good call of the same stream is still counted
    assert metric(s, "sidecar_llm_tokens_total", type="input", route="run_stream") == 120


async def test_traceparent_is_continued_and_sent_upstream(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    tid, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with session.get(p.url + "/t1", headers={"traceparent": f"00-{tid}-{parent}-01",
                                                   "tracestate": "vendor=1"}) as r:
        assert r.status == 200
    seen = [(k.decode().lower(), v.decode()) for k, v in upstream.seen[-1]["raw_headers"]]
    tps = [v for k, v in seen if k == "traceparent"]
    assert len(tps) == 1
    version, t, span, flags = tps[0].split("-")
    assert (version, t, flags) == ("00", tid, "01") and span != parent and len(span) == 16
    assert [v for k, v in seen if k == "tracestate"] == ["vendor=1"]
    async with session.get(p.url + "/t2") as r:  # none sent: one is started
        assert r.status == 200
    started = [v.decode() for k, v in upstream.seen[-1]["raw_headers"] if k.lower() == b"traceparent"]
    assert len(started) == 1 and started[0].split("-")[1] != tid
    await asyncio.sleep(1.2)
    lines = {ln["request_id"]: ln for ln in p.access_lines()}
    got = sorted(ln["trace_id"] for ln in lines.values() if "trace_id" in ln)
    assert sorted([tid, started[0].split("-")[1]]) == got


@pytest.mark.skipif(not otel_available(), reason="the otel extra is not installed")
async def test_spans_reach_an_otlp_collector(upstream, make_proxy, session, collector):  # noqa: F811
    p = make_proxy(upstream.url, {**PRICED, "tracing": {"otlp_endpoint": collector.url}},
                   env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    async with session.post(p.url + "/runs/stream", json=RUN,
                            headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) as r:
        await r.read()
    await asyncio.wait_for(collector.got.wait(), 15)
    spans = {sp.name: (sp, attrs) for _, sp, attrs in collector.spans()}
    req = [v for k, v in spans.items() if k.startswith("POST")]
    assert req, spans.keys()
    sp, attrs = req[0]
    assert sp.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert attrs["sidecar.route"] == "run_stream" and attrs["gen_ai.usage.input_tokens"] == 120
