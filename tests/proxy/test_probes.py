"""Synthetic probes feed readiness (never liveness), cheaply and without leaking secrets."""
from __future__ import annotations

import asyncio
import time

from proxy_harness import metric, scrape

SECRET = "sk-probe-secret-123"


def probe_cfg(**over) -> dict:
    cfg = {
        "name": "agent_pong", "interval": "250ms", "jitter": 0, "timeout": "1s",
        "request": {"method": "POST", "path": "/probe", "headers": {"Authorization": "Bearer ${PROBE_TOKEN}"},
                    "json": {"assistant_id": "agent", "input": {"messages": [
                        {"role": "user", "content": "Reply with the single word PONG."}]}}},
        "expect": {"status": 200, "json_path": "messages.-1.content", "equals": "PONG"},
        "failure_threshold": 3, "success_threshold": 1, "skip_if_recent_success": False,
    }
    cfg.update(over)
    return cfg


def start(make_proxy, upstream, *probes, extra=None):
    cfg = {"probes": list(probes), "readiness": {"require_probes": [p["name"] for p in probes]}}
    cfg.update(extra or {})
    return make_proxy(upstream.url, cfg, env={"PROBE_TOKEN": SECRET})


async def wait_for(pred, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await pred()
        if v:
            return v
        await asyncio.sleep(step)
    raise AssertionError("condition not reached")


async def runs(p, result):
    return metric(await scrape(p.admin), "sidecar_probe_runs_total", probe="agent_pong", result=result)


async def readyz(session, p):
    async with session.get(p.admin + "/readyz") as r:
        return r.status, await r.json()


async def test_readiness_follows_the_meaning_of_the_answer(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg())
    await wait_for(lambda: _ready(session, p))
    assert upstream.probe_calls[0]["headers"]["X-Sidecar-Probe"] == "agent_pong"
    # the answer stops matching: not ready only after exactly failure_threshold (3) failed probes
    upstream.probe_answer = "I am not sure"
    for k in (1, 2):
        await wait_for(lambda k=k: _at_least(p, "failed", k))
        status, _ = await readyz(session, p)
        assert status == 200, f"not ready after only {k} failed probes (hysteresis)"
    await wait_for(lambda: _at_least(p, "failed", 3))
    status, body = await readyz(session, p)
    assert status == 503
    check = [c for c in body["checks"] if c["name"] == "probe:agent_pong"][0]
    assert check["ok"] is False and check["state"] == "failing"
    assert "messages.-1.content" in check["last_error"] and check["consecutive_failures"] >= 3
    assert check["last_success"] is not None
    async with session.get(p.admin + "/healthz") as r:
        assert r.status == 200  # an LLM outage never restarts the pod
    s = await scrape(p.admin)
    assert metric(s, "sidecar_probe_success", probe="agent_pong") == 0
    # restored: ready again after success_threshold (1) pass
    upstream.probe_answer = "PONG"
    await wait_for(lambda: _ready(session, p))
    s = await scrape(p.admin)
    assert metric(s, "sidecar_probe_success", probe="agent_pong") == 1
    assert metric(s, "sidecar_probe_last_success_timestamp_seconds", probe="agent_pong") > time.time() - 5
    assert metric(s, "sidecar_probe_duration_seconds_count", probe="agent_pong") >= 5
    # probes are counted apart from user traffic
    assert metric(s, "sidecar_requests_total") == 0


async def test_500s_and_timeouts_fail_the_probe(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg(timeout="300ms", failure_threshold=2))
    await wait_for(lambda: _ready(session, p))
    upstream.probe_status = 500
    await wait_for(lambda: _not_ready(session, p))
    _, body = await readyz(session, p)
    assert "expected status 200, got 500" in body["checks"][-1]["last_error"]
    upstream.probe_status = 200
    await wait_for(lambda: _ready(session, p))
    upstream.probe_delay = 1.0
    await wait_for(lambda: _not_ready(session, p))
    assert await runs(p, "timeout") >= 2
    _, body = await readyz(session, p)
    assert "timed out" in body["checks"][-1]["last_error"]


async def test_user_traffic_success_skips_the_synthetic_call(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg(interval="400ms", skip_if_recent_success=True))
    await wait_for(lambda: _ready(session, p))  # the first probe runs at start-up
    calls = len(upstream.probe_calls)

    async def traffic():
        for _ in range(15):
            async with session.post(p.url + "/probe", json={}) as r:
                assert r.status == 200
            await asyncio.sleep(0.1)
    await traffic()
    assert len(upstream.probe_calls) - calls == 15  # only the user's own calls reached the agent
    assert await runs(p, "skipped_passive") >= 2
    assert (await readyz(session, p))[0] == 200


async def test_max_per_hour_caps_synthetic_calls(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg(interval="100ms", max_per_hour=3))
    await wait_for(lambda: _at_least(p, "skipped_budget", 3))
    assert len(upstream.probe_calls) == 3
    assert await runs(p, "passed") == 3


async def test_streaming_probe_matches_streamed_content(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg(request={"method": "POST", "path": "/probe-stream", "json": {}},
                                              expect={"status": 200, "body_regex": "PONG"}))
    await wait_for(lambda: _ready(session, p))
    s = await scrape(p.admin)
    assert metric(s, "sidecar_probe_time_to_first_event_seconds_count", probe="agent_pong") >= 1
    upstream.probe_answer = "nope"
    await wait_for(lambda: _not_ready(session, p))


async def test_secrets_never_leak(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg())
    await wait_for(lambda: _ready(session, p))
    upstream.probe_answer = "wrong"
    await wait_for(lambda: _not_ready(session, p))
    assert upstream.probe_calls[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # it was sent...
    async with session.get(p.admin + "/status") as r:
        status_text = await r.text()
    async with session.get(p.admin + "/metrics") as r:
        metrics_text = await r.text()
    _, ready_body = await readyz(session, p)
    for text in (status_text, metrics_text, str(ready_body), p.stdout(), p.stderr()):
        assert SECRET not in text  # ...and shown nowhere
    assert '"Authorization": "<redacted>"' in status_text
    assert '"agent_pong"' in status_text and '"recent"' in status_text


async def test_open_breaker_probe_does_not_take_the_half_open_trial(upstream, make_proxy, session):
    p = start(make_proxy, upstream, probe_cfg(interval="100ms"),
              extra={"circuit_breaker": {"fail_max": 1, "reset_timeout": "200ms"}, "retries": {"attempts": 1}})
    await wait_for(lambda: _ready(session, p))
    async with session.get(p.url + "/status/503") as r:
        assert r.status == 503  # the breaker opens
    n = len(upstream.probe_calls)
    await asyncio.sleep(0.6)  # past reset_timeout: half-open, waiting for a user trial
    assert len(upstream.probe_calls) == n  # probes did not take the trial
    async with session.get(p.url + "/x") as r:
        assert r.status == 200  # the user's trial closes it
    await wait_for(lambda: _calls_above(upstream, n))


async def _calls_above(upstream, n):
    return len(upstream.probe_calls) > n


async def _ready(session, p):
    return (await readyz(session, p))[0] == 200


async def _not_ready(session, p):
    return (await readyz(session, p))[0] == 503


async def _at_least(p, result, n):
    return await runs(p, result) >= n
