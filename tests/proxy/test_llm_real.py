"""The LLM usage inspector on the real wire of `langgraph dev` (offline), before any proxy.

`llm_graph/graph.py` calls two fake models per run with usage that is a known function of what
they saw. One thread takes a turn per stream mode (messages-tuple + values + updates together,
values, updates, messages, runs/wait, messages-tuple); the bytes an aiohttp client receives go
through one process-wide LLMTelemetry chunk by chunk, as the proxy will feed them. Every LLM call
must be counted exactly once: per turn, and in total against the thread's own final state.
"""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from agent_procs import PYTHON, Proc, _spawn, free_port, wait_http
from proxy.llm import LLMConfig, LLMMetrics, LLMTelemetry, ModelPrice
from proxy.sse import SSEScanner

pytestmark = [pytest.mark.slow, pytest.mark.langgraph]

GRAPH_DIR = Path(__file__).resolve().parent / "llm_graph"
PRICES = {"fake-large": ModelPrice(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)}


@pytest.fixture(scope="module")
def lgdev(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("llm_graph")
    # the config lives in the scratch dir, so the server's .langgraph_api lands there, not in the tree
    (workdir / "langgraph.json").write_text(json.dumps(
        {"dependencies": [str(GRAPH_DIR)], "graphs": {"llm": f"{GRAPH_DIR}/graph.py:graph"}}))
    port = free_port()
    env = {"LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGGRAPH_NO_VERSION_CHECK": "true",
           "LLM_GRAPH_TOKEN_DELAY": "0.01"}
    args = [str(Path(PYTHON).parent / "langgraph"), "dev", "--no-browser", "--no-reload",
            "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / "langgraph.log"
    proc = Proc(_spawn(args, log, cwd=workdir, env=env), f"http://127.0.0.1:{port}", log)
    try:
        wait_http(proc, "/ok", 90)
        if f"Port {port} is already in use" in proc.log_text():
            raise RuntimeError(f"port {port} was taken; langgraph dev moved elsewhere")
        yield proc
    finally:
        proc.stop()


def expected_turn(seen_before: int) -> dict:
    """Usage of one run on a thread holding ``seen_before`` messages (graph.usage_for's formula)."""
    n = seen_before + 1  # + the new human message
    return {"calls": 2, "input": 10 * n + 10 * (n + 1), "output": 2 + 4, "cache_read": 4, "cache_write": 2,
            "large": (10 * (n + 1), 4)}


def sample(reg, name, **labels):
    return reg.get_sample_value(name, labels) or 0


async def test_tokens_are_counted_once_per_llm_call_across_modes_and_turns(lgdev):
    reg = CollectorRegistry()
    tel = LLMTelemetry(LLMConfig(prices=PRICES), LLMMetrics(reg))
    turns = [("stream", ["messages-tuple", "values", "updates"]), ("stream", ["values"]), ("stream", ["updates"]),
             ("stream", ["messages"]), ("wait", None), ("stream", ["messages-tuple"])]
    summaries = []
    async with aiohttp.ClientSession() as s:
        async with s.post(lgdev.url + "/threads", json={}) as r:
            tid = (await r.json())["thread_id"]
        for i, (kind, modes) in enumerate(turns):
            route = f"turn{i}"
            body = {"assistant_id": "llm", "input": {"messages": [{"role": "user", "content": f"turn {i}"}]}}
            if modes:
                body["stream_mode"] = modes
            raw = json.dumps(body).encode()
            usage = tel.exchange(route, start=None, request_body=raw)
            path = f"/threads/{tid}/runs/" + ("stream" if kind == "stream" else "wait")
            async with s.post(lgdev.url + path, data=raw, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 200
                scanner = SSEScanner(usage) if kind == "stream" else None
                async for chunk in r.content.iter_any():
                    if scanner is not None:
                        scanner.feed(chunk)
                    else:
                        usage.feed_body(chunk)
            if scanner is None:
                usage.end_body()
            else:
                assert scanner.events > 1 and not scanner.mid_event and not scanner.error_seen
            summaries.append((modes, usage.finish()))
        async with s.get(lgdev.url + f"/threads/{tid}/state") as r:
            state = (await r.json())["values"]["messages"]

    for i, (modes, sm) in enumerate(summaries):
        exp = expected_turn(3 * i)
        got = {"calls": sm.calls, "input": sm.input_tokens, "output": sm.output_tokens,
               "cache_read": sm.cache_read_tokens, "cache_write": sm.cache_write_tokens}
        assert got == {k: v for k, v in exp.items() if k != "large"}, (i, modes)
        assert sm.unparsed == 0 and sm.models == ("fake-small", "fake-large"), (i, modes)
        route = f"turn{i}"
        assert sample(reg, "sidecar_llm_tokens_total", type="input", model="fake-large", route=route) == exp["large"][0]
        assert sample(reg, "sidecar_llm_tokens_total", type="output", model="fake-large", route=route) == exp["large"][1]
        assert sample(reg, "sidecar_llm_calls_total", model="fake-small", route=route) == 1
        large_in, large_out = exp["large"]
        cost = ((large_in - 6) * 3.0 + 4 * 0.3 + 2 * 3.75 + large_out * 15.0) / 1e6
        assert sample(reg, "sidecar_llm_cost_total", model="fake-large", route=route) == pytest.approx(cost)
        streamed_tokens = modes is not None and any(m.startswith("messages") for m in modes)
        if streamed_tokens:  # TTFT needs token events; it is observed once per exchange
            assert 0 < sm.ttft < 30 and sm.time_per_output_token > 0
            assert sample(reg, "sidecar_llm_time_to_first_token_seconds_count", route=route) == 1
        else:
            assert sm.ttft is None
    # the thread's own record: every AI message it holds was counted, each exactly once
    ai = [m for m in state if m["type"] == "ai"]
    assert len(ai) == 2 * len(turns)
    for typ, key in (("input", "input_tokens"), ("output", "output_tokens")):
        counted = sum(sample(reg, "sidecar_llm_tokens_total", type=typ, model=mdl, route=f"turn{i}")
                      for i in range(len(turns)) for mdl in ("fake-small", "fake-large"))
        assert counted == sum(m["usage_metadata"][key] for m in ai)
    assert sum(sample(reg, "sidecar_llm_calls_total", model=mdl, route=f"turn{i}")
               for i in range(len(turns)) for mdl in ("fake-small", "fake-large")) == len(ai)
    assert tel._budget_used == 0


async def test_through_the_sidecar_each_llm_call_is_counted_once(lgdev, make_proxy):
    """The same turns through the real proxy: /metrics must hold exactly what the thread holds."""
    p = make_proxy(lgdev.url, {"llm": {"prices": {"fake-large": {"input": 3.0, "output": 15.0,
                                                                 "cache_read": 0.3, "cache_write": 3.75}}}})
    turns = [["messages-tuple", "values", "updates"], ["values"], None, ["updates"], ["messages-tuple"]]
    async with aiohttp.ClientSession() as s:
        async with s.post(p.url + "/threads", json={}) as r:
            tid = (await r.json())["thread_id"]
        for i, modes in enumerate(turns):
            body = {"assistant_id": "llm", "input": {"messages": [{"role": "user", "content": f"turn {i}"}]}}
            if modes:
                body["stream_mode"] = modes
            path = f"/threads/{tid}/runs/" + ("stream" if modes else "wait")
            async with s.post(p.url + path, json=body) as r:
                assert r.status == 200
                await r.read()
        async with s.get(p.url + f"/threads/{tid}/state") as r:
            state = (await r.json())["values"]["messages"]
    from proxy_harness import metric, wait_metric
    ai = [m for m in state if m["type"] == "ai"]
    want_in = sum(m["usage_metadata"]["input_tokens"] for m in ai)
    samples = await wait_metric(p.admin, "sidecar_llm_tokens_total", want_in, type="input")
    assert metric(samples, "sidecar_llm_tokens_total", type="input") == want_in
    assert metric(samples, "sidecar_llm_tokens_total", type="output") == sum(m["usage_metadata"]["output_tokens"] for m in ai)
    assert metric(samples, "sidecar_llm_calls_total") == len(ai) == 2 * len(turns)
    assert metric(samples, "sidecar_llm_calls_total", route="thread_run_wait") == 2
    assert metric(samples, "sidecar_llm_cost_total", model="fake-large") > 0
    assert metric(samples, "sidecar_llm_cost_total", model="fake-small") == 0  # no price, no series value
    # messages-tuple turns give time to first token
    assert metric(samples, "sidecar_llm_time_to_first_token_seconds_count", route="thread_run_stream") == 2
    assert metric(samples, "sidecar_llm_events_unparsed_total") == 0
