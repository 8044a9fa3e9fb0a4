"""Render deploy/prometheus/alerts.yaml as the PrometheusRule the monitoring component applies.

    python deploy/prometheus/render_rule.py           # write the PrometheusRule
    python deploy/prometheus/render_rule.py --check   # exit 1 if the committed file is stale
"""
from __future__ import annotations

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"
OUT = ROOT / "deploy/kubernetes/components/monitoring/prometheusrule.yaml"
HEADER = "# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/render_rule.py. Do not edit.\n"


def render() -> str:
    rules = yaml.safe_load(ALERTS.read_text())
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        # the same labels as podmonitor.yaml: kube-prometheus-stack's default ruleSelector
        # matches `release: <helm release>` (kustomization.yaml there says how to change it)
        "metadata": {"name": "langgraph-sidecar",
                     "labels": {"app.kubernetes.io/part-of": "langgraph-sidecar", "release": "kube-prometheus-stack"}},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=1000)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python deploy/prometheus/render_rule.py")
            return 1
        print(f"{OUT.relative_to(ROOT)} matches alerts.yaml")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
