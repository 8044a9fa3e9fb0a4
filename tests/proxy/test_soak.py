"""Soak: mixed traffic with injected faults for SOAK_SECONDS (default 60; e.g. 600 for a long run).

Eight concurrent clients draw from a mix of downloads, uploads and SSE streams (each checked
byte for byte by sha256 against what the upstream sent or received) and faults (upstream resets
mid-body, malformed answers, surplus bytes, keep-alive connections closed after every few
answers, clients that leave mid-stream, one upstream restart). At the end: every completed
stream matched, every fault ended in the expected clean error, and the proxy's RSS, file
descriptors, in-flight requests, stream gauge and upstream pool are back to their baseline.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import statistics
import time

import aiohttp
import pytest

from proxy_harness import metric, scrape
from test_hardening_upstream import RawUpstream

pytestmark = pytest.mark.soak
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def op_download(s, url, rnd, tally):
    n = rnd.choice([0, 1, 100, 4096, 65536, 65537, 300_000, 2_000_000])
    async with s.get(f"{url}/bytes/{n}") as r:
        body = await r.read()
    assert r.status == 200, r.status
    assert sha(body) == sha(random.Random(n).randbytes(n)), f"download /bytes/{n} corrupted"
    tally["bytes_checked"] += n


async def op_upload(s, url, rnd, tally):
    n = rnd.choice([1, 1000, 65536, 200_000, 1_000_000])
    body = rnd.randbytes(n)
    async with s.post(f"{url}/sink", data=body) as r:
        got = await r.read()
    if r.status == 502:
        # the upstream closed a pooled keep-alive connection just as this POST was written to it;
        # a POST is never retried (it may have run), so the client gets a clean 502 instead
        assert json.loads(got)["error"]["type"] == "upstream_reset", got
        tally["post_on_closing_connection"] += 1
        return
    assert r.status == 200, r.status
    assert got.decode() == sha(body), "upload corrupted on the way up"
    tally["bytes_checked"] += n


async def op_sse(s, url, rnd, tally):
    n = rnd.randint(1, 40)
    async with s.get(f"{url}/sse/{n}") as r:
        body = await r.read()
    assert r.status == 200
    want = b"".join(b"event: values\r\ndata: {\"i\": %d}\r\n\r\n" % i for i in range(n))
    assert sha(body) == sha(want), "SSE stream corrupted"
    tally["events_checked"] += n


async def op_leave_mid_stream(s, url, rnd, tally):
    async with s.get(f"{url}/sse/400") as r:
        await r.content.readuntil(b"\r\n\r\n")
        r.close()  # the client goes away


async def op_reset_mid(s, url, rnd, tally):
    # a 100,000-byte answer cut by a reset: buffered whole (limits.max_buffered_response_bytes), so
    # the client gets a clean 502 upstream_reset before any byte of it (streamed: a cut 200)
    async with s.post(f"{url}/reset_mid", data=b"x") as r:
        assert r.status == 502
        assert (await r.json())["error"]["type"] == "upstream_reset"
    tally["reset_mid_502"] += 1


async def op_malformed(s, url, rnd, tally):
    path = rnd.choice(["garbage_status", "not_http", "double_cl", "reset_head"])
    async with s.post(f"{url}/{path}", data=b"x") as r:
        assert r.status == 502, (path, r.status)
        assert (await r.json())["error"]["type"] in ("upstream_protocol_error", "upstream_reset")


async def op_surplus(s, url, rnd, tally):
    async with s.get(f"{url}/cl_short") as r:
        assert await r.read() == b"hello"


OPS = [(op_download, 30), (op_upload, 15), (op_sse, 25), (op_leave_mid_stream, 5), (op_reset_mid, 5),
       (op_malformed, 5), (op_surplus, 5)]


async def proxy_state(s, p) -> dict:
    async with s.get(p.admin + "/status") as r:
        st = await r.json()
    return {"in_flight": st["in_flight_requests"], **st["upstream_pool"]}


@pytest.mark.timeout(SOAK_SECONDS + 120)
async def test_soak_mixed_traffic_with_faults(make_proxy):
    up = await RawUpstream().start()
    port = up.port
    up.close_every = 7  # keep-alive connections closed by the upstream at odd moments
    p = make_proxy(up.url, {"timeouts": {"first_byte": "3s", "idle": "2s"},
                            "upstream": {"keepalive_timeout": "4s", "max_connections": 32},
                            "circuit_breaker": {"enabled": False}, "probes": []})
    ops, weights = zip(*OPS)
    tally = {"bytes_checked": 0, "events_checked": 0, "post_on_closing_connection": 0, "reset_mid_502": 0}
    done: dict[str, int] = {}
    errors: list[str] = []
    samples: list[tuple[float, int, int]] = []
    restarting = asyncio.Event()
    t_start = time.monotonic()
    deadline = t_start + SOAK_SECONDS

    async def worker(i: int):
        rnd = random.Random(i)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            while time.monotonic() < deadline:
                op = rnd.choices(ops, weights)[0]
                if restarting.is_set():
                    await asyncio.sleep(0.05)
                    continue
                try:
                    await op(s, p.url, rnd, tally)
                    done[op.__name__] = done.get(op.__name__, 0) + 1
                except Exception as e:  # noqa: BLE001 - collected and asserted below
                    if restarting.is_set() or time.monotonic() - restart_at[0] < 1.0:
                        done["during_restart"] = done.get("during_restart", 0) + 1
                    else:
                        errors.append(f"{op.__name__}: {type(e).__name__}: {e}")

    restart_at = [0.0]

    async def sampler():
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - t_start, p.rss_bytes(), p.num_fds()))
            await asyncio.sleep(max(1.0, SOAK_SECONDS / 60))

    async def restarter():
        nonlocal up
        await asyncio.sleep(SOAK_SECONDS / 2)
        restarting.set()
        restart_at[0] = time.monotonic()
        await up.stop()
        await asyncio.sleep(0.3)
        up = await RawUpstream().start(port)
        up.close_every = 7
        restart_at[0] = time.monotonic()
        restarting.clear()

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(8)), sampler(), restarter()),
                               SOAK_SECONDS + 60)
        up.close_every = 0
        async with aiohttp.ClientSession() as s:
            for _ in range(50):  # settle: nothing in flight, every pooled connection idle
                st = await proxy_state(s, p)
                if st["in_flight"] == 0 and st["waiting"] == 0 and st["open"] == st["idle"]:
                    break
                await asyncio.sleep(0.1)
            async with s.get(p.url + "/bytes/1000") as r:
                assert r.status == 200 and await r.read() == random.Random(1000).randbytes(1000)
            end_state = await proxy_state(s, p)
            metrics = await scrape(p.admin, s)
    finally:
        await up.stop()

    print(f"\nsoak {SOAK_SECONDS:g}s: ops {done}, checked {tally}, errors {len(errors)}")
    print("samples (t, rss MiB, fds):", [(round(t), r >> 20, f) for t, r, f in samples[::max(1, len(samples) // 12)]])
    assert not errors, errors[:10]
    assert done.get("op_download", 0) > 20 and done.get("op_sse", 0) > 20 and done.get("op_upload", 0) > 10
    assert tally["bytes_checked"] > 10_000_000
    posts = done.get("op_upload", 0)
    assert tally["post_on_closing_connection"] <= max(3, posts // 50)
    assert end_state["in_flight"] <= 1 and end_state["waiting"] == 0  # the status request itself
    assert end_state["open"] <= 32
    assert ("sidecar_in_flight_streams", frozenset()) in metrics
    assert metric(metrics, "sidecar_in_flight_streams") == 0
    assert metric(metrics, "sidecar_in_flight_requests") == 0
    # leaks: compare the last third of the run against the second third (the first is warm-up)
    third = max(1, len(samples) // 3)
    mid, last = samples[third:2 * third], samples[-third:]
    rss_mid, rss_last = statistics.median(s[1] for s in mid), statistics.median(s[1] for s in last)
    fds_mid, fds_last = max(s[2] for s in mid), max(s[2] for s in last)
    assert rss_last <= rss_mid * 1.15 + (8 << 20), (rss_mid >> 20, rss_last >> 20)
    assert fds_last <= fds_mid + 10, (fds_mid, fds_last)
    assert p.num_fds() <= min(s[2] for s in samples) + 40
    assert "Traceback" not in p.stderr()
