"""Start and stop the real processes the agent_app tests talk to (agent_app, proxy, langgraph dev)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENT_DIR = REPO / "agent_app"
PYTHON = sys.executable


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it, release it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    """A started server process; ``url`` is where it serves, ``log`` where its output goes."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hasn't exited within 10 s; always reaps the process."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _spawn(args: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def wait_http(proc: Proc, path: str, timeout: float) -> None:
    """Poll ``url + path`` until it answers 200; fail with the process log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(proc.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.url}{path} not ready after {timeout}s:\n{proc.log_text()[-4000:]}")


def start_agent(
    workdir: Path,
    *,
    db: Path | None = None,
    token_delay: float = 0.0,
    recursion_limit: int | None = None,
    env: dict[str, str] | None = None,
    name: str = "agent",
) -> Proc:
    """``python -m agent_app`` on a free port with its SQLite file (default) under ``workdir``."""
    port = free_port()
    args = [PYTHON, "-m", "agent_app", "--port", str(port), "--db", str(db or workdir / "agent.sqlite")]
    args += ["--token-delay", str(token_delay)]
    if recursion_limit is not None:
        args += ["--recursion-limit", str(recursion_limit)]
    clean = {"AGENT_MODEL": "", "DATABASE_URI": "", **(env or {})}
    log = workdir / f"{name}.log"
    proc = Proc(_spawn(args, log, cwd=workdir, env={**clean, "PYTHONPATH": str(REPO)}), f"http://127.0.0.1:{port}", log)
    wait_http(proc, "/ok", 60)
    return proc


def proxy_available() -> bool:
    return (REPO / "proxy" / "__main__.py").exists()


def start_proxy(workdir: Path, upstream_url: str) -> Proc:
    """``python -m proxy`` in front of ``upstream_url``, ready once its admin /readyz is 200."""
    port, admin = free_port(), free_port()
    config = workdir / "proxy.yaml"
    config.write_text(
        "server:\n"
        f"  listen: 127.0.0.1:{port}\n"
        f"  admin_listen: 127.0.0.1:{admin}\n"
        "  drain_delay: 0s\n"
        "upstream:\n"
        f"  url: {upstream_url}\n"
    )
    log = workdir / "proxy.log"
    popen = _spawn([PYTHON, "-m", "proxy", "--config", str(config)], log, cwd=workdir, env={"PYTHONPATH": str(REPO)})
    admin_proc = Proc(popen, f"http://127.0.0.1:{admin}", log)
    wait_http(admin_proc, "/readyz", 60)
    return Proc(popen, f"http://127.0.0.1:{port}", log)


def start_langgraph_dev(workdir: Path, token_delay: float = 0.0) -> Proc:
    """The real ``langgraph dev`` serving agent_app's graphs, from a config under ``workdir``.

    The config points at agent_app by absolute path so the server's scratch directory
    (``.langgraph_api``) lands in ``workdir``, not in the source tree.
    """
    port = free_port()
    (workdir / "langgraph.json").write_text(
        '{"dependencies": ["%s"], "graphs": {"agent": "%s/graph.py:graph", "failing": "%s/graph.py:failing"}}'
        % (AGENT_DIR, AGENT_DIR, AGENT_DIR)
    )
    env = {
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "AGENT_TOKEN_DELAY": str(token_delay),
        "AGENT_MODEL": "",
        "PYTHONPATH": str(REPO),
    }
    langgraph = Path(PYTHON).parent / "langgraph"
    args = [str(langgraph), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / "langgraph.log"
    proc = Proc(_spawn(args, log, cwd=workdir, env=env), f"http://127.0.0.1:{port}", log)
    wait_http(proc, "/ok", 90)
    # It silently moves to another port when ours was taken meanwhile: make sure /ok was its own.
    if f"Port {port} is already in use" in proc.log_text():
        proc.stop()
        raise RuntimeError(f"port {port} was taken; langgraph dev moved elsewhere")
    return proc
