"""LLM usage inspector (proxy/llm.py) and the SSE scanner's sink, on real byte streams.

The events are built exactly as langgraph-api 0.16 writes them (CRLF lines, compact JSON, the
message dicts of a messages-tuple / values / updates stream); test_llm_real.py checks the same
against the live server. Only time is faked (the inspector's clock).
"""
from __future__ import annotations

import json
import tracemalloc

import pytest
from prometheus_client import CollectorRegistry

from proxy import config
from proxy.llm import (LLMConfig, LLMMetrics, LLMTelemetry, LLMUsage, ModelPrice, SEEN_IDS, cost_of)
from proxy.sse import SSEScanner, event_data

SMALL = {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}
LARGE = {"input_tokens": 20, "output_tokens": 4, "total_tokens": 24,
         "input_token_details": {"cache_creation": 2, "cache_read": 4}}
META = {"graph_id": "llm", "langgraph_node": "plan", "ls_provider": "fakeprovider", "ls_model_name": "fake-small"}


def ev(name: str, obj, eol: bytes = b"\r\n") -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return b"event: " + name.encode() + eol + b"data: " + data + eol + eol


def human(mid, content):
    return {"content": content, "additional_kwargs": {}, "response_metadata": {}, "type": "human", "name": None, "id": mid}


def ai(mid, content, usage=None, model=None):
    return {"content": content, "additional_kwargs": {}, "response_metadata": {"model_name": model} if model else {},
            "type": "ai", "name": None, "id": mid, "tool_calls": [], "invalid_tool_calls": [], "usage_metadata": usage}


def chunk(mid, content, usage=None, model=None, last=False, tool=False):
    m = ai(mid, content, usage, model)
    m.update(type="AIMessageChunk", tool_call_chunks=[{"name": "calc", "args": "{}", "id": "c1", "index": 0}] if tool else [],
             chunk_position="last" if last else None)
    return m


def run_stream(modes=("messages-tuple", "values", "updates"), history=(), new_input=None, eol=b"\r\n") -> bytes:
    """The wire of one run of the two-call graph (plan: fake-small, answer: fake-large)."""
    hist = list(history)
    inp = new_input or human("h-new", "hi")
    state = hist + [inp]
    out = [ev("metadata", {"run_id": "r1", "attempt": 1}, eol)]
    if "values" in modes:
        out.append(ev("values", {"messages": state}, eol))
    for node, mid, words, usage, model in (("plan", "lc_run--p", ["plan", " ok"], SMALL, "fake-small"),
                                          ("answer", "lc_run--a", ["the", " answer", " is", " 2"], LARGE, "fake-large")):
        if "messages-tuple" in modes:
            for i, w in enumerate(words):
                last = i == len(words) - 1
                out.append(ev("messages", [chunk(mid, w, usage if last else None, model if last else None, last),
                                           dict(META, ls_model_name=model)], eol))
        whole = ai(mid, "".join(words), usage, model)
        state = state + [whole]
        if "updates" in modes:
            out.append(ev("updates", {node: {"messages": [whole]}}, eol))
        if "values" in modes:
            out.append(ev("values", {"messages": state}, eol))
        out.append(b": heartbeat" + eol + eol)
    return b"".join(out)


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def reg():
    return CollectorRegistry()


def telemetry(reg, **cfg) -> LLMTelemetry:
    return LLMTelemetry(LLMConfig(**cfg), LLMMetrics(reg))


def tokens(reg, typ, model, route="r"):
    return reg.get_sample_value("sidecar_llm_tokens_total", {"type": typ, "model": model, "route": route}) or 0


def feed(usage, raw: bytes, sizes=None) -> SSEScanner:
    sc = SSEScanner(usage)
    if sizes is None:
        sc.feed(raw)
    else:
        pos = 0
        for n in sizes:
            sc.feed(raw[pos:pos + n])
            pos += n
        sc.feed(raw[pos:])
    return sc


def totals(s):
    return (s.calls, s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens)


EXPECTED = (2, 30, 6, 4, 2)


def test_every_split_point_counts_the_same(reg):
    raw = run_stream()
    whole = LLMUsage()
    feed(whole, raw)
    assert totals(whole.finish()) == EXPECTED
    for i in range(1, len(raw)):
        u = LLMUsage()
        sc = SSEScanner(u)
        sc.feed(raw[:i])
        sc.feed(raw[i:])
        assert totals(u.finish()) == EXPECTED, i
        assert sc.events == 12 and not sc.mid_event
    one = LLMUsage()
    sc = SSEScanner(one)
    for b in range(len(raw)):
        sc.feed(raw[b:b + 1])
    assert totals(one.finish()) == EXPECTED


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"])
@pytest.mark.parametrize("modes", [("messages-tuple",), ("values",), ("updates",), ("messages-tuple", "values"),
                                   ("values", "updates"), ("messages-tuple", "values", "updates")])
def test_each_call_is_counted_once_whatever_the_modes(reg, modes, eol):
    tel = telemetry(reg)
    u = tel.exchange("r", 0.0)
    feed(u, run_stream(modes, eol=eol), sizes=[5, 1, 700, 3] * 20)
    assert totals(u.finish()) == EXPECTED
    assert u.finish().models == ("fake-small", "fake-large")
    assert (tokens(reg, "input", "fake-small"), tokens(reg, "output", "fake-small")) == (10, 2)
    assert [tokens(reg, t, "fake-large") for t in ("input", "output", "cache_read", "cache_write")] == [20, 4, 4, 2]
    assert reg.get_sample_value("sidecar_llm_calls_total", {"model": "fake-large", "route": "r"}) == 1
    assert reg.get_sample_value("sidecar_llm_events_unparsed_total", {"route": "r"}) is None


def test_events_fed_without_a_scanner(reg):
    tel = telemetry(reg, max_event_bytes=4096)
    u = tel.exchange("r", 0.0)
    for block in run_stream().split(b"\r\n\r\n")[:-1]:
        head, _, data = block.partition(b"\r\ndata: ")
        if data:
            u.feed_event(head.removeprefix(b"event: ").decode(), data)
    u.feed_event("values", b"x" * 5000)   # over the bound
    u.feed_event("updates", None)         # the caller could not keep it
    s = u.finish()
    assert totals(s) == EXPECTED and s.unparsed == 2 and tel._budget_used == 0


def test_json_with_default_spacing_is_read_too(reg):
    compact = run_stream(("values", "messages-tuple"))
    blocks = []
    for block in compact.split(b"\r\n\r\n")[:-1]:
        head, _, data = block.partition(b"\r\ndata: ")
        blocks.append(head + b"\r\ndata: " + json.dumps(json.loads(data)).encode() if data else block)
    spaced = b"\r\n\r\n".join(blocks) + b"\r\n\r\n"
    assert b'"usage_metadata": {' in spaced and b'"usage_metadata":{' not in spaced
    u = LLMUsage()
    feed(u, spaced)
    assert totals(u.finish()) == EXPECTED


def test_values_do_not_count_the_threads_earlier_turns(reg):
    history = [human("h0", "first"), ai("lc_run--old", "earlier answer", {"input_tokens": 500, "output_tokens": 50}, "fake-large")]
    for modes in (("values",), ("values", "updates"), ("messages-tuple", "values")):
        tel = telemetry(reg := CollectorRegistry())
        u = tel.exchange("r", 0.0)
        feed(u, run_stream(modes, history=history))
        assert totals(u.finish()) == EXPECTED, modes
        assert tokens(reg, "input", "fake-large") == 20


def test_first_snapshot_lost_falls_back_to_the_input_anchor(reg):
    history = [human("h0", "hi"), ai("lc_run--old", "x", {"input_tokens": 500, "output_tokens": 50}, "m")]
    raw = run_stream(("values",), history=history, new_input=human("h1", "hi"))
    cut = len(ev("metadata", {"run_id": "r1", "attempt": 1})) + len(ev("values", {"messages": history + [human("h1", "hi")]}))
    body = json.dumps({"assistant_id": "llm", "input": {"messages": [{"role": "user", "content": "hi"}]}}).encode()
    for request_body, expected in ((body, (2, 30, 6)), (None, (0, 0, 0))):
        tel = telemetry(CollectorRegistry(), max_event_bytes=4096, max_buffered_bytes=4096)
        holder = tel.exchange("r", 0.0)
        SSEScanner(holder).feed(b"event: values\r\ndata: {")  # another stream holds the whole budget...
        u = tel.exchange("r", 0.0, request_body=request_body)
        sc = SSEScanner(u)
        sc.feed(raw[:cut])       # ...while this run's first snapshot passes: it cannot be read
        holder.finish()
        sc.feed(raw[cut:])
        s = u.finish()
        assert sc.events == 4
        # the anchor is the *last* human "hi": the earlier turn's identical "hi" is history;
        # without a request body nothing can be attributed: counted as unparsed, never as history
        assert (s.calls, s.input_tokens, s.output_tokens) == expected
        assert s.unparsed == (1 if request_body else 2)


def test_wait_answers_count_only_this_runs_messages(reg):
    tel = telemetry(reg)
    history = [human("h0", "first"), ai("lc_run--old", "x", {"input_tokens": 500, "output_tokens": 50}, "fake-large")]
    final = {"messages": history + [human("h1", "again"), ai("lc_run--p", "plan ok", SMALL, "fake-small"),
                                     ai("lc_run--a", "the answer is 4", LARGE, "fake-large")]}
    answer = b"\n\n" + json.dumps(final).encode()  # the server pads with newlines while the run works
    for inp in ({"messages": [{"role": "user", "content": "again"}]},
                {"messages": [{"type": "human", "content": "again", "id": "h1"}]},
                {"messages": [["user", "again"]]},
                {"messages": "again"}):
        req = json.dumps({"assistant_id": "llm", "input": inp}).encode()
        u = tel.exchange("w", 0.0, request_body=req)
        for i in range(0, len(answer), 1000):
            u.feed_body(answer[i:i + 1000])
        u.end_body()
        assert totals(u.finish()) == (2, 30, 6, 4, 2), inp
    # the same calls seen four times are counted once per process
    assert tokens(reg, "input", "fake-large", "w") == 20 and tokens(reg, "input", "fake-small", "w") == 10
    for req in (json.dumps({"assistant_id": "llm", "input": None}).encode(),
                json.dumps({"assistant_id": "llm", "command": {"resume": "yes"}}).encode(), None, b"{not json"):
        u = LLMUsage(request_body=req)
        u.feed_wait_body(answer)
        s = u.finish()
        assert (s.calls, s.unparsed) == (0, 1), req
    u = LLMUsage(request_body=req)
    u.feed_wait_body(b'{"__error__":{"error":"ValueError","message":"boom"}}')
    assert totals(u.finish()) == (0, 0, 0, 0, 0) and u.finish().unparsed == 0


def test_wait_answer_over_the_bound_is_unparsed_and_releases_the_budget(reg):
    tel = telemetry(reg, max_event_bytes=1024, max_buffered_bytes=4096)
    u = tel.exchange("w", 0.0, request_body=b'{"input":{"messages":"hi"}}')
    for _ in range(10):
        u.feed_body(b"x" * 300)
    assert tel._budget_used == 1024
    u.end_body()
    assert u.finish().unparsed == 1 and tel._budget_used == 0
    assert reg.get_sample_value("sidecar_llm_events_unparsed_total", {"route": "w"}) == 1


def test_messages_mode_partials_are_whole_messages(reg):
    mid = "lc_run--p"
    raw = b"".join([
        ev("metadata", {"run_id": "r"}),
        ev("messages/metadata", {mid: {"metadata": {"ls_model_name": "fake-small"}}}),
        ev("messages/partial", [ai(mid, "plan")]),
        ev("messages/partial", [ai(mid, "plan ok", SMALL)]),   # the merged usage...
        ev("messages/complete", [ai(mid, "plan ok", SMALL)]),  # ...repeated: still one call
    ])
    tel = telemetry(reg)
    u = tel.exchange("r", 0.0)
    feed(u, raw)
    assert totals(u.finish()) == (1, 10, 2, 0, 0)
    # the model came from messages/metadata (the partials have no response_metadata.model_name)
    assert tokens(reg, "input", "fake-small") == 10


def test_usage_split_over_chunks_is_summed_and_not_doubled_by_the_whole_message(reg):
    mid = "lc_run--anthropic"
    first = {"input_tokens": 100, "output_tokens": 0, "total_tokens": 100,
             "input_token_details": {"cache_read": 60}}
    last = {"input_tokens": 0, "output_tokens": 7, "total_tokens": 7}
    merged = {"input_tokens": 100, "output_tokens": 7, "total_tokens": 107, "input_token_details": {"cache_read": 60}}
    raw = b"".join([
        ev("messages", [chunk(mid, "", first, "claude-x"), META]),
        ev("messages", [chunk(mid, "hello"), META]),
        ev("messages", [chunk(mid, " world", last, None, last=True), META]),
        ev("updates", {"model": {"messages": [ai(mid, "hello world", merged, "claude-x")]}}),
    ])
    tel = telemetry(reg)
    u = tel.exchange("r", 0.0)
    feed(u, raw)
    assert totals(u.finish()) == (1, 100, 7, 60, 0)
    assert tokens(reg, "input", "claude-x") == 100 and tokens(reg, "output", "claude-x") == 7
    assert tokens(reg, "cache_read", "claude-x") == 60


def test_time_to_first_token_and_per_output_token(reg):
    clock = Clock(100.0)
    tel = LLMTelemetry(LLMConfig(), LLMMetrics(reg), clock=clock)
    u = tel.exchange("r", start=99.0)
    sc = SSEScanner(u)
    sc.feed(ev("metadata", {"run_id": "r"}))
    clock.t = 100.5
    sc.feed(ev("messages", [chunk("m", ""), META]))  # an empty chunk is not a token
    sc.feed(ev("values", {"messages": [human("h", "hi")]}))
    assert u.ttft is None
    clock.t = 101.0
    sc.feed(ev("messages", [chunk("m", "", tool=True), META]))  # a tool call is model output
    clock.t = 102.0
    sc.feed(ev("messages", [chunk("m", "x", {"input_tokens": 5, "output_tokens": 4}, "gpt", last=True), META]))
    clock.t = 103.0
    s = u.finish()
    assert s.ttft == 2.0 and s.time_per_output_token == (103.0 - 101.0) / 4
    assert reg.get_sample_value("sidecar_llm_time_to_first_token_seconds_sum", {"route": "r"}) == 2.0
    assert reg.get_sample_value("sidecar_llm_time_per_output_token_seconds_sum", {"route": "r"}) == 0.5
    u.finish()  # idempotent: observed once
    assert reg.get_sample_value("sidecar_llm_time_per_output_token_seconds_count", {"route": "r"}) == 1


def test_cost_from_the_price_table_only_for_priced_models(reg):
    prices = {"fake-large": ModelPrice(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
              "fake-small": ModelPrice(input=0.15, output=0.6)}
    tel = telemetry(reg, prices=prices)
    u = tel.exchange("r", 0.0)
    feed(u, run_stream())
    s = u.finish()
    large = (14 * 3.0 + 4 * 0.3 + 2 * 3.75 + 4 * 15.0) / 1e6
    small = (10 * 0.15 + 2 * 0.6) / 1e6
    assert reg.get_sample_value("sidecar_llm_cost_total", {"model": "fake-large", "route": "r"}) == pytest.approx(large)
    assert reg.get_sample_value("sidecar_llm_cost_total", {"model": "fake-small", "route": "r"}) == pytest.approx(small)
    assert s.cost == pytest.approx(large + small)
    # no price, no series
    reg2 = CollectorRegistry()
    tel2 = telemetry(reg2, prices={"fake-large": prices["fake-large"]})
    feed(tel2.exchange("r", 0.0), run_stream())
    assert reg2.get_sample_value("sidecar_llm_cost_total", {"model": "fake-small", "route": "r"}) is None
    assert cost_of(ModelPrice(1.0, 2.0), (1_000_000, 1_000_000, 0, 0)) == 3.0


def test_model_labels_stay_bounded(reg):
    tel = telemetry(reg, max_models=1)
    assert [tel.model_label(n) for n in ("a", "b", "a", None, "other", "x" * 100)] == ["a", "other", "a", "unknown", "other", "other"]
    tel = telemetry(CollectorRegistry(), models=("gpt-4o",), prices={"claude": ModelPrice(1, 2)})
    assert [tel.model_label(n) for n in ("gpt-4o", "claude", "llama")] == ["gpt-4o", "claude", "other"]
    tel = telemetry(CollectorRegistry(), max_models=2)
    for i in range(10_000):  # a stream full of invented names costs a bounded cache
        tel.model_label(f"m{i}")
    assert len(tel._labels) <= 4096 and tel._free == 2


def test_a_call_seen_by_two_exchanges_is_counted_once(reg):
    tel = telemetry(reg)
    raw = run_stream(("messages-tuple",))
    a, b = tel.exchange("run_stream", 0.0), tel.exchange("thread_stream", 0.0)
    feed(a, raw)
    feed(b, raw)  # the thread's join stream saw the same calls
    assert totals(a.finish()) == totals(b.finish()) == EXPECTED
    assert tokens(reg, "input", "fake-large", "run_stream") == 20
    assert tokens(reg, "input", "fake-large", "thread_stream") == 0
    for i in range(SEEN_IDS + 10):  # the memory of counted ids is bounded
        tel.account(f"id{i}", "m", (1, 1, 0, 0), "r")
    assert len(tel._counted) == SEEN_IDS


def test_bad_json_missing_fields_and_odd_shapes_never_break_the_stream(reg):
    tel = telemetry(reg)
    u = tel.exchange("r", 0.0)
    good = run_stream(("messages-tuple",))
    bad = b"".join([
        b"event: values\r\ndata: \xff\xfe\r\n\r\n",  # the first snapshot: no usage marker, so never parsed
        b"event: values\r\ndata: {\"messages\":5,\"usage_metadata\":{}}\r\n\r\n",  # a state without messages
        b"event: values\r\ndata: [1, 2]\r\ndata: \"usage_metadata\":{\"usage_metadata\":{\r\n\r\n",  # parsed: bad
        b"event: messages\r\ndata: {not json\r\n\r\n",
        b"event: messages\r\ndata: [\"usage_metadata\":{]\r\n\r\n",
        ev("messages", [chunk("n1", "x", {"input_tokens": "ten"}), META]),       # a non-integer count
        ev("messages", [chunk("n2", "x", {"input_tokens": -1}), META]),
        ev("messages", [chunk("n3", "x", {"input_tokens": 1.5}), META]),         # a fractional count
        ev("updates", {"node": {"messages": [ai("n4", "x", {"output_tokens": 3}, "m")]}}),  # input missing: 0
        ev("updates", {"node": None, "__interrupt__": [{"value": "?"}]}),
        ev("updates", {"node": {"messages": ai("n5", "x", {"input_tokens": 1, "output_tokens": 1}, "m")}}),  # a single message
        ev("messages", [ai(None, "no id", {"input_tokens": 2, "output_tokens": 2}, "m"), META]),  # no id: still counted
        b"event: custom\r\ndata: {\"usage_metadata\": {\"input_tokens\": 99}}\r\n\r\n",  # not an inspected event
        b"data: no event name\r\n\r\n",
    ])
    sc = feed(u, bad + good, sizes=[3, 9, 1, 100] * 50)
    s = u.finish()
    assert sc.events == 14 + 7
    assert s.unparsed == 6
    assert (s.calls, s.input_tokens, s.output_tokens) == (2 + 3, 30 + 0 + 1 + 2, 6 + 3 + 1 + 2)
    assert reg.get_sample_value("sidecar_llm_events_unparsed_total", {"route": "r"}) == 6


def test_a_3mb_event_is_not_copied(reg):
    tel = telemetry(reg)
    u = tel.exchange("r", 0.0)
    huge = ev("values", {"messages": [human("h", "x" * (3 << 20))]})
    raw = huge + run_stream(("messages-tuple", "updates"))
    pieces = [raw[i:i + 65536] for i in range(0, len(raw), 65536)]
    sc = SSEScanner(u)
    tracemalloc.start()
    try:
        for p in pieces:
            sc.feed(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (256 << 10) + (128 << 10)  # the bound plus one chunk's slice, never the event
    s = u.finish()
    assert s.unparsed == 1 and totals(s) == EXPECTED
    assert sc.events == 1 + 9 and tel._budget_used == 0


def test_the_capture_budget_bounds_the_process(reg):
    tel = telemetry(reg, max_event_bytes=1024, max_buffered_bytes=2048)
    held = []
    for _ in range(2):  # two streams stopped in the middle of a wanted event hold the whole budget
        u = tel.exchange("r", 0.0)
        sc = SSEScanner(u)
        sc.feed(b"event: values\r\ndata: {\"mess")
        held.append(u)
    assert tel._budget_used == 2048
    third = tel.exchange("r", 0.0)
    feed(third, run_stream(("updates",)))
    assert third.finish().unparsed == 2 and third.finish().calls == 0
    for u in held:  # a stream cut mid-event gives its share back at finish
        u.finish()
    assert tel._budget_used == 0
    fourth = tel.exchange("r", 0.0)
    feed(fourth, run_stream(("updates",)))
    assert totals(fourth.finish()) == EXPECTED


def test_scanner_contract_is_unchanged_by_a_sink():
    raw = (run_stream() + b"event: error\r\ndata: {\"error\":\"x\"}\r\n\r\n: hb\r\n\r\n"
           + b"id: 1-2\r\nevent: values\r\ndata: {\"messages\":[]}\r\n\r\nevent: upd")
    for i in range(0, len(raw), 7):
        plain, sunk = SSEScanner(), SSEScanner(LLMUsage())
        for sc in (plain, sunk):
            sc.feed(raw[:i])
            sc.feed(raw[i:])
        assert (plain.events, plain.last_event, plain.error_seen, plain.mid_event) == \
               (sunk.events, sunk.last_event, sunk.error_seen, sunk.mid_event) == (14, "values", True, True)


def test_sink_gets_spec_data_of_multi_line_events():
    got = []

    class Sink:
        def wants(self, name):
            return 100 if name != "skip" else 0

        def event(self, name, parts):
            got.append((name, None if parts is None else event_data(parts)))

    sc = SSEScanner(Sink())
    sc.feed(b"event: a\ndata: one\ndata:two\ndata\nid: 5\n\nevent: skip\ndata: x\n\n"
            b"event: b\r\n: comment\r\ndata:  spaced\r\n\r\nevent: big\ndata: " + b"y" * 200 + b"\n\n")
    assert got == [("a", b"one\ntwo\n"), ("b", b" spaced"), ("big", None)]


def test_config_loads_with_key_path_errors_and_disables():
    loader = config._Loader({"P": "0.5"})
    cfg = loader.build("llm", LLMConfig, {"models": ["gpt-4o"], "max_event_bytes": "64KiB",
                                          "prices": {"gpt-4o": {"input": 2.5, "output": "${P}"}}})
    assert loader.problems == ["llm.prices.gpt-4o.output: expected a number, got '0.5'"]
    loader = config._Loader({})
    cfg = loader.build("llm", LLMConfig, {"models": ["gpt-4o"], "max_event_bytes": "64KiB",
                                          "prices": {"gpt-4o": {"input": 2.5, "output": 10, "cache_read": 1.25}}})
    assert not loader.problems and cfg.max_event_bytes == 65536 and cfg.prices["gpt-4o"].cache_read == 1.25
    loader = config._Loader({})
    bad = loader.build("llm", LLMConfig, {"max_models": -1, "max_event_bytes": "1MiB", "max_buffered_bytes": "64KiB",
                                          "models": ["other"], "prices": {"m": {"input": -1, "output": 1}}, "typo": 1})
    assert loader.problems[0].startswith("llm.typo: unknown key")
    problems = []
    bad.validate("llm", lambda p, m: problems.append(f"{p}: {m}"))
    assert [p.split(":")[0] for p in problems] == ["llm.max_models", "llm.max_buffered_bytes", "llm.models[0]",
                                                   "llm.prices.m.input"]
    loader = config._Loader({})
    loader.build("llm", LLMConfig, {"prices": {"m": {"output": 1}}})
    assert loader.problems == ["llm.prices.m.input: is required"]
    assert LLMTelemetry(LLMConfig(enabled=False), LLMMetrics(CollectorRegistry())).exchange("r", 0.0) is None
