#!/usr/bin/env bash
# Sidecar benchmark suite: direct vs nginx vs the proxy (all features / minimal) vs naive aiohttp.
#   bench/run.sh            full run (~8-9 min on the 2-vCPU VM), prints the ratio table,
#                           writes docs/benchmarks.md
#   bench/run.sh --quick    1 rep, short runs (~2-3 min), does not touch docs/
#   bench/run.sh --help     every option (columns, scenarios, reps, durations)
# Installs nginx and wrk with apt-get when missing (needs root). Results: $BENCH_RESULTS
# (default /tmp/sidecar-bench/<timestamp>/: table.txt, raw.json, logs).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${BENCH_PYTHON:-$REPO/.venv/bin/python}"

missing=()
for t in nginx wrk taskset; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    echo "installing: nginx wrk util-linux (missing: ${missing[*]})" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk util-linux >/dev/null
  else
    echo "missing: ${missing[*]} (sudo apt-get install nginx wrk util-linux)" >&2; exit 1
  fi
fi
"$PY" -c 'import aiohttp, uvloop, httptools, proxy' || { echo "$PY cannot import the proxy and its deps" >&2; exit 1; }

# ~10,000 SSE streams need 2 fds each in a proxy (client + upstream side): raise the soft limit to
# the hard one; run.py caps the stream count at (limit - 64) / 2 and says so.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < 4096 )); then echo "warning: ulimit -n is $(ulimit -n); SSE runs will fail" >&2; fi

cd "$REPO"
exec "$PY" "$HERE/run.py" "$@"
