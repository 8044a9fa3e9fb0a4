"""The alert rules fire on what the real proxy exports, and only then.

Each scenario drives the real proxy through one failure and turns its scrapes into a promtool
test (see alert_scenarios.py); promtool must see every expected alert firing within its stated
minutes of the first occurrence and silent before it. A healthy recording must raise no alert.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from alert_scenarios import HEALTHY, SCENARIOS, alert_rules, covered_alerts, healthy_tests, promtool_tests, record

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(180)]


@pytest.fixture
def promtool():
    p = shutil.which("promtool")
    if p is None:
        pytest.skip("promtool not installed (apt-get install prometheus; deploy/ci-checks.sh does it)")
    return p


def run_promtool(promtool: str, tests: dict, path) -> None:
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=10_000))
    res = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"promtool test rules {path}:\n{res.stdout[-6000:]}{res.stderr[-3000:]}"


def test_every_alert_has_a_failure_scenario():
    assert covered_alerts() == set(alert_rules())


@pytest.mark.parametrize("sc", [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.slow else [])
                                for s in SCENARIOS])
async def test_alert_fires_on_the_first_occurrence(sc, promtool, tmp_path):
    rec = await record(sc, tmp_path)
    assert all(s is not None for s in rec.scrapes[:sc.healthy_ticks]), "healthy scrapes failed"
    run_promtool(promtool, promtool_tests(sc, rec), tmp_path / f"{sc.name}_test.yaml")


async def test_healthy_run_raises_no_alert(promtool, tmp_path):
    rec = await record(HEALTHY, tmp_path, healthy_only=True)
    run_promtool(promtool, healthy_tests(rec), tmp_path / "healthy_test.yaml")


async def test_without_the_pre_created_zero_the_first_failure_would_go_unseen(promtool, tmp_path):
    """The control for the pre-created series: the same real recording of a bad reload, with the
    failure counter's zero samples removed (as the proxy exported it before: no series until the
    first failure), does not fire. So the firing test above proves the zero is what makes it work."""
    sc = next(s for s in SCENARIOS if s.name == "bad_reload")
    rec = await record(sc, tmp_path)
    key = next(k for s in rec.scrapes for k in s if k[0] == "sidecar_config_reloads_total" and ("result", "failure") in k[1])
    for s in rec.scrapes:
        if s.get(key) == 0:
            del s[key]
    tests = promtool_tests(sc, rec)
    path = tmp_path / "control_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=10_000))
    res = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and 'alertname="SidecarConfigReloadFailed"' in out and "got: nil" in out, out[-3000:]
