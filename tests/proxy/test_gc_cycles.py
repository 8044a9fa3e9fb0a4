"""An ended exchange leaves nothing for the garbage collector: whatever the upstream or the client
did, its objects die by reference counting, not in reference cycles (proxy/gcpolicy.py's premise).

A cycle would keep a whole exchange (request, connection, parser, transport, frames) until a
collection finds it: under an error storm, ~40 objects per failed request for the young
collections to scan and, for those older than a young collection, for the full one on its timer.
Each case sends enough exchanges that one cyclic object each would be thousands, so the young
collections run and count them (``/status`` ``gc``); the full collection then runs on its 1 s
timer and counts what was promoted. The real proxy and upstream, real clients.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp
import pytest

from proxy_harness import deep_merge, free_port

N = 300                      # exchanges per case
PER_EXCHANGE = 0.1           # cyclic garbage allowed per exchange (a leak is 10-40)
THREAD = "00000000-0000-0000-0000-00000000000a"


async def gc_status(p) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(p.admin + "/status") as r:
            return (await r.json())["gc"]


def collected(st: dict) -> int:
    return sum(g["collected"] for g in st["generations"])


async def cyclic_garbage(p, drive) -> float:
    """Objects the collector freed per exchange while ``drive()`` ran ``N`` of them, the full
    collection included (``server.gc_full_interval: 1s``)."""
    before = await gc_status(p)
    await drive()
    full = before["generations"][2]["collections"]
    deadline = time.monotonic() + 2.5
    while True:  # the timer's full collection (it looks every second), when a young one promoted anything
        after = await gc_status(p)
        if after["generations"][2]["collections"] > full or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return (collected(after) - collected(before)) / N


async def requests(url: str, path: str, *, n: int = N, method: str = "GET", body: bytes | None = None,
                   concurrency: int = 20, read: bool = True, cut_after: int | None = None,
                   fresh: bool = False) -> list:
    """``n`` requests, ``concurrency`` at a time; each result is the status (or the exception's
    class name). ``cut_after``: the client leaves after that many body bytes; ``fresh``: each
    request on a connection of its own, closed after it."""
    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=0, force_close=fresh)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def one():
            async with sem:
                try:
                    async with s.request(method, url + path, data=body) as r:
                        if cut_after is not None:
                            await r.content.readexactly(cut_after)
                            r.close()
                        elif read:
                            await r.read()
                        return r.status
                except (aiohttp.ClientError, asyncio.IncompleteReadError) as e:
                    return type(e).__name__
        return await asyncio.gather(*(one() for _ in range(n)))


def gc_proxy(make_proxy, upstream_url: str, extra: dict | None = None):
    cfg = {"server": {"gc_full_interval": "1s"}, "circuit_breaker": {"enabled": False},
           "retries": {"attempts": 1}}
    return make_proxy(upstream_url, deep_merge(cfg, extra or {}))


@contextlib.asynccontextmanager
async def resetting_upstream():
    """The URL of an upstream that accepts, reads the request and resets the connection: the
    storm a failing LLM backend makes, each request on a fresh upstream connection."""
    async def reset(reader, writer):
        await reader.read(1)
        writer.transport.abort()
    srv = await asyncio.start_server(reset, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        srv.close()


CASES = {
    # what the exchange is: (path, method, body, config, expected statuses, client behaviour)
    "whole answer": ("/anything", "GET", None, {}, {200}, {}),
    "request body": ("/echo", "POST", b"x" * 5000, {}, {200}, {}),
    "stream": ("/sse?events=3&interval=0.005", "GET", None, {}, {200}, {}),
    "stream, a client connection each": ("/sse?events=3&interval=0.005", "GET", None, {}, {200}, {"fresh": True}),
    "whole answer, a client connection each": ("/anything", "GET", None, {}, {200}, {"fresh": True}),
    "stream cut by the upstream": ("/reset?ctype=text/event-stream", "GET", None, {}, {200, "ClientPayloadError"}, {}),
    "answer cut by the upstream": ("/reset", "GET", None, {}, {502}, {}),
    "first-byte timeout": ("/hang", "GET", None, {"timeouts": {"first_byte": "0.1s"}}, {504}, {"concurrency": 100}),
    "idle timeout in a stream": ("/silence?ctype=text/event-stream", "GET", None, {"timeouts": {"idle": "0.1s"}},
                                 {200, "ClientPayloadError"}, {"concurrency": 100}),
    "client leaves a stream": ("/sse?events=100&interval=0.01", "GET", None, {}, {200}, {"cut_after": 20}),
    "LangGraph run with LLM usage": ("/runs/stream", "POST", b'{"input": {}}', {}, {200}, {}),
    "client leaves a run (cancelled)": (f"/threads/{THREAD}/runs/stream?events=100&interval=0.01", "POST", b"{}", {},
                                        {200}, {"cut_after": 20}),
    "streamed request body": ("/sink", "POST", b"x" * 200_000, {}, {200}, {}),
    "shed at the concurrency limit": ("/delay/0.2", "GET", None, {"limits": {"max_concurrent_requests": 4}},
                                      {200, 503}, {"concurrency": 40}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_an_ended_exchange_leaves_no_reference_cycles(upstream, make_proxy, case):
    path, method, body, extra, statuses, client = CASES[case]
    p = gc_proxy(make_proxy, upstream.url, extra)
    got = []

    async def drive():
        got.extend(await requests(p.url, path, method=method, body=body, **client))
    per = await cyclic_garbage(p, drive)
    assert set(got) <= statuses, set(got)
    assert per <= PER_EXCHANGE, f"{case}: {per:.1f} objects in reference cycles per exchange"


async def test_a_refused_upstream_connection_leaves_no_reference_cycles(make_proxy):
    p = gc_proxy(make_proxy, f"http://127.0.0.1:{free_port()}")   # nothing listens there
    got = []

    async def drive():
        got.extend(await requests(p.url, "/anything"))
    per = await cyclic_garbage(p, drive)
    assert set(got) == {502}, set(got)
    assert per <= PER_EXCHANGE, f"{per:.1f} objects in reference cycles per exchange"


@pytest.mark.parametrize("attempts", [1, 2])
async def test_an_upstream_that_resets_every_request_leaves_no_reference_cycles(make_proxy, attempts):
    """Every request reset by the upstream (with a retry: the first attempt's failure is dropped
    by the retry layer, not answered)."""
    async with resetting_upstream() as url:
        p = gc_proxy(make_proxy, url, {"retries": {"attempts": attempts}})
        got = []

        async def drive():
            got.extend(await requests(p.url, "/anything"))
        per = await cyclic_garbage(p, drive)
    assert set(got) == {502}, set(got)
    assert per <= PER_EXCHANGE, f"{per:.1f} objects in reference cycles per exchange"


async def test_malformed_requests_leave_no_reference_cycles(upstream, make_proxy):
    p = gc_proxy(make_proxy, upstream.url)

    async def drive():
        loop = asyncio.get_running_loop()
        for _ in range(N):
            with socket.create_connection(("127.0.0.1", p.port)) as s:
                s.setblocking(False)
                await loop.sock_sendall(s, b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
                assert (await loop.sock_recv(s, 100)).startswith(b"HTTP/1.1 400")
    assert await cyclic_garbage(p, drive) <= PER_EXCHANGE


async def test_memory_stays_flat_through_a_storm_of_upstream_resets(make_proxy):
    """What the cycles cost a user: with them, every failed request kept ~1.25 KiB until the full
    collection (10 min by default): a 3,000-a-second reset storm grew the process by ~110 MiB in
    30 s. Now its RSS stays where it was."""
    async with resetting_upstream() as url:
        p = make_proxy(url, {"circuit_breaker": {"enabled": False}})
        await requests(p.url, "/anything", n=500, concurrency=32)   # warm-up: pools, caches, arenas
        rss0 = p.rss_bytes()
        got = await requests(p.url, "/anything", n=8000, concurrency=32)
        grown = p.rss_bytes() - rss0
    assert set(got) == {502}, set(got)
    assert grown < 3 << 20, f"RSS grew {grown / 2**20:.1f} MiB over 8,000 failed requests"


async def test_websocket_sessions_leave_no_reference_cycles(upstream, make_proxy):
    """aiohttp relays WebSockets (proxy/websocket.py): 150 sessions, a message each. A cycle per
    session would be thousands of objects; what a few admin requests leave is tens."""
    p = gc_proxy(make_proxy, upstream.url)

    async def drive():
        async with aiohttp.ClientSession() as s:
            for i in range(150):
                async with s.ws_connect(p.url + "/threads/t1/stream/events") as ws:
                    await ws.send_str(f"m{i}")
                    assert (await ws.receive(timeout=5)).data == f"echo:m{i}"
    assert await cyclic_garbage(p, drive) * N < 150
