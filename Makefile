# Two commands for a fresh machine:  `make run` (agent + sidecar on localhost)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup run smoke test test-slow test-all check lint bench ci-checks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[agent,dev,otel]"
	touch $@

run: setup           ## the example agent behind the sidecar, offline (Ctrl-C drains, a second cuts); RUN_ARGS="--port N --admin-port N --agent-port N"
	$(PY) scripts/run_local.py $(RUN_ARGS)

smoke: setup         ## start both, send one run through, stop
	$(PY) scripts/run_local.py --smoke

test: setup          ## the default suite (minutes)
	$(PYTEST) -m "not slow and not soak" -q

test-slow: setup     ## real LangGraph dev server, PostgreSQL, Prometheus, image install, soak (short)
	$(PYTEST) -m "slow or soak" -q

test-all: test test-slow

check: setup         ## --check every config the repo ships (documented example, make run, cluster, image default)
	for c in config.example.yaml deploy/local.yaml deploy/kubernetes/base/sidecar-config.yaml deploy/docker/config.yaml; do \
	  $(PY) -m proxy --config $$c --check || exit 1; done

ci-checks: setup     ## hadolint, kustomize + schema validation, promtool
	bash deploy/ci-checks.sh

bench: setup         ## the benchmark suite against direct and nginx (see docs/benchmarks.md)
	bash bench/run.sh

clean:
	rm -rf $(VENV) var .pytest_cache
