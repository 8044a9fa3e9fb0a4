"""The drain as a pod lives it: POST /drain from the agent's preStop, then the kubelet's signals.

The kubelet order for a native sidecar is: the agent's preStop (deploy/docker/drain_wait.py), then
SIGTERM to the agent, then, once the agent has exited, SIGTERM to the proxy. Every actor here is a
real process; the Service is played by clients that stop sending new requests shortly after
/readyz turns 503 (endpoint removal), as kube-proxy does.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from proxy_harness import ROOT, free_port

AGENT = """
import asyncio, signal, sys
from proxy_harness import FaultUpstream
async def main():
    up = await FaultUpstream().start(int(sys.argv[1]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await up.stop()
asyncio.run(main())
"""


def start_agent(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "proxy"), str(ROOT / "tests")]))
    p = subprocess.Popen([sys.executable, "-c", AGENT, str(port)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


async def test_post_drain_starts_the_drain_and_the_signal_ends_it(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"server": {"drain_delay": "1s", "shutdown_grace": "10s"}})
    async with session.get(p.url + "/before") as r:       # a kept-alive client connection
        assert r.status == 200 and r.headers.get("Connection", "").lower() != "close"
    async with session.post(p.admin + "/drain") as r:
        assert r.status == 202
        body = await r.json()
    assert body["state"] == "draining" and body["accepting"] is True
    assert 0.5 < body["drain_delay_remaining_seconds"] <= 1.0
    async with session.get(p.admin + "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["checks"][0] == {"name": "lifecycle", "ok": False, "state": "draining"}
    # a second POST changes nothing (idempotent): the delay keeps counting from the first
    async with session.post(p.admin + "/drain") as r:
        assert (await r.json())["drain_delay_remaining_seconds"] <= body["drain_delay_remaining_seconds"]
    # from the drain on, every answer tells keep-alive clients to reconnect (elsewhere)
    async with session.get(p.url + "/kept-alive") as r:
        assert r.status == 200 and r.headers.get("Connection", "").lower() == "close"
    async with aiohttp.ClientSession() as fresh:        # still accepted during drain_delay
        async with fresh.get(p.url + "/during-drain") as r:
            assert r.status == 200 and r.headers.get("Connection", "").lower() == "close"
    await asyncio.sleep(1.3)
    with pytest.raises(aiohttp.ClientConnectionError):  # after drain_delay: no new connections
        async with aiohttp.ClientSession() as fresh:
            await fresh.get(p.url + "/after-delay")
    # the process stays up (liveness 200) until the kubelet's SIGTERM, then exits at once
    async with session.get(p.admin + "/healthz") as r:
        assert r.status == 200
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.proc.wait, 10) == 0
    assert time.monotonic() - t0 < 3
    messages = [x["message"] for x in p.log_lines()]
    assert messages.index("draining: readiness is now 503") < messages.index("stopped accepting connections")
    assert [x["reason"] for x in p.log_lines() if x["message"].startswith("draining")] == ["POST /drain"]


def test_drain_endpoint_answers_the_pod_only():
    from proxy.admin import _is_loopback
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("10.1.2.3") and not _is_loopback(None) and not _is_loopback("garbage")


@pytest.mark.parametrize("prestop_drains", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["drain-at-prestop", "no-drain-control"])
async def test_kubelet_order_loses_no_request(make_proxy, prestop_drains):
    agent_port = free_port()
    agent = start_agent(agent_port)
    try:
        p = make_proxy(f"http://127.0.0.1:{agent_port}",
                       {"server": {"drain_delay": "1500ms", "shutdown_grace": "10s"},
                        "upstream": {"connect_timeout": "500ms"}, "circuit_breaker": {"enabled": False}})
        endpoint = {"present": True}
        errors: list[str] = []
        done = {"requests": 0}

        async def endpoints_controller(s):
            # kube-proxy stops routing new requests here a moment after readiness fails
            while endpoint["present"]:
                async with s.get(p.admin + "/readyz") as r:
                    if r.status == 503:
                        await asyncio.sleep(0.3)
                        endpoint["present"] = False
                        return
                await asyncio.sleep(0.1)

        async def client(s):
            while endpoint["present"]:
                try:
                    async with s.post(p.url + "/delay/0.05", data=b"x" * 100) as r:
                        await r.read()
                        if r.status != 200:
                            errors.append(f"status {r.status}")
                        done["requests"] += 1
                except aiohttp.ClientError as e:
                    errors.append(repr(e))

        async def stream(s):
            try:
                async with s.get(p.url + "/sse?events=12&interval=0.25") as r:
                    body = await r.read()
                events = [e for e in body.split(b"\r\n\r\n") if e.startswith(b"event: values")]
                if len(events) != 12 or b"event: error" in body:
                    errors.append(f"stream cut: {len(events)} events")
            except aiohttp.ClientError as e:
                errors.append(f"stream: {e!r}")

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as s:
            tasks = [asyncio.create_task(client(s)) for _ in range(4)]
            tasks += [asyncio.create_task(stream(s)), asyncio.create_task(endpoints_controller(s))]
            await asyncio.sleep(0.5)
            # 1. the pod is deleted: the agent's preStop runs
            hook = [sys.executable, str(ROOT / "deploy" / "docker" / "drain_wait.py"), "--admin", p.admin,
                    "--min", "0.2", "--max", "6", "--poll", "0.1"] + ([] if prestop_drains else ["--no-drain"])
            prestop = await asyncio.create_subprocess_exec(*hook, stderr=asyncio.subprocess.PIPE)
            _, hook_err = await prestop.communicate()
            # 2. the agent gets SIGTERM and exits
            agent.send_signal(signal.SIGTERM)
            await asyncio.to_thread(agent.wait, 10)
            await asyncio.sleep(0.5)   # the kubelet notices the agent is gone
            # 3. only now the native sidecar gets SIGTERM
            p.signal(signal.SIGTERM)
            code = await asyncio.to_thread(p.proc.wait, 15)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent.stdout.close()
    assert code == 0
    assert done["requests"] > 10
    if prestop_drains:
        assert b"drain_wait: drained" in hook_err, hook_err
        assert errors == [], errors
    else:
        # the old order: nothing drains until the agent is gone, so kept-alive clients meet a dead upstream
        assert any("502" in e or "503" in e for e in errors), errors
