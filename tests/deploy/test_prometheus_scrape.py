"""A real scrape of the real proxy passes `promtool check metrics`, and a real Prometheus server
scrapes the admin port and answers PromQL over it (including every dashboard query)."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time

import aiohttp
import pytest
import yaml
from aiohttp import web

from deployutil import DEPLOY, ROOT
from agent_procs import free_port

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]

REQUESTS = 7


@pytest.fixture
def binaries():
    if not (ROOT / "proxy" / "__main__.py").exists():
        pytest.skip("proxy/__main__.py does not exist yet")
    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install prometheus; deploy/ci-checks.sh does it)")
    return shutil.which("prometheus"), shutil.which("promtool")


@pytest.fixture
async def upstream():
    async def any_path(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def wait_http(session, url, deadline_s, proc, log):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        assert proc.poll() is None, f"{proc.args[0]} exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{url} not up in {deadline_s}s: {log.read_text()[-3000:]}"
        await asyncio.sleep(0.1)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dashboard_queries():
    d = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    def walk(panels):
        for p in panels:
            yield from walk(p.get("panels", []))
            for t in p.get("targets", []):
                yield p["title"], t["expr"]
    for title, expr in walk(d["panels"]):
        for var in ("$namespace", "$job", "$pod", "$route"):
            expr = expr.replace(var, ".*")
        yield title, expr.replace("$__rate_interval", "1m")


async def test_real_scrape_and_real_prometheus(binaries, upstream, tmp_path):
    prometheus, promtool = binaries
    traffic, admin, prom_port = free_port(), free_port(), free_port()
    cfg = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg["server"].update(listen=f"127.0.0.1:{traffic}", admin_listen=f"127.0.0.1:{admin}",
                         drain_delay="100ms", shutdown_grace="2s")
    cfg["upstream"]["url"] = upstream
    cfg["probes"], cfg["readiness"] = [], {"require_probes": []}
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(cfg))
    proxy_log = tmp_path / "proxy.log"
    with open(proxy_log, "w") as f:
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(tmp_path / "proxy.yaml")],
                                 cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    prom = None
    try:
        async with aiohttp.ClientSession() as s:
            await wait_http(s, f"http://127.0.0.1:{admin}/healthz", 20, proxy, proxy_log)
            for i in range(REQUESTS):
                async with s.get(f"http://127.0.0.1:{traffic}/not-a-langgraph-path/{i}") as r:
                    assert r.status == 200 and (await r.json())["path"] == f"/not-a-langgraph-path/{i}"

            # promtool check metrics on a real scrape (text format): no problems reported at all
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                assert r.status == 200
                scrape = await r.text()
            assert f'sidecar_requests_total{{code="200",method="GET",route="other"}} {REQUESTS}.0' in scrape
            check = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=30)
            assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr

            # a real Prometheus scraping the admin port every second
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "prometheus" / "alerts.yaml")],
                "scrape_configs": [{"job_name": "langgraph-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}]}],
            }))
            prom_log = tmp_path / "prometheus.log"
            with open(prom_log, "w") as f:
                prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                         f"--web.listen-address=127.0.0.1:{prom_port}"],
                                        stdout=f, stderr=subprocess.STDOUT)
            api = f"http://127.0.0.1:{prom_port}/api/v1"
            await wait_http(s, f"http://127.0.0.1:{prom_port}/-/ready", 30, prom, prom_log)

            async def query(q):
                async with s.get(f"{api}/query", params={"query": q}) as r:
                    body = await r.json()
                assert body["status"] == "success", (q, body)
                return body["data"]["result"]

            deadline = time.monotonic() + 30
            while True:
                res = await query('sum(sidecar_requests_total{route="other"})')
                if res and float(res[0]["value"][1]) == REQUESTS:
                    break
                assert time.monotonic() < deadline, f"Prometheus never saw {REQUESTS} requests: {res}"
                await asyncio.sleep(0.5)
            up = await query('up{job="langgraph-sidecar"}')
            assert [float(u["value"][1]) for u in up] == [1.0]

            # the alert rules load into a real server without errors
            async with s.get(f"{api}/rules") as r:
                groups = (await r.json())["data"]["groups"]
            assert {g["name"] for g in groups} == {"sidecar.recording", "sidecar.alerts"}

            # every dashboard query is valid PromQL for a real server
            for title, q in dashboard_queries():
                await query(q)
            # and the traffic panel shows this traffic
            res = await query('sum by (route) (sidecar_requests_total{route=~".*"})')
            assert {r["metric"]["route"]: float(r["value"][1]) for r in res}.get("other") == REQUESTS
    finally:
        if prom is not None:
            stop(prom)
        stop(proxy)


def start_prometheus(prometheus: str, tmp_path, admin_port: int, prom_port: int) -> subprocess.Popen:
    """A real Prometheus scraping the admin port and evaluating alerts.yaml every second."""
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yaml")],
        "scrape_configs": [{"job_name": "langgraph-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}],
    }))
    with open(tmp_path / "prometheus.log", "w") as f:
        return subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.slow
async def test_real_prometheus_sees_reload_failure_alert_pending_after_one_bad_reload(binaries, tmp_path):
    """One invalid config change is enough: the failure series exists at 0 from the start, so the
    very first failure is an increase a real Prometheus evaluates (issue 18, point 1)."""
    from proxy_harness import FaultUpstream, ProxyProcess, metric, wait_metric
    prometheus, _ = binaries
    prom_port = free_port()
    up = await FaultUpstream().start()
    (tmp_path / "proxy").mkdir()
    proxy = ProxyProcess(tmp_path / "proxy", up.url).start()
    prom = start_prometheus(prometheus, tmp_path, proxy.admin_port, prom_port)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        async with aiohttp.ClientSession() as s:
            await wait_http(s, f"http://127.0.0.1:{prom_port}/-/ready", 30, prom, tmp_path / "prometheus.log")

            async def alerts() -> dict:
                async with s.get(f"{api}/alerts") as r:
                    return {a["labels"]["alertname"]: a for a in (await r.json())["data"]["alerts"]}

            async def query(q):
                async with s.get(f"{api}/query", params={"query": q}) as r:
                    return (await r.json())["data"]["result"]

            # Prometheus has scraped the healthy proxy (failure count 0) at least twice
            deadline = time.monotonic() + 30
            while not await query('count_over_time(sidecar_config_reloads_total{result="failure"}[1m]) >= 2'):
                assert time.monotonic() < deadline, "Prometheus never scraped the failure counter twice"
                await asyncio.sleep(0.25)
            assert "SidecarConfigReloadFailed" not in await alerts()

            # one bad change of the config file, as a ConfigMap update makes
            proxy.config_path.write_text(proxy.config_path.read_text() + "\nlimits: {max_concurrent_requests: -1}\n")
            samples = await wait_metric(proxy.admin, "sidecar_config_reloads_total", timeout=10, result="failure")
            assert metric(samples, "sidecar_config_reloads_total", result="failure") == 1

            deadline = time.monotonic() + 20
            while (a := (await alerts()).get("SidecarConfigReloadFailed")) is None:
                assert time.monotonic() < deadline, f"alert never became active: {await alerts()}"
                await asyncio.sleep(0.25)
            assert a["state"] == "pending"            # for: 1m, so pending first
            assert a["labels"]["severity"] == "warning" and a["labels"]["job"] == "langgraph-sidecar"
            assert a["annotations"]["runbook_url"] == "docs/runbooks.md#sidecarconfigreloadfailed"
            assert "Config reload failed on" in a["annotations"]["summary"]
            # the scrape target is healthy, so the monitoring-blind alerts stay quiet
            assert {"SidecarMetricsAbsent", "SidecarScrapeFailing"}.isdisjoint(await alerts())
    finally:
        stop(prom)
        proxy.kill()
        await up.stop()
