"""Raw HTTP against agent_app: wire framing, headers, bad input, cancellation, the /agent/* pair."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from agent_procs import Proc
from conftest import human

PONG = "Reply with the single word PONG."


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def new_thread(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.post(f"{base_url}/threads", json={}) as response:
        assert response.status == 200
        return (await response.json())["thread_id"]


def parse_sse(raw: bytes) -> list[tuple[str, object]]:
    """Split a CRLF-framed SSE body into (event, data) pairs; fails on LF-only framing."""
    events = []
    for block in raw.split(b"\r\n\r\n"):
        if not block:
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\r\n"))
        events.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
    return events


async def run_status(http: aiohttp.ClientSession, agent_url: str, thread_id: str, run_id: str) -> str:
    async with http.get(f"{agent_url}/threads/{thread_id}/runs/{run_id}") as response:
        assert response.status == 200
        return (await response.json())["status"]


async def wait_for_status(http: aiohttp.ClientSession, agent_url: str, thread_id: str, run_id: str, want: str) -> None:
    deadline = time.monotonic() + 10
    status = ""
    while time.monotonic() < deadline:
        status = await run_status(http, agent_url, thread_id, run_id)
        if status == want:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"run {run_id} status {status!r}, expected {want!r}")


async def test_stream_framing_and_headers(http: aiohttp.ClientSession, base_url: str) -> None:
    thread_id = await new_thread(http, base_url)
    body = {"assistant_id": "agent", "input": human(PONG), "stream_mode": ["values", "updates"]}
    async with http.post(f"{base_url}/threads/{thread_id}/runs/stream", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = await response.read()
    run_id = raw.split(b'"run_id":"')[1].split(b'"')[0].decode()
    uuid.UUID(run_id)
    assert response.headers["Content-Location"] == f"/threads/{thread_id}/runs/{run_id}"
    assert response.headers["Location"] == f"/threads/{thread_id}/runs/{run_id}/stream"
    assert raw.startswith(b"event: metadata\r\ndata: {")
    events = parse_sse(raw)
    assert [e for e, _ in events] == ["metadata", "values", "updates", "values"]
    assert events[0][1] == {"run_id": run_id, "attempt": 1}
    assert events[-1][1]["messages"][-1]["content"] == "PONG"


async def test_stateless_wait_headers(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(f"{base_url}/runs/wait", json={"assistant_id": "agent", "input": human(PONG)}) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        location = response.headers["Content-Location"]
        body = await response.json()
    assert body["messages"][-1]["content"] == "PONG"
    _, threads, thread_id, runs, run_id = location.split("/")
    assert (threads, runs) == ("threads", "runs")
    async with http.get(f"{base_url}{location}") as response:
        run = await response.json()
    assert run["run_id"] == run_id and run["thread_id"] == thread_id and run["status"] == "success"


BAD_REQUESTS = [
    # (method, path, body, status, detail fragment)
    ("POST", "/runs/wait", b'{"assistant_id": "agent", "input": ', 422, "Invalid JSON"),
    ("POST", "/threads", b"[1, 2]", 422, 'is not of type "object"'),
    ("POST", "/runs/wait", b'{"input": {}}', 422, '"assistant_id" is a required property'),
    ("POST", "/runs/stream", b'{"assistant_id": "nope"}', 422, "Invalid assistant: 'nope'"),
    ("POST", "/runs/stream", b'{"assistant_id": "agent", "stream_mode": "bogus"}', 422, "stream_mode"),
    ("POST", "/runs/wait", b'{"assistant_id": "agent", "input": "text"}', 422, '"input"'),
    ("POST", "/runs/wait", b'{"assistant_id": "agent", "metadata": 3}', 422, "metadata"),
    ("POST", "/runs/wait", b'{"assistant_id": "agent", "on_disconnect": "explode"}', 422, "on_disconnect"),
    ("POST", "/runs/wait", b'{"assistant_id": "agent", "config": {"recursion_limit": 0}}', 422, "recursion_limit"),
    ("GET", "/threads/not-a-uuid", None, 422, "Invalid thread ID: must be a UUID"),
    ("GET", f"/threads/{uuid.UUID(int=1)}", None, 404, "not found"),
    ("GET", f"/threads/{uuid.UUID(int=1)}/state", None, 404, "not found"),
    ("POST", f"/threads/{uuid.UUID(int=1)}/runs/wait", b'{"assistant_id": "agent", "input": {}}', 404, "Thread or assistant not found."),
    ("POST", f"/threads/{uuid.UUID(int=1)}/runs/stream", b'{"assistant_id": "agent", "input": {}}', 404, "Thread or assistant not found."),
    ("GET", f"/assistants/{uuid.UUID(int=1)}", None, 404, "Not Found"),
    ("GET", "/assistants/nope", None, 422, "Invalid assistant ID"),
    ("GET", f"/threads/{uuid.UUID(int=1)}/runs/{uuid.UUID(int=2)}", None, 404, "Not Found"),
    ("POST", "/runs/cancel", b"{}", 422, '"run_ids" is a required property'),
    ("POST", "/runs/cancel", json.dumps({"run_ids": [str(uuid.UUID(int=2))]}).encode(), 404, "No runs found"),
    ("POST", "/agent/invoke", b'{"thread_id": null}', 422, '"message" is a required property'),
    ("POST", "/agent/stream", b'{"message": "hi", "thread_id": "x"}', 422, "Invalid thread ID"),
    ("GET", "/no/such/route", None, 404, "Not Found"),
    ("DELETE", "/ok", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "detail"), BAD_REQUESTS, ids=[f"{r[0]} {r[1][:40]} {r[3]}" for r in BAD_REQUESTS])
async def test_bad_input_is_a_json_4xx_and_the_next_request_works(
    http: aiohttp.ClientSession, agent: Proc, method: str, path: str, body: bytes | None, status: int, detail: str
) -> None:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    async with http.request(method, agent.url + path, data=body, headers=headers) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        answer = await response.json()
    assert detail in answer["detail"]
    assert "Traceback" not in json.dumps(answer)
    async with http.post(f"{agent.url}/runs/wait", json={"assistant_id": "agent", "input": human(PONG)}) as response:
        assert response.status == 200
        assert (await response.json())["messages"][-1]["content"] == "PONG"


async def test_disconnect_mid_stream_cancels_the_run(http: aiohttp.ClientSession, base_url: str, agent: Proc) -> None:
    thread_id = await new_thread(http, base_url)
    body = {"assistant_id": "agent", "input": human("SLOW 2000"), "stream_mode": "messages-tuple"}
    response = await http.post(f"{base_url}/threads/{thread_id}/runs/stream", json=body)
    run_id = response.headers["Content-Location"].rsplit("/", 1)[1]
    received = b""
    while received.count(b"event: messages") < 5:
        received += await response.content.readany()
    assert await run_status(http, agent.url, thread_id, run_id) == "running"
    response.close()  # the client goes away mid-stream
    await wait_for_status(http, agent.url, thread_id, run_id, "interrupted")
    async with http.get(f"{agent.url}/threads/{thread_id}") as thread:
        assert (await thread.json())["status"] == "interrupted"
    # The thread takes new runs afterwards.
    async with http.post(f"{base_url}/threads/{thread_id}/runs/wait", json={"assistant_id": "agent", "input": human(PONG)}) as wait:
        assert (await wait.json())["messages"][-1]["content"] == "PONG"


async def test_on_disconnect_continue_keeps_the_run_going(http: aiohttp.ClientSession, agent: Proc) -> None:
    thread_id = await new_thread(http, agent.url)
    body = {"assistant_id": "agent", "input": human("SLOW 30"), "on_disconnect": "continue"}
    response = await http.post(f"{agent.url}/threads/{thread_id}/runs/stream", json=body)
    run_id = response.headers["Content-Location"].rsplit("/", 1)[1]
    await response.content.readany()
    response.close()
    await wait_for_status(http, agent.url, thread_id, run_id, "success")


@pytest.mark.parametrize("how", ["thread_cancel", "runs_cancel"])
async def test_cancel_endpoints_interrupt_a_run(http: aiohttp.ClientSession, base_url: str, agent: Proc, how: str) -> None:
    thread_id = await new_thread(http, base_url)
    body = {"assistant_id": "agent", "input": human("SLOW 2000"), "stream_mode": "messages-tuple"}
    async with http.post(f"{base_url}/threads/{thread_id}/runs/stream", json=body) as response:
        run_id = response.headers["Content-Location"].rsplit("/", 1)[1]
        await response.content.readany()
        if how == "thread_cancel":
            async with http.post(f"{base_url}/threads/{thread_id}/runs/{run_id}/cancel") as cancel:
                assert cancel.status == 202
        else:
            async with http.post(f"{base_url}/runs/cancel", json={"run_ids": [run_id]}) as cancel:
                assert cancel.status == 204
        rest = await response.read()  # the stream ends soon after, without an end event
    assert b"event: error" not in rest
    await wait_for_status(http, agent.url, thread_id, run_id, "interrupted")


async def test_agent_invoke_keeps_the_conversation(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(f"{base_url}/agent/invoke", json={"message": "What is (2 + 3) * 4?"}) as response:
        assert response.status == 200
        first = await response.json()
    assert first["output"] == "The answer is 20."
    async with http.post(f"{base_url}/agent/invoke", json={"message": "hello", "thread_id": first["thread_id"]}) as response:
        second = await response.json()
    assert second["output"] == "You said: hello" and second["thread_id"] == first["thread_id"]
    async with http.get(f"{base_url}/threads/{first['thread_id']}/state") as response:
        state = await response.json()
    assert len(state["values"]["messages"]) == 6


async def test_agent_stream_sends_tokens_then_done(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(f"{base_url}/agent/stream", json={"message": "SLOW 4"}) as response:
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        events = parse_sse(await response.read())
    assert [e for e, _ in events] == ["metadata", "token", "token", "token", "token", "done"]
    assert "".join(d["content"] for e, d in events if e == "token") == "1 2 3 4"
    assert events[-1][1]["output"] == "1 2 3 4"
    async with http.post(f"{base_url}/agent/stream", json={"message": "RAISE"}) as response:
        events = parse_sse(await response.read())
    assert events[-1] == ("error", {"error": "OfflineModelError", "message": "the offline model was asked to fail (message RAISE)"})


async def test_tokens_arrive_spread_out_not_buffered(http: aiohttp.ClientSession, base_url: str) -> None:
    # 0.01 s per token: 40 tokens take ≥ 0.4 s, and the first must arrive well before the last.
    body = {"assistant_id": "agent", "input": human("SLOW 40"), "stream_mode": "messages-tuple"}
    arrivals = []
    async with http.post(f"{base_url}/runs/stream", json=body) as response:
        async for chunk in response.content.iter_any():
            arrivals.extend([time.monotonic()] * chunk.count(b"event: messages"))
    assert len(arrivals) == 40
    assert arrivals[-1] - arrivals[0] >= 0.3


@pytest.mark.slow
async def test_quiet_runs_get_heartbeats(http: aiohttp.ClientSession, tmp_path) -> None:
    from agent_procs import start_agent

    # One token after 5.5 s of silence: the stream gets an SSE comment, the wait a newline.
    slow = start_agent(tmp_path, token_delay=5.5, name="slow")
    try:
        body = {"assistant_id": "agent", "input": human("SLOW 1"), "stream_mode": "messages-tuple"}
        stream_request = http.post(f"{slow.url}/runs/stream", json=body)
        wait_request = http.post(f"{slow.url}/runs/wait", json={**body, "stream_mode": "values"})
        async with await stream_request as stream, await wait_request as wait:
            streamed, waited = await asyncio.gather(stream.read(), wait.read())
    finally:
        slow.stop()
    assert b"\r\n\r\n: heartbeat\r\n\r\nevent: messages\r\n" in streamed
    assert waited.startswith(b"\n{") and json.loads(waited)["messages"][-1]["content"] == "1"
