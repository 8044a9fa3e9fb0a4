"""What the alert rules rely on is in a real scrape from the start: the limits as gauges, and the
labelled counter series the rules read, at 0 before any failure; a reload updates both."""
from __future__ import annotations

import asyncio
import time

import yaml

from proxy_harness import FaultUpstream, ProxyProcess, scrape
from proxy import metrics as M


def series(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def labelset(**kw) -> frozenset:
    return frozenset(kw.items())


async def test_fresh_proxy_exports_limits_and_zero_series_then_follows_a_reload(tmp_path):
    up = await FaultUpstream().start()
    proxy = ProxyProcess(tmp_path, up.url, {
        "limits": {"max_concurrent_requests": 40, "max_concurrent_streams": 7},
        "probes": [{"name": "pong", "interval": "1h", "request": {"method": "POST", "path": "/probe"},
                    "expect": {"status": 200}}],
    }).start()
    try:
        s = await scrape(proxy.admin)
        limits = {dict(k)["name"]: v for k, v in series(s, "sidecar_limit").items()}
        assert limits["max_concurrent_requests"] == 40 and limits["max_concurrent_streams"] == 7
        assert limits["upstream_max_connections"] >= 40 and limits["max_buffered_bytes"] > 0
        assert set(limits) == set(M.LIMIT_NAMES)
        # every series an alert reads for a first failure exists, at 0, before any traffic
        assert series(s, "sidecar_config_reloads_total") == {labelset(result="failure"): 0, labelset(result="success"): 0}
        assert {dict(k)["reason"] for k in series(s, "sidecar_shed_total")} == set(M.SHED_REASONS)
        timeouts = series(s, "sidecar_timeouts_total")
        assert {dict(k)["kind"] for k in timeouts if dict(k)["route"] == "other"} == set(M.TIMEOUT_KINDS)
        assert {dict(k)["kind"] for k in series(s, "sidecar_upstream_errors_total")
                if dict(k)["route"] == "other"} == set(M.UPSTREAM_ERROR_KINDS)
        assert {(dict(k)["route"], dict(k)["outcome"]) for k in series(s, "sidecar_streams_total")} >= \
            {("thread_run_stream", o) for o in M.STREAM_OUTCOMES}
        assert {dict(k)["outcome"] for k in series(s, "sidecar_runs_total") if dict(k)["route"] == "run_wait"} == set(M.RUN_OUTCOMES)
        assert {dict(k)["result"] for k in series(s, "sidecar_probe_runs_total")} == set(M.PROBE_RESULTS)
        assert {dict(k)["to"] for k in series(s, "sidecar_circuit_transitions_total")} == set(M.BREAKER_STATES)
        assert all(v == 0 for v in timeouts.values())
        # bounded: per-route kinds only on the run routes and `other`, not on all ~50 routes
        assert len({dict(k)["route"] for k in timeouts}) <= 10
        assert sum(1 for _ in s) < 400, len(s)

        # a reload: new limits, streams limit unset, a user route with run_kind gets its zeros
        cfg = yaml.safe_load(proxy.config_path.read_text())
        cfg["limits"] = {"max_concurrent_requests": 12}
        cfg["routes"] = [{"name": "my_agent_run", "path": "/agent/run", "methods": ["POST"], "run_kind": "wait"}]
        proxy.config_path.write_text(yaml.safe_dump(cfg))
        deadline = time.monotonic() + 10
        while True:
            s = await scrape(proxy.admin)
            if s.get(("sidecar_config_reloads_total", labelset(result="success"))) == 1:
                break
            assert time.monotonic() < deadline, proxy.stderr()[-2000:]
            await asyncio.sleep(0.05)
        limits = {dict(k)["name"]: v for k, v in series(s, "sidecar_limit").items()}
        assert limits["max_concurrent_requests"] == 12 and "max_concurrent_streams" not in limits
        assert s[("sidecar_timeouts_total", labelset(route="my_agent_run", kind="first_byte"))] == 0
        assert s[("sidecar_runs_total", labelset(route="my_agent_run", outcome="run_error"))] == 0
    finally:
        proxy.kill()
        await up.stop()
