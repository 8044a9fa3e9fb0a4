"""The sidecar is transparent to the real LangGraph server: the URLs the server builds, long waits,
the client's own disconnect choice, the whole API in the route table, identity headers, run
outcomes the server only tells through the run's status. Then a parity run of SDK scenarios,
direct and through the sidecar, whose results must be equal.

One `langgraph dev` (one background worker: runs queue, so every test waits for its runs to end)
is shared by the module; each test starts its own sidecar in front of it.
"""
from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest
from langgraph_sdk import get_client

from proxy import config as C
from proxy.routes import RouteTable
from proxy_harness import LGDEV_TOKEN_DELAY, human, metric, scrape, wait_metric

pytestmark = [pytest.mark.slow, pytest.mark.langgraph]

TOKEN_DELAY = LGDEV_TOKEN_DELAY


def slow_answer(n: int) -> str:
    return " ".join(str(i) for i in range(1, n + 1))


async def run_status(session, base: str, thread_id: str, run_id: str, until=("success", "error", "interrupted"),
                     timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{base}/threads/{thread_id}/runs/{run_id}") as r:
            status = (await r.json())["status"]
        if status in until or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def new_thread(session, base: str) -> str:
    async with session.post(base + "/threads", json={}) as r:
        return (await r.json())["thread_id"]


# ---- 1. server-built URLs ----

async def test_redirects_and_mcp_stay_on_the_sidecar(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url)
    # the server redirects /threads/ → /threads, built from the Host it got
    async with session.post(p.url + "/threads/", json={}, allow_redirects=False) as r:
        assert r.status == 307
        assert r.headers["Location"] == "/threads"
        assert r.headers["Server"] == "uvicorn"
    async with session.post(p.url + "/threads/", json={}) as r:  # followed: back through the sidecar
        assert r.status == 200 and "thread_id" in await r.json()
    async with session.post(p.url + "/mcp/", allow_redirects=False, json={}) as r:
        assert r.status == 307 and r.headers["Location"] == "/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with session.post(p.url + "/mcp/", json=init, headers={"Accept": "application/json, text/event-stream"}) as r:
        assert r.status == 200
        assert (await r.json())["result"]["serverInfo"]["name"] == "LangGraph"
    s = await scrape(p.admin)
    assert metric(s, "sidecar_requests_total", route="threads", code="307") == 2
    assert metric(s, "sidecar_requests_total", route="threads", code="200") == 1
    assert metric(s, "sidecar_requests_total", route="mcp", code="307") == 2
    assert metric(s, "sidecar_requests_total", route="mcp", code="200") == 1
    # with preserve_host off the server names itself, and the sidecar maps that back
    p2 = make_proxy(lgdev.url, {"upstream": {"preserve_host": False}})
    async with session.post(p2.url + "/threads/", json={}, allow_redirects=False) as r:
        assert r.headers["Location"] == "/threads"
    async with session.post(lgdev.url + "/threads/", json={}, allow_redirects=False) as r:
        assert r.headers["Location"] == lgdev.url + "/threads"  # direct: absolute, the server's own address


async def test_agent_card_url_comes_from_the_servers_public_url(lgdev, make_proxy, session):
    """The A2A card's url is LANGGRAPH_API_URL when set, which `langgraph dev` always sets to its
    own address (so no proxy can change it without rewriting bodies); elsewhere it is built from
    Host and X-Forwarded-Proto, both of which the sidecar now sends as the client gave them.
    What the sidecar owes here: the card passes byte-identical and the request is labelled."""
    p = make_proxy(lgdev.url)
    async with session.post(lgdev.url + "/assistants/search", json={"graph_id": "agent"}) as r:
        aid = (await r.json())[0]["assistant_id"]
    async with session.get(lgdev.url + f"/.well-known/agent-card.json?assistant_id={aid}") as r:
        direct = await r.read()
    async with session.get(p.url + f"/.well-known/agent-card.json?assistant_id={aid}") as r:
        assert r.status == 200
        via = await r.read()
    assert via == direct and json.loads(via)["url"] == f"{lgdev.url}/a2a/{aid}"
    async with session.get(p.url + f"/a2a/{aid}/.well-known/agent-card.json") as r:
        assert r.status == 200
    s = await scrape(p.admin)
    assert metric(s, "sidecar_requests_total", route="agent_card", code="200") == 1
    assert metric(s, "sidecar_requests_total", route="a2a_agent_card", code="200") == 1


# ---- 2. timeout classes ----

async def test_long_wait_outlives_the_request_timeout(lgdev, make_proxy, session):
    """runs.wait is padded by the server while the run goes on: guarded by idle, not by the
    request deadline (here 4 s, the run takes ~12 s); without the class it is cut."""
    n = 240
    p = make_proxy(lgdev.url, {"timeouts": {"request": "4s"}})
    client = get_client(url=p.url)
    try:
        t0 = time.monotonic()
        out = await client.runs.wait(None, "agent", input=human(f"SLOW {n}"))
        took = time.monotonic() - t0
    finally:
        await client.aclose()
    assert out["messages"][-1]["content"] == slow_answer(n)
    assert took > 3 * 4
    s = await scrape(p.admin)
    assert metric(s, "sidecar_runs_total", route="run_wait", outcome="success") == 1
    assert metric(s, "sidecar_timeouts_total", route="run_wait") == 0
    # counter-proof: the same wait with timeout_class request is cut at the request deadline
    p2 = make_proxy(lgdev.url, {"timeouts": {"request": "2s"}, "routes": [
        {"name": "cut_wait", "path": "/threads/{thread_id}/runs/wait", "methods": ["POST"],
         "run_kind": "wait", "timeout_class": "request"}]})
    tid = await new_thread(session, lgdev.url)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(p2.url + f"/threads/{tid}/runs/wait",
                                json={"assistant_id": "agent", "input": human("SLOW 60")}) as r:
            await r.read()
    s = await scrape(p2.admin)
    assert metric(s, "sidecar_timeouts_total", route="cut_wait", kind="request") == 1
    async with session.get(lgdev.url + f"/threads/{tid}/runs") as r:
        rid = (await r.json())[0]["run_id"]
    assert await run_status(session, lgdev.url, tid, rid) == "success"  # the run itself went on


async def test_thread_stream_is_not_capped_by_the_stream_timeout(lgdev, make_proxy, session):
    """GET /threads/{id}/stream stays open while the client listens: heartbeats keep idle quiet
    and no total cap applies (timeouts.stream here is 2 s)."""
    p = make_proxy(lgdev.url, {"timeouts": {"stream": "2s", "idle": "8s"}})
    tid = await new_thread(session, lgdev.url)
    async with session.get(p.url + f"/threads/{tid}/stream") as r:
        assert r.status == 200
        got = b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:
            got += await asyncio.wait_for(r.content.readany(), 6)
        assert got.count(b": heartbeat") >= 1
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", route="thread_stream") == 0


# ---- 3. the client's own disconnect choice ----

def _cancelling(extra: dict | None = None) -> dict:
    """config.example.yaml's choice: cancel abandoned runs on the stateful run stream."""
    return {"routes": [{"name": "thread_run_stream", "path": "/threads/{thread_id}/runs/stream",
                        "methods": ["POST"], "cancel_on_disconnect": True, "run_kind": "stream"},
                       {"name": "run_stream", "path": "/runs/stream", "methods": ["POST"],
                        "cancel_on_disconnect": True, "run_kind": "stream"}], **(extra or {})}


async def test_resumable_continue_run_is_kept_and_rejoined(lgdev, make_proxy):
    """on_disconnect="continue" + stream_resumable: the client leaves, rejoins with
    join_stream(last_event_id) through the sidecar, and gets the rest; the run succeeds."""
    n = 60
    p = make_proxy(lgdev.url, _cancelling())
    client = get_client(url=p.url)
    try:
        thread = await client.threads.create()
        tid = thread["thread_id"]
        first, last_id, run_id = [], None, None
        async for part in client.runs.stream(tid, "agent", input=human(f"SLOW {n}"), stream_mode="messages-tuple",
                                             stream_resumable=True, on_disconnect="continue"):
            if part.event == "metadata":
                run_id = part.data["run_id"]
            elif part.event == "messages":
                first.append(part.data[0]["content"])
            last_id = part.id or last_id
            if len(first) >= 5:
                break  # the client goes away mid-run
        rest = []
        async for part in client.runs.join_stream(tid, run_id, last_event_id=last_id, stream_mode="messages-tuple"):
            if part.event == "messages":
                rest.append(part.data[0]["content"])
        run = await client.runs.get(tid, run_id)
    finally:
        await client.aclose()
    assert run["status"] == "success"
    assert "".join(first + rest).replace(" ", "") == slow_answer(n).replace(" ", "")
    s = await wait_metric(p.admin, "sidecar_run_cancels_total", route="thread_run_stream", result="kept")
    assert metric(s, "sidecar_run_cancels_total", route="thread_run_stream", result="kept") == 1
    assert metric(s, "sidecar_run_cancels_total", route="thread_run_stream", result="cancelled") == 0


async def test_large_run_request_without_a_choice_is_cancelled(lgdev, make_proxy, session):
    """A 200 KB run request (streamed up, never buffered) that did not ask to keep its run:
    cancel_on_disconnect applies. The same body with on_disconnect "continue" is kept."""
    p = make_proxy(lgdev.url, _cancelling())
    pad = "x" * 200_000
    for choice, expected in ((None, "interrupted"), ("continue", "success")):
        tid = await new_thread(session, lgdev.url)
        body = {"assistant_id": "agent", "input": {"messages": [
            {"role": "user", "content": pad}, {"role": "user", "content": "SLOW 40"}]},
            "stream_mode": ["messages-tuple"]}
        if choice:
            body["on_disconnect"] = choice
        data = json.dumps(body).encode()
        r = await session.post(p.url + f"/threads/{tid}/runs/stream", data=data,
                               headers={"Content-Type": "application/json"})
        run_path = r.headers["Content-Location"]
        got = b""
        while b"event: messages" not in got:
            got += await r.content.readany()
        r.close()
        status = await run_status(session, lgdev.url, *run_path.split("/")[2::2])
        assert status == expected, (choice, status)
    s = await scrape(p.admin)
    assert metric(s, "sidecar_run_cancels_total", route="thread_run_stream", result="cancelled") == 1
    assert metric(s, "sidecar_run_cancels_total", route="thread_run_stream", result="kept") == 1


async def test_stateless_stream_is_never_cancelled_and_never_a_failed_cancel(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url, _cancelling())
    r = await session.post(p.url + "/runs/stream", json={"assistant_id": "agent", "input": human("SLOW 30"),
                                                         "stream_mode": ["messages-tuple"]})
    got = b""
    while b"event: messages" not in got:
        got += await r.content.readany()
    r.close()
    s = await wait_metric(p.admin, "sidecar_run_cancels_total", route="run_stream", result="stateless")
    assert metric(s, "sidecar_run_cancels_total", route="run_stream", result="stateless") == 1
    assert metric(s, "sidecar_run_cancels_total", route="run_stream", result="failed") == 0
    await asyncio.sleep(30 * TOKEN_DELAY + 1)  # let it finish: the server has one worker


# ---- 4. the whole API ----

def _example(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000001", path)


async def test_openapi_paths_all_have_a_route(lgdev, session):
    """Every path and method of the server's own /openapi.json, and what it serves outside the
    spec, maps to a named route: a new langgraph-api release cannot drift into `other` unseen."""
    async with session.get(lgdev.url + "/openapi.json") as r:
        spec = await r.json()
    table = RouteTable(C.parse({}))
    ops = [(m.upper(), path) for path, item in spec["paths"].items()
           for m in item if m in ("get", "post", "put", "patch", "delete", "head", "options")]
    assert len(ops) >= 60
    served_outside_spec = [("GET", "/"), ("POST", "/ui/agent"), ("GET", "/.well-known/agent-card.json"),
                           ("GET", "/a2a/{id}/.well-known/agent-card.json"), ("GET", "/a2a/{id}/.well-known/agent.json"),
                           ("GET", "/a2a/{id}"), ("DELETE", "/a2a/{id}/"), ("GET", "/threads/{id}/stream/events")]
    unmatched = [(m, p) for m, p in ops + served_outside_spec if table.match(m, _example(p)).name == "other"]
    assert unmatched == []
    # and the labels are the specific ones (first match wins: order matters)
    assert table.match("GET", _example("/assistants/{a}/subgraphs/{ns}")).name == "assistant_subgraph"
    assert table.match("POST", _example("/threads/{t}/state/checkpoint")).name == "thread_state_checkpoint"
    assert table.match("POST", _example("/threads/{t}/commands")).name == "thread_commands"


# ---- 5. identity headers ----

async def test_client_request_id_reaches_the_run_and_server_header_passes(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url)
    rid = 'batch 7 "nightly"'
    tid = await new_thread(session, lgdev.url)
    async with session.post(p.url + f"/threads/{tid}/runs", json={"assistant_id": "agent", "input": human("hi")},
                            headers={"X-Request-ID": rid}) as r:
        assert r.headers["Server"] == "uvicorn" and r.headers["X-Request-ID"] == rid
        run = await r.json()
    assert run["kwargs"]["config"]["configurable"]["langgraph_request_id"] == rid
    await run_status(session, lgdev.url, tid, run["run_id"])


# ---- run outcomes only the run's status tells ----

async def test_interrupted_run_and_join_on_failed_run_are_not_success(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url)
    tid = await new_thread(session, lgdev.url)
    r = await session.post(p.url + f"/threads/{tid}/runs/stream",
                           json={"assistant_id": "agent", "input": human("SLOW 100"), "stream_mode": ["values"]})
    first = await r.content.readany()
    assert b"metadata" in first
    await asyncio.sleep(1.5)
    async with session.post(lgdev.url + f"/threads/{tid}/runs",
                            json={"assistant_id": "agent", "input": human("hi"), "multitask_strategy": "interrupt"}) as r2:
        other = await r2.json()
    rest = await r.read()  # the interrupted run's stream just ends: no error event, no end event
    assert b"event: error" not in rest
    await run_status(session, lgdev.url, tid, other["run_id"])
    async with session.post(lgdev.url + f"/threads/{tid}/runs/wait",
                            json={"assistant_id": "failing", "input": human("x")}) as r3:
        failed_path = r3.headers["Content-Location"]
    # right after its end a join still replays the run (ending in its error event); a second
    # later it replays nothing: only the run's status tells how it ended
    await asyncio.sleep(1)
    async with session.get(p.url + failed_path + "/stream") as r4:
        assert r4.status == 200 and await r4.read() == b""
    async with session.get(p.url + failed_path + "/join") as r5:
        assert "__error__" in await r5.json()
    s = await scrape(p.admin)
    assert metric(s, "sidecar_runs_total", route="thread_run_stream", outcome="interrupted") == 1
    assert metric(s, "sidecar_runs_total", route="thread_run_join_stream", outcome="run_error") == 1
    assert metric(s, "sidecar_runs_total", route="thread_run_join", outcome="run_error") == 1
    assert metric(s, "sidecar_runs_total", outcome="success") == 0
