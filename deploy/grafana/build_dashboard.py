"""Write deploy/grafana/dashboard.json (run after editing the panel list below).

    python deploy/grafana/build_dashboard.py           # rewrite dashboard.json
    python deploy/grafana/build_dashboard.py --check   # exit 1 if dashboard.json is stale
"""
from __future__ import annotations

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
# every query is filtered by the target variables, so process_* and python_* series of other jobs
# (any Python exporter has them) never mix in
POD = 'namespace=~"$namespace", job=~"$job", pod=~"$pod"'
SEL = POD + ', route=~"$route"'
RI = "$__rate_interval"


def q(expr: str, legend: str) -> dict:
    return {"expr": expr, "legendFormat": legend, "datasource": DS}


def quantiles(metric: str, by: str = "route") -> list[dict]:
    return [q(f'histogram_quantile({p}, sum by ({by}, le) (rate({metric}_bucket{{{SEL}}}[{RI}])))',
              f"p{int(p * 100)} {{{{{by}}}}}") for p in (0.5, 0.95, 0.99)]


# (row title, [(panel title, unit, targets, panel type)])
ROWS = [
    ("Traffic", [
        ("Requests/s by route", "reqps", [q(f'sum by (route) (rate(sidecar_requests_total{{{SEL}}}[{RI}]))', "{{route}}")], "timeseries"),
        ("Requests/s by status code", "reqps", [q(f'sum by (code) (rate(sidecar_requests_total{{{SEL}}}[{RI}]))', "{{code}}")], "timeseries"),
        ("In-flight requests", "short", [q(f'sum by (route) (sidecar_in_flight_requests{{{SEL}}})', "{{route}}"),
                                        q(f'sum(sidecar_in_flight_streams{{{POD}}})', "streams")], "timeseries"),
        ("Bytes/s", "Bps", [q(f'sum(rate(sidecar_request_bytes_total{{{SEL}}}[{RI}]))', "in"),
                            q(f'sum(rate(sidecar_response_bytes_total{{{SEL}}}[{RI}]))', "out")], "timeseries"),
        ("WebSocket messages/s", "short", [q(f'sum by (direction) (rate(sidecar_websocket_messages_total{{{SEL}}}[{RI}]))', "{{direction}}")], "timeseries"),
    ]),
    ("Saturation (usage / the limit the proxy exports)", [
        ("Concurrent requests / limit", "percentunit", [q(
            f'sum by (pod) (sidecar_in_flight_requests{{{POD}}}) / on (pod) group_left () max by (pod) (sidecar_limit{{{POD}, name="max_concurrent_requests"}})',
            "{{pod}}")], "timeseries"),
        ("Streams / limit", "percentunit", [q(
            f'sum by (pod) (sidecar_in_flight_streams{{{POD}}}) / on (pod) group_left () max by (pod) (sidecar_limit{{{POD}, name="max_concurrent_streams"}})',
            "{{pod}}")], "timeseries"),
        ("Upstream pool", "short", [q(f'sum by (state) (sidecar_upstream_connections{{{POD}}})', "{{state}}"),
                                    q(f'sum(sidecar_limit{{{POD}, name="upstream_max_connections"}})', "limit")], "timeseries"),
        ("Response buffer / limit", "percentunit", [q(
            f'sum by (pod) (sidecar_response_buffer_bytes{{{POD}}}) / on (pod) group_left () max by (pod) (sidecar_limit{{{POD}, name="max_buffered_bytes"}})',
            "{{pod}}")], "timeseries"),
        ("Configured limits", "short", [q(f'max by (name) (sidecar_limit{{{POD}}})', "{{name}}")], "timeseries"),
    ]),
    ("Errors", [
        ("5xx ratio by route", "percentunit", [q(
            f'sum by (route) (rate(sidecar_requests_total{{{SEL}, code=~"5.."}}[{RI}])) / sum by (route) (rate(sidecar_requests_total{{{SEL}}}[{RI}]))',
            "{{route}}")], "timeseries"),
        ("Timeouts/s by kind", "short", [q(f'sum by (kind) (rate(sidecar_timeouts_total{{{SEL}}}[{RI}]))', "{{kind}}")], "timeseries"),
        ("Upstream errors/s by kind", "short", [q(f'sum by (kind) (rate(sidecar_upstream_errors_total{{{SEL}}}[{RI}]))', "{{kind}}"),
                                                q(f'sum(rate(sidecar_upstream_connect_waits_total{{{POD}}}[{RI}]))',
                                                  "connects made again (full accept queue)")], "timeseries"),
        ("Shed/s by reason", "short", [q(f'sum by (reason) (rate(sidecar_shed_total{{{POD}}}[{RI}]))', "{{reason}}")], "timeseries"),
        ("Retries/s", "short", [q(f'sum by (route) (rate(sidecar_retries_total{{{SEL}}}[{RI}]))', "{{route}}")], "timeseries"),
    ]),
    ("Latency", [
        ("Request duration", "s", quantiles("sidecar_request_duration_seconds"), "timeseries"),
        ("Upstream time to first byte", "s", quantiles("sidecar_upstream_time_to_first_byte_seconds"), "timeseries"),
        ("Stream time to first event", "s", quantiles("sidecar_stream_time_to_first_event_seconds"), "timeseries"),
        ("Proxy overhead", "s", quantiles("sidecar_proxy_overhead_seconds"), "timeseries"),
    ]),
    ("Streams and runs", [
        ("Streams/s by outcome", "short", [q(f'sum by (outcome) (rate(sidecar_streams_total{{{SEL}}}[{RI}]))', "{{outcome}}")], "timeseries"),
        ("Stream duration", "s", quantiles("sidecar_stream_duration_seconds"), "timeseries"),
        ("Stream events/s", "short", [q(f'sum by (route) (rate(sidecar_stream_events_total{{{SEL}}}[{RI}]))', "{{route}}")], "timeseries"),
        ("Runs/s by outcome", "short", [q(f'sum by (outcome) (rate(sidecar_runs_total{{{SEL}}}[{RI}]))', "{{outcome}}")], "timeseries"),
        ("Run cancels/s", "short", [q(f'sum by (result) (rate(sidecar_run_cancels_total{{{SEL}}}[{RI}]))', "{{result}}")], "timeseries"),
    ]),
    ("LLM: tokens, cost, time to first token (read off the agent's stream)", [
        ("Tokens/s by type", "short", [q(f'sum by (type) (rate(sidecar_llm_tokens_total{{{SEL}}}[{RI}]))', "{{type}}")], "timeseries"),
        ("Output tokens/s by model", "short", [q(f'sum by (model) (rate(sidecar_llm_tokens_total{{{SEL}, type="output"}}[{RI}]))', "{{model}}")], "timeseries"),
        ("Cost per hour by model (llm.prices currency)", "short", [q(f'sum by (model) (rate(sidecar_llm_cost_total{{{SEL}}}[{RI}])) * 3600', "{{model}}")], "timeseries"),
        ("LLM calls/s by model", "short", [q(f'sum by (model) (rate(sidecar_llm_calls_total{{{SEL}}}[{RI}]))', "{{model}}")], "timeseries"),
        ("Time to first token", "s", quantiles("sidecar_llm_time_to_first_token_seconds"), "timeseries"),
        ("Time per output token", "s", quantiles("sidecar_llm_time_per_output_token_seconds"), "timeseries"),
        ("Unparsed events/s (forwarded untouched)", "short", [q(f'sum by (route) (rate(sidecar_llm_events_unparsed_total{{{SEL}}}[{RI}]))', "{{route}}")], "timeseries"),
    ]),
    ("Breaker, probes, readiness", [
        ("Circuit state (0 closed, 1 half-open, 2 open)", "short", [q(f'max by (breaker) (sidecar_circuit_state{{{POD}}})', "{{breaker}}")], "timeseries"),
        ("Breaker transitions", "short", [q(f'sum by (breaker, to) (increase(sidecar_circuit_transitions_total{{{POD}}}[{RI}]))', "{{breaker}} → {{to}}")], "timeseries"),
        ("Probe success", "short", [q(f'min by (probe) (sidecar_probe_success{{{POD}}})', "{{probe}}")], "timeseries"),
        ("Probe runs/s by result", "short", [q(f'sum by (probe, result) (rate(sidecar_probe_runs_total{{{POD}}}[{RI}]))', "{{probe}} {{result}}")], "timeseries"),
        ("Probe duration p95", "s", [q(f'histogram_quantile(0.95, sum by (probe, le) (rate(sidecar_probe_duration_seconds_bucket{{{POD}}}[{RI}])))', "{{probe}}")], "timeseries"),
        ("Streaming probe: time to first event p95", "s", [q(f'histogram_quantile(0.95, sum by (probe, le) (rate(sidecar_probe_time_to_first_event_seconds_bucket{{{POD}}}[{RI}])))', "{{probe}}")], "timeseries"),
        ("Since last probe success", "s", [q(f'time() - max by (probe) (sidecar_probe_last_success_timestamp_seconds{{{POD}}})', "{{probe}}")], "timeseries"),
        ("Ready proxies", "short", [q(f'sum(sidecar_ready{{{POD}}})', "ready"), q(f'count(sidecar_ready{{{POD}}})', "total")], "timeseries"),
        ("Config reloads", "short", [q(f'sum by (result) (increase(sidecar_config_reloads_total{{{POD}}}[{RI}]))', "{{result}}")], "timeseries"),
    ]),
    ("Process", [
        ("Versions", "short", [q(f'count by (version) (sidecar_build_info{{{POD}}})', "{{version}}")], "timeseries"),
        ("Resident memory", "bytes", [q(f'process_resident_memory_bytes{{{POD}}}', "{{pod}}")], "timeseries"),
        ("CPU", "percentunit", [q(f'rate(process_cpu_seconds_total{{{POD}}}[{RI}])', "{{pod}}")], "timeseries"),
        ("Open file descriptors", "short", [q(f'process_open_fds{{{POD}}}', "{{pod}}")], "timeseries"),
        ("GC collections/s", "short", [q(f'sum by (generation) (rate(python_gc_collections_total{{{POD}}}[{RI}]))', "gen {{generation}}")], "timeseries"),
    ]),
]


def build() -> dict:
    panels, pid, y = [], 1, 0
    for row, items in ROWS:
        panels.append({"type": "row", "id": pid, "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, (title, unit, targets, kind) in enumerate(items):
            for j, t in enumerate(targets):
                t["refId"] = chr(ord("A") + j)
            panels.append({
                "type": kind, "id": pid, "title": title, "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}},
                "targets": targets,
            })
            pid += 1
        y += ((len(items) + 2) // 3) * 8
    var = lambda name, query, label: {  # noqa: E731
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": name}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
    }
    return {
        "title": "LangGraph sidecar proxy",
        "uid": "langgraph-sidecar",
        "description": "Traffic, errors, latency, streams, runs, breaker and probes of the sidecar proxy (metrics prefix sidecar_).",
        "tags": ["langgraph", "sidecar", "proxy"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "graphTooltip": 1,
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            var("namespace", "label_values(sidecar_build_info, namespace)", "Namespace"),
            var("job", 'label_values(sidecar_build_info{namespace=~"$namespace"}, job)', "Job"),
            var("pod", 'label_values(sidecar_build_info{namespace=~"$namespace", job=~"$job"}, pod)', "Pod"),
            var("route", 'label_values(sidecar_requests_total{namespace=~"$namespace", job=~"$job"}, route)', "Route"),
        ]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def main() -> int:
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        ok = OUT.exists() and OUT.read_text() == text
        print("dashboard.json is up to date" if ok else "dashboard.json is stale: run python deploy/grafana/build_dashboard.py")
        return 0 if ok else 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
