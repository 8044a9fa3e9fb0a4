"""Slow-read attack (``slowhttptest -X``, 1,000 connections, 30 s) against the shipped defaults,
with nginx in front of the same upstream in the same run for comparison.

Meanwhile one normal request a second: it must be served or shed with a clean 503 (never a
502/504), ``/readyz`` stays 200, the breaker stays closed, and RSS stays under the stated bound:
idle + ``limits.max_buffered_bytes`` (64 MiB, whole answers held for slow readers) + 400 KiB per
exchange in flight (at most 32 KiB of upstream body queued plus one socket read, ≤ 128 KiB: the
64 KiB receive buffer the kernel doubles; plus the client transport's 64 KiB write buffer and one
chunk, ≤ 160 KiB; plus the objects of the exchange and its two connections). The served share of normal traffic is printed
next to nginx's.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time

import aiohttp
import pytest

from proxy_harness import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("slowhttptest") is None, reason="slowhttptest not installed"),
              pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")]

ATTACK_SECONDS = 30
RSS_BOUND = (64 << 20) + 1000 * (400 << 10)


def nginx_conf(tmp, port: int, up_port: int) -> str:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    return f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


async def attack_and_measure(url: str, admin: str | None, rss) -> dict:
    """Run the attack; meanwhile one normal request a second (and readiness, for the proxy)."""
    attack = subprocess.Popen(
        ["slowhttptest", "-X", "-c", "1000", "-r", "200", "-l", str(ATTACK_SECONDS), "-w", "512", "-y", "1024",
         "-n", "5", "-z", "32", "-k", "3", "-u", url + "/blob/1048576"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    statuses, unready, breaker_states, peak = [], 0, set(), rss()
    try:
        await asyncio.sleep(3)  # let the attack build up
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                         connector=aiohttp.TCPConnector(force_close=True)) as s:
            t_end = time.monotonic() + ATTACK_SECONDS - 5
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                try:
                    async with s.get(url + "/anything") as r:
                        body = await r.read()
                        if r.status == 503:
                            assert json.loads(body)["error"]["type"] and r.headers["Retry-After"]
                        statuses.append(r.status)
                except (aiohttp.ClientError, TimeoutError) as e:
                    statuses.append(type(e).__name__)
                if admin is not None:
                    async with s.get(admin + "/readyz") as r:
                        unready += r.status != 200
                    async with s.get(admin + "/status") as r:
                        breaker_states.add((await r.json())["breakers"]["upstream"]["state"])
                peak = max(peak, rss())
                await asyncio.sleep(max(0.0, 1 - (time.monotonic() - t0)))
    finally:
        attack.terminate()
        attack.wait(10)
    return {"statuses": statuses, "served": statuses.count(200), "unready": unready,
            "breaker": breaker_states, "peak_rss": peak}


async def test_slow_read_attack_does_not_deny_service(upstream, make_proxy, tmp_path):
    p = make_proxy(upstream.url)
    idle = p.rss_bytes()
    mine = await attack_and_measure(p.url, p.admin, p.rss_bytes)

    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, port, upstream.port))
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        theirs = await attack_and_measure(f"http://127.0.0.1:{port}", None, lambda: 0)
    finally:
        nginx.terminate()
        nginx.wait(10)

    print(f"\nslow-read attack, normal traffic served: sidecar {mine['served']}/{len(mine['statuses'])}, "
          f"nginx {theirs['served']}/{len(theirs['statuses'])}; sidecar peak RSS "
          f"{(mine['peak_rss'] - idle) / 2**20:.1f} MiB over idle")
    assert all(s in (200, 503) for s in mine["statuses"]), mine["statuses"]  # never a 502/504
    assert mine["unready"] == 0 and mine["breaker"] == {"closed"}, mine
    assert mine["peak_rss"] - idle < RSS_BOUND, (mine["peak_rss"] - idle) / 2**20
    assert "Traceback" not in p.stderr()
