"""Start-up: until a probe has passed once it is retried fast (bounded, within max_per_hour), so the
pod turns ready seconds after its upstream does, not an interval later; no stale errors shown."""
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
    p = proxy_for(make_proxy, f"http://127.0.0.1:{port}")
    assert await ready_status(session, p) == 503
    await asyncio.sleep(1.2)           # the agent is still starting
    up = await FaultUpstream().start(port)
    try:
        t0 = time.monotonic()
        while await ready_status(session, p) != 200:
            assert time.monotonic() - t0 < 6, "not ready within the bounded backoff (interval is 60 s)"
            await asyncio.sleep(0.05)
        s = await scrape(p.admin)
        assert metric(s, "sidecar_probe_runs_total", probe="agent_pong", result="passed") == 1
        assert metric(s, "sidecar_probe_runs_total", probe="agent_pong") >= 3   # each retry is a real, counted call
    finally:
        await up.stop()
    # failures before the first pass are expected at start-up: info, not a warning
    lines = [x for x in p.log_lines() if x.get("logger") == "proxy.probes"]
    assert not [x for x in lines if x["level"] == "warning"], lines
    assert any(x["message"] == "probe not passing yet (retrying soon)" for x in lines)


async def test_fast_retries_count_against_max_per_hour(make_proxy, session):
    p = proxy_for(make_proxy, f"http://127.0.0.1:{free_port()}", max_per_hour=3)
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
