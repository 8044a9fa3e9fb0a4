"""Resilience: timeouts made for LLM streams, circuit breaking, shedding, safe retries.

Each case asserts what the client sees, what the upstream saw, and that the next request works.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from proxy_harness import FaultUpstream, free_port, metric, read_cut, scrape


async def ok_after(session, p):
    async with session.get(p.url + "/next") as r:
        assert r.status == 200, await r.text()


def events_of(body: bytes) -> list[str]:
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                out.append(line[6:].strip().decode())
    return out


def error_data(body: bytes) -> dict:
    block = body.replace(b"\r\n", b"\n").split(b"event: error\n")[1]
    return json.loads(block.split(b"data: ", 1)[1].split(b"\n")[0])


async def test_hang_before_headers_is_504_first_byte(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"first_byte": "300ms"}})
    t0 = time.monotonic()
    async with session.get(p.url + "/hang") as r:
        assert r.status == 504
        err = (await r.json())["error"]
    assert 0.25 < time.monotonic() - t0 < 2
    assert err["type"] == "upstream_timeout" and "first byte" in err["message"]
    await asyncio.sleep(0.1)
    assert upstream.disconnects == ["/hang"]  # the upstream request was closed, not left hanging
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", kind="first_byte", route="other") == 1
    await ok_after(session, p)


async def test_headers_then_silence_aborts_a_plain_body(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"idle": "300ms"}})
    async with session.get(p.url + "/silence") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # truncated: the client can never take it for a complete body
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", kind="idle") == 1
    await ok_after(session, p)


async def test_headers_then_silence_ends_sse_with_error_event(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"idle": "300ms"}})
    async with session.get(p.url + "/silence?ctype=text/event-stream") as r:
        body = await read_cut(r)
    assert events_of(body)[-1] == "error"
    data = error_data(body)
    assert data["error"] == "upstream_timeout" and "idle" in data["message"] and data["request_id"]
    s = await scrape(p.admin)
    assert metric(s, "sidecar_streams_total", outcome="idle_timeout") == 1
    await ok_after(session, p)


async def test_slow_but_alive_stream_is_never_cut(upstream, make_proxy, session):
    # 12 events 0.15 s apart: 1.8 s in total, far over idle (0.5 s), but never idle that long
    p = make_proxy(upstream.url, {"timeouts": {"idle": "500ms", "request": "1s", "first_byte": "1s"}})
    async with session.get(p.url + "/sse?events=12&interval=0.15") as r:
        body = await r.read()
    evs = events_of(body)
    assert evs == ["metadata"] + ["values"] * 12
    s = await scrape(p.admin)
    assert metric(s, "sidecar_streams_total", outcome="completed") == 1
    assert metric(s, "sidecar_stream_events_total") == 13


async def test_stream_over_its_max_duration_is_cut(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"stream": "700ms", "idle": "5s"}})
    t0 = time.monotonic()
    async with session.get(p.url + "/sse?events=50&interval=0.1") as r:
        body = await read_cut(r)
    assert 0.6 < time.monotonic() - t0 < 2.5
    assert events_of(body)[-1] == "error"
    assert "stream" in error_data(body)["message"]
    s = await scrape(p.admin)
    assert metric(s, "sidecar_streams_total", outcome="stream_timeout") == 1
    await ok_after(session, p)


async def test_heartbeats_do_not_count_as_events_for_event_idle(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"event_idle": "600ms", "idle": "5s"}})
    t0 = time.monotonic()
    async with session.get(p.url + "/sse?events=5&interval=0.05&stall_after=2&heartbeat=0.1") as r:
        body = await read_cut(r)
    assert time.monotonic() - t0 < 3
    assert b": heartbeat" in body  # heartbeats were relayed...
    assert events_of(body) == ["metadata", "values", "values", "error"]  # ...but the stuck run was cut
    assert error_data(body)["message"].startswith("upstream event idle")
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", kind="event_idle") == 1
    assert metric(s, "sidecar_streams_total", outcome="event_idle_timeout") == 1


async def test_route_overrides_timeouts(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"first_byte": "5s"},
                                  "routes": [{"name": "quick", "path": "/hang", "timeouts": {"first_byte": "200ms"}}]})
    t0 = time.monotonic()
    async with session.get(p.url + "/hang") as r:
        assert r.status == 504
    assert time.monotonic() - t0 < 1.5
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", route="quick", kind="first_byte") == 1


async def test_request_deadline_on_non_streaming_response(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"request": "400ms", "first_byte": "5s"}})
    async with session.get(p.url + "/delay/2") as r:
        assert r.status == 504
        assert "request" in (await r.json())["error"]["message"]
    await ok_after(session, p)


async def test_breaker_opens_fails_fast_admits_one_trial_and_recovers(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"circuit_breaker": {"fail_max": 3, "reset_timeout": "1s"},
                                  "retries": {"attempts": 1}})
    for _ in range(3):
        async with session.get(p.url + "/status/503") as r:
            assert r.status == 503
    n_seen = len(upstream.seen)
    # open: fail fast, JSON, Retry-After, upstream untouched
    async with session.get(p.url + "/anything") as r:
        assert r.status == 503
        assert int(r.headers["Retry-After"]) >= 1
        err = (await r.json())["error"]
    assert err["type"] == "circuit_open"
    assert len(upstream.seen) == n_seen
    async with session.get(p.admin + "/readyz") as r:
        assert r.status == 503
    st = await (await session.get(p.admin + "/status")).json()
    assert st["breakers"]["upstream"]["state"] == "open"
    s = await scrape(p.admin)
    assert metric(s, "sidecar_circuit_state", breaker="upstream") == 2
    assert metric(s, "sidecar_shed_total", reason="breaker_open") == 1
    await asyncio.sleep(1.1)
    # half-open: 50 concurrent callers, exactly one trial reaches the upstream (a slow success)
    n_seen = len(upstream.seen)
    results = await asyncio.gather(*[session.get(p.url + "/delay/0.3") for _ in range(50)])
    codes = sorted(r.status for r in results)
    for r in results:
        r.release()
    assert codes.count(200) == 1 and codes.count(503) == 49, codes
    assert len(upstream.seen) == n_seen + 1
    # the successful trial closed it
    async with session.get(p.url + "/after") as r:
        assert r.status == 200
    s = await scrape(p.admin)
    assert metric(s, "sidecar_circuit_state", breaker="upstream") == 0
    assert metric(s, "sidecar_circuit_transitions_total", to="open") == 1
    assert metric(s, "sidecar_circuit_transitions_total", to="half-open") == 1
    assert metric(s, "sidecar_circuit_transitions_total", to="closed") == 1
    transitions = [x for x in p.log_lines() if x["message"] == "circuit breaker state change"]
    assert [t["to"] for t in transitions] == ["open", "half-open", "closed"]


async def test_failed_trial_reopens(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"circuit_breaker": {"fail_max": 2, "reset_timeout": "300ms"},
                                  "retries": {"attempts": 1}})
    for _ in range(2):
        (await session.get(p.url + "/status/502")).release()
    await asyncio.sleep(0.35)
    async with session.get(p.url + "/status/502") as r:  # the trial fails
        assert r.status == 502
    async with session.get(p.url + "/x") as r:
        assert r.status == 503 and (await r.json())["error"]["type"] == "circuit_open"


async def test_client_disconnects_are_not_breaker_failures(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"circuit_breaker": {"fail_max": 2}})
    for _ in range(3):
        # gone before headers
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.2):
                await session.get(p.url + "/hang")
        # gone mid-stream
        r = await session.get(p.url + "/sse?events=50&interval=0.1")
        await r.content.readuntil(b"\r\n\r\n")
        r.close()
    await asyncio.sleep(0.2)
    st = await (await session.get(p.admin + "/status")).json()
    assert st["breakers"]["upstream"]["state"] == "closed"
    assert st["breakers"]["upstream"]["fail_counter"] == 0
    s = await scrape(p.admin)
    assert metric(s, "sidecar_streams_total", outcome="client_disconnect") == 3
    await ok_after(session, p)


async def test_a_stream_holds_its_slots_until_it_ends_however_it_ends(upstream, make_proxy, session):
    """A stream's body is relayed after the layers returned (proxy/layers.py): the limits, the
    breaker and telemetry still act when it ends, each way it can end, and only then."""
    p = make_proxy(upstream.url, {"timeouts": {"idle": "400ms"}, "retries": {"attempts": 1},
                                  "circuit_breaker": {"fail_max": 5},
                                  "limits": {"max_concurrent_streams": 4}})
    sse = {"Accept": "text/event-stream"}
    paths = ["/sse?events=6&interval=0.1",                 # completes
             "/sse?events=50&interval=0.1",                # the client leaves
             "/silence?ctype=text/event-stream",           # the upstream goes quiet: idle timeout
             "/reset?ctype=text/event-stream"]             # the upstream resets mid-body
    resps = [await session.get(p.url + path, headers=sse) for path in paths]
    assert [r.status for r in resps] == [200] * 4
    for r in resps[:3]:
        await r.content.readuntil(b"\r\n\r\n")  # each is past its head, in its relay
    st = await (await session.get(p.admin + "/status")).json()
    assert st["capacity"]["streams"] >= 3 and st["in_flight_requests"] >= 3
    async with session.get(p.url + "/sse?events=1", headers=sse) as r:   # a fifth is shed
        assert r.status == 503 and (await r.json())["error"]["type"] == "overloaded"
    resps[1].close()
    whole, quiet, reset = await asyncio.gather(resps[0].read(), read_cut(resps[2]), read_cut(resps[3]))
    assert events_of(whole)[-1] == "values"  # with its final chunk
    assert events_of(quiet)[-1] == "error" and events_of(reset)[-1] == "error"
    await asyncio.sleep(0.3)
    st = await (await session.get(p.admin + "/status")).json()
    assert st["capacity"] == {**st["capacity"], "in_flight": 0, "streams": 0}
    assert st["in_flight_requests"] == 0
    # the breaker heard of what the upstream did, and of nothing else
    assert st["breakers"]["upstream"]["fail_counter"] == 2
    s = await scrape(p.admin)
    assert metric(s, "sidecar_streams_total", outcome="completed") == 1
    assert metric(s, "sidecar_streams_total", outcome="client_disconnect") == 1
    assert metric(s, "sidecar_streams_total", outcome="idle_timeout") == 1
    assert metric(s, "sidecar_streams_total", outcome="upstream_error") == 1
    assert metric(s, "sidecar_in_flight_requests", route="other") == 0
    assert metric(s, "sidecar_in_flight_streams") == 0
    assert metric(s, "sidecar_shed_total", reason="streams") == 1
    await ok_after(session, p)


async def test_route_with_its_own_breaker(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"retries": {"attempts": 1}, "routes": [
        {"name": "fragile", "path": "/status/{code}", "circuit_breaker": {"fail_max": 1, "reset_timeout": "30s"}}]})
    (await session.get(p.url + "/status/500")).release()  # 500 is not a failure status
    (await session.get(p.url + "/status/504")).release()
    async with session.get(p.url + "/status/200") as r:
        assert r.status == 503
    await ok_after(session, p)  # other routes use the global breaker, still closed
    s = await scrape(p.admin)
    assert metric(s, "sidecar_circuit_state", breaker="fragile") == 2
    assert metric(s, "sidecar_circuit_state", breaker="upstream") == 0


async def test_concurrency_over_the_limit_is_shed_at_once(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"limits": {"max_concurrent_requests": 5}})
    slow = [asyncio.create_task(session.get(p.url + "/delay/0.6")) for _ in range(5)]
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    async with session.get(p.url + "/x") as r:
        assert r.status == 503
        err = (await r.json())["error"]
    assert time.monotonic() - t0 < 0.2  # at once, not queued
    assert err["type"] == "overloaded" and "max_concurrent_requests" in err["message"]
    for t in slow:
        r = await t
        assert r.status == 200
        r.release()
    s = await scrape(p.admin)
    assert metric(s, "sidecar_shed_total", reason="concurrency") == 1
    await ok_after(session, p)


async def test_body_over_limit_is_413_before_upstream_sees_it(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"limits": {"max_body_bytes": "1KiB"}})
    async with session.post(p.url + "/sink", data=b"x" * 2048) as r:
        assert r.status == 413
        assert (await r.json())["error"]["type"] == "body_too_large"
    assert upstream.seen == []

    async def chunked():
        for _ in range(4):
            yield b"y" * 600
    async with session.post(p.url + "/sink", data=chunked()) as r:
        assert r.status == 413
    assert all(s["body_len"] <= 1024 for s in upstream.seen)  # never a whole oversized body
    await ok_after(session, p)


async def test_get_retried_on_connect_failure(upstream, make_proxy, session):
    port = free_port()
    p = make_proxy(f"http://127.0.0.1:{port}", {"retries": {"attempts": 3, "backoff": "400ms"},
                                                "circuit_breaker": {"enabled": False}})
    task = asyncio.create_task(session.get(p.url + "/retry-me"))
    await asyncio.sleep(0.1)  # the first attempt was refused; the upstream comes up before the retry
    up2 = await FaultUpstream().start(port)
    try:
        r = await task
        assert r.status == 200
        r.release()
        s = await scrape(p.admin)
        assert metric(s, "sidecar_retries_total") >= 1
        assert [x["path"] for x in up2.seen] == ["/retry-me"]
    finally:
        await up2.stop()


async def test_post_is_not_retried_once_it_reached_the_upstream(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"retries": {"attempts": 3, "backoff": "10ms"},
                                  "circuit_breaker": {"enabled": False}})
    async with session.post(p.url + "/drop", data=b"{}") as r:
        assert r.status == 502
        assert (await r.json())["error"]["type"] == "upstream_reset"
    assert [x["path"] for x in upstream.seen] == ["/drop"]  # a POST that may have started a run: once
    s = await scrape(p.admin)
    assert metric(s, "sidecar_retries_total") == 0
    # the same failure on a GET is retried (safe), up to the attempts limit
    async with session.get(p.url + "/drop") as r:
        assert r.status == 502
    assert [x["path"] for x in upstream.seen].count("/drop") == 4
    s = await scrape(p.admin)
    assert metric(s, "sidecar_retries_total") == 2
    await ok_after(session, p)


async def test_cancel_on_disconnect_cancels_the_run_upstream(upstream, make_proxy, session):
    tid, rid = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
    p = make_proxy(upstream.url, {"routes": [
        {"name": "run_stream_cancel", "path": "/threads/{thread_id}/runs/stream", "methods": ["POST"],
         "cancel_on_disconnect": True, "run_kind": "stream"}]})
    r = await session.post(p.url + f"/threads/{tid}/runs/stream?events=50&interval=0.1", data=b"{}",
                           headers={"X-Request-ID": "abandon-1"})
    await r.content.readuntil(b"\r\n\r\n")
    r.close()
    for _ in range(100):
        if upstream.cancels:
            break
        await asyncio.sleep(0.02)
    assert upstream.cancels == [f"/threads/{tid}/runs/{rid}/cancel?action=interrupt"]
    cancel_req = [x for x in upstream.seen if x["path"].endswith("/cancel?action=interrupt")][0]
    assert cancel_req["method"] == "POST" and cancel_req["headers"]["X-Request-ID"] == "abandon-1"
    await asyncio.sleep(0.1)
    s = await scrape(p.admin)
    assert metric(s, "sidecar_run_cancels_total", route="run_stream_cancel", result="cancelled") == 1
    # the default route table does not cancel (the user did not ask for it)
    r = await session.post(p.url + f"/threads/{tid}/runs/{rid}/stream-x?events=50", data=b"{}")
    r.close()
    r = await session.get(p.url + "/sse?events=50&interval=0.1")
    await r.content.readuntil(b"\r\n\r\n")
    r.close()
    await asyncio.sleep(0.3)
    assert len(upstream.cancels) == 1
    await ok_after(session, p)


async def test_remaining_deadline_is_forwarded_when_configured(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"request": "30s", "deadline_header": "X-Request-Deadline-Ms"}})
    async with session.get(p.url + "/d") as r:
        assert r.status == 200
    remaining = int(upstream.seen[-1]["headers"]["X-Request-Deadline-Ms"])
    assert 29_000 < remaining <= 30_000


async def test_a_wave_of_failures_while_the_upstream_answers_others_does_not_open_the_breaker(upstream, make_proxy, session):
    """Attempts that began together fail together (here first-byte timeouts; in a burst, the
    connects that the upstream's full accept queue dropped). The upstream answered another request
    while they waited, so the wave is not a dead upstream: each is still a 504 counted as an
    upstream timeout, but the breaker stays closed. The same wave with nothing answered opens it."""
    p = make_proxy(upstream.url, {"circuit_breaker": {"fail_max": 3}, "retries": {"attempts": 1},
                                  "timeouts": {"first_byte": "700ms"}})
    wave = [asyncio.create_task(session.get(p.url + "/hang")) for _ in range(5)]
    await asyncio.sleep(0.2)
    async with session.get(p.url + "/answered") as r:
        assert r.status == 200
    for t in wave:
        async with await t as r:
            assert r.status == 504 and (await r.json())["error"]["type"] == "upstream_timeout"
    br = (await (await session.get(p.admin + "/status")).json())["breakers"]["upstream"]
    assert br["state"] == "closed" and br["fail_counter"] == 0 and br["failures_amid_answers"] == 5, br
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", kind="first_byte") == 5
    await ok_after(session, p)

    # nothing answered while this wave waited: a failing upstream, and the breaker opens
    wave = [asyncio.create_task(session.get(p.url + "/hang")) for _ in range(3)]
    for t in wave:
        (await t).release()
    async with session.get(p.url + "/x") as r:
        assert r.status == 503 and (await r.json())["error"]["type"] == "circuit_open"
    br = (await (await session.get(p.admin + "/status")).json())["breakers"]["upstream"]
    assert br["state"] == "open" and br["failures_amid_answers"] == 5, br
