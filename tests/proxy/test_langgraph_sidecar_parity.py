"""Parity: the same SDK scenarios against the real LangGraph server directly and through the
sidecar must give the same results. The sidecar runs with a short `timeouts.request` (3 s, below
the 10 s wait in the scenarios) and `cancel_on_disconnect` on the run streams, as
config.example.yaml has it; neither may change what a client sees.
"""
from __future__ import annotations

import json
import time

import aiohttp
import pytest
from langgraph_sdk import get_client

from proxy_harness import LGDEV_TOKEN_DELAY, human, metric, scrape

pytestmark = [pytest.mark.slow, pytest.mark.langgraph]

TOKEN_DELAY = LGDEV_TOKEN_DELAY
WAIT_TOKENS = 200  # a 10 s run.wait


async def scenarios(base: str) -> dict:
    """Run every scenario against ``base``; return what a client observes, ids and times removed."""
    out: dict = {}
    async with aiohttp.ClientSession() as s:
        # a redirect the server builds (307 /threads/ → /threads), followed by the client
        async with s.post(base + "/threads/", json={"metadata": {"k": "v"}}) as r:
            body = await r.json()
            out["redirect"] = (r.status, [h.status for h in r.history], body["metadata"], sorted(body))
        # MCP, reached through its redirect too
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        async with s.post(base + "/mcp/", json=init, headers={"Accept": "application/json, text/event-stream"}) as r:
            out["mcp"] = (r.status, (await r.json())["result"]["serverInfo"])
        async with s.get(base + "/openapi.json") as r:
            out["openapi_paths"] = sorted((await r.json())["paths"])
    client = get_client(url=base)
    try:
        out["assistants"] = sorted(a["graph_id"] for a in await client.assistants.search())
        thread = await client.threads.create()
        tid = thread["thread_id"]
        events = []
        async for part in client.runs.stream(tid, "agent", input=human("What is 6 * 7?"),
                                             stream_mode=["values", "updates"]):
            events.append(part.event)
        state = await client.threads.get_state(tid)
        out["stream"] = (events, state["values"]["messages"][-1]["content"])
        # a long wait: longer than the sidecar's timeouts.request
        t0 = time.monotonic()
        waited = await client.runs.wait(None, "agent", input=human(f"SLOW {WAIT_TOKENS}"))
        out["long_wait"] = (waited["messages"][-1]["content"], time.monotonic() - t0 > WAIT_TOKENS * TOKEN_DELAY * 0.8)
        # a run that fails inside a 200, waited and streamed
        failed = await client.runs.wait(None, "failing", input=human("x"), raise_error=False)
        last = None
        async for part in client.runs.stream(None, "failing", input=human("x")):
            last = part.event
        out["failing"] = (sorted(failed), failed["__error__"]["error"], last)
        # a resumable stream the client leaves (asking the run to continue) and rejoins
        rid, last_id, texts = None, None, []
        t2 = (await client.threads.create())["thread_id"]
        async for part in client.runs.stream(t2, "agent", input=human("SLOW 40"), stream_mode="messages-tuple",
                                             stream_resumable=True, on_disconnect="continue"):
            if part.event == "metadata":
                rid = part.data["run_id"]
            elif part.event == "messages":
                texts.append(part.data[0]["content"])
            last_id = part.id or last_id
            if len(texts) >= 4:
                break
        async for part in client.runs.join_stream(t2, rid, last_event_id=last_id, stream_mode="messages-tuple"):
            if part.event == "messages":
                texts.append(part.data[0]["content"])
        out["rejoin"] = ("".join(texts), (await client.runs.get(t2, rid))["status"])
        # a background run joined (a padded wait on /join)
        bg = await client.runs.create(t2, "agent", input=human("SLOW 20"))
        joined = await client.runs.join(t2, bg["run_id"])
        out["join"] = joined["messages"][-1]["content"]
        # store round trip
        await client.store.put_item(["parity"], "k", {"v": 1})
        out["store"] = (await client.store.get_item(["parity"], "k"))["value"]
    finally:
        await client.aclose()
    return out


async def test_sdk_scenarios_same_direct_and_through_the_sidecar(lgdev, make_proxy):
    p = make_proxy(lgdev.url, {"timeouts": {"request": "3s"}, "routes": [
        {"name": "thread_run_stream", "path": "/threads/{thread_id}/runs/stream", "methods": ["POST"],
         "cancel_on_disconnect": True, "run_kind": "stream"},
        {"name": "run_stream", "path": "/runs/stream", "methods": ["POST"],
         "cancel_on_disconnect": True, "run_kind": "stream"}]})
    direct = await scenarios(lgdev.url)
    via = await scenarios(p.url)
    assert via == direct, json.dumps({"direct": direct, "via": via}, indent=1, default=str)[:4000]
    # sanity on the scenario itself
    assert direct["redirect"][:2] == (200, [307])
    assert direct["long_wait"] == (" ".join(str(i) for i in range(1, WAIT_TOKENS + 1)), True)
    assert direct["rejoin"][1] == "success"
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total") == 0
    assert metric(s, "sidecar_run_cancels_total", result="cancelled") == 0
    assert metric(s, "sidecar_run_cancels_total", result="kept") == 1
    assert metric(s, "sidecar_runs_total", route="run_wait", outcome="success") == 1
    assert metric(s, "sidecar_runs_total", route="run_wait", outcome="run_error") == 1
    assert metric(s, "sidecar_requests_total", route="threads", code="307") == 1
