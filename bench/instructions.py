#!/usr/bin/env python3
"""CPU cost per small request as instructions (valgrind callgrind), for noisy machines.

Wall-clock CPU time on a shared 2-core VM varies by ±30% between runs; instruction counts do
not. Each variant runs the real proxy under callgrind in front of bench/upstream.py and is sent
N1 and then N2 sequential keep-alive GET /small requests (two runs); the difference divided by
N2 - N1 is the per-request cost with start-up and shutdown cancelled out. Variants:

  proxy       this checkout, production defaults
  no-tracing  the same with tracing.enabled: false (what the LLM/tracing issue adds is the rest)
  base        another checkout (BENCH_BASELINE=/path, e.g. `git worktree add /tmp/base <rev>`)

usage: .venv/bin/python bench/instructions.py [--n1 200] [--n2 1200]   (~4 min for three variants)
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing answered on :{port}{path}")


def instructions(cwd: str, extra_yaml: str, up_port: int, n: int, tmp: str) -> int:
    port, admin = free_port(), free_port()
    cfg = os.path.join(tmp, f"p{port}.yaml")
    with open(cfg, "w") as f:
        f.write(f"server: {{listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{admin}}}\n"
                f"upstream: {{url: http://127.0.0.1:{up_port}}}\n{extra_yaml}\n")
    out = os.path.join(tmp, f"cg{port}.out")
    env = dict(os.environ, PYTHONPATH=cwd)
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             sys.executable, "-m", "proxy", "--config", cfg],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(admin, "/healthz", 300, proc)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(n):
            c.request("GET", "/small")
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        c.close()
    finally:
        proc.terminate()
        proc.wait(120)
    with open(out) as f:
        m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n1", type=int, default=200)
    ap.add_argument("--n2", type=int, default=1200)
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is missing (apt-get install valgrind)", file=sys.stderr)
        return 1
    variants = [("proxy", REPO, ""), ("no-tracing", REPO, "tracing: {enabled: false}")]
    if os.environ.get("BENCH_BASELINE"):
        variants.append(("base", os.environ["BENCH_BASELINE"], ""))
    up_port = free_port()
    up = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py"), "--port", str(up_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    per = {}
    try:
        wait_http(up_port, "/health", 30, up)
        with tempfile.TemporaryDirectory() as tmp:
            for name, cwd, extra in variants:
                i1 = instructions(cwd, extra, up_port, a.n1, tmp)
                i2 = instructions(cwd, extra, up_port, a.n2, tmp)
                per[name] = (i2 - i1) / (a.n2 - a.n1)
                print(f"{name:11s} {per[name]:>10,.0f} instructions per GET /small", flush=True)
    finally:
        up.terminate()
        up.wait(10)
    if "base" in per:
        print(f"proxy / base      {per['proxy'] / per['base']:.3f}")
        print(f"no-tracing / base {per['no-tracing'] / per['base']:.3f}")
    print(f"proxy / no-tracing {per['proxy'] / per['no-tracing']:.3f}  (what trace context and LLM telemetry add)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
