#!/usr/bin/env python3
"""CPU cost per small request as instructions (valgrind callgrind), for noisy machines.

Wall-clock CPU time on a shared 2-core VM varies by ±30% between runs; instruction counts do
not. Each variant runs the real proxy under callgrind in front of bench/upstream.py and is sent
N1 and then N2 sequential keep-alive GET /small requests (two runs); the difference divided by
N2 - N1 is the per-request cost with start-up and shutdown cancelled out. Variants:

  proxy       this checkout, production defaults
  no-tracing  the same with tracing.enabled: false (what the LLM/tracing issue adds is the rest)
  floor       bench/floor_proxy.py: the thinnest relay on the same stack, no feature (the floor)
  base        another checkout (BENCH_BASELINE=/path, e.g. `git worktree add /tmp/base <rev>`)

With --sse, streams instead of GETs (bench/sse_client.py, 50 ms between events): per event, from
K streams of E1 and of E2 events; per stream (its set-up, head and end, one event included), from
K1 and K2 streams of E1 events. Variants proxy and floor.

usage: .venv/bin/python bench/instructions.py [--n1 200] [--n2 1200] [--sse]   (~4 min for three variants)
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


def get_requests(port: int, n: int) -> None:
    """``n`` sequential keep-alive GET /small."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        c.request("GET", "/small")
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
    c.close()


def sse_streams(port: int, k: int, events: int) -> None:
    """``k`` concurrent streams of ``events`` events 50 ms apart, every event checked."""
    p = subprocess.run([sys.executable, os.path.join(HERE, "sse_client.py"), f"http://127.0.0.1:{port}", "-k", str(k),
                        "--events", str(events), "--interval-ms", "50", "--stagger-ms", "0", "--timeout-s", "300"],
                       capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-500:] + p.stderr[-500:]


def instructions(cwd: str, extra_yaml: str, up_port: int, drive, tmp: str) -> int:
    """Instructions of one proxy process (``extra_yaml`` "floor": bench/floor_proxy.py) from
    start to exit, with ``drive(port)`` run against it in between."""
    port, admin = free_port(), free_port()
    out = os.path.join(tmp, f"cg{port}.out")
    env = dict(os.environ, PYTHONPATH=cwd)
    if extra_yaml == "floor":
        cmd, health = [os.path.join(HERE, "floor_proxy.py"), "--port", str(port),
                       "--upstream", f"http://127.0.0.1:{up_port}"], (port, "/health")
    else:
        cfg = os.path.join(tmp, f"p{port}.yaml")
        with open(cfg, "w") as f:
            f.write(f"server: {{listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{admin}}}\n"
                    f"upstream: {{url: http://127.0.0.1:{up_port}}}\n{extra_yaml}\n")
        cmd, health = ["-m", "proxy", "--config", cfg], (admin, "/healthz")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *cmd],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(*health, 300, proc)
        drive(port)
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
    ap.add_argument("--sse", action="store_true", help="streams: instructions per event and per stream")
    ap.add_argument("--k", type=int, default=20, help="--sse: streams for the per-event runs (and K1)")
    ap.add_argument("--k2", type=int, default=60, help="--sse: K2")
    ap.add_argument("--e1", type=int, default=4, help="--sse: events per stream, short runs")
    ap.add_argument("--e2", type=int, default=24, help="--sse: events per stream, long runs")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is missing (apt-get install valgrind)", file=sys.stderr)
        return 1
    variants = [("proxy", REPO, ""), ("no-tracing", REPO, "tracing: {enabled: false}"), ("floor", REPO, "floor")]
    if a.sse:
        variants = [("proxy", REPO, ""), ("floor", REPO, "floor")]
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
                if a.sse:
                    short = instructions(cwd, extra, up_port, lambda p: sse_streams(p, a.k, a.e1), tmp)
                    long_ = instructions(cwd, extra, up_port, lambda p: sse_streams(p, a.k, a.e2), tmp)
                    more = instructions(cwd, extra, up_port, lambda p: sse_streams(p, a.k2, a.e1), tmp)
                    ev = (long_ - short) / (a.k * (a.e2 - a.e1))
                    st = (more - short) / (a.k2 - a.k) - (a.e1 - 1) * ev
                    per[name] = ev
                    print(f"{name:11s} {ev:>10,.0f} instructions per event   {st:>10,.0f} per stream "
                          f"(set-up, head, end and its first event)", flush=True)
                    continue
                i1 = instructions(cwd, extra, up_port, lambda p: get_requests(p, a.n1), tmp)
                i2 = instructions(cwd, extra, up_port, lambda p: get_requests(p, a.n2), tmp)
                per[name] = (i2 - i1) / (a.n2 - a.n1)
                print(f"{name:11s} {per[name]:>10,.0f} instructions per GET /small", flush=True)
    finally:
        up.terminate()
        up.wait(10)
    if "floor" in per:
        print(f"proxy / floor     {per['proxy'] / per['floor']:.3f}  (what the features cost over the stack's floor)")
    if a.sse:
        return 0
    if "base" in per:
        print(f"proxy / base      {per['proxy'] / per['base']:.3f}")
        print(f"no-tracing / base {per['no-tracing'] / per['base']:.3f}")
    print(f"proxy / no-tracing {per['proxy'] / per['no-tracing']:.3f}  (what trace context and LLM telemetry add)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
