"""The dashboard and the alert rules only query metrics the proxy exports."""
from __future__ import annotations

import json
import re

import yaml

from deployutil import DEPLOY, exported_names, known_metric, metric_names, proxy_metrics


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())


def panel_exprs(panels):
    for p in panels:
        yield from panel_exprs(p.get("panels", []))
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (route, le) (rate(sidecar_request_duration_seconds_bucket{route=~"$route"}[$__rate_interval])))') == {"sidecar_request_duration_seconds_bucket"}
    assert metric_names('sum(a_total{x="y"}) / on (route) group_left () b > 0.8 * 1000 unless c offset 5m') == {"a_total", "b", "c"}
    assert not known_metric("sidecar_requests") and known_metric("sidecar_requests_total")
    assert known_metric("sidecar_probe_duration_seconds_count") and not known_metric("sidecar_ready_bucket")


def test_dashboard_is_valid_and_uses_only_exported_metrics():
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 30
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exprs = list(panel_exprs(d["panels"]))
    assert len(exprs) >= 30
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    used = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, (title, expr)
        bad = [n for n in names if not known_metric(n)]
        assert not bad, f"panel {title!r} queries unknown metrics {bad}: {expr}"
        used |= names
    for v in variables.values():
        if v["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), *(\w+)\)", v["query"]["query"]).group(1)
            assert all(known_metric(n) for n in metric_names(selector)), v["query"]
    # a panel for every metric the proxy declares (the list comes from proxy/metrics.py TABLE)
    missing = [suffix for suffix, *_ in proxy_metrics.TABLE if not exported_names(suffix) & used]
    assert not missing, f"no dashboard panel for {missing}"
    # every query is filtered by the namespace/job/pod variables, so other processes never mix in
    assert {"namespace", "job", "pod", "route"} <= variables.keys()
    for title, expr in exprs:
        for sel in re.findall(r"\b(?:sidecar|process|python)_\w+\{([^}]*)\}", expr):
            for var in ("namespace", "job", "pod"):
                assert f'{var}=~"${var}"' in sel, f"panel {title!r}: {expr} is not filtered by ${var}"


def test_alert_rules_use_only_exported_or_recorded_metrics():
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    for g in groups:
        for r in g["rules"]:
            # `up` is the one series Prometheus itself writes per target
            bad = [n for n in metric_names(r["expr"]) if not (known_metric(n) or n in recorded or n == "up")]
            assert not bad, f"{r.get('alert') or r.get('record')} uses unknown metrics {bad}"
    assert {"SidecarErrorBudgetBurnFast", "SidecarLatencyBudgetBurnFast", "SidecarCircuitBreakerOpen",
            "SidecarProbeFailing", "SidecarSaturation", "SidecarConfigReloadFailed", "SidecarMetricsAbsent"} <= alerts


def test_saturation_divides_by_the_exported_limit_not_a_constant():
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    sat = [r for g in groups for r in g["rules"] if r.get("record") == "pod:sidecar_saturation:ratio"]
    assert {r["labels"]["resource"] for r in sat} == {"concurrent_requests", "concurrent_streams",
                                                       "upstream_connections", "response_buffer"}
    for r in sat:
        name = re.search(r'sidecar_limit\{name="(\w+)"\}', r["expr"]).group(1)
        assert name in proxy_metrics.LIMIT_NAMES
        assert not re.search(r"\b\d{3,}\b", r["expr"]), r["expr"]
