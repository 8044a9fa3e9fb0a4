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
                     'routes[2].name: "other" is reserved', "probes[0].interval: must be >= 0.1, got 0",
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


def test_duplicate_keys_are_errors_with_their_path(tmp_path):
    r = check(tmp_path, "upstream:\n  url: http://127.0.0.1:2024\nserver:\n  listen: 127.0.0.1:8080\n"
                        "  listen: 127.0.0.1:8081\nupstream:\n  url: http://127.0.0.1:9999\n")
    assert r.returncode == 1
    assert "upstream: duplicate key (line 6, first at line 1)" in r.stderr, r.stderr
    assert "server.listen: duplicate key (line 5, first at line 4)" in r.stderr, r.stderr


def test_ports_that_collide(tmp_path):
    r = check(tmp_path, {"server": {"listen": "0.0.0.0:8080", "admin_listen": "127.0.0.1:8080"}})
    assert r.returncode == 1 and "server.admin_listen: same port as server.listen" in r.stderr, r.stderr
    r = check(tmp_path, {"server": {"listen": "0.0.0.0:2024"}, "upstream": {"url": "http://127.0.0.1:2024"}})
    assert r.returncode == 1 and "server.listen: same address as upstream.url" in r.stderr, r.stderr
    # the same port on another host is fine (the upstream is elsewhere); port 0 never collides
    r = check(tmp_path, {"server": {"listen": "0.0.0.0:2024", "admin_listen": "127.0.0.1:0"},
                         "upstream": {"url": "http://agent.internal:2024"}})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("doc, expected", [
    ({"limits": {"max_body_bytes": 0}}, "limits.max_body_bytes: must be > 0, got 0"),
    ({"timeouts": {"first_byte": "0s"}}, "timeouts.first_byte: must be > 0, got 0"),
    ({"retries": {"min_per_second": -1}}, "retries.min_per_second: must be >= 0, got -1"),
    ({"probes": [{"name": "p", "interval": "1ms"}]}, "probes[0].interval: must be >= 0.1, got 0.001"),
    ({"routes": [{"name": "r", "path": "/r", "timeouts": {"idle": "0ms"}}]}, "routes[0].timeouts.idle: must be > 0, got 0"),
    ({"circuit_breaker": {"fail_max": 0}}, "circuit_breaker.fail_max: must be >= 1, got 0"),
    ({"probes": [{"name": "p", "jitter": 1.5}]}, "probes[0].jitter: must be >= 0 and < 1, got 1.5"),
    ({"server": {"max_line_bytes": 10}}, "server.max_line_bytes: must be >= 64, got 10"),
])
def test_sizes_limits_and_durations_that_make_no_sense(doc, expected):
    with pytest.raises(C.ConfigError) as e:
        C.parse(doc, env={})
    assert expected in e.value.problems, e.value.problems


def test_range_errors_are_reported_next_to_type_errors():
    with pytest.raises(C.ConfigError) as e:
        C.parse({"upstream": {"connect_timeout": "fast"}, "limits": {"max_body_bytes": 0},
                 "routes": [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b", "methods": "GET"}]}, env={})
    problems = e.value.problems
    assert any(p.startswith("upstream.connect_timeout: expected a duration") for p in problems), problems
    assert "limits.max_body_bytes: must be > 0, got 0" in problems
    assert "routes[1].name: duplicate route name 'a'" in problems
    assert any(p.startswith("routes[1].methods: expected a list") for p in problems), problems


def test_restart_only_keys_come_from_field_metadata():
    old = C.parse({}, env={})
    new = C.parse({"server": {"listen": "127.0.0.1:8081", "drain_delay": "1s", "max_connections": 5},
                   "metrics": {"prefix": "other"}, "timeouts": {"idle": "3s"}}, env={})
    assert C.restart_changes(old, new) == ["server.listen", "server.max_connections", "metrics.prefix"]
    # every restart-only key is a real key of the schema, and reloadable keys are not listed
    marked = [p for p, f, _ in C._walk(old) if f.metadata.get("restart")]
    assert "server.listen" in marked and "server.drain_delay" not in marked and "upstream.url" not in marked


def test_names_shown_in_metrics_refuse_env_variables():
    with pytest.raises(C.ConfigError) as e:
        C.parse({"routes": [{"name": "${TOKEN}", "path": "/x"}], "probes": [{"name": "p${TOKEN}"}]},
                env={"TOKEN": "abcdefgh"})
    assert any(p.startswith("routes[0].name: ${VAR} is not allowed here") for p in e.value.problems)
    assert any(p.startswith("probes[0].name: ${VAR} is not allowed here") for p in e.value.problems)
    assert "abcdefgh" not in str(e.value)


def test_check_summary_counts_builtin_routes_and_prints_capacity_warnings(tmp_path):
    r = check(tmp_path, {"routes": [{"name": "mine", "path": "/mine"}], "probes": [{"name": "p"}],
                         "upstream": {"max_connections": 10}})
    assert r.returncode == 0, r.stderr
    from proxy.routes import RouteTable
    total = len(RouteTable(C.parse({"routes": [{"name": "mine", "path": "/mine"}]}, env={})).routes)
    assert f"OK ({total} routes (1 yours), 1 probe)" in r.stdout, r.stdout
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {w}" for w in C.capacity_warnings(C.parse({"upstream": {"max_connections": 10}}, env={}))]
    assert warnings and "upstream.max_connections (10) < limits.max_concurrent_requests" in warnings[0]


def test_help_is_plain_text_with_exit_codes_signals_and_ports():
    r = subprocess.run([sys.executable, "-m", "proxy", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "``" not in r.stdout and ":class:" not in r.stdout
    for needle in ("exit codes:", "SIGTERM", "SIGHUP", "8080", "9090", "POST /drain", "3  a listen address"):
        assert needle in r.stdout, needle


def test_busy_port_is_one_line_naming_the_key(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({"server": {"listen": "127.0.0.1:0", "admin_listen": f"127.0.0.1:{port}"},
                                     "upstream": {"url": "http://127.0.0.1:9"}}))
        r = subprocess.run([sys.executable, "-m", "proxy", "--config", str(p)], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert f"error: server.admin_listen 127.0.0.1:{port}: cannot listen: Address already in use" in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1


def test_readme_configs_are_valid_and_its_check_line_is_true(tmp_path):
    """The README's minimal config and probe example pass --check, with the output it quotes."""
    import re
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    minimal = next(b for b in blocks if b.startswith("# my-sidecar.yaml"))
    probe = next(b for b in blocks if b.startswith("probes:"))
    path = tmp_path / "my-sidecar.yaml"
    path.write_text(minimal)
    r = subprocess.run([sys.executable, "-m", "proxy", "--config", "my-sidecar.yaml", "--check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    quoted = re.search(r"`(my-sidecar\.yaml: OK [^`]*)`", readme).group(1)
    assert r.stdout.strip() == quoted
    cfg = C.parse({**yaml.safe_load(minimal), **yaml.safe_load(probe)}, env={"PROBE_TOKEN": "t0k3n-for-the-test"})
    assert cfg.probes[0].request.json["assistant_id"] == "my_graph"
    assert re.search(cfg.probes[0].expect.regex, "Pong.")
