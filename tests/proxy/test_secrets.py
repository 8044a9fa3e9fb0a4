"""Secrets never leak: a value from ${VAR}, URL userinfo, a probe's query string or header values
appears in no log line (level debug), /status, /readyz, /metrics, --check output or reload error."""
from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys

import yaml

from proxy import config as C
from proxy_harness import ROOT, wait_metric

SECRET = "S3cr3t-value-42"            # from the environment
USERINFO_PW = "pl41n-url-pw"          # written in the URL itself
HEADER_SECRET = "literal-header-key"  # written in a probe header itself
QUERY_SECRET = "literal-query-key"    # written in a probe path's query itself
ALL = (SECRET, USERINFO_PW, HEADER_SECRET, QUERY_SECRET)


def secret_config(upstream_port: int) -> dict:
    return {
        "logging": {"level": "debug", "format": "json"},
        "upstream": {"url": f"http://svc:{USERINFO_PW}@127.0.0.1:{upstream_port}"},
        "timeouts": {"deadline_header": "X-Deadline-Ms"},
        "routes": [{"name": "secret_route", "path": "/r/${SIDECAR_SECRET}"}],
        "probes": [
            {"name": "env_probe", "interval": "200ms", "timeout": "1s", "skip_if_recent_success": False,
             "request": {"method": "POST", "path": "/probe?api_key=${SIDECAR_SECRET}",
                         "headers": {"Authorization": "Bearer ${SIDECAR_SECRET}", "X-Api-Key": HEADER_SECRET,
                                     "Content-Type": "application/json"},
                         "json": {"token": "${SIDECAR_SECRET}"}},
             "expect": {"status": 200, "body_regex": "PONG"}},
            {"name": "failing_probe", "interval": "200ms", "timeout": "1s", "skip_if_recent_success": False,
             "request": {"path": f"/status/500?key={QUERY_SECRET}&b=${{SIDECAR_SECRET}}"},
             "expect": {"status": 200}},
        ],
        "readiness": {"require_probes": ["failing_probe"]},
        # exporter credentials, where the schema has them (no endpoint: nothing is exported)
        **({"tracing": {"otlp_headers": {"Authorization": "Bearer ${SIDECAR_SECRET}"}}}
           if "tracing" in {f.name for f in dataclasses.fields(C.Config)} else {}),
    }


def assert_clean(where: str, text: str) -> None:
    for s in ALL:
        assert s not in text, f"{s!r} leaked in {where}"


async def test_secrets_are_redacted_everywhere(upstream, make_proxy, session, tmp_path):
    env = {"SIDECAR_SECRET": SECRET}
    cfg = secret_config(upstream.port)
    p = make_proxy(upstream.url, cfg, env=env)

    # traffic on the route whose path holds the secret, and both probes running
    async with session.get(p.url + f"/r/{SECRET}") as r:
        assert r.status == 200
    await wait_metric(p.admin, "sidecar_probe_runs_total", at_least=2, probe="failing_probe", result="failed")
    await wait_metric(p.admin, "sidecar_probe_runs_total", at_least=1, probe="env_probe", result="passed")
    # the probes did send the real values upstream: redaction is for what the proxy shows, not sends
    call = upstream.probe_calls[-1]
    assert call["headers"]["Authorization"] == f"Bearer {SECRET}" and SECRET.encode() in call["body"]

    async with session.get(p.admin + "/status") as r:
        status_text = await r.text()
    async with session.get(p.admin + "/readyz") as r:
        readyz_text = await r.text()
    async with session.get(p.admin + "/metrics") as r:
        metrics_text = await r.text()
    for where, text in (("/status", status_text), ("/readyz", readyz_text), ("/metrics", metrics_text)):
        assert_clean(where, text)
    status = yaml.safe_load(status_text)
    assert status["config"]["upstream"]["url"] == f"http://<redacted>@127.0.0.1:{upstream.port}"
    probes = {pr["name"]: pr for pr in status["config"]["probes"]}
    assert probes["env_probe"]["request"]["path"] == "/probe?<redacted>"
    assert probes["env_probe"]["request"]["headers"] == {
        "Authorization": "<redacted>", "X-Api-Key": "<redacted>", "Content-Type": "application/json"}
    assert status["config"]["routes"][0]["path"] == "/r/<redacted>"

    # a rejected reload: the new config puts the secret where it is invalid
    bad = dict(cfg, limits={"max_body_bytes": "${SIDECAR_SECRET}"}, server=p.cfg["server"])
    p.config_path.write_text(yaml.safe_dump(bad))
    p.signal(signal.SIGHUP)
    await wait_metric(p.admin, "sidecar_config_reloads_total", result="failure")
    rejected = [x for x in p.log_lines() if x["message"].startswith("config reload rejected")]
    assert rejected and any("limits.max_body_bytes: expected a size" in pr and "<redacted>" in pr
                            for pr in rejected[0]["problems"]), rejected

    # --check of the good and of the bad config
    good_path = tmp_path / "good.yaml"
    good_path.write_text(yaml.safe_dump(cfg))
    checks = [subprocess.run([sys.executable, "-m", "proxy", "--config", str(path), "--check"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **env})
              for path in (good_path, p.config_path)]
    assert checks[0].returncode == 0 and checks[1].returncode == 1
    assert "<redacted>" in checks[1].stderr
    for r in checks:
        assert_clean("--check output", r.stdout + r.stderr)

    await asyncio.sleep(1.1)  # the access log is flushed every second
    assert p.stop() == 0
    logs = p.stderr() + p.stdout()
    assert "<redacted>" in logs
    assert_clean("the log", logs)


def test_summary_and_errors_redact_before_shortening():
    long_secret = "x" * 80 + "-tail"
    try:
        C.parse({"upstream": {"connect_timeout": "${LONG}"}}, env={"LONG": long_secret})
    except C.ConfigError as e:
        text = str(e)
    else:
        raise AssertionError("expected a ConfigError")
    assert "xxxxxxxx" not in text and "<redacted>" in text
    # short values (a port) are not treated as secrets: they would garble every line
    cfg = C.parse({"upstream": {"url": "http://127.0.0.1:${PORT}"}}, env={"PORT": "2024"})
    assert C.summary(cfg)["upstream"]["url"] == "http://127.0.0.1:2024"
