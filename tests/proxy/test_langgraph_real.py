"""The sidecar in front of the real LangGraph server (`langgraph dev`, offline), as users run it.

One `langgraph dev` process (serving agent_app's graphs, including one that raises) is shared by
the module; each test starts its own sidecar in front of it.
"""
from __future__ import annotations

import asyncio
import io
import json
import random
import time

import aiohttp
import pytest
from langgraph_sdk import get_client

from proxy_harness import human, metric, scrape, wait_metric

pytestmark = [pytest.mark.slow, pytest.mark.langgraph]


def sse_events(body: bytes) -> list[tuple[str | None, str, bytes]]:
    """(id, event, data) of each event in a CRLF or LF framed SSE body."""
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        ev_id, name, data = None, "message", []
        for line in block.split(b"\n"):
            if line.startswith(b"id:"):
                ev_id = line[3:].strip().decode()
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
        if data:
            out.append((ev_id, name, b"\n".join(data)))
    return out


async def test_run_errors_inside_200_are_counted_and_open_the_breaker(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url, {"circuit_breaker": {"count_run_errors": True, "fail_max": 2},
                               "retries": {"attempts": 1}})
    body = {"assistant_id": "failing", "input": human("hi")}
    async with session.post(p.url + "/runs/stream", json=body) as r:
        assert r.status == 200
        events = sse_events(await r.read())
    assert events[-1][1] == "error"
    async with session.post(p.url + "/runs/wait", json=body) as r:
        assert r.status == 200
        assert "__error__" in json.loads(await r.read())
    s = await scrape(p.admin)
    assert metric(s, "sidecar_runs_total", route="run_stream", outcome="run_error") == 1
    assert metric(s, "sidecar_runs_total", route="run_wait", outcome="run_error") == 1
    # two failed runs in a row opened the breaker, although both were 200s
    async with session.post(p.url + "/runs/wait", json={"assistant_id": "agent", "input": human("hi")}) as r:
        assert r.status == 503 and (await r.json())["error"]["type"] == "circuit_open"
    logs = [x for x in p.log_lines() if x["message"].startswith("run")]
    assert logs and all("request_id" in x for x in logs)


async def test_successful_runs_through_sdk_stream_and_wait(lgdev, make_proxy):
    p = make_proxy(lgdev.url)
    client = get_client(url=p.url)
    try:
        thread = await client.threads.create()
        modes = []
        async for part in client.runs.stream(thread["thread_id"], "agent", input=human("What is 6 * 7?"),
                                             stream_mode=["values", "updates"]):
            modes.append(part.event)
        assert modes[0] == "metadata" and "values" in modes and "updates" in modes
        state = await client.threads.get_state(thread["thread_id"])
        assert "42" in state["values"]["messages"][-1]["content"]
        out = await client.runs.wait(None, "agent", input=human("Reply with the single word PONG."))
        assert out["messages"][-1]["content"] == "PONG"
    finally:
        await client.aclose()
    s = await scrape(p.admin)
    assert metric(s, "sidecar_runs_total", route="thread_run_stream", outcome="success") == 1
    assert metric(s, "sidecar_runs_total", route="run_wait", outcome="success") == 1


async def test_websocket_round_trip_to_the_real_server(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url)
    client = get_client(url=p.url)
    thread = await client.threads.create()
    await client.aclose()
    async with session.ws_connect(p.url + f"/threads/{thread['thread_id']}/stream/events") as ws:
        await ws.send_str("not json")
        msg = json.loads((await ws.receive(timeout=10)).data)
        assert msg["type"] == "error" and msg["error"] == "invalid_argument"
        await ws.send_str(json.dumps({"id": 7, "method": "no.such.method", "params": {}}))
        reply = json.loads((await ws.receive(timeout=10)).data)
        assert reply.get("id") == 7
    s = await scrape(p.admin)
    assert metric(s, "sidecar_websocket_messages_total", route="thread_stream_events") >= 4


async def test_rejoin_with_last_event_id_returns_exactly_the_missing_events(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url)
    async with session.post(p.url + "/threads", json={}) as r:
        tid = (await r.json())["thread_id"]
    body = {"assistant_id": "agent", "input": human("SLOW 12"), "stream_mode": ["messages-tuple", "values"],
            "stream_resumable": True, "on_disconnect": "continue"}
    r = await session.post(p.url + f"/threads/{tid}/runs/stream", json=body)
    location = r.headers["Location"]
    content_location = r.headers["Content-Location"]
    assert location.startswith(f"/threads/{tid}/runs/") and location.endswith("/stream")
    seen = b""
    while len(sse_events(seen)) < 6:
        seen += await r.content.readany()
    r.close()  # the connection drops mid-run
    first = [e for e in sse_events(seen) if e[0] is not None]
    # (an event cut in half by the drop is not counted as received)
    complete = first[:-1] if not seen.replace(b"\r\n", b"\n").endswith(b"\n\n") else first
    last_id = complete[-1][0]
    async with session.get(p.url + location, headers={"Last-Event-ID": last_id}) as r2:
        assert r2.status == 200
        rest = [e for e in sse_events(await r2.read()) if e[0] is not None]
    # the server's own full replay, for comparison
    async with session.get(p.url + location, headers={"Last-Event-ID": "0"}) as r3:
        everything = [e for e in sse_events(await r3.read()) if e[0] is not None]
    ids = [e[0] for e in everything]
    assert [e[0] for e in rest] == ids[ids.index(last_id) + 1:]
    assert [e[0] for e in complete] == ids[: ids.index(last_id) + 1]
    async with session.get(p.url + content_location) as r4:
        assert (await r4.json())["status"] == "success"


async def test_huge_sse_event_passes_byte_exact(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url)
    big = "".join(random.Random(3).choices("abcdefghij", k=3 * 1024 * 1024))
    body = json.dumps({"assistant_id": "agent", "input": human(big), "stream_mode": ["values"]}).encode()
    hdrs = {"Content-Type": "application/json"}
    async with session.post(lgdev.url + "/runs/stream", data=io.BytesIO(body), headers=hdrs) as r:
        direct = [e for e in sse_events(await r.read()) if e[1] == "values"]
    async with session.post(p.url + "/runs/stream", data=io.BytesIO(body), headers=hdrs) as r:
        raw = await r.read()
    proxied = [e for e in sse_events(raw) if e[1] == "values"]
    assert b"\r\n" in raw  # CRLF framing passed as is
    assert len(proxied) == len(direct) >= 1
    last = json.loads(proxied[-1][2])
    contents = [m["content"] for m in last["messages"]]
    assert big in contents  # the 3 MB message arrived whole
    assert max(len(e[2]) for e in proxied) > 3 * 1024 * 1024
    # the same bytes as direct, but for the run's own ids and timestamps
    strip = lambda d: json.dumps([m["content"] for m in json.loads(d)["messages"]])  # noqa: E731
    assert [strip(e[2]) for e in proxied] == [strip(e[2]) for e in direct]


async def test_disconnect_cancels_the_run_within_1s(lgdev, make_proxy, session):
    p = make_proxy(lgdev.url, {"routes": [
        {"name": "cancelling_stream", "path": "/threads/{thread_id}/runs/stream", "methods": ["POST"],
         "cancel_on_disconnect": True, "run_kind": "stream"}]})
    async with session.post(p.url + "/threads", json={}) as r:
        tid = (await r.json())["thread_id"]
    r = await session.post(p.url + f"/threads/{tid}/runs/stream",
                           json={"assistant_id": "agent", "input": human("SLOW 400"), "stream_mode": ["messages-tuple"]})
    run_path = r.headers["Content-Location"]
    got = b""
    while b"messages" not in got:
        got += await r.content.readany()
    r.close()
    t0 = time.monotonic()
    status = None
    while time.monotonic() - t0 < 1.0:
        async with session.get(lgdev.url + run_path) as rr:
            status = (await rr.json())["status"]
        if status == "interrupted":
            break
        await asyncio.sleep(0.05)
    assert status == "interrupted", status
    # the sidecar counts the cancel once it has read the server's answer
    s = await wait_metric(p.admin, "sidecar_run_cancels_total", route="cancelling_stream", result="cancelled")
    assert metric(s, "sidecar_run_cancels_total", route="cancelling_stream", result="cancelled") == 1


async def test_without_cancel_on_disconnect_the_run_continues(lgdev, make_proxy, session):
    """The real server's default (on_disconnect=continue) is left alone unless the route asks."""
    p = make_proxy(lgdev.url)
    async with session.post(p.url + "/threads", json={}) as r:
        tid = (await r.json())["thread_id"]
    r = await session.post(p.url + f"/threads/{tid}/runs/stream",
                           json={"assistant_id": "agent", "input": human("SLOW 20"), "stream_mode": ["messages-tuple"]})
    run_path = r.headers["Content-Location"]
    await r.content.readany()
    r.close()
    for _ in range(100):
        async with session.get(lgdev.url + run_path) as rr:
            status = (await rr.json())["status"]
        if status in ("success", "error", "interrupted"):
            break
        await asyncio.sleep(0.1)
    assert status == "success"


@pytest.mark.parametrize("keepalive", ["4s", "10s"])
async def test_no_client_error_around_the_upstream_keepalive_boundary(lgdev, make_proxy, keepalive):
    """1,000 idempotent requests from 100 clients, each pausing 4.6–5.4 s between requests, so
    pooled connections sit idle right around uvicorn's 5 s keep-alive close. With the default
    pool keep-alive (4 s) no stale connection is used; with 10 s the stale ones are, and the
    transparent retry hides it. Either way: zero client-visible errors."""
    p = make_proxy(lgdev.url, {"upstream": {"keepalive_timeout": keepalive, "max_connections": 200},
                               "logging": {"access_log": False}})
    rnd = random.Random(5)
    errors: list[str] = []
    statuses: list[int] = []

    async def lane(n: int):
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(rnd.uniform(0, 1.0))
            for _ in range(n):
                try:
                    async with s.get(p.url + "/ok") as r:
                        statuses.append(r.status)
                        await r.read()
                except aiohttp.ClientError as e:
                    errors.append(repr(e))
                await asyncio.sleep(rnd.uniform(4.6, 5.4))
    await asyncio.gather(*(lane(10) for _ in range(100)))
    assert errors == []
    assert len(statuses) == 1000 and set(statuses) == {200}
    s = await scrape(p.admin)
    assert metric(s, "sidecar_requests_total", route="ok", code="200") == 1000
    if keepalive == "4s":
        assert metric(s, "sidecar_retries_total") == 0  # no pooled connection was ever reused stale
