"""Broken upstreams: resets, malformed HTTP, wrong Content-Length, random keep-alive closes, restarts.

The upstream here is a raw asyncio TCP server (not aiohttp), so it can send any bytes at all.
Each case asserts what the client sees (a clean error: JSON 502/504 before headers, an aborted
body or an SSE error event after them), that the proxy serves the next request correctly, and
that the connection pool and file descriptors return to their baseline.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import time

import aiohttp
import pytest

from proxy_harness import metric, read_cut, scrape


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def ok_response(body: bytes, *, ctype: bytes = b"application/octet-stream", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


class RawUpstream:
    """A hand-rolled HTTP/1.1 server: reads request heads (and Content-Length bodies) on
    keep-alive connections and answers by path, some answers deliberately broken.

    ``/bytes/N`` answers N bytes seeded by N (correct); ``/sse/N`` N SSE events (correct); the
    other paths are faults, see :meth:`answer`. ``conns`` counts accepted connections,
    ``requests`` the paths it read, ``open`` its currently open connections.
    """

    def __init__(self):
        self.server = None
        self.port = 0
        self.conns = 0
        self.open = 0
        self.requests: list[str] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task] = set()
        self.close_every = 0          # >0: close a keep-alive connection after this many answers
        self.rng = random.Random(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> "RawUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self, *, abort: bool = True) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                _abort_with_rst(w) if abort else w.close()
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        self.open += 1
        self.writers.add(writer)
        task = asyncio.current_task()
        self.tasks.add(task)
        served = 0
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, asyncio.LimitOverrunError):
                    return
                lines = head.split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                clen = 0
                for line in lines[1:]:
                    if line.lower().startswith(b"content-length:"):
                        clen = int(line.split(b":", 1)[1])
                body = await reader.readexactly(clen) if clen else b""
                self.requests.append(path.decode())
                keep = await self.answer(method.decode(), path.decode(), body, writer)
                served += 1
                if not keep or (self.close_every and served % self.close_every == 0):
                    writer.close()
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # CancelledError: stop() ends every connection task; nothing to report
        finally:
            self.tasks.discard(task)
            self.open -= 1
            self.writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        """Write the answer for ``path``; return whether the connection stays open."""
        parts = path.split("?")[0].strip("/").split("/")
        kind = parts[0]
        arg = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if kind == "bytes":
            w.write(ok_response(random.Random(arg).randbytes(arg)))
        elif kind == "sink":
            w.write(ok_response(hashlib.sha256(body).hexdigest().encode()))
        elif kind == "sse":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(arg):
                ev = b"event: values\r\ndata: {\"i\": %d}\r\n\r\n" % i
                w.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await w.drain()
                await asyncio.sleep(0.01)
            w.write(b"0\r\n\r\n")
        elif kind == "reset_mid":          # declared 100000 bytes, sends 20000, then RST
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n")
            w.write(b"x" * 20000)
            await w.drain()
            await asyncio.sleep(0.05)
            _abort_with_rst(w)
            return False
        elif kind == "reset_small":        # small declared body cut by RST
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await w.drain()
            await asyncio.sleep(0.05)
            _abort_with_rst(w)
            return False
        elif kind == "reset_sse":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            ev = b"event: values\r\ndata: {\"i\": 0}\r\n\r\n"
            w.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            await w.drain()
            await asyncio.sleep(0.05)
            _abort_with_rst(w)
            return False
        elif kind == "reset_head":          # RST before any response byte
            _abort_with_rst(w)
            return False
        elif kind == "garbage_status":
            w.write(b"HTTP/1.1 2x0 NOPE\r\nContent-Length: 2\r\n\r\nok")
        elif kind == "not_http":
            w.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        elif kind == "bad_header":
            w.write(b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\nContent-Length: 2\r\n\r\nok")
        elif kind == "double_cl":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk")
        elif kind == "cl_and_te":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        elif kind == "bad_chunk":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n")
        elif kind == "cl_short":
            # declares 5, sends 5 + a whole second response: the classic response desync
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
        elif kind == "cl_short_junk":
            # declares 5, sends 5 + junk that is not HTTP
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and some more bytes")
        elif kind == "cl_long":             # declares 100, sends 10, closes (FIN)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await w.drain()
            return False
        elif kind == "cl_long_big":         # declares 1 MiB, sends 200 KiB, closes (FIN)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n"
                    + b"y" * 200_000)
            await w.drain()
            return False
        elif kind == "cl_long_stall":       # declares 100, sends 10, then nothing
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await w.drain()
            await asyncio.sleep(5)
            return False
        elif kind == "early_hints":         # 103 and a stray 100 before the real answer
            w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(ok_response(b"the real answer"))
        elif kind == "switch":              # 101 to a request that asked for no upgrade
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\nraw")
            await w.drain()
            return False
        elif kind == "huge_headers":        # an endless header block (2 MB)
            w.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(2000):
                if w.is_closing():
                    return False
                w.write(b"X-H%d: %s\r\n" % (i, b"v" * 1000))
                if i % 50 == 0:
                    await w.drain()
            w.write(b"Content-Length: 2\r\n\r\nok")
        elif kind == "close_after":         # a correct answer, then the keep-alive connection closes
            w.write(ok_response(b"fine"))
            await w.drain()
            return False
        else:
            w.write(ok_response(b"default"))
        await w.drain()
        return True


@pytest.fixture
async def raw_upstream():
    up = await RawUpstream().start()
    try:
        yield up
    finally:
        await up.stop()


OVERRIDES = {"timeouts": {"first_byte": "2s", "idle": "500ms", "request": "5s"},
             "upstream": {"keepalive_timeout": "30s"},
             "circuit_breaker": {"enabled": False}, "probes": []}


async def pool_stats(session, p) -> dict:
    async with session.get(p.admin + "/status") as r:
        return (await r.json())["upstream_pool"]


async def assert_serves(session, p, n: int = 1000) -> None:
    async with session.get(p.url + f"/bytes/{n}") as r:
        assert r.status == 200
        assert await r.read() == random.Random(n).randbytes(n)


async def settle(session, p, up: RawUpstream, timeout: float = 3.0) -> dict:
    """Wait until nothing is in flight; returns the pool stats."""
    deadline = time.monotonic() + timeout
    while True:
        st = await pool_stats(session, p)
        # idle pooled connections the upstream already closed are dropped lazily (next acquire or
        # the sweeper), so ``open`` may exceed the upstream's count; nothing may be busy
        if (st["waiting"] == 0 and st["open"] == st["idle"]) or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.05)


async def expect_json_error(r: aiohttp.ClientResponse, status: int, etype: str) -> dict:
    assert r.status == status, await r.text()
    assert r.headers["Content-Type"].startswith("application/json")
    err = (await r.json())["error"]
    assert err["type"] == etype and err["message"] and err["request_id"] == r.headers["X-Request-ID"]
    return err


BEFORE_HEADERS = [
    ("reset_head", 502, "upstream_reset"),
    ("reset_small", 502, "upstream_reset"),       # small bodies are gathered before answering
    ("garbage_status", 502, "upstream_protocol_error"),
    ("not_http", 502, "upstream_protocol_error"),
    ("bad_header", 502, "upstream_protocol_error"),
    ("double_cl", 502, "upstream_protocol_error"),
    ("cl_and_te", 502, "upstream_protocol_error"),
    ("cl_long", 502, "upstream_reset"),
    ("cl_long_stall", 504, "upstream_timeout"),
    ("switch", 502, "upstream_protocol_error"),
    ("huge_headers", 502, "upstream_protocol_error"),
]


async def test_broken_answers_before_headers_are_clean_json_errors(raw_upstream, make_proxy, session):
    p = make_proxy(raw_upstream.url, OVERRIDES)
    await assert_serves(session, p)
    fds0 = p.num_fds()
    for path, status, etype in BEFORE_HEADERS:
        # POST: never retried, so each fault reaches the client exactly once
        async with session.post(p.url + "/" + path, data=b"q") as r:
            await expect_json_error(r, status, etype)
        await assert_serves(session, p)
    st = await settle(session, p, raw_upstream)
    assert st["waiting"] == 0 and st["open"] == st["idle"] <= 1
    assert p.num_fds() <= fds0 + 1
    assert "Traceback" not in p.stderr()


AFTER_HEADERS = ["reset_mid", "cl_long_big", "bad_chunk"]
# length-delimited answers up to limits.max_buffered_response_bytes are read whole before the client
# gets anything, so a body broken upstream becomes a clean 502 instead of a cut 200
BUFFERED = {"reset_mid": "upstream_reset", "cl_long_big": "upstream_reset"}


async def test_broken_bodies_after_headers_are_never_passed_off_as_complete(raw_upstream, make_proxy, session):
    for over in ({}, {"limits": {"max_buffered_response_bytes": 0}}):  # buffered, then streamed
        p = make_proxy(raw_upstream.url, {**OVERRIDES, **over})
        for path in AFTER_HEADERS:
            async with session.post(p.url + "/" + path, data=b"q") as r:
                if path in BUFFERED and not over:
                    await expect_json_error(r, 502, BUFFERED[path])
                    continue
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
            await assert_serves(session, p)
    st = await settle(session, p, raw_upstream)
    assert st["waiting"] == 0 and st["open"] == st["idle"] <= 1
    s = await scrape(p.admin)
    assert metric(s, "sidecar_upstream_errors_total") >= len(AFTER_HEADERS)
    assert "Traceback" not in p.stderr()


async def test_sse_reset_mid_stream_ends_with_an_error_event(raw_upstream, make_proxy, session):
    p = make_proxy(raw_upstream.url, OVERRIDES)
    async with session.get(p.url + "/reset_sse") as r:
        assert r.status == 200
        body = await read_cut(r)
    assert b'data: {"i": 0}' in body
    tail = body.replace(b"\r\n", b"\n").rstrip().rsplit(b"\n\n", 1)[-1]
    assert tail.startswith(b"event: error\ndata: ") and b"upstream_reset" in tail
    await assert_serves(session, p)


@pytest.mark.parametrize("path", ["cl_short", "cl_short_junk"])
async def test_extra_bytes_after_a_response_never_reach_the_next_client(raw_upstream, make_proxy, session, path):
    """An upstream that sends more than its Content-Length must not desynchronise the pool:
    the surplus is neither appended to this answer nor served as the answer to the next request."""
    p = make_proxy(raw_upstream.url, OVERRIDES)
    async with session.get(p.url + "/" + path) as r:
        assert r.status == 200
        assert await r.read() == b"hello"
    for _ in range(3):
        async with session.get(p.url + "/default") as r:
            assert r.status == 200
            assert await r.read() == b"default"
    await assert_serves(session, p)
    st = await settle(session, p, raw_upstream)
    assert st["open"] == st["idle"] and st["waiting"] == 0


async def test_upstream_closing_keepalive_connections_at_random(raw_upstream, make_proxy, session):
    """Keep-alive connections the upstream closes right after an answer: idempotent requests on
    a just-closed pooled connection are retried on a fresh one; the client sees only 200s."""
    raw_upstream.close_every = 1
    p = make_proxy(raw_upstream.url, OVERRIDES)
    statuses = []
    for i in range(60):
        n = 100 + i
        async with session.get(p.url + f"/bytes/{n}") as r:
            statuses.append(r.status)
            assert await r.read() == random.Random(n).randbytes(n)
        if i % 3 == 0:
            await asyncio.sleep(0.01)  # let some closes land while the connection sits idle
    assert statuses == [200] * 60
    raw_upstream.close_every = 0
    st = await settle(session, p, raw_upstream)
    assert st["waiting"] == 0 and st["open"] == st["idle"] <= 1


async def test_upstream_restart_while_streams_run(raw_upstream, make_proxy, session):
    """Streams in flight when the upstream dies end with an SSE error event; requests while it is
    down get 502; once it is back on the same port the proxy serves again, pool back to normal."""
    p = make_proxy(raw_upstream.url, OVERRIDES)
    port = raw_upstream.port

    async def stream():
        async with session.get(p.url + "/sse/500") as r:
            assert r.status == 200
            return await read_cut(r)

    tasks = [asyncio.create_task(stream()) for _ in range(5)]
    await asyncio.sleep(0.3)
    await raw_upstream.stop()
    bodies = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for b in bodies:
        assert b"event: error" in b and b"upstream_reset" in b
    async with session.get(p.url + "/bytes/10") as r:
        await expect_json_error(r, 502, "upstream_unreachable")
    fresh = await RawUpstream().start(port)
    try:
        await assert_serves(session, p)
        async with session.get(p.url + "/sse/5") as r:
            assert (await r.read()).count(b"event: values") == 5
        st = await settle(session, p, fresh)
        assert st["waiting"] == 0 and st["open"] == st["idle"] <= 5
    finally:
        await fresh.stop()


async def test_interim_1xx_answers_are_skipped(raw_upstream, make_proxy, session):
    p = make_proxy(raw_upstream.url, OVERRIDES)
    for _ in range(3):  # on the same pooled connection each time
        async with session.get(p.url + "/early_hints") as r:
            assert r.status == 200
            assert await r.read() == b"the real answer"
    await assert_serves(session, p)
    assert raw_upstream.conns == 1
