"""Observability: exact values by scraping and parsing /metrics; bounded cardinality."""
from __future__ import annotations

import asyncio
import random
import string

import aiohttp
import pytest

from proxy_harness import free_port, metric, read_cut, scrape


async def test_every_outcome_counted_exactly(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {
        "timeouts": {"first_byte": "300ms", "idle": "300ms", "stream": "2s"},
        "retries": {"attempts": 1},
        "circuit_breaker": {"fail_max": 100},
        "limits": {"max_body_bytes": "1KiB"},
        "routes": [{"name": "runs", "path": "/sse", "run_kind": "stream"},
                   {"name": "wait", "path": "/wait", "run_kind": "wait"}],
    })
    for _ in range(3):
        (await session.get(p.url + "/threads/x/state")).release()          # 200 thread_state
    (await session.post(p.url + "/threads/search", data=b"{}")).release()  # 200 threads_search
    (await session.get(p.url + "/status/404")).release()                   # 404 other
    (await session.get(p.url + "/status/500")).release()                   # 500 other
    (await session.get(p.url + "/hang")).release()                         # 504 first_byte
    (await session.post(p.url + "/sink", data=b"x" * 2000)).release()      # 413
    async with session.get(p.url + "/sse?events=4&interval=0.01") as r:   # completed stream, 5 events
        await r.read()
    async with session.get(p.url + "/sse?events=2&interval=0.01&error=1") as r:  # run error inside 200
        await r.read()
    async with session.get(p.url + "/silence?ctype=text/event-stream") as r:     # idle timeout mid-stream
        await read_cut(r)
    async with session.post(p.url + "/wait?error=1", data=b"{}") as r:
        await r.read()
    async with session.post(p.url + "/wait", data=b"{}") as r:
        await r.read()
    r = await session.get(p.url + "/sse?events=50&interval=0.05")                 # client disconnect
    await r.content.readuntil(b"\r\n\r\n")
    r.close()
    await asyncio.sleep(0.3)

    s = await scrape(p.admin)
    m = lambda name, **kw: metric(s, name, **kw)  # noqa: E731
    assert m("sidecar_requests_total", route="thread_state", method="GET", code="200") == 3
    assert m("sidecar_requests_total", route="threads_search", method="POST", code="200") == 1
    assert m("sidecar_requests_total", route="other", code="404") == 1
    assert m("sidecar_requests_total", route="other", code="500") == 1
    assert m("sidecar_requests_total", route="other", code="504") == 1
    assert m("sidecar_requests_total", route="other", code="413") == 1
    assert m("sidecar_requests_total", route="runs", code="200") == 3
    assert m("sidecar_requests_total", route="wait", code="200") == 2
    assert m("sidecar_requests_total", route="other", code="200") == 1  # the idle-cut stream
    assert m("sidecar_request_duration_seconds_count", route="thread_state", method="GET") == 3
    assert m("sidecar_request_duration_seconds_bucket", route="thread_state", method="GET", le="+Inf") == 3
    assert m("sidecar_upstream_time_to_first_byte_seconds_count", route="thread_state") == 3
    assert m("sidecar_proxy_overhead_seconds_count", route="thread_state") == 3
    assert m("sidecar_timeouts_total", route="other", kind="first_byte") == 1
    assert m("sidecar_timeouts_total", route="other", kind="idle") == 1
    assert m("sidecar_shed_total", reason="body_too_large") == 1
    assert m("sidecar_streams_total", route="runs", outcome="completed") == 2
    assert m("sidecar_streams_total", route="runs", outcome="client_disconnect") == 1
    assert m("sidecar_streams_total", route="other", outcome="idle_timeout") == 1
    assert m("sidecar_stream_events_total", route="runs") >= 5 + 4  # metadata+4, metadata+2+error, ≥1 before disconnect
    assert m("sidecar_stream_duration_seconds_count", route="runs") == 3
    assert m("sidecar_stream_time_to_first_event_seconds_count", route="runs") == 3
    assert m("sidecar_runs_total", route="runs", outcome="success") == 1
    assert m("sidecar_runs_total", route="runs", outcome="run_error") == 1
    assert m("sidecar_runs_total", route="runs", outcome="client_disconnect") == 1
    assert m("sidecar_runs_total", route="wait", outcome="run_error") == 1
    assert m("sidecar_runs_total", route="wait", outcome="success") == 1
    assert m("sidecar_in_flight_requests") == 0
    assert m("sidecar_in_flight_streams") == 0
    assert m("sidecar_request_bytes_total", route="threads_search") == 2
    assert m("sidecar_response_bytes_total", route="thread_state") > 0
    assert m("sidecar_build_info") == 1
    assert m("sidecar_circuit_state", breaker="upstream") == 0
    assert m("sidecar_ready") == 1 or m("sidecar_ready") == 0  # set at each /readyz; present
    assert ("process_resident_memory_bytes", frozenset()) in s
    assert any(name.startswith("python_gc") for name, _ in s)


async def test_streams_that_end_together_are_all_counted_and_logged_by_the_next_scrape(upstream, make_proxy, session):
    """A stream's end is recorded a batch per loop turn (proxy.telemetry.RecordQueue); a scrape
    right after the last byte still sees every one, and each log line keeps its own duration."""
    p = make_proxy(upstream.url, {"routes": [{"name": "runs", "path": "/sse", "run_kind": "stream"}]})
    n = 60

    async def one():
        async with session.get(p.url + "/sse?events=3&interval=0.2") as r:
            assert r.status == 200
            return await r.read()

    bodies = await asyncio.gather(*(one() for _ in range(n)))
    s = await scrape(p.admin)                     # at once: no sleep between the last byte and this
    m = lambda name, **kw: metric(s, name, **kw)  # noqa: E731
    assert all(b.count(b"event: ") == 4 for b in bodies)  # metadata + 3
    assert m("sidecar_requests_total", route="runs", method="GET", code="200") == n
    assert m("sidecar_streams_total", route="runs", outcome="completed") == n
    assert m("sidecar_stream_events_total", route="runs") == 4 * n
    assert m("sidecar_stream_duration_seconds_count", route="runs") == n
    assert m("sidecar_runs_total", route="runs", outcome="success") == n
    assert m("sidecar_in_flight_requests") == 0
    for _ in range(40):                           # the access log is flushed every second
        lines = [ln for ln in p.access_lines() if ln.get("route") == "runs"]
        if len(lines) == n:
            break
        await asyncio.sleep(0.1)
    assert len(lines) == n
    # each line's duration is the stream's own (~0.6 s), not stretched by the wait to be written
    assert all(0.55 <= ln["duration"] < 1.5 and ln["outcome"] == "ok" and ln["events"] == 4 for ln in lines)


async def test_upstream_error_kinds(upstream, make_proxy, session):
    dead = make_proxy(f"http://127.0.0.1:{free_port()}", {"retries": {"attempts": 1}})
    (await session.get(dead.url + "/x")).release()
    live = make_proxy(upstream.url, {"retries": {"attempts": 1}})
    (await session.get(live.url + "/drop")).release()
    s1, s2 = await scrape(dead.admin), await scrape(live.admin)
    assert metric(s1, "sidecar_upstream_errors_total", kind="connect") == 1
    assert metric(s2, "sidecar_upstream_errors_total", kind="reset") == 1


async def test_flood_of_random_paths_keeps_series_bounded(upstream, make_proxy):
    p = make_proxy(upstream.url, {"logging": {"access_log": False}})
    rnd = random.Random(1)
    conn = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=conn) as s:
        before = len(await scrape(p.admin, s))
        statuses: dict[str, list[int]] = {}

        async def one(i):
            seg = "".join(rnd.choices(string.ascii_lowercase, k=12))
            method = rnd.choice(["GET", "POST", "PURGE", "BREW"])
            async with s.request(method, f"{p.url}/{seg}/{i}?q={seg}") as r:
                await r.read()
                statuses.setdefault(method, []).append(r.status)
        for start in range(0, 10_000, 500):
            await asyncio.gather(*(one(i) for i in range(start, start + 500)))
        after = await scrape(p.admin, s)
    # a method no HTTP parser knows (BREW) is refused with 400 before it is a request
    assert set(statuses.pop("BREW")) == {400}
    assert all(set(v) == {200} for v in statuses.values())
    assert metric(after, "sidecar_requests_total") == sum(len(v) for v in statuses.values())
    # every random path is "other"; unknown methods are "OTHER": a handful of series, not 10,000
    routes = {dict(lbls)["route"] for name, lbls in after if name == "sidecar_requests_total"}
    methods = {dict(lbls)["method"] for name, lbls in after if name == "sidecar_requests_total"}
    assert routes == {"other"} and methods <= {"GET", "POST", "OTHER"}
    assert len(after) - before < 150, len(after) - before


async def test_openmetrics_with_exemplars_when_asked(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    (await session.get(p.url + "/x", headers={"X-Request-ID": "exemplar-rid"})).release()
    async with session.get(p.admin + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await r.text()
    assert text.rstrip().endswith("# EOF")
    assert 'request_id="exemplar-rid"' in text
    async with session.get(p.admin + "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("prefix", ["agentproxy"])
async def test_metric_prefix_is_configurable(upstream, make_proxy, session, prefix):
    p = make_proxy(upstream.url, {"metrics": {"prefix": prefix}})
    (await session.get(p.url + "/x")).release()
    s = await scrape(p.admin)
    assert metric(s, f"{prefix}_requests_total") == 1
    assert metric(s, "sidecar_requests_total") == 0


async def test_refused_targets_are_counted(upstream, make_proxy):
    p = make_proxy(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 400")
    s = await scrape(p.admin)
    assert metric(s, "sidecar_requests_total", route="other", code="400") == 1
    assert upstream.seen == []
