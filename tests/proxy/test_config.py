"""Config validation: every problem is named by its key path; the example config is valid."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from proxy import config as C
from proxy_harness import ROOT


def check(tmp_path, doc, env=None) -> subprocess.CompletedProcess:
    p = tmp_path / "c.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return subprocess.run([sys.executable, "-m", "proxy", "--config", str(p), "--check"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=30)


def test_example_config_passes_check():
    r = subprocess.run([sys.executable, "-m", "proxy", "--config", "config.example.yaml", "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_check_lists_every_problem_by_key_path(tmp_path):
    r = check(tmp_path, {
        "upstream": {"connect_timeout": "fast", "url": "ftp://x", "max_connections": "many"},
        "server": {"listen": "nohost", "drain_delay": "-1s"},
        "bogus": 1,
        "limits": {"max_body_bytes": "ten megs"},
        "routes": [{"name": "r", "path": "/x", "timeouts": {"idle": "soon"}, "methods": "GET"}],
    })
    assert r.returncode == 1
    err = r.stderr
    for expected in (
        'upstream.connect_timeout: expected a duration like "2s", "250ms" or "5m", got \'fast\'',
        "upstream.url: expected an http(s) URL",
        "upstream.max_connections: expected an integer, got 'many'",
        'server.listen: expected an address like "0.0.0.0:8080"',
        "server.drain_delay: expected a duration",
        "bogus: unknown key",
        "limits.max_body_bytes: expected a size",
        "routes[0].timeouts.idle: expected a duration",
        "routes[0].methods: expected a list",
    ):
        assert expected in err, (expected, err)


def test_semantic_errors_name_keys(tmp_path):
    r = check(tmp_path, {
        "routes": [{"name": "a", "path": "/a"}, {"name": "a", "path": "no-slash"}, {"name": "other", "path": "/o"}],
        "probes": [{"name": "p1", "interval": "0s"}],
        "readiness": {"require_probes": ["nope"]},
        "retries": {"budget": 2.0},
        "circuit_breaker": {"failure_statuses": [999]},
    })
    assert r.returncode == 1
    for expected in ("routes[1].name: duplicate route name 'a'", "routes[1].path: expected a path template",
                     'routes[2].name: "other" is reserved', "probes[0].interval: must be >= 1, got 0",
                     "readiness.require_probes[0]: no probe named 'nope'", "retries.budget: must be >= 0 and <= 1, got 2",
                     "circuit_breaker.failure_statuses[0]: expected an HTTP status"):
        assert expected in r.stderr, (expected, r.stderr)


def test_env_substitution_and_missing_variable(tmp_path):
    doc = {"upstream": {"url": "http://${UP_HOST}:2024"},
           "probes": [{"name": "p", "request": {"headers": {"Authorization": "Bearer ${PROBE_TOKEN}"}}}]}
    r = check(tmp_path, doc, env={"PATH": "/usr/bin:/bin", "UP_HOST": "10.0.0.1"})
    assert r.returncode == 1
    assert "probes[0].request.headers.Authorization: environment variable PROBE_TOKEN is not set" in r.stderr
    cfg = C.parse(doc, env={"UP_HOST": "agent", "PROBE_TOKEN": "t0k"})
    assert cfg.upstream.url == "http://agent:2024"
    assert cfg.probes[0].request.headers["Authorization"] == "Bearer t0k"
    # secrets never reach the /status summary
    assert "t0k" not in str(C.summary(cfg))


def test_durations_and_sizes():
    assert C.parse_duration("250ms") == 0.25
    assert C.parse_duration("30s") == 30
    assert C.parse_duration("5m") == 300
    assert C.parse_duration(2) == 2.0
    assert C.parse_size("10MiB") == 10 << 20
    assert C.parse_size("64KiB") == 65536
    assert C.parse_size(512) == 512
    for bad in ("fast", "-1s", "1 parsec", ""):
        with pytest.raises(ValueError):
            C.parse_duration(bad)


def test_malformed_yaml_and_missing_file(tmp_path):
    r = check(tmp_path, "server: [unclosed")
    assert r.returncode == 1 and "not valid YAML" in r.stderr
    r = subprocess.run([sys.executable, "-m", "proxy", "--config", str(tmp_path / "absent.yaml"), "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot read" in r.stderr
    r = subprocess.run([sys.executable, "-m", "proxy", "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "PROXY_CONFIG" in r.stderr


def test_proxy_config_env_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("upstream: {url: 'http://127.0.0.1:1'}\n")
    r = subprocess.run([sys.executable, "-m", "proxy", "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin", "PROXY_CONFIG": str(p)})
    assert r.returncode == 0, r.stderr


def test_example_documents_every_key():
    """Every schema key appears in config.example.yaml (so the example documents the whole schema)."""
    text = (ROOT / "config.example.yaml").read_text()
    import dataclasses

    def keys(cls):
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            yield f.name
            tp = C.typing.get_type_hints(cls)[f.name]
            for arg in (tp, *C.typing.get_args(tp)):
                if dataclasses.is_dataclass(arg):
                    yield from keys(arg)
    missing = sorted({k for k in keys(C.Config) if f"{k}:" not in text})
    assert not missing, missing
