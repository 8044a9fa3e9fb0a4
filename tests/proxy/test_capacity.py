"""Capacity: the proxy's own limits never turn a healthy upstream into an outage.

Bursts against the shipped defaults, clients that never read, an exhausted pool, reloads under
held limits and an open breaker, retries bounded by ``retries.attempts``: each with the real proxy
process, a real (slow but healthy) upstream and real clients.
"""
from __future__ import annotations

import asyncio
import collections
import json
import signal
import socket
import time

import aiohttp
import pytest

from proxy_harness import metric, scrape, wait_metric

OK_OR_SHED = {200, 503}


async def burst(url: str, n: int, path: str) -> collections.Counter:
    """``n`` concurrent requests on ``n`` connections; counts (status, error type)."""
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        async def one():
            async with s.get(url + path) as r:
                body = await r.read()
                etype = None
                if r.status >= 500:
                    etype = json.loads(body)["error"]["type"]
                    if r.status == 503:
                        assert r.headers.get("Retry-After"), body
                return r.status, etype
        return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))


async def sse_burst(url: str, n: int, path: str) -> collections.Counter:
    """``n`` concurrent SSE streams read to their end; counts (status, how the stream ended)."""
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def one():
            async with s.get(url + path, headers={"Accept": "text/event-stream"}) as r:
                body = await r.read()
                if r.status != 200:
                    return r.status, json.loads(body)["error"]["type"]
                return r.status, "error_event" if b"event: error" in body else body.count(b"event: values")
        return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))


async def healthy_after(p) -> None:
    """Breaker closed, /readyz 200, and the next request is served."""
    async with aiohttp.ClientSession() as s:
        async with s.get(p.admin + "/readyz") as r:
            assert r.status == 200, await r.text()
        async with s.get(p.url + "/anything") as r:
            assert r.status == 200
        async with s.get(p.admin + "/status") as r:
            st = await r.json()
    assert st["breakers"]["upstream"]["state"] == "closed"
    assert st["breakers"]["upstream"]["fail_counter"] == 0


@pytest.mark.parametrize("n", [110, 300, 1000])
async def test_defaults_take_a_burst_against_a_slow_healthy_upstream(upstream, make_proxy, n):
    p = make_proxy(upstream.url)
    got = await burst(p.url, n, "/delay/2")
    assert got == {(200, None): n}, got  # the defaults admit the whole burst: no 5xx at all
    assert len([s for s in upstream.seen if s["path"] == "/delay/2"]) == n
    await healthy_after(p)
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_upstream_errors_total") == 0
    assert metric(samples, "sidecar_timeouts_total") == 0


async def test_a_burst_over_the_request_limit_is_shed_cleanly_never_a_breaker_failure(upstream, make_proxy):
    p = make_proxy(upstream.url, {"limits": {"max_concurrent_requests": 100}})
    got = await burst(p.url, 300, "/delay/1")
    assert set(got) <= {(200, None), (503, "overloaded")}, got
    assert got[(200, None)] >= 100 and got[(503, "overloaded")] >= 100, got
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_shed_total", reason="concurrency") == got[(503, "overloaded")]
    assert metric(samples, "sidecar_circuit_transitions_total") == 0
    await healthy_after(p)


async def test_a_thousand_sse_streams_into_the_defaults(upstream, make_proxy):
    p = make_proxy(upstream.url)
    got = await sse_burst(p.url, 1000, "/sse?events=4&interval=0.5")
    assert got == {(200, 4): 1000}, got
    await healthy_after(p)
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_streams_total", outcome="completed") == 1000


async def test_an_exhausted_pool_is_a_clean_503_not_retried_not_an_upstream_failure(upstream, make_proxy):
    p = make_proxy(upstream.url, {"upstream": {"max_connections": 2, "pool_timeout": "200ms"},
                                  "circuit_breaker": {"fail_max": 2}})
    got = await burst(p.url, 6, "/delay/1")
    assert got == {(200, None): 2, (503, "pool_exhausted"): 4}, got
    assert len([s for s in upstream.seen if s["path"] == "/delay/1"]) == 2  # never retried
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_shed_total", reason="pool_exhausted") == 4
    assert metric(samples, "sidecar_upstream_errors_total") == 0
    assert metric(samples, "sidecar_timeouts_total") == 0
    assert metric(samples, "sidecar_retries_total") == 0
    await healthy_after(p)
    async with aiohttp.ClientSession() as s:
        async with s.get(p.admin + "/status") as r:
            pool = (await r.json())["upstream_pool"]
    assert pool["waiting"] == 0 and pool["busy"] == 0 and pool["max"] == 2
    lines = [ln for ln in p.access_lines() if ln["outcome"] == "pool_exhausted"]
    assert len(lines) == 4 and all(ln["ended_by"] == "proxy" and ln["status"] == 503 for ln in lines)


def _non_reader(port: int, path: str) -> socket.socket:
    """A client with a tiny receive window that sends its request and never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


async def _status(p) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(p.admin + "/status") as r:
            return await r.json()


async def _status_when(p, ready, timeout: float) -> dict:
    """``/status`` every 0.1 s until ``ready(status)`` or ``timeout`` seconds: the last one read."""
    t0 = time.monotonic()
    while True:
        st = await _status(p)
        if ready(st) or time.monotonic() - t0 > timeout:
            return st
        await asyncio.sleep(0.1)


async def test_clients_that_never_read_are_cut_and_free_their_slots(upstream, make_proxy):
    """10 clients never read a 20 MiB answer; the pool has 10 connections. Others are served
    meanwhile (never a 502), and every slot and connection is free within the write timeout."""
    p = make_proxy(upstream.url, {"upstream": {"max_connections": 10}, "timeouts": {"request": "30s"},
                                  "server": {"client_write_timeout": "2s"}})
    rss0 = p.rss_bytes()
    socks = [_non_reader(p.port, "/bytes/20971520") for _ in range(10)]
    try:
        await asyncio.sleep(0.5)
        st = await _status(p)
        assert st["upstream_pool"]["busy"] == 10  # streamed (too big to buffer): each holds a connection
        # meanwhile: other clients wait at most pool_timeout, then a clean 503 — never a 502
        got = await burst(p.url, 5, "/anything")
        assert set(got) <= {(200, None), (503, "pool_exhausted")}, got
        t0 = time.monotonic()
        while (await _status(p))["upstream_pool"]["busy"] and time.monotonic() - t0 < 6:
            await asyncio.sleep(0.1)
        freed = time.monotonic() - t0
        st = await _status(p)
        assert st["upstream_pool"]["busy"] == 0 and st["capacity"]["in_flight"] == 0, st
        assert freed < 3.5, freed  # within client_write_timeout (2 s) of blocking, not the 30 s deadline
        got = await burst(p.url, 20, "/anything")
        assert got == {(200, None): 20}, got
    finally:
        for s in socks:
            s.close()
    samples = await wait_metric(p.admin, "sidecar_timeouts_total", 10, kind="client_write")
    assert metric(samples, "sidecar_timeouts_total", kind="client_write") == 10
    assert metric(samples, "sidecar_upstream_errors_total") == 0
    assert metric(samples, "sidecar_circuit_transitions_total") == 0
    slow = [ln for ln in p.access_lines() if ln["outcome"] == "client_slow"]
    assert len(slow) == 10 and all(ln["ended_by"] == "client" for ln in slow)
    assert p.rss_bytes() - rss0 < 40 << 20  # nothing of the 200 MiB not read was held
    await healthy_after(p)


async def test_an_sse_client_that_stops_reading_is_cut_by_the_write_timeout_while_others_stream_whole(
        upstream, make_proxy):
    """An event stream's chunks are written in the upstream connection's read (the relay's sink,
    ``forward._Relay.push``); once a client's buffer is full the sink declines, the reads queue
    (≤ 32 KiB, then the upstream is not read) and the relay's frame waits on the client within
    ``client_write_timeout``, then cuts it: the client's doing, never the upstream's. A stream
    beside it, read by its client, gets every event, in order, and its end."""
    p = make_proxy(upstream.url, {"server": {"client_write_timeout": "1s"}})
    stuck = _non_reader(p.port, "/sse?events=4000&interval=0.001&size=16000")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(p.url + "/sse?events=200&interval=0.005&size=300",
                             headers={"Accept": "text/event-stream"}) as r:
                body = (await r.read()).decode()
        seen = [json.loads(ln[6:])["i"] for ln in body.split("\r\n") if ln.startswith("data: {\"i\"")]
        assert seen == list(range(200)), seen[:5]
        samples = await wait_metric(p.admin, "sidecar_timeouts_total", 1, timeout=15, kind="client_write")
        assert metric(samples, "sidecar_upstream_errors_total") == 0
        assert metric(samples, "sidecar_circuit_transitions_total") == 0
        st = await _status_when(p, lambda st: st["upstream_pool"]["busy"] == 0 and st["capacity"]["streams"] == 0, 5)
        assert st["upstream_pool"]["busy"] == 0 and st["capacity"]["streams"] == 0, st
    finally:
        stuck.close()
    slow = [ln for ln in p.access_lines() if ln["outcome"] == "client_slow"]
    assert len(slow) == 1 and slow[0]["ended_by"] == "client" and slow[0]["events"] > 0, slow


async def test_the_deadline_holds_while_blocked_on_a_slow_reader(upstream, make_proxy):
    p = make_proxy(upstream.url, {"timeouts": {"request": "1500ms"}, "server": {"client_write_timeout": "60s"}})
    s = _non_reader(p.port, "/bytes/20971520")
    try:
        t0 = time.monotonic()
        while True:
            st = await _status(p)
            if not st["upstream_pool"]["busy"] and st["capacity"]["in_flight"] == 0 and time.monotonic() - t0 > 0.3:
                break
            assert time.monotonic() - t0 < 4, st
            await asyncio.sleep(0.1)
    finally:
        s.close()
    samples = await wait_metric(p.admin, "sidecar_timeouts_total", 1, kind="client_write")
    assert metric(samples, "sidecar_timeouts_total", kind="request") == 0  # not the upstream's fault
    line = [ln for ln in p.access_lines() if ln["outcome"] == "client_slow"]
    assert len(line) == 1 and line[0]["ended_by"] == "client"


async def test_a_whole_answer_frees_its_upstream_connection_before_a_slow_client_reads_it(upstream, make_proxy):
    # 6 MB answers: more than the kernel's socket buffers take, so a client that does not read blocks us
    p = make_proxy(upstream.url, {"upstream": {"max_connections": 2}, "server": {"client_write_timeout": "1500ms"},
                                  "limits": {"max_buffered_response_bytes": "8MiB", "max_buffered_bytes": "12MB"}})
    socks = [_non_reader(p.port, "/bytes/6000000") for _ in range(3)]
    try:
        t0 = time.monotonic()
        while True:  # the upstream produces 18 MB: wait until all three answers are in place
            st = await _status(p)
            if st["capacity"]["buffered_bytes"] == 12000000 and st["upstream_pool"]["busy"] == 1 or time.monotonic() - t0 > 5:
                break
            await asyncio.sleep(0.1)
        # two answers are held in memory (the budget has room for two), their connections pooled again;
        # the third streams on a connection of its own
        assert st["capacity"]["buffered_bytes"] == 12000000, st
        assert st["upstream_pool"]["busy"] == 1 and st["capacity"]["in_flight"] == 1, st
        samples = await scrape(p.admin)
        assert metric(samples, "sidecar_response_buffer_bytes") == 12000000
        got = await burst(p.url, 5, "/anything")  # the pool still has room for others
        assert got == {(200, None): 5}, got
        # all three cut after client_write_timeout (1.5 s) of blocking
        st = await _status_when(p, lambda st: st["capacity"]["buffered_bytes"] == 0 and st["upstream_pool"]["busy"] == 0, 8)
        assert st["capacity"]["buffered_bytes"] == 0 and st["upstream_pool"]["busy"] == 0, st
    finally:
        for s in socks:
            s.close()
    samples = await wait_metric(p.admin, "sidecar_timeouts_total", 3, kind="client_write")
    assert metric(samples, "sidecar_timeouts_total", kind="client_write") == 3


async def test_a_reader_that_keeps_up_gets_the_buffered_answer_whole(upstream, make_proxy):
    p = make_proxy(upstream.url)
    async with aiohttp.ClientSession() as s:
        for n in (0, 1, 65537, 900000):
            async with s.get(f"{p.url}/bytes/{n}") as r:
                body = await r.read()
                assert r.status == 200 and len(body) == n and r.headers["Content-Length"] == str(n)
    assert (await _status(p))["capacity"]["buffered_bytes"] == 0


async def test_reload_keeps_held_limits(upstream, make_proxy):
    p = make_proxy(upstream.url, {"limits": {"max_concurrent_streams": 5}})
    async with aiohttp.ClientSession() as s:
        resps = [await s.get(p.url + "/sse?events=40&interval=0.1", headers={"Accept": "text/event-stream"})
                 for _ in range(5)]
        try:
            assert all(r.status == 200 for r in resps)
            for _ in range(3):
                p.signal(signal.SIGHUP)
                await wait_metric(p.admin, "sidecar_config_reloads_total", _ + 1, result="success")
            async with s.get(p.url + "/sse?events=1", headers={"Accept": "text/event-stream"}) as r:
                assert r.status == 503 and (await r.json())["error"]["type"] == "overloaded"
            assert (await _status(p))["capacity"]["streams"] == 5
        finally:
            for r in resps:
                r.close()
    await asyncio.sleep(0.3)
    assert (await _status(p))["capacity"]["streams"] == 0


async def test_reload_that_changes_the_breaker_keeps_it_open(upstream, make_proxy):
    p = make_proxy(upstream.url, {"circuit_breaker": {"fail_max": 2, "reset_timeout": "30s"}, "retries": {"attempts": 1}})
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(p.url + "/status/502") as r:
                assert r.status == 502
        async with s.get(p.url + "/anything") as r:
            assert r.status == 503 and (await r.json())["error"]["type"] == "circuit_open"
        cfg = dict(p.cfg)
        cfg["circuit_breaker"] = {"fail_max": 3, "reset_timeout": "20s"}
        p.write_config(cfg)
        p.signal(signal.SIGHUP)
        await wait_metric(p.admin, "sidecar_config_reloads_total", 1, result="success")
        async with s.get(p.url + "/anything") as r:
            assert r.status == 503 and (await r.json())["error"]["type"] == "circuit_open"
            assert 1 <= int(r.headers["Retry-After"]) <= 20  # the new reset timeout applies
        br = (await _status(p))["breakers"]["upstream"]
        assert br["state"] == "open" and br["fail_max"] == 3 and br["reset_timeout_seconds"] == 20


@pytest.mark.parametrize("attempts", [1, 2, 3])
async def test_a_get_meeting_resets_reaches_the_upstream_at_most_attempts_times(upstream, make_proxy, attempts):
    p = make_proxy(upstream.url, {"retries": {"attempts": attempts, "backoff": "10ms"},
                                  "circuit_breaker": {"fail_max": 100}})
    async with aiohttp.ClientSession() as s:
        async with s.get(p.url + "/warm") as r:  # a pooled connection, so the stale-retry path is taken
            assert r.status == 200
        async with s.get(p.url + "/drop") as r:
            assert r.status == 502 and (await r.json())["error"]["type"] == "upstream_reset"
    assert len([x for x in upstream.seen if x["path"] == "/drop"]) == attempts
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_upstream_errors_total", kind="reset") == attempts  # every failed attempt
    assert metric(samples, "sidecar_retries_total") == attempts - 1
    line = [ln for ln in p.access_lines() if ln["outcome"] == "upstream_reset"][-1]
    assert line["attempts"] == attempts and line["ended_by"] == "upstream"


async def test_failed_attempts_hidden_by_a_retry_are_counted(upstream, make_proxy):
    p = make_proxy(upstream.url, {"retries": {"attempts": 2, "backoff": "10ms"}})
    await upstream.stop()
    port = upstream.port
    async with aiohttp.ClientSession() as s:
        async def restart():
            await asyncio.sleep(0.03)
            await upstream.start(port)
        task = asyncio.create_task(restart())
        async with s.get(p.url + "/anything") as r:
            await task
            status = r.status
    samples = await scrape(p.admin)
    if status == 200:  # the retry found the upstream back: the first failure is still counted
        assert metric(samples, "sidecar_upstream_errors_total", kind="connect") == 1
    else:
        assert metric(samples, "sidecar_upstream_errors_total", kind="connect") == 2


async def test_early_stream_resets_among_healthy_streams_do_not_open_the_breaker(upstream, make_proxy):
    """A stream counts as a success at its first event, not when it ends minutes later."""
    p = make_proxy(upstream.url, {"circuit_breaker": {"fail_max": 3}, "retries": {"attempts": 1}})
    hdr = {"Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as s:
        long = []
        try:
            for _ in range(6):
                r = await s.get(p.url + "/sse?events=30&interval=0.1", headers=hdr)
                await r.content.readuntil(b"\r\n\r\n")  # its first event arrived
                long.append(r)
                async with s.get(p.url + "/reset?ctype=text/event-stream", headers=hdr) as bad:
                    assert bad.status == 200
                    try:
                        await bad.read()  # cut: an error event, or an aborted body
                    except aiohttp.ClientPayloadError:
                        pass
            br = (await _status(p))["breakers"]["upstream"]
            assert br["state"] == "closed", br
        finally:
            for r in long:
                r.close()
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_upstream_errors_total", kind="reset") == 6


class SlowAcceptor:
    """A real upstream with a listen queue of ``backlog + 1`` that accepts nothing until
    :meth:`resume`, then one connection every ``every`` seconds, and answers each at once: so its
    accept queue fills and the kernel drops further connects' SYNs (resent after 1 s, 3 s...), as
    a busy LangGraph server's full backlog does."""

    def __init__(self, backlog: int):
        self.answered = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.url = "http://127.0.0.1:%d" % self.addr[1]
        self.task = None

    def resume(self, every: float) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(every))

    async def _run(self, every: float):
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            conn, _ = await loop.sock_accept(self.sock)
            loop.create_task(self._answer(conn))

    async def _answer(self, conn):
        loop = asyncio.get_running_loop()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(conn, 4096)
                if not chunk:
                    return
                head += chunk
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            self.answered += 1

    def close(self):
        if self.task is not None:
            self.task.cancel()
        self.sock.close()


async def test_a_connect_the_full_accept_queue_dropped_is_made_again_while_the_upstream_answers(make_proxy):
    """Five requests fill a busy upstream's accept queue; the kernel drops the next connect's SYN
    and would resend it only after 1 s, past ``connect_timeout``. The upstream starts answering
    the five meanwhile, so the connect is made again instead of failing, and every request is
    served: no timeout, no retry, no breaker failure. (The next test is the other side.)"""
    up = SlowAcceptor(backlog=4)  # accepts nothing yet: 5 connections fill its queue
    try:
        p = make_proxy(up.url, {"upstream": {"connect_timeout": "800ms"}, "timeouts": {"first_byte": "20s"},
                                "circuit_breaker": {"fail_max": 1}})
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as s:
            queued = [asyncio.create_task(s.get(p.url + "/queued")) for _ in range(5)]
            t0 = time.monotonic()
            while (await _status(p))["upstream_pool"]["busy"] < 5:
                assert time.monotonic() - t0 < 5
                await asyncio.sleep(0.02)
            late = asyncio.create_task(s.get(p.url + "/late"))
            await asyncio.sleep(0.1)
            up.resume(every=0.3)  # it answers one every 0.3 s: progress within the late connect's 0.8 s
            for r in await asyncio.gather(late, *queued):
                assert r.status == 200, await r.text()
                r.release()
        assert up.answered == 6
        samples = await scrape(p.admin)
        assert metric(samples, "sidecar_upstream_connect_waits_total") == 1
        assert metric(samples, "sidecar_timeouts_total") == 0
        assert metric(samples, "sidecar_retries_total") == 0
        br = (await _status(p))["breakers"]["upstream"]
        assert br["state"] == "closed" and br["fail_counter"] == 0, br
    finally:
        up.close()


async def test_an_upstream_that_accepts_nothing_fails_connects_after_connect_timeout(make_proxy):
    """The other side of the rule above: a hung upstream whose accept queue is full shows no
    progress, so each connect fails after ``connect_timeout`` (not the first-byte timeout), and
    the breaker opens."""
    up = SlowAcceptor(backlog=1)
    fill = [socket.create_connection(up.addr) for _ in range(2)]  # its queue is full
    try:
        p = make_proxy(up.url, {"upstream": {"connect_timeout": "1s"}, "timeouts": {"first_byte": "30s"},
                                "circuit_breaker": {"fail_max": 3}})
        t0 = time.monotonic()
        got = await burst(p.url, 4, "/hung")
        assert time.monotonic() - t0 < 5
        assert set(got) <= {(502, "upstream_timeout"), (503, "circuit_open")}, got
        samples = await scrape(p.admin)
        assert metric(samples, "sidecar_timeouts_total", kind="connect") >= 3
        assert metric(samples, "sidecar_upstream_connect_waits_total") == 0
        assert (await _status(p))["breakers"]["upstream"]["state"] == "open"
    finally:
        for s in fill:
            s.close()
        up.close()
