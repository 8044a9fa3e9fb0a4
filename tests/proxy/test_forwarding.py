"""Foundation: faithful, streaming pass-through."""
from __future__ import annotations

import asyncio
import io
import hashlib
import json
import random
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy_harness import free_port, metric, scrape

MiB = 1 << 20


async def test_get_passes_method_path_query_headers(proxy, upstream, session):
    url = URL(proxy.url + "/anything/x%20y?a=1&b=%2F", encoded=True)  # sent exactly as written
    async with session.get(url, headers={"X-Custom": "v1"}) as r:
        assert r.status == 200
        body = await r.json()
        assert r.headers["X-Upstream"] == "fault"
    assert body["path"] == "/anything/x%20y?a=1&b=%2F"
    seen = upstream.seen[-1]
    assert seen["headers"]["X-Custom"] == "v1"
    assert seen["method"] == "GET"


async def test_every_method_passes(proxy, upstream, session):
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        async with session.request(method, proxy.url + "/m", data=b"abc" if method in ("POST", "PUT", "PATCH") else None) as r:
            assert r.status == 200, method
            assert (await r.json())["method"] == method
    async with session.head(proxy.url + "/m") as r:
        assert r.status == 200
        assert await r.read() == b""
    # the connection is still good after a HEAD (no body was expected on it)
    async with session.get(proxy.url + "/after-head") as r:
        assert (await r.json())["path"] == "/after-head"


async def test_hop_by_hop_stripped_forwarded_added_request_id_round_trips(proxy, upstream):
    # a raw request, so the hop-by-hop headers are exactly what we send
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /hop HTTP/1.1\r\nHost: public.example:443\r\nConnection: keep-alive, X-Secret-Hop\r\n"
                 b"Keep-Alive: timeout=5\r\nX-Secret-Hop: 1\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9v\r\n"
                 b"Upgrade: h2c\r\nX-Forwarded-For: 10.1.2.3\r\nX-Request-ID: req-123.abc\r\n"
                 b"X-Keep: yes\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"X-Request-ID: req-123.abc" in head
    h = {k.lower(): v for k, v in upstream.seen[-1]["headers"].items()}
    for hop in ("keep-alive", "x-secret-hop", "te", "proxy-authorization", "upgrade"):
        assert hop not in h, hop
    assert h["x-keep"] == "yes"
    assert h["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "public.example:443"
    assert h["x-request-id"] == "req-123.abc"
    assert h["host"] == "public.example:443"  # upstream.preserve_host (default true)


async def test_request_id_generated_when_absent_or_unusable(proxy, upstream, session):
    async with session.get(proxy.url + "/rid") as r:
        rid = r.headers["X-Request-ID"]
    assert rid and upstream.seen[-1]["headers"]["X-Request-ID"] == rid
    for bad in ("x" * 119, "tab\there", "caf\u00e9"):  # too long for an exemplar, not printable ASCII
        async with session.get(proxy.url + "/rid", headers={"X-Request-ID": bad}) as r:
            rid2 = r.headers["X-Request-ID"]
        assert rid2 != bad and rid2 != rid
        assert upstream.seen[-1]["headers"]["X-Request-ID"] == rid2
    async with session.get(proxy.url + "/next") as r:
        assert r.status == 200


async def test_printable_client_request_id_is_kept_and_escaped_in_logs(proxy, upstream, session):
    """langgraph-api stores the id with the run: a client's own id (spaces, quotes and all) must
    reach it unchanged; the access log escapes it instead of replacing it."""
    odd = 'order 42 "retry" \\ {x}'
    async with session.get(proxy.url + "/rid", headers={"X-Request-ID": odd}) as r:
        assert r.status == 200 and r.headers["X-Request-ID"] == odd
    assert upstream.seen[-1]["headers"]["X-Request-ID"] == odd
    edge = "y" * 118
    async with session.get(proxy.url + "/rid", headers={"X-Request-ID": edge}) as r:
        assert r.headers["X-Request-ID"] == edge
    for _ in range(50):
        lines = [x for x in proxy.access_lines() if x.get("request_id") in (odd, edge)]
        if len(lines) == 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(x["request_id"] for x in lines) == sorted([odd, edge])  # every line still parses as JSON
    s = await scrape(proxy.admin)
    assert metric(s, "sidecar_requests_total", route="other", code="200") >= 2


def _expected_bytes_digest(n: int) -> str:
    """What the upstream's /bytes/N sends: Random(N).randbytes in 64 KiB steps."""
    rnd = random.Random(n)
    h = hashlib.sha256()
    left = n
    while left:
        k = min(65536, left)
        h.update(rnd.randbytes(k))
        left -= k
    return h.hexdigest()


async def _rss_sampler(proxy, samples, stop):
    while not stop.is_set():
        samples.append(proxy.rss_bytes())
        await asyncio.sleep(0.05)


async def test_50mib_bodies_byte_exact_both_ways_with_flat_memory(proxy, upstream, session):
    size = 50 * MiB
    baseline = proxy.rss_bytes()
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_rss_sampler(proxy, samples, stop))
    # up: a streamed upload (chunked) hashed by the upstream
    rnd = random.Random(7)
    h = hashlib.sha256()

    async def gen():
        left = size
        while left:
            k = min(256 * 1024, left)
            b = rnd.randbytes(k)
            h.update(b)
            left -= k
            yield b
    async with session.post(proxy.url + "/sink", data=gen()) as r:
        up = await r.json()
    assert up == {"size": size, "sha256": h.hexdigest()}
    # up with Content-Length, echoed back down
    payload = random.Random(8).randbytes(size)
    got = hashlib.sha256()
    n = 0
    async with session.post(proxy.url + "/echo", data=io.BytesIO(payload)) as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            got.update(chunk)
            n += len(chunk)
    assert n == size and got.hexdigest() == hashlib.sha256(payload).hexdigest()
    # down: a 50 MiB generated body
    got = hashlib.sha256()
    async with session.get(proxy.url + f"/bytes/{size}") as r:
        assert r.headers["Content-Length"] == str(size)
        async for chunk in r.content.iter_chunked(1 << 20):
            got.update(chunk)
    assert got.hexdigest() == _expected_bytes_digest(size)
    stop.set()
    await sampler
    peak = max(samples)
    # 150 MiB moved; the proxy never held more than a few MiB of it
    assert peak - baseline < 24 * MiB, (baseline, peak)


async def test_download_is_exact(proxy, upstream, session):
    size = 3 * MiB + 17
    async with session.get(proxy.url + f"/bytes/{size}") as r:
        body = await r.read()
    assert len(body) == size and hashlib.sha256(body).hexdigest() == _expected_bytes_digest(size)


async def test_sse_events_arrive_with_upstream_timing(proxy, upstream, session):
    arrivals = []
    t0 = time.monotonic()
    async with session.get(proxy.url + "/sse?events=3&interval=1") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in r.headers
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\r\n\r\n" in buf:
                ev, buf = buf.split(b"\r\n\r\n", 1)
                arrivals.append((time.monotonic() - t0, ev))
    assert [a[1].split(b"\r\n")[0] for a in arrivals] == [b"event: metadata"] + [b"event: values"] * 3
    gaps = [arrivals[i + 1][0] - arrivals[i][0] for i in range(len(arrivals) - 1)]
    # each values event comes ~1 s after the previous one, not all at the end
    for g in gaps:
        assert 0.8 < g < 1.5, gaps


async def test_large_sse_events_arrive_when_sent_not_when_a_receive_window_reopens(proxy, upstream, session):
    """A LangGraph ``values`` event carries the whole state: tens or hundreds of KB. The upstream
    socket's receive buffer must hold more than one loopback segment (~64 KiB), or the kernel
    advertises a zero window whenever it is half full and the upstream waits on its persist timer
    (``proxy/upstream.py`` ``_RCVBUF``). At 16 KiB, on a pooled connection that had just carried
    streams of small events, the 40 KB events of the next stream came up to ~2.2 s late. Each
    event carries the time it was written; it must arrive well within half a second of it."""
    async def lateness(query: str) -> list[float]:
        late = []
        async with session.get(proxy.url + "/sse?" + query) as r:
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\r\n\r\n" in buf:
                    ev, buf = buf.split(b"\r\n\r\n", 1)
                    if ev.startswith(b"event: values"):
                        late.append(time.time() - json.loads(ev.split(b"data: ", 1)[1])["t"])
        return late

    for query in ("events=10&interval=0&size=4000", "events=10&interval=0.05&size=4000",
                  "events=10&interval=0&size=20000", "events=10&interval=0.05&size=40000",
                  "events=4&interval=0.1&size=500000"):
        late = await lateness(query)  # one after another: the same pooled upstream connection
        assert len(late) == int(query.split("&")[0][7:]) and max(late) < 0.5, (query, late)


async def _sse_read_with_stalls(port: int, path: str, rnd: random.Random) -> list[int]:
    """A client with a 4 KiB receive buffer that stalls now and then: the ``i`` of each values
    event it gets, in the order it gets them (chunked framing decoded by hand)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=s, limit=2 ** 16)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        seen, buf = [], b""
        while True:
            n = int((await asyncio.wait_for(reader.readline(), 10)).strip(), 16)
            data = await asyncio.wait_for(reader.readexactly(n + 2), 10)
            if n == 0:
                return seen
            buf += data[:-2]
            while b"\r\n\r\n" in buf:
                ev, buf = buf.split(b"\r\n\r\n", 1)
                if ev.startswith(b"event: values"):
                    seen.append(json.loads(ev.split(b"data: ", 1)[1])["i"])
            if rnd.random() < 0.3:
                await asyncio.sleep(rnd.random() * 0.02)
    finally:
        writer.close()


async def test_events_keep_their_order_when_clients_stall_now_and_then(proxy, upstream):
    """The relay writes an event in the upstream's read while its client keeps up, and from its
    own frame, within the write timeout, while the client's buffer is full; reads that come
    meanwhile queue for the frame. Five streams of 200 events back to back (100 B to 60 KB each)
    to clients that stall now and then (tens of switches between the two paths): every event
    arrives, once, in order, and each answer ends whole."""
    rnd = random.Random(7)
    got = await asyncio.gather(*(_sse_read_with_stalls(proxy.port, f"/sse?events=200&interval=0&size={k * 15000 + 100}", rnd)
                                 for k in range(5)))
    for seen in got:
        assert seen == list(range(200)), seen[:10]


async def test_client_disconnect_closes_upstream_within_1s(proxy, upstream, session):
    r = await session.get(proxy.url + "/sse?events=100&interval=0.5")
    await r.content.readuntil(b"\r\n\r\n")
    t0 = time.monotonic()
    r.close()  # the client goes away mid-stream
    while not upstream.disconnects and time.monotonic() - t0 < 3:
        await asyncio.sleep(0.01)
    assert upstream.disconnects, "upstream never saw the disconnect"
    assert time.monotonic() - t0 < 1.0
    async with session.get(proxy.url + "/next") as r2:
        assert r2.status == 200


async def test_connect_failure_is_502_json_with_request_id(make_proxy, session):
    dead = f"http://127.0.0.1:{free_port()}"
    p = make_proxy(dead, {"retries": {"attempts": 1}})
    async with session.get(p.url + "/x", headers={"X-Request-ID": "rid-502"}) as r:
        assert r.status == 502
        body = await r.json()
    assert body["error"]["type"] == "upstream_unreachable"
    assert body["error"]["request_id"] == "rid-502"
    assert "connect" in body["error"]["message"]
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_upstream_errors_total", kind="connect") == 1
    assert metric(samples, "sidecar_requests_total", code="502") == 1


async def test_next_request_works_after_connect_failure(upstream, make_proxy, session):
    port = free_port()
    p = make_proxy(f"http://127.0.0.1:{port}", {"retries": {"attempts": 1}, "circuit_breaker": {"enabled": False}})
    async with session.get(p.url + "/x") as r:
        assert r.status == 502
    # the upstream comes up on that port: the very next request works
    await upstream.stop()
    await upstream.start(port)
    async with session.get(p.url + "/x") as r:
        assert r.status == 200


async def test_upstream_path_prefix_and_keepalive_reuse(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    for i in range(20):
        async with session.get(p.url + f"/k{i}") as r:
            assert r.status == 200
    st = await (await session.get(p.admin + "/status")).json()
    assert st["upstream_pool"]["open"] <= 2  # reused, not one connection per request


async def test_admin_paths_only_on_admin_port(proxy, upstream, session):
    async with session.get(proxy.url + "/metrics") as r:  # forwarded to the upstream like any path
        assert (await r.json())["path"] == "/metrics"
    async with session.get(proxy.admin + "/anything") as r:
        assert r.status == 404
    async with session.get(proxy.admin + "/healthz") as r:
        assert r.status == 200
    async with session.get(proxy.admin + "/readyz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ready"


async def test_access_log_line_per_request_without_secrets(proxy, upstream, session):
    async with session.get(proxy.url + "/threads/abc/state?token=s3cret",
                           headers={"Authorization": "Bearer sk-topsecret", "X-Request-ID": "log-1"}) as r:
        assert r.status == 200
    for _ in range(50):
        lines = [x for x in proxy.access_lines() if x.get("request_id") == "log-1"]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "thread_state" and line["status"] == 200 and line["method"] == "GET"
    assert {"duration", "upstream_duration", "request_bytes", "response_bytes", "outcome", "time"} <= set(line)
    everything = proxy.stdout() + proxy.stderr()
    assert "sk-topsecret" not in everything and "s3cret" not in everything and "abc" not in json.dumps(line)


async def test_access_log_lines_of_a_burst_are_whole_one_per_request(proxy, upstream, session):
    """The lines of one record batch are written together (AccessLog.emit): 400 requests at once
    still give one whole JSON line each, none split or merged, and the last ones come out without
    waiting for more traffic."""
    ids = [f"burst-{i}" for i in range(400)]

    async def one(rid):
        async with session.get(proxy.url + "/ok", headers={"X-Request-ID": rid}) as r:
            assert r.status == 200
            await r.read()

    await asyncio.gather(*(one(rid) for rid in ids))
    for _ in range(50):
        raw = proxy.stdout()
        if raw.count('"request_id":"burst-') >= len(ids):
            break
        await asyncio.sleep(0.05)
    burst = [line for line in raw.splitlines() if '"request_id":"burst-' in line]
    parsed = [json.loads(line) for line in burst]  # every line whole JSON on its own
    assert sorted(x["request_id"] for x in parsed) == sorted(ids)
    assert all(x["status"] == 200 and x["route"] == "ok" for x in parsed)


class _UrlBuilder:
    """An upstream that, like langgraph-api, builds absolute URLs from the Host it receives and
    names itself in Server; mounted under /base so the sidecar's upstream.url carries a path."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []  # (Host, raw path)
        self.cancels: list[str] = []

    async def start(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def handle(self, request):
        self.seen.append((request.headers.get("Host", ""), request.raw_path))
        if request.path.endswith("/cancel"):
            self.cancels.append(request.path_qs)
            return web.Response(status=202)
        if request.path.endswith("/runs/stream"):
            # as langgraph-api behind a mount: the prefix is in the URL it was sent to
            tid = request.path.split("/")[3]
            resp = web.StreamResponse(headers={
                "Content-Type": "text/event-stream",
                "Content-Location": f"/base/threads/{tid}/runs/00000000-0000-0000-0000-000000000002"})
            await resp.prepare(request)
            for i in range(100):
                await resp.write(b"event: values\r\ndata: %d\r\n\r\n" % i)
                await asyncio.sleep(0.1)
            return resp
        host = request.headers.get("Host", "")
        return web.Response(status=307, headers={
            "Server": "uvicorn",
            "Location": f"http://{host}{request.path.rstrip('/')}?q=1",
            "Content-Location": f"http://127.0.0.1:{self.port}/base/runs/42",
            "Link": f"<http://{host}/other>"})  # not a URL header we map: passes as it is

    async def stop(self):
        await self.runner.cleanup()


@pytest.fixture
async def url_builder():
    up = await _UrlBuilder().start()
    yield up
    await up.stop()


@pytest.mark.parametrize("preserve", [True, False])
async def test_server_built_urls_name_the_client_address(url_builder, make_proxy, session, preserve):
    """upstream.preserve_host sends the client's Host; either way Location/Content-Location that
    name the upstream come back as paths on the client's origin, the base path taken off."""
    p = make_proxy(f"http://127.0.0.1:{url_builder.port}/base", {"upstream": {"preserve_host": preserve}})
    async with session.get(p.url + "/threads/", allow_redirects=False,
                           headers={"Host": "agents.example.com"}) as r:
        assert r.status == 307
        assert r.headers["Server"] == "uvicorn"  # passed through, not aiohttp's
        assert r.headers["Location"] == "/threads?q=1"
        assert r.headers["Content-Location"] == "/runs/42"
        expected_host = "agents.example.com" if preserve else f"127.0.0.1:{url_builder.port}"
        assert r.headers["Link"] == f"<http://{expected_host}/other>"
    assert url_builder.seen[-1] == (expected_host, "/base/threads/")
    async with session.get(p.url + "/next", allow_redirects=False) as r:
        assert r.status == 307 and r.headers["Location"] == "/next?q=1"


async def test_base_path_applies_to_user_traffic_and_run_cancels(url_builder, make_proxy, session):
    """upstream.url's path prefixes every request the sidecar sends: user traffic and its own
    run cancels, built by the same function (headers.upstream_head)."""
    tid, rid = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
    p = make_proxy(f"http://127.0.0.1:{url_builder.port}/base", {"routes": [
        {"name": "run_stream_cancel", "path": "/threads/{thread_id}/runs/stream", "methods": ["POST"],
         "cancel_on_disconnect": True, "run_kind": "stream"}]})
    r = await session.post(p.url + f"/threads/{tid}/runs/stream", json={"assistant_id": "a"})
    assert r.status == 200
    assert r.headers["Content-Location"] == f"/threads/{tid}/runs/{rid}"  # base path taken off
    await r.content.readuntil(b"\r\n\r\n")
    r.close()
    for _ in range(100):
        if url_builder.cancels:
            break
        await asyncio.sleep(0.02)
    assert url_builder.cancels == [f"/base/threads/{tid}/runs/{rid}/cancel?action=interrupt"]
    assert url_builder.seen[0][1] == f"/base/threads/{tid}/runs/stream"


def _data_segments_in(sock) -> int | None:
    """TCP data segments this socket has received (Linux ``tcp_info.tcpi_data_segs_in``)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (AttributeError, OSError):
        return None
    return int.from_bytes(info[152:156], "little") if len(info) >= 156 else None


async def test_a_streams_head_goes_out_with_its_first_event_when_they_come_together(make_proxy):
    """nginx writes a stream's head and its first body bytes in one send when they come in one
    read; so does the sidecar (forward.py ``HeadWithFirstBytes``): at thousands of stream
    openings a second, a segment and a read fewer for every client. A head whose first event is
    not there yet is never held back for it: its client gets it at once and waits for the event
    (an LLM's first token can take seconds). Counted on the client's socket with
    ``tcp_info.tcpi_data_segs_in``."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    event = b"data: {\"token\": \"a\"}\r\n\r\n"
    framed = b"%x\r\n%s\r\n" % (len(event), event)
    go = {}

    async def serve(reader, writer):
        try:
            line = await reader.readuntil(b"\r\n\r\n")
            together = b"together" in line.split(b"\r\n", 1)[0]
            gate = go[together] = asyncio.Event()
            end = go["end", together] = asyncio.Event()  # before the answer: the client sets it after
            if together:
                writer.write(head + framed)   # one write: the head and the first event
            else:
                writer.write(head)            # the head alone; the first event when the test says
                await writer.drain()
                await gate.wait()
                writer.write(framed)
            await writer.drain()
            await end.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        p = make_proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        host, port = p.url.split("://")[1].rsplit(":", 1)
        for together in (True, False):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                await _head_and_first_event(reader, writer, together, go, framed)
            finally:
                writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def _head_and_first_event(reader, writer, together: bool, go: dict, framed: bytes) -> None:
    """One stream of the test above: its head, its first event (the data segments counted), its end."""
    writer.write(b"GET /sse?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"together" if together else b"apart"))
    got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)   # the head
    assert got.startswith(b"HTTP/1.1 200 ")
    if not together:
        # the head came while the upstream still holds the first event
        assert not go[False].is_set()
        await asyncio.sleep(0.2)
        segs_head = _data_segments_in(writer.get_extra_info("socket"))
        go[False].set()
    assert (await asyncio.wait_for(reader.readexactly(len(framed)), 10)) == framed  # the first event
    await asyncio.sleep(0.2)  # anything else the proxy sent has arrived by now
    segs = _data_segments_in(writer.get_extra_info("socket"))
    if segs is not None:
        if together:
            assert segs == 1, "the head and the first event came in %d segments" % segs
        else:
            assert (segs_head, segs) == (1, 2)
    go["end", together].set()
    assert (await asyncio.wait_for(reader.readexactly(5), 10)) == b"0\r\n\r\n"  # and its end


@pytest.mark.parametrize("pad", [100, 24_000])
async def test_a_streams_last_event_and_its_end_in_one_read_arrive_whole(make_proxy, session, pad):
    """The upstream sends its whole SSE answer, head to final chunk, in one write, so the proxy
    reads the last event together with the end. Small (pad 100): the relay hands what it holds
    to write_eof, one send with the final chunk. Large (pad 24,000, 72 KiB in all): the answer
    comes over several reads, and what the relay holds at the end is the last event's tail, or
    more than 16 KiB that it writes first, before the end (forward.py ``_LAST_WITH_END``). Either
    way the client gets every event whole and a complete chunked body (both fail if the last
    chunk is dropped), and the stream counts as completed with all its events."""
    events = [b"event: values\r\ndata: " + json.dumps({"i": i, "pad": "x" * pad}).encode() + b"\r\n\r\n"
              for i in range(3)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body)

    async def serve(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)  # one write: the head, every event and the end
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        p = make_proxy(f"http://127.0.0.1:{port}")
        for _ in range(2):  # the second on the pooled connection
            async with session.get(p.url + "/sse") as r:
                assert r.status == 200
                got = await r.read()  # aiohttp raises ClientPayloadError on a body without its final chunk
            assert got == b"".join(events)
        samples = await scrape(p.admin, session)
        assert metric(samples, "sidecar_streams_total", outcome="completed") == 2
        assert metric(samples, "sidecar_stream_events_total") == 6
        async with session.get(p.url + "/sse") as r:  # and the proxy serves the next one
            assert (await r.read()) == b"".join(events)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_parked_relay_takes_each_read_through_its_sink_and_wakes_only_when_it_must():
    """A streamed answer's relay parks on the future ``wait_chunk`` gave it; with a sink set
    (``UpstreamConnection.set_sink``, what ``Forwarder._stream`` does once the head is out), the
    bytes of each read are handed to the sink in that read, and the future stays pending: no
    future, task step or coroutine resume per SSE event. The relay wakes when the sink declines
    (a client not reading), at the end, and on a failure; bytes that come while it is not parked
    wait for it, in order, and never reach the sink."""
    from proxy.upstream import UpstreamPool
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = [b"data: %d\n\n" % i for i in range(4)]
    gates = [asyncio.Event() for _ in range(len(events) + 2)]

    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            await writer.drain()
            for i, gate in enumerate(gates):
                await gate.wait()
                if i < len(events):
                    writer.write(b"%x\r\n%s\r\n" % (len(events[i]), events[i]))
                elif i == len(events):
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def until(cond):
        for _ in range(500):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = UpstreamPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connect_timeout=2,
                        max_connections=2, keepalive_timeout=5)
    try:
        conn = await pool.acquire()
        conn.begin(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n", first_byte=5, total=None, total_kind="request",
                   idle=None, head_only=False)
        status, _ = await conn.headers()
        assert status == 200
        took, calls, taking = [], [], [True]

        def sink(c):
            calls.append(len(c.chunks))
            if not taking[0]:
                return False
            took.append(c.take_chunk())
            return True

        conn.set_sink(sink)
        w = conn.wait_chunk()
        assert w is not None and not w.done()
        for i in (0, 1):  # two events, two reads: each taken in its read, the relay still parked
            gates[i].set()
            await until(lambda: len(took) == i + 1)
        assert took == events[:2] and not w.done()
        taking[0] = False  # the sink declines (a client not reading): the relay wakes and takes it
        gates[2].set()
        await asyncio.wait_for(w, 5)
        assert len(calls) == 3 and conn.take_chunk() == events[2]
        taking[0] = True
        gates[3].set()  # the relay has not parked again: the bytes wait for it, the sink is not asked
        await until(lambda: bool(conn.chunks))
        await asyncio.sleep(0.05)
        assert len(calls) == 3 and conn.wait_chunk() is None and conn.take_chunk() == events[3]
        w = conn.wait_chunk()  # parked again; the end wakes it whatever the sink would say
        gates[4].set()
        await asyncio.wait_for(w, 5)
        assert len(calls) == 3 and conn.wait_chunk() is None and conn.take_chunk() is None
        assert conn.reusable()
        conn.set_sink(None)
        pool.release(conn)
    finally:
        gates[-1].set()
        await pool.close()
        server.close()
        await server.wait_closed()
