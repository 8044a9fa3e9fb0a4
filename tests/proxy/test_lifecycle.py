"""Graceful drain on SIGTERM/SIGINT, and config reload on SIGHUP or file change."""
from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
import yaml

from proxy_harness import metric, read_cut, scrape, wait_metric


async def _read_events(resp) -> list[bytes]:
    body = await resp.read()
    return [e for e in body.split(b"\r\n\r\n") if e]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_drains_stream_then_exits_0(upstream, make_proxy, session, sig):
    p = make_proxy(upstream.url, {"server": {"drain_delay": "1s", "shutdown_grace": "10s"}})
    resp = await session.get(p.url + "/sse?events=5&interval=0.4")
    assert resp.status == 200
    await resp.content.readuntil(b"\r\n\r\n")
    p.signal(sig)
    t0 = time.monotonic()
    # readiness turns 503 at once, liveness stays 200
    while True:
        async with session.get(p.admin + "/readyz") as r:
            if r.status == 503:
                body = await r.json()
                break
        assert time.monotonic() - t0 < 0.5, "readiness did not turn 503 at once"
        await asyncio.sleep(0.02)
    assert body["checks"][0] == {"name": "lifecycle", "ok": False, "state": "draining"}
    async with session.get(p.admin + "/healthz") as r:
        assert r.status == 200
    # during the drain delay new connections are still served
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(p.url + "/during-drain") as r:
            assert r.status == 200
            assert r.headers.get("Connection", "").lower() == "close"
    # the in-flight stream completes whole
    rest = await _read_events(resp)
    assert len(rest) == 5 and all(e.startswith(b"event: values") for e in rest)
    assert await asyncio.to_thread(p.proc.wait, 10) == 0
    logs = [x["message"] for x in p.log_lines()]
    assert "draining: readiness is now 503" in logs and "stopped" in logs


async def test_grace_period_cuts_streams_that_outlive_it(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"server": {"drain_delay": "0s", "shutdown_grace": "500ms"}})
    resp = await session.get(p.url + "/sse?events=100&interval=0.2")
    await resp.content.readuntil(b"\r\n\r\n")
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    data = b""
    # cut, and it must look cut (DESIGN: no final chunk), with a last SSE error event saying why
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            data += chunk
    resp.close()
    assert b"event: error" in data and b'"error": "shutdown"' in data, data[-300:]
    assert await asyncio.to_thread(p.proc.wait, 10) == 0
    assert time.monotonic() - t0 < 5


async def test_sighup_reloads_routes_and_rejects_invalid_config(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    async with session.get(p.url + "/custom/1") as r:
        assert r.status == 200
    cfg = dict(p.cfg)
    cfg["routes"] = [{"name": "custom", "path": "/custom/{id}"}]
    p.write_config(cfg)
    p.signal(signal.SIGHUP)
    s = await wait_metric(p.admin, "sidecar_config_reloads_total", result="success")
    async with session.get(p.url + "/custom/2") as r:
        assert r.status == 200
    s = await scrape(p.admin)
    assert metric(s, "sidecar_requests_total", route="custom") == 1
    assert metric(s, "sidecar_requests_total", route="other") == 1
    # an invalid config is rejected; the running one stays
    p.config_path.write_text(yaml.safe_dump({**cfg, "upstream": {"url": "nope"}}))
    p.signal(signal.SIGHUP)
    s = await wait_metric(p.admin, "sidecar_config_reloads_total", result="failure")
    assert metric(s, "sidecar_config_reloads_total", result="failure") >= 1
    async with session.get(p.url + "/custom/3") as r:
        assert r.status == 200
    errors = [x for x in p.log_lines() if x["message"].startswith("config reload rejected")]
    assert errors and any("upstream.url" in prob for prob in errors[0]["problems"])


async def test_config_file_change_reloads_and_stream_keeps_its_settings(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"idle": "5s"}})
    # a stream that starts under idle=5s survives a reload to idle=200ms although it pauses 0.5 s
    resp = await session.get(p.url + "/sse?events=3&interval=0.5")
    await resp.content.readuntil(b"\r\n\r\n")
    new = dict(p.cfg)
    new["timeouts"] = {"idle": "200ms"}
    tmp = p.config_path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(new))
    tmp.replace(p.config_path)  # atomic swap, as a ConfigMap update does
    events = await _read_events(resp)
    assert len(events) == 3, events
    s = await wait_metric(p.admin, "sidecar_config_reloads_total", result="success")
    assert metric(s, "sidecar_config_reloads_total", result="success") >= 1
    # a new stream gets the new idle timeout
    async with session.get(p.url + "/sse?events=3&interval=0.5") as r:
        body = await read_cut(r)
    assert b"event: error" in body and b"idle" in body


async def test_reload_switches_the_format_of_every_log_line(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"logging": {"format": "json"}})
    async with session.get(p.url + "/before") as r:
        assert r.status == 200
    p.write_config({**p.cfg, "logging": {"format": "text", "level": "info"}})
    p.signal(signal.SIGHUP)
    await wait_metric(p.admin, "sidecar_config_reloads_total", result="success")
    async with session.get(p.url + "/after") as r:
        assert r.status == 200
    assert p.stop() == 0
    err = p.stderr().splitlines()
    reloaded = next(i for i, line in enumerate(err) if "config reloaded" in line)
    after = [line for line in err[reloaded:] if line.strip()]
    # from the reload on, every process log line is text: the reload's own, draining, stopped
    assert all(not line.startswith("{") for line in after), after
    assert any("INFO proxy.lifecycle: draining: readiness is now 503" in line for line in after), after
    assert any(line.endswith("INFO proxy.lifecycle: stopped") for line in after), after
    assert all(line.startswith("{") for line in err[:reloaded] if line.strip())
