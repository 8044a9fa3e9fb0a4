"""Start-up: until a probe has passed once it is retried fast (bounded, within max_per_hour), so the
pod turns ready seconds after its upstream does, not an interval later; while the upstream does
not accept connections no request is sent (no LLM cost, no breaker failures); no stale errors."""
from __future__ import annotations

import asyncio
import time

from proxy_harness import FaultUpstream, free_port, metric, scrape

PROBE = {"name": "agent_pong", "interval": "60s", "jitter": 0, "timeout": "1s", "skip_if_recent_success": False,
         "request": {"method": "POST", "path": "/probe", "json": {"assistant_id": "agent"}},
         "expect": {"status": 200, "json_path": "messages.-1.content", "equals": "PONG"}}


def proxy_for(make_proxy, url: str, **probe_over):
    return make_proxy(url, {"probes": [{**PROBE, **probe_over}],
                            "readiness": {"require_probes": ["agent_pong"]},
                            "upstream": {"connect_timeout": "200ms"}, "circuit_breaker": {"enabled": False}})


async def ready_status(session, p) -> int:
    async with session.get(p.admin + "/readyz") as r:
        return r.status


async def test_ready_soon_after_a_late_upstream(make_proxy, session):
    port = free_port()
    p = make_proxy(f"http://127.0.0.1:{port}", {"probes": [PROBE], "readiness": {"require_probes": ["agent_pong"]},
                                                 "upstream": {"connect_timeout": "200ms"}})   # breaker enabled
    await asyncio.sleep(1.5)           # the agent is still starting
    async with session.get(p.admin + "/readyz") as r:
        assert r.status == 503
        check = [c for c in (await r.json())["checks"] if c["name"] == "probe:agent_pong"][0]
    assert check["state"] == "pending" and "does not accept connections" in check["last_error"]
    up = await FaultUpstream().start(port)
    try:
        t0 = time.monotonic()
        while await ready_status(session, p) != 200:
            assert time.monotonic() - t0 < 10, "not ready within the bounded backoff (interval is 60 s)"
            await asyncio.sleep(0.05)
        s = await scrape(p.admin)
        # one real call, once the agent listened: nothing was sent (or paid, or held against the
        # breaker) while it was starting
        assert metric(s, "sidecar_probe_runs_total", probe="agent_pong", result="passed") == 1
        assert metric(s, "sidecar_probe_runs_total", probe="agent_pong") == 1
        assert len(up.probe_calls) == 1
        async with session.get(p.admin + "/status") as r:
            assert (await r.json())["breakers"]["upstream"]["state"] == "closed"
    finally:
        await up.stop()
    lines = [x for x in p.log_lines() if x.get("logger") == "proxy.probes"]
    assert not [x for x in lines if x["level"] == "warning"], lines


async def test_first_failures_are_retried_fast_and_quietly(upstream, make_proxy, session):
    upstream.probe_answer = "not yet"
    p = proxy_for(make_proxy, upstream.url)
    await asyncio.sleep(1.8)           # calls at 0 s, 0.5 s, 1.5 s
    upstream.probe_answer = "PONG"
    t0 = time.monotonic()
    while await ready_status(session, p) != 200:
        assert time.monotonic() - t0 < 4, "the next fast retry (at 3.5 s) should have passed"
        await asyncio.sleep(0.05)
    s = await scrape(p.admin)
    assert metric(s, "sidecar_probe_runs_total", probe="agent_pong", result="failed") >= 3
    lines = [x for x in p.log_lines() if x.get("logger") == "proxy.probes"]
    assert not [x for x in lines if x["level"] == "warning"], "failures before the first pass are not warnings"
    assert any(x["message"] == "probe not passing yet (retrying soon)" for x in lines)


async def test_fast_retries_count_against_max_per_hour(upstream, make_proxy, session):
    upstream.probe_status = 500
    p = proxy_for(make_proxy, upstream.url, max_per_hour=3)
    await asyncio.sleep(4.5)           # retries at 0 s, 0.5 s, 1.5 s; the 4th (3.5 s) is over budget
    s = await scrape(p.admin)
    calls = sum(v for (name, labels), v in s.items() if name == "sidecar_probe_runs_total"
                and dict(labels)["probe"] == "agent_pong" and not dict(labels)["result"].startswith("skipped"))
    assert calls == 3
    assert metric(s, "sidecar_probe_runs_total", probe="agent_pong", result="skipped_budget") == 1


async def test_no_stale_error_next_to_passing(upstream, make_proxy, session):
    upstream.probe_status = 500
    p = proxy_for(make_proxy, upstream.url)
    t0 = time.monotonic()
    while metric(await scrape(p.admin), "sidecar_probe_runs_total", probe="agent_pong", result="failed") < 1:
        assert time.monotonic() - t0 < 5
        await asyncio.sleep(0.05)
    upstream.probe_status = 200
    while await ready_status(session, p) != 200:
        assert time.monotonic() - t0 < 8
        await asyncio.sleep(0.05)
    async with session.get(p.admin + "/readyz") as r:
        check = [c for c in (await r.json())["checks"] if c["name"] == "probe:agent_pong"][0]
    assert check["state"] == "passing" and check["last_error"] is None
    async with session.get(p.admin + "/status") as r:
        st = (await r.json())["probes"]["agent_pong"]
    assert st["state"] == "passing" and st["last_error"] is None
    assert any("500" in (x.get("error") or "") for x in st["recent"])  # the history keeps it
