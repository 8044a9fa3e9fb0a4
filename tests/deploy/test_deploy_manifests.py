"""The Kubernetes manifests agree with what the proxy serves and are valid objects.

Cross-checks against both config.example.yaml (the documented defaults) and the ConfigMap's
config (what the pod really runs), each parsed by proxy.config.load.
"""
from __future__ import annotations

import copy
import re
import subprocess

import pytest
import yaml

from deployutil import DEPLOY, K8S, OVERLAYS, ROOT, container, one, pod_spec, port_number, render, tool

from proxy import config as proxy_config

EXAMPLE = ROOT / "config.example.yaml"
DEPLOY_CONFIG = K8S / "base" / "sidecar-config.yaml"
MARGIN = 30  # seconds for the agent's own exit and the kubelet, on top of the computed need


@pytest.fixture(scope="module", params=[EXAMPLE, DEPLOY_CONFIG], ids=["config.example", "configmap"])
def cfg(request):
    return proxy_config.load(str(request.param), env={})


def port_of(hostport: str) -> int:
    return proxy_config.parse_hostport(hostport)[1]


def longest_response(cfg) -> float:
    """The longest a response may legally last under this config (None = unbounded)."""
    values = [cfg.timeouts.stream, cfg.timeouts.request]
    for r in cfg.routes:
        values += [r.timeouts.stream, r.timeouts.request]
    values = [v for v in values if v is not None] + [v for v in (cfg.timeouts.stream, cfg.timeouts.request) if v is None]
    assert None not in values, "a null stream/request timeout makes the grace period impossible to size"
    return max(values)


def configmap_config(docs) -> dict:
    cm = one(docs, "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_carries_the_deploy_config_and_is_mounted(overlay, tmp_path):
    docs = render(overlay)
    cm = one(docs, "ConfigMap")
    assert cm["data"]["config.yaml"] == DEPLOY_CONFIG.read_text()
    # the rendered ConfigMap is a valid proxy config
    (tmp_path / "config.yaml").write_text(cm["data"]["config.yaml"])
    proxy_config.load(str(tmp_path / "config.yaml"), env={})
    spec = pod_spec(docs)
    proxy = container(spec, "proxy")
    vol = next(v for v in spec["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"])
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == vol["name"])
    assert "subPath" not in mount, "subPath mounts never see ConfigMap updates"
    assert proxy["args"] == ["--config", f"{mount['mountPath']}/config.yaml"]
    assert re.fullmatch(r"sidecar-config-[a-z0-9]{10}", cm["metadata"]["name"]), "hash suffix rolls pods on change"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_service_and_monitor_match_the_proxy_ports(overlay, cfg):
    docs = render(overlay)
    spec = pod_spec(docs)
    proxy = container(spec, "proxy")
    traffic, admin = port_of(cfg.server.listen), port_of(cfg.server.admin_listen)
    assert cfg.server.listen.startswith("0.0.0.0:") and cfg.server.admin_listen.startswith("0.0.0.0:"), \
        "kubelet and Prometheus reach the pod IP: both listeners must bind all interfaces"

    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # the startup probe must not need the agent: with a native sidecar the agent starts after it
    assert proxy["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert port_number(proxy, proxy[probe]["httpGet"]["port"]) == admin, probe

    svc = one(docs, "Service")
    assert len(svc["spec"]["ports"]) == 1, "the Service exposes the traffic port only"
    assert port_number(proxy, svc["spec"]["ports"][0]["targetPort"]) == traffic
    assert admin not in (svc["spec"]["ports"][0]["port"], port_number(proxy, svc["spec"]["ports"][0]["targetPort"]))
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()

    agent = container(spec, "agent")
    assert port_of(cfg.upstream.url.split("//", 1)[1]) == port_number(agent, "agent") == 2024
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert agent[probe]["httpGet"]["path"] == "/ok"
        assert port_number(agent, agent[probe]["httpGet"]["port"]) == 2024

    if overlay != "base":
        pm = one(docs, "PodMonitor")
        (ep,) = pm["spec"]["podMetricsEndpoints"]
        assert port_number(proxy, ep["port"]) == admin and ep["path"] == "/metrics"
        assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_drain_plus_longest_stream(overlay):
    cfg = proxy_config.load(str(DEPLOY_CONFIG), env={})
    docs = render(overlay)
    spec = pod_spec(docs)
    drain, longest = cfg.server.drain_delay, longest_response(cfg)
    assert longest == 900
    grace = spec["terminationGracePeriodSeconds"]
    # agent preStop (drain + longest in-flight) + proxy SIGTERM drain + margin
    assert grace >= drain + longest + drain + MARGIN, grace
    # classic sidecar: the proxy itself gets SIGTERM at t=0 and must let the longest stream finish
    assert cfg.server.shutdown_grace >= longest
    assert grace >= drain + cfg.server.shutdown_grace + MARGIN
    cmd = container(spec, "agent")["lifecycle"]["preStop"]["exec"]["command"]
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert cmd[:2] == ["python", "/opt/sidecar/drain_wait.py"]
    assert float(args["--min"]) == drain
    assert float(args["--max"]) == drain + longest
    assert float(args["--max"]) < grace
    assert port_of(args["--admin"].split("//", 1)[1]) == port_of(cfg.server.admin_listen)
    # a rollout must not time out while old pods drain
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] > grace


def test_example_config_would_need_a_longer_grace_period():
    """config.example.yaml allows 1h streams; the manifests are sized for the ConfigMap's 15m."""
    example = proxy_config.load(str(EXAMPLE), env={})
    assert longest_response(example) == 3600
    grace = pod_spec(render("base"))["terminationGracePeriodSeconds"]
    assert grace < longest_response(example), "if this fails, the deploy config and the example converged: tighten the test"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_layout_security_and_resources(overlay):
    docs = render(overlay)
    spec = pod_spec(docs)
    native = overlay != "overlays/example-pre-1.29"
    names = [c["name"] for c in spec.get("initContainers", [])]
    if native:
        assert names == ["proxy"] and spec["initContainers"][0]["restartPolicy"] == "Always"
        assert [c["name"] for c in spec["containers"]] == ["agent"]
    else:
        assert names == [] and sorted(c["name"] for c in spec["containers"]) == ["agent", "proxy"]
        assert all("restartPolicy" not in c for c in spec["containers"])
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), (c["name"], kind)
        assert not c["image"].endswith(":latest") and ":" in c["image"]
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "read-only root: /tmp must be a volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollout_pdb_and_hpa(overlay):
    docs = render(overlay)
    dep = one(docs, "Deployment")
    ru = dep["spec"]["strategy"]["rollingUpdate"]
    assert ru["maxUnavailable"] == 0 and ru["maxSurge"] >= 1
    pdb = one(docs, "PodDisruptionBudget")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PDB blocks every drain"
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in dep["spec"], "the HPA owns replicas: a value here resets it on every apply"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_fences_the_admin_and_agent_ports(overlay):
    docs = render(overlay)
    spec = pod_spec(docs)
    proxy, agent = container(spec, "proxy"), container(spec, "agent")
    cfg = proxy_config.load(str(DEPLOY_CONFIG), env={})
    traffic, admin = port_of(cfg.server.listen), port_of(cfg.server.admin_listen)
    np = one(docs, "NetworkPolicy")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rules = {}
    for rule in np["spec"]["ingress"]:
        for p in rule["ports"]:
            rules[port_number(proxy, p["port"])] = rule.get("from")
    assert set(rules) == {traffic, admin}, "only these two ports are reachable; the agent's is not"
    assert port_number(agent, "agent") not in rules
    assert rules[traffic] is None, "clients may reach the traffic port"
    (source,) = rules[admin]
    assert set(source) == {"namespaceSelector"} and source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}


def test_proxy_gets_its_probe_secret():
    docs = render("overlays/example")
    proxy = container(pod_spec(docs), "proxy")
    (ref,) = [e["secretRef"] for e in proxy["envFrom"]]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"])
    assert ref["name"].startswith("sidecar-secrets-"), "generated, with a content hash"
    assert "PROBE_TOKEN" in secret["data"]
    # the base works without the Secret (its config uses no ${VAR}); overlays that use one create it
    base_ref = container(pod_spec(render("base")), "proxy")["envFrom"][0]["secretRef"]
    assert base_ref == {"name": "sidecar-secrets", "optional": True}
    proxy_config.load(str(DEPLOY_CONFIG), env={})  # no environment needed


def test_secret_is_example_only_and_reaches_the_agent():
    docs = render("overlays/example")
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("agent-secrets-"))
    import base64
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values["OPENAI_API_KEY"] == "replace-me"
    assert all(".invalid" in v or v in ("replace-me", "gpt-4o-mini") for v in values.values())
    agent = container(pod_spec(docs), "agent")
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in agent["envFrom"]
    assert "API_KEY" not in DEPLOY_CONFIG.read_text().upper().replace("OPENAI_API_KEY", "")


def test_monitoring_crds_are_structurally_valid():
    """kubernetes-validate has no schema for Prometheus Operator CRDs: check the fields we use."""
    docs = render("overlays/example")
    ns = one(docs, "Namespace")["metadata"]["name"]
    pm = one(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["metadata"]["namespace"] == ns
    assert set(pm["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings", "metricRelabelings", "honorLabels"}
        assert re.fullmatch(r"\d+[smh]", ep["interval"]) and re.fullmatch(r"\d+[smh]", ep["scrapeTimeout"])
        assert ep["scheme"] in ("http", "https")
    pr = one(docs, "PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["metadata"]["namespace"] == ns
    assert set(pr["spec"]) == {"groups"}
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    assert pr["spec"]["groups"] == alerts["groups"], "PrometheusRule must be generated from alerts.yaml"
    for g in pr["spec"]["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit"}
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
            if "alert" in r:
                assert r["labels"]["severity"] in ("warning", "critical")
                assert {"summary", "description"} <= r["annotations"].keys()


@pytest.mark.parametrize("overlay", ["overlays/example", "overlays/example-pre-1.29"])
def test_strict_schema_validation_runs_and_catches_a_typo(overlay, tmp_path):
    kv = tool("kubernetes-validate")
    if kv is None:
        pytest.skip("kubernetes-validate not installed (pip: kubernetes-validate)")
    docs = [d for d in render(overlay) if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(docs))
    ok = subprocess.run([kv, "--strict", "--quiet", "-k", "1.37.0", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the validator really is strict: one misspelt field in the pod spec fails it
    bad_docs = copy.deepcopy(docs)
    dep = next(d for d in bad_docs if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["terminationGracePeriod"] = 960
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(bad_docs))
    res = subprocess.run([kv, "--strict", "--quiet", "-k", "1.37.0", str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "terminationGracePeriod" in res.stdout + res.stderr


def test_saturation_alert_threshold_matches_the_limit():
    cfg = proxy_config.load(str(DEPLOY_CONFIG), env={})
    rules = {r.get("alert"): r for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())["groups"] for r in g["rules"]}
    expr = rules["SidecarSaturation"]["expr"]
    m = re.search(r"> 0\.8 \* (\d+)", expr)
    if m:   # a hard-coded limit must be the configured one
        assert int(m.group(1)) == cfg.limits.max_concurrent_requests
    else:   # or the ratio is taken against the limit the proxy exports
        text = (DEPLOY / "prometheus/alerts.yaml").read_text()
        assert 'sidecar_limit{name="max_concurrent_requests"}' in text and "0.8" in expr
    assert cfg.metrics.prefix == "sidecar", "alerts and dashboard assume the sidecar_ prefix"


def test_cluster_config_keeps_the_pod_ready_while_the_breaker_is_open(tmp_path):
    """open_makes_unready is false in the cluster: a failing shared LLM opens every pod's breaker, and
    pulling every pod out of the Service at once would turn fast 503s into connection errors."""
    import json
    import sys
    import threading
    import time
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    up = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    cfg = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert cfg["circuit_breaker"]["open_makes_unready"] is False
    cfg["server"].update(listen="127.0.0.1:0", admin_listen="127.0.0.1:0", drain_delay="0s", shutdown_grace="2s")
    cfg["upstream"]["url"] = f"http://127.0.0.1:{up.server_address[1]}"
    cfg["probes"], cfg["readiness"] = [], {"require_probes": []}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(tmp_path / "c.yaml"), "--ready-file", str(ready)],
                            cwd=ROOT, stderr=subprocess.DEVNULL)

    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        traffic, admin = (f"http://127.0.0.1:{p}" for p in ready.read_text().split())
        for _ in range(cfg["circuit_breaker"]["fail_max"]):
            assert get(traffic + "/assistants/search")[0] == 503
        status, body = get(traffic + "/assistants/search")
        assert status == 503 and json.loads(body)["error"]["type"] == "circuit_open"
        assert json.loads(get(admin + "/status")[1])["breakers"]["upstream"]["state"] == "open"
        assert get(admin + "/readyz")[0] == 200, "the pod stays in the Service and answers fast 503s"
    finally:
        proc.terminate()
        proc.wait(10)
        up.shutdown()
        up.server_close()


def test_compose_and_local_keep_the_admin_port_on_loopback():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    agent, proxy = compose["services"]["agent"], compose["services"]["proxy"]
    published = {p.rsplit(":", 1)[-1]: p for p in agent["ports"]}
    assert published["9090"].startswith("127.0.0.1:"), "the unauthenticated admin port stays on the host's loopback"
    assert all(p.startswith("127.0.0.1:") for p in agent["ports"])
    assert proxy["network_mode"] == "service:agent" and "agent" in proxy["depends_on"]  # stops (drains) first
    (mount,) = proxy["volumes"]
    default = re.fullmatch(r"\$\{SIDECAR_CONFIG:-(.+)\}:/etc/sidecar/config.yaml:ro", mount).group(1)
    assert (DEPLOY / default).resolve() == DEPLOY_CONFIG.resolve()
    local = proxy_config.load(str(DEPLOY / "local.yaml"), env={})
    assert local.server.admin_listen.startswith("127.0.0.1:") and local.server.listen.startswith("127.0.0.1:")
