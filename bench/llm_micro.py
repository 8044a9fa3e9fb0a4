#!/usr/bin/env python3
"""What LLM usage inspection adds per forwarded SSE event, against today's SSEScanner alone.

Each stream is fed one event per chunk (langgraph-api writes each event with its own write), to
a bare ``SSEScanner()`` and to ``SSEScanner(LLMUsage)`` in the same run; the difference is the cost
of inspection. CPU time of this thread (time spent descheduled on a shared machine is not counted),
best of interleaved repeats (as timeit: noise only adds), in microseconds per event.
usage: .venv/bin/python bench/llm_micro.py [--repeat 7] [--events 2000]
Target (issue 19): at most +3 us per event that is not a ``messages`` event.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prometheus_client import CollectorRegistry  # noqa: E402

from proxy.llm import LLMConfig, LLMMetrics, LLMTelemetry  # noqa: E402
from proxy.sse import SSEScanner  # noqa: E402

META = {"created_by": "system", "graph_id": "agent", "assistant_id": "0b4207bf-1d8e-5def-811c-2f8420b3e270",
        "run_attempt": 1, "langgraph_version": "1.2.22", "langgraph_api_version": "0.16.7",
        "langgraph_plan": "enterprise", "langgraph_host": "self-hosted", "langgraph_api_url": "http://127.0.0.1:2024",
        "run_id": "01a21a50-aa8e-72b1-a069-bd61bcb19275", "thread_id": "c9b0a0e4-5d40-4a3b-8f3c-3f1a4f9e2a77",
        "langgraph_step": 1, "langgraph_node": "model", "langgraph_triggers": ["branch:to:model"],
        "langgraph_path": ["__pregel_pull", "model"], "langgraph_checkpoint_ns": "model:6b802719-10ce-4dfa-5e80",
        "checkpoint_ns": "model:6b802719-10ce-4dfa-5e80", "ls_provider": "openai", "ls_model_name": "gpt-4o-mini",
        "ls_model_type": "chat", "ls_temperature": 0.0}
USAGE = {"input_tokens": 1200, "output_tokens": 80, "total_tokens": 1280,
         "input_token_details": {"cache_read": 1024}, "output_token_details": {"reasoning": 0}}


def ev(name: str, obj) -> bytes:
    return b"event: " + name.encode() + b"\r\ndata: " + json.dumps(obj, separators=(",", ":")).encode() + b"\r\n\r\n"


def msg(i: int, typ: str, content: str, usage=None) -> dict:
    m = {"content": content, "additional_kwargs": {}, "response_metadata": {}, "type": typ, "name": None,
         "id": f"lc_run--01a21a50-ad26-76cc-af40-{i:012d}"}
    if typ in ("ai", "AIMessageChunk"):
        m.update(tool_calls=[], invalid_tool_calls=[], usage_metadata=usage)
        if usage:
            m["response_metadata"] = {"model_name": "gpt-4o-mini-2024-07-18", "finish_reason": "stop"}
    if typ == "AIMessageChunk":
        m.update(tool_call_chunks=[], chunk_position="last" if usage else None)
    return m


def history(turns: int, usage: bool) -> list:
    out = []
    for t in range(turns):
        out.append(msg(2 * t, "human", f"question number {t} about the weather in some city"))
        out.append(msg(2 * t + 1, "ai", "a fairly typical answer of a few sentences. " * 4, USAGE if usage else None))
    return out


# (label, is a messages event, one event's bytes)
KINDS = [
    ("metadata (not inspected)", False, ev("metadata", {"run_id": "01a21a50-aa8e-72b1-a069-bd61bcb19275", "attempt": 1})),
    ("custom 300 B (not inspected)", False, ev("custom", {"progress": "x" * 260})),
    ("updates, no usage (tool output)", False, ev("updates", {"tools": {"messages": [msg(1, "tool", "42" * 100)]}})),
    ("values 1 KB, no usage marker", False, ev("values", {"messages": history(3, False)})),
    ("values 8 KB, no usage marker", False, ev("values", {"messages": history(24, False)})),
    ("updates with usage (parsed)", False, ev("updates", {"model": {"messages": [msg(9, "ai", "answer " * 20, USAGE)]}})),
    ("values 8 KB with usage, none new", False, ev("values", {"messages": history(24, True)})),
    ("messages-tuple token chunk", True, ev("messages", [msg(5, "AIMessageChunk", " token"), META])),
    ("messages-tuple last chunk + usage (parsed)", True, ev("messages", [msg(5, "AIMessageChunk", ".", USAGE), META])),
    ("messages/partial 2 KB", True, ev("messages/partial", [msg(5, "ai", "word " * 300)])),
]


def per_event(stream: list, make_sink, first: list) -> float:
    """Seconds per event of feeding ``stream`` (one event per chunk) after ``first`` events."""
    sink = make_sink()
    sc = SSEScanner(sink) if sink is not None else SSEScanner()
    for c in first:  # the run's first values snapshot and first token are behind us, as in a real run
        sc.feed(c)
    feed = sc.feed
    t0 = time.thread_time()
    for c in stream:
        feed(c)
    t = time.thread_time() - t0
    return t / len(stream)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--events", type=int, default=4000)
    args = ap.parse_args()
    tel = LLMTelemetry(LLMConfig(), LLMMetrics(CollectorRegistry()))
    # what went before in the run: its first values snapshot (the baseline); for messages events
    # also the first token. Values-only streams (the SDK's default mode) inspect every values event;
    # once updates or messages events were seen, later values events are not inspected at all.
    first_values = [ev("values", {"messages": history(1, False)})]
    first_token = first_values + [ev("messages", [msg(0, "AIMessageChunk", "hi"), META])]

    def sink():
        return tel.exchange("run_stream", time.monotonic())

    print(f"{'event kind':44s} {'bytes':>7s} {'scanner':>9s} {'+ inspect':>9s} {'added':>8s}  target")
    worst = 0.0
    for label, is_messages, one in KINDS:
        stream = [one] * args.events
        base, insp = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            first = first_token if is_messages else first_values
            base.append(per_event(stream, lambda: None, first))
            insp.append(per_event(stream, sink, first))
        b, i = min(base) * 1e6, min(insp) * 1e6
        added = i - b
        target = "messages: no target" if is_messages else ("ok (<= 3 us)" if added <= 3.0 else "OVER 3 us")
        if not is_messages and "parsed" not in label:
            worst = max(worst, added)
        print(f"{label:44s} {len(one):7d} {b:8.2f}u {i:8.2f}u {added:+7.2f}u  {target}")
    # a 3 MB values event in 64 KiB chunks: over max_event_bytes, so copied only up to the bound
    big = ev("values", {"messages": [msg(0, "human", "x" * (3 << 20))]})
    chunks = [big[k:k + 65536] for k in range(0, len(big), 65536)]
    base, insp = [], []
    for _ in range(args.repeat):
        for make, out in ((lambda: None, base), (sink, insp)):
            s = make()
            sc = SSEScanner(s) if s is not None else SSEScanner()
            sc.feed(first_values[0])
            t0 = time.thread_time()
            for _ in range(10):
                for c in chunks:
                    sc.feed(c)
            out.append((time.thread_time() - t0) / 10)
    b, i = min(base) * 1e6, min(insp) * 1e6
    print(f"{'values 3 MB in 64 KiB chunks (per event)':44s} {len(big):7d} {b:8.1f}u {i:8.1f}u {i - b:+7.1f}u  "
          f"{'ok (<= 3 us)' if i - b <= 3 else 'OVER 3 us'}")
    # fixed cost per exchange: the inspector made and finished (what a small request pays)
    n = 20000
    t0 = time.thread_time()
    for _ in range(n):
        tel.exchange("run_wait", 0.0).finish()
    print(f"{'per exchange: exchange() + finish()':44s} {'':7s} {'':9s} {'':9s} {(time.thread_time() - t0) / n * 1e6:+7.2f}u")
    print(f"worst added cost on a non-messages event that needs no parse: {worst:+.2f} us (target <= 3 us)")


if __name__ == "__main__":
    main()
