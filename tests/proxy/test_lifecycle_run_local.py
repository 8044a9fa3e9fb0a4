"""`make run` (scripts/run_local.py): one Ctrl-C drains, a second cuts; a dead child is noticed at once.

Ctrl-C is played as the terminal does it: SIGINT to the whole foreground process group.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from proxy_harness import ROOT, free_port


def start_runner(tmp_path, ports: dict) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "scripts" / "run_local.py"), "--port", str(ports["port"]),
            "--admin-port", str(ports["admin"]), "--agent-port", str(ports["agent"]), "--var", str(tmp_path / "var")]
    out = open(tmp_path / "runner.log", "wb")
    try:
        # its own process group, like a shell job: killpg reaches it as the terminal's Ctrl-C would
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def wait_ready(proc, ports, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "run_local.py exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("not ready")


def open_stream(ports, tokens: int):
    body = json.dumps({"assistant_id": "agent", "stream_mode": ["values"],
                       "input": {"messages": [{"role": "user", "content": f"SLOW {tokens}"}]}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{ports['port']}/runs/stream", body,
                                 {"Content-Type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=60)
    resp.readline()  # the stream has begun
    return resp


def last_answer(sse: str) -> str:
    """The AI message of the last ``values`` event ("" if none arrived)."""
    answer = ""
    for block in sse.split("\r\n\r\n"):
        if block.startswith("event: values"):
            msg = json.loads(block.split("data: ", 1)[1])["messages"][-1]
            answer = msg["content"] if msg.get("type") == "ai" else answer
    return answer


def ctrl_c(proc) -> None:
    os.killpg(proc.pid, signal.SIGINT)


@pytest.fixture
def ports():
    return {"port": free_port(), "admin": free_port(), "agent": free_port()}


def test_one_ctrl_c_drains_the_stream(tmp_path, ports):
    proc = start_runner(tmp_path, ports)
    try:
        wait_ready(proc, ports)
        resp = open_stream(ports, 100)   # ~2 s of tokens
        ctrl_c(proc)
        rest = resp.read().decode()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "event: error" not in rest
    assert last_answer(rest).split()[-1] == "100"   # the whole answer arrived
    log = (tmp_path / "runner.log").read_text()
    assert "Ctrl-C again to cut" in log and "second signal" not in log


def test_second_ctrl_c_cuts(tmp_path, ports):
    proc = start_runner(tmp_path, ports)
    try:
        wait_ready(proc, ports)
        resp = open_stream(ports, 3000)  # a minute of tokens
        ctrl_c(proc)
        time.sleep(0.5)
        t0 = time.monotonic()
        ctrl_c(proc)
        try:
            rest = resp.read().decode()
        except (OSError, http.client.IncompleteRead):
            rest = ""
        assert proc.wait(30) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not last_answer(rest).endswith("3000"), "the stream was cut, not finished"
    assert "second signal: skipping the rest of the drain" in (tmp_path / "runner.log").read_text()


def test_a_busy_port_is_noticed_at_once(tmp_path, ports):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["admin"]))
        busy.listen(1)
        t0 = time.monotonic()
        proc = start_runner(tmp_path, ports)
        try:
            assert proc.wait(20) == 1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert time.monotonic() - t0 < 15
    log = (tmp_path / "runner.log").read_text()
    assert f"error: server.admin_listen 127.0.0.1:{ports['admin']}: cannot listen: Address already in use" in log
    assert "proxy exited with code 3" in log and "Traceback" not in log
