#!/usr/bin/env python3
"""Where the proxy's CPU goes per request: py-spy on the real proxy process under wrk load.

Starts a static nginx upstream (CPU1, so the upstream is never the bottleneck), the proxy with the
production feature set (CPU0, PYTHONUNBUFFERED=1 as in the image), drives GET /small with wrk
(CPU1) and samples the proxy with ``py-spy record --nonblocking --format raw``. CPU per request
is measured from /proc twice: in a window without the profiler (the figure to trust) and while
sampling. Each function's share of samples times the unprofiled CPU/request gives an estimate of
its microseconds per request.

Writes bench/profile/summary.md (included in docs/benchmarks.md by run.py), the raw collapsed
stacks and, for --scenario sse, the per-event view.

usage: .venv/bin/python bench/profile.py [--scenario get|sse|post] [--seconds 15] [--variant full|min|buffered]
  variant full: all features; min: access log + breaker off; buffered: full with PYTHONUNBUFFERED unset
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as B  # noqa: E402  (the suite's process helpers and configs)


_LINE = re.compile(r":\d+\)$")


def categorize(frame: str) -> str:
    f = frame
    if "proxy/" in f and "site-packages" not in f:
        return "proxy/" + f.split("proxy/", 1)[1].split(".py")[0] + ".py"
    for key, name in (("prometheus_client", "prometheus_client"), ("aiohttp/web_protocol", "aiohttp server protocol"),
                      ("aiohttp/web_response", "aiohttp Response"), ("aiohttp/http_writer", "aiohttp writer"),
                      ("aiohttp/web_request", "aiohttp Request"), ("aiohttp/", "aiohttp other"),
                      ("pybreaker", "pybreaker"), ("asyncio/", "asyncio (stdlib)"), ("multidict", "multidict"),
                      ("yarl", "yarl"), ("uvloop", "uvloop (Python part)"), ("logging/", "logging"),
                      ("json/", "json")):
        if key in f:
            return name
    return "other: " + f.split(" (")[0]


def analyse(raw_path: str, us_per_req: float, top: int = 30):
    """Collapsed stacks -> (self table, inclusive table, category table, total samples)."""
    self_c, incl_c, cat_c = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            try:
                n = int(n)
            except ValueError:
                continue
            frames = [x for x in stack.split(";") if x and not x.startswith("process ") and not x.startswith("thread ")]
            if not frames:
                continue
            total += n
            frames = [_LINE.sub(")", x) for x in frames]  # per function, not per line
            leaf = frames[-1]
            self_c[leaf] += n
            for fr in set(frames):
                incl_c[fr] += n
            # category of the innermost frame that is not the stdlib event loop glue
            cat_c[categorize(leaf)] += n
    return self_c, incl_c, cat_c, total


def short(frame: str) -> str:
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for cut in ("site-packages/", "/work/main/", "python3.11/", "python3.12/", "python3.13/"):
        if cut in loc:
            loc = loc.split(cut, 1)[1]
    return "%s (%s)" % (name, loc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="get", choices=("get", "post", "sse"))
    ap.add_argument("--variant", default="full", choices=("full", "min", "buffered"))
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rate", type=int, default=499, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames; may not work here)")
    ap.add_argument("--base-port", type=int, default=18280)
    ap.add_argument("--out", default=os.path.join(HERE, "profile"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rd = os.path.join("/tmp/sidecar-bench", "profile-" + time.strftime("%Y%m%d-%H%M%S"))
    for d in ("", "nginx_body", "nginx_proxy", "nginx_fcgi", "nginx_uwsgi", "nginx_scgi"):
        os.makedirs(os.path.join(rd, d), exist_ok=True)
    bp = a.base_port
    up_port, port, admin = bp, bp + 4, bp + 14
    pyspy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    tag = "%s-%s%s" % (a.scenario, a.variant, "-native" if a.native else "")
    try:
        if a.scenario == "sse":
            up = B.start([sys.executable, os.path.join(HERE, "upstream.py"), "--port", str(up_port)],
                         os.path.join(rd, "upstream.log"), "1")
        else:
            body = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); import upstream; "
                                   "sys.stdout.write(upstream.SMALL.decode())" % HERE],
                                  capture_output=True, text=True, check=True).stdout
            conf = os.path.join(rd, "static.conf")
            with open(conf, "w") as f:
                f.write(B.static_conf(rd, up_port, body).replace("location /small", "location /echo { return 200 'ok'; }\n    location /small"))
            up = B.start(["nginx", "-p", rd, "-c", conf, "-e", os.path.join(rd, "static_error.log")],
                         os.path.join(rd, "static.log"), "1")
        B.wait_port(up_port, proc=up)
        cfgp = os.path.join(rd, "proxy.yaml")
        with open(cfgp, "w") as f:
            f.write(B.proxy_yaml(port, admin, up_port, a.variant == "min"))
        env = dict(os.environ)
        if a.variant == "buffered":
            env.pop("PYTHONUNBUFFERED", None)
        else:
            env["PYTHONUNBUFFERED"] = "1"
        p = B.start([sys.executable, "-m", "proxy", "--config", cfgp], os.path.join(rd, "proxy.log"), "0", env=env,
                    stdout=os.path.join(rd, "access.log"))
        B.wait_port(port, proc=p)
        t = B.Target("proxy", port, p)

        class A:  # the attributes run_wrk/run_sse read
            client_cpus, conns, duration = "1", 64, a.seconds
        lua = None
        if a.scenario == "post":
            lua = os.path.join(rd, "post.lua")
            with open(lua, "w") as f:
                f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 16384)\n')

        def load(seconds):
            if a.scenario == "sse":
                return B.run_sse(t, A, 1000, max(10, seconds * 10), 100, seconds + 60)
            return B.run_wrk(t, A, "/echo" if a.scenario == "post" else "/small", lua, duration=seconds)

        def per_unit(r):
            if a.scenario == "sse":
                return r.get("cpu_us_per_event")
            return r.get("cpu_us_per_req")

        load(2)  # warm-up
        clean = load(a.seconds)
        print("unprofiled: %s us/%s  (cpu0 %s%%, steal %.0f%%)" % (
            B.fmt(per_unit(clean), 1), "event" if a.scenario == "sse" else "req", B.fmt(clean["cpu0_busy"]), clean["steal"]),
            flush=True)
        raw_path = os.path.join(a.out, "stacks-%s.txt" % tag)
        cmd = [pyspy, "record", "--pid", str(p.pid), "--rate", str(a.rate), "--duration", str(a.seconds),
               "--format", "raw", "--output", raw_path]
        # --nonblocking keeps the proxy running while sampled; --native needs to pause it
        cmd.append("--native" if a.native else "--nonblocking")
        if os.path.exists(raw_path):
            os.unlink(raw_path)
        spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        prof = load(a.seconds)
        try:
            spy_out = spy.communicate(timeout=a.seconds + 60)[0]
        except subprocess.TimeoutExpired:
            spy.kill()
            spy_out = spy.communicate()[0]
        print("profiled:   %s us/unit (cpu0 %s%%); py-spy: %s" % (
            B.fmt(per_unit(prof), 1), B.fmt(prof["cpu0_busy"]), spy_out.strip().splitlines()[-1:] if spy_out else ""), flush=True)
        B.stop(p)
        B.stop(up)
        if not os.path.exists(raw_path):
            print("py-spy wrote nothing:\n" + spy_out)
            return 1
        us = per_unit(clean) or 0.0
        self_c, incl_c, cat_c, total = analyse(raw_path, us)
        unit = "event" if a.scenario == "sse" else "request"
        L = ["### Profile: %s, variant %s (py-spy %s, %d samples, %d s)" % (a.scenario, a.variant,
             "--native" if a.native else "Python frames", total, a.seconds), "",
             "CPU per %s without the profiler: **%.1f us** (CPU0 %s%% busy, steal %.0f%%); "
             "with it: %.1f us. us/%s below = share of samples x %.1f us." % (
                 unit, us, B.fmt(clean["cpu0_busy"]), clean["steal"], per_unit(prof) or 0, unit, us), "",
             "By component (innermost frame):", "", "| component | share | us/%s |" % unit, "| --- | --- | --- |"]
        for k, n in cat_c.most_common(16):
            L.append("| %s | %.1f%% | %.1f |" % (k, 100.0 * n / total, us * n / total))
        L += ["", "Top functions by self time:", "", "| function | self | us/%s | inclusive |" % unit, "| --- | --- | --- | --- |"]
        for fr, n in self_c.most_common(25):
            L.append("| `%s` | %.1f%% | %.1f | %.1f%% |" % (short(fr), 100.0 * n / total, us * n / total, 100.0 * incl_c[fr] / total))
        L += ["", "Top functions by inclusive time (proxy and library code):", "", "| function | inclusive | us/%s |" % unit, "| --- | --- | --- |"]
        shown = 0
        for fr, n in incl_c.most_common(80):
            if any(x in fr for x in ("<module>", "run (", "_run_module", "run_forever", "main (")):
                continue
            L.append("| `%s` | %.1f%% | %.1f |" % (short(fr), 100.0 * n / total, us * n / total))
            shown += 1
            if shown >= 25:
                break
        md = "\n".join(L) + "\n"
        with open(os.path.join(a.out, "profile-%s.md" % tag), "w") as f:
            f.write(md)
        print(md)
    finally:
        B.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
