#!/usr/bin/env python3
"""Sidecar benchmark suite: the real proxy as a process, against direct and nginx, in one run.

Columns (each a separate process, pinned to CPU0; upstream and load generators on CPU1):
  direct     the benchmark upstream itself (bench/upstream.py, aiohttp + uvloop)
  nginx      Debian nginx, 1 worker, proxy_buffering off, upstream keepalive
  proxy      python -m proxy, production feature set: metrics, breaker, retries, timeouts,
             limits, access log on (stdout redirected to a file, as a container runtime would)
  proxy-min  the same with access_log: false and circuit_breaker.enabled: false
             (metrics cannot be switched off in the proxy)
  naive      bench/naive_proxy.py: a plain aiohttp ClientSession proxy (reference)
  floor      bench/floor_proxy.py (only when --only names it): the thinnest relay on the proxy's own
             stack (aiohttp low-level server, uvloop, proxy/upstream.py), no feature: the stack's floor
  floor-raw  bench/floor_raw.py (only with --only): the same relay with aiohttp's server side replaced
             by an httptools protocol; floor-raw vs floor is what aiohttp's server side costs

Scenarios, every repetition interleaved over the columns (A B C D E, rotated each rep):
  get      wrk -t1 -c64 GET /small (237 B JSON)
  post     wrk -t1 -c64 POST /echo with a 16 KiB body
  lat      fixed ~200 req/s (wrk, 4 connections each pausing 20 ms between requests): latency
           added over direct
  sse1k    1,000 concurrent SSE streams x 10 events/s: per-event forwarding delay (upstream send
           -> client receive, same CLOCK_MONOTONIC), time to first event, proxy peak RSS
  sse10k   ~10,000 concurrent SSE streams x 1 event/s: every event counted, proxy peak RSS
  burst    1,000 SSE streams (4 events, 500 ms apart) opened at once into the SHIPPED DEFAULTS
           (column proxy-defaults: only listen addresses and the upstream URL set): every stream
           must complete, no 5xx (the capacity model: admission at limits, a pool that follows it)
  static   GET /small with a static nginx upstream on CPU1, so the proxy saturates CPU0: capacity
  soak     1,000,000 requests through the proxy (static upstream): RSS before/after
  streams  stream scale, NOT in the default list (~8 min at 3 reps, ~5.5 with --only nginx,proxy;
           ask for it: --scenarios streams, or --scenarios all): per rep, for K in --streams-k
           (5,000 and ~10,000, capped as sse10k by what every column holds, max_streams) concurrent SSE streams x
           --streams-events (20) events @1 s, 10% of them
           LangGraph runs (POST /threads/{id}/runs/stream) whose `messages` events carry token usage;
           columns direct, nginx, proxy as sse10k (a proxy variant only when --only names it), rotated,
           each run on a freshly started, warmed-up column process: steady p99 event delay, time to
           first event, peak RSS, RSS per stream above that process's idle RSS, every event counted,
           and the LLM tokens the proxy counted (its /metrics) against what the streams carried
  setup    what one stream costs to open and close, NOT in the default list (~2 min with
           --only nginx,proxy,floor,floor-raw): per rep, --setup-k (3,000) short SSE streams (request,
           2 events 200 ms apart, end; 10% LangGraph runs with usage) opened over 0.5 s, on the
           columns of streams, one warmed-up process each, rotated: the column's CPU per stream (both
           TCP connections' set-up and teardown, the request and answer heads, the events), its kernel
           share, and time to first event. It is the set-up cost behind the streams scenario's TTFE
Idle RSS of every column is read right after start.

Primary figure: proxy CPU time per request (utime+stime of the process tree from /proc), then
throughput, always as ratios inside one run. Every wrk run has -d, every SSE run a timeout, every
loop a bound; every process started here is stopped through its own process group.

usage: bench/run.sh [--quick] [--reps N] [--only direct,nginx,proxy] [--scenarios get,post,...|all]
       bench/run.sh --scenarios streams --only nginx,proxy          (stream scale alone, ~5.5 min)
The report is written to docs/benchmarks.md (--docs) only by a full run: not --quick, and every
default scenario selected (a subset would replace the full report with a partial one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
STARTED: list[subprocess.Popen] = []

ALL_COLUMNS = ("direct", "nginx", "proxy", "proxy-min", "naive")
# optional (ablation) columns, only with --only: the full proxy with a block-buffered stdout
# (PYTHONUNBUFFERED unset; the image sets it to 1), and with the access log to /dev/null
EXTRA_COLUMNS = ("proxy-buf", "proxy-null", "proxy-defaults", "proxy-base", "floor", "floor-raw")
# proxy-base: the same production config run from another checkout (BENCH_BASELINE=/path, e.g. a
# `git worktree` of the previous release), so a change is measured against its baseline in one run
BASELINE = os.environ.get("BENCH_BASELINE")
ALL_SCENARIOS = ("get", "post", "lat", "sse1k", "sse10k", "burst", "static", "soak", "streams", "setup")
# streams: 3 reps x 2 sizes x (20 events + ~7 s start, warm-up, stop) = ~5.5 min for nginx+proxy, ~8 min
# with direct too: more than a default run may grow, so only on request
FLOORS = {"floor": "floor_proxy.py", "floor-raw": "floor_raw.py"}
DEFAULT_SCENARIOS = tuple(s for s in ALL_SCENARIOS if s not in ("streams", "setup"))
# columns the streams scenario runs on (when selected); proxy-defaults would shed at its default limits
STREAMS_COLUMNS = ("direct", "nginx", "proxy", "proxy-min", "proxy-buf", "proxy-null", "proxy-base", "floor", "floor-raw")
STREAMS_TARGET_K = (5000, 10000)  # the sizes the stream-scale targets name (requested, before the fd cap)
USAGE_INPUT_TOKENS = 7  # bench/upstream.py: input tokens per LLM call of a usage stream (+1 output per event)


# ----------------------------------------------------------------------------- processes
def start(cmd, log, cpus=None, env=None, stdout=None, cwd=REPO):
    if cpus:
        cmd = ["taskset", "-c", cpus] + list(cmd)
    f = open(log, "ab")
    out = open(stdout, "ab") if stdout else f
    p = subprocess.Popen(cmd, stdout=out, stderr=f, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=env, cwd=cwd)
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=8.0):
    """Stop a process we started: signal its own process group (pgid == its pid)."""
    if p in STARTED:
        STARTED.remove(p)
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def stop_all():
    while STARTED:
        stop(STARTED[-1])


def wait_port(port, timeout=30.0, proc=None):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited (rc=%s) before port %d opened" % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("port %d did not open in %.0fs" % (port, timeout))


def tree(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        x = todo.pop()
        out.append(x)
        todo.extend(kids.get(x, []))
    return out


def cpu_ticks(pids, which=(11, 12)):
    tot = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            tot += sum(int(fields[i]) for i in which)  # 11 utime, 12 stime
        except (OSError, ValueError, IndexError):
            pass
    return tot


def status_kb(pids, key):
    tot = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        tot += int(line.split()[1])
        except OSError:
            pass
    return tot


def reset_hwm(pids):
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            pass


def proc_stat():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def stat_delta(a, b):
    res = {}
    for k in b:
        d = [y - x for x, y in zip(a[k], b[k])]
        total = sum(d[:8]) or 1
        idle = d[3] + d[4]
        res[k] = {"busy": 100.0 * (total - idle) / total, "steal": 100.0 * d[7] / total}
    return res


def wait_quiet(max_busy=15.0, max_wait=20.0):
    """Pre-flight: wait (bounded) while the host is busy; report what was seen."""
    t_end = time.time() + max_wait
    while True:
        a0 = proc_stat()
        time.sleep(2.0)
        d = stat_delta(a0, proc_stat())["cpu"]
        if d["busy"] <= max_busy or time.time() > t_end:
            break
        print("host busy %.0f%% (steal %.0f%%), waiting for quiet..." % (d["busy"], d["steal"]), flush=True)
    if d["busy"] > max_busy:
        top = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True,
                             text=True).stdout.splitlines()[:5]
        print("WARNING: host not quiet (busy %.0f%%, steal %.0f%%); top: %s" % (
            d["busy"], d["steal"], " | ".join(x.strip() for x in top)), flush=True)
    return d


# ----------------------------------------------------------------------------- configs
def nginx_conf(rd, port, up_port):
    return """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
user root;
pid {rd}/nginx.pid;
error_log {rd}/nginx_error.log warn;
events {{ worker_connections {wc}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {rd}/nginx_body;
  proxy_temp_path {rd}/nginx_proxy;
  fastcgi_temp_path {rd}/nginx_fcgi;
  uwsgi_temp_path {rd}/nginx_uwsgi;
  scgi_temp_path {rd}/nginx_scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream up {{ server 127.0.0.1:{up}; keepalive {keepalive}; keepalive_requests 1000000; keepalive_timeout 300s; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 0;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
""".format(rd=rd, port=port, up=up_port, nofile=nofile_limit(), wc=nginx_worker_connections(nofile_limit()),
           keepalive=NGINX_UPSTREAM_KEEPALIVE)


def static_conf(rd, port, body):
    return """
daemon off;
worker_processes 1;
user root;
pid {rd}/static.pid;
error_log {rd}/static_error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {rd}/nginx_body;
  proxy_temp_path {rd}/nginx_proxy;
  fastcgi_temp_path {rd}/nginx_fcgi;
  uwsgi_temp_path {rd}/nginx_uwsgi;
  scgi_temp_path {rd}/nginx_scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /small {{ default_type application/json; return 200 '{body}'; }}
    location / {{ return 404; }}
  }}
}}
""".format(rd=rd, port=port, body=body)


def proxy_yaml(port, admin, up_port, minimal, defaults=False):
    """The production feature set (defaults), with the capacity knob a 10k-stream pod needs:
    limits.max_concurrent_requests (default 1000 would shed stream 1001+; the upstream pool follows
    it). ``defaults``: nothing but the addresses, as a new user ships it."""
    if defaults:
        return ("server: {listen: 127.0.0.1:%d, admin_listen: 127.0.0.1:%d, drain_delay: 0s, shutdown_grace: 2s}\n"
                "upstream: {url: http://127.0.0.1:%d}\n" % (port, admin, up_port))
    y = ("server: {listen: 127.0.0.1:%d, admin_listen: 127.0.0.1:%d, drain_delay: 0s, shutdown_grace: 2s,\n"
         "         max_connections: 20000}\n"
         "upstream: {url: http://127.0.0.1:%d, max_connections: 20016}\n"
         "limits: {max_concurrent_requests: 20000}\n" % (port, admin, up_port))
    if minimal:
        y += "logging: {access_log: false}\ncircuit_breaker: {enabled: false}\n"
    return y


def image_env(tree: str, py: str) -> dict:
    """The Python settings (``PYTHON*``, ``*_NO_EXTENSIONS`` ENV) of the proxy image built from ``tree``'s Dockerfile,
    with its compiled modules made here as its build stage makes them: the standard library, the
    venv and ``tree/proxy`` at the image's optimisation level, into a bench-owned
    ``PYTHONPYCACHEPREFIX`` when the image has one (kept across runs: only changed sources are
    compiled again)."""
    text = re.sub(r"\\\n", " ", open(os.path.join(tree, "Dockerfile")).read())
    env, stage = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            stage = m.group(1)
        elif stage in ("base", "proxy") and re.match(r"\s*ENV\s", line):
            env.update((k, v) for k, v in re.findall(r"(PYTHON\w+|\w+_NO_EXTENSIONS)=(\S+)", line))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the image has its .pyc files; here compileall writes them
    if "PYTHONPYCACHEPREFIX" in env:
        env["PYTHONPYCACHEPREFIX"] = os.path.join(os.path.expanduser("~"), ".cache", "sidecar-bench", "pycache")
    level = env.get("PYTHONOPTIMIZE", "0")
    cenv = dict(os.environ, **env)
    skip = re.search(r"compileall[^\n]*?-x '([^']+)'", text)  # what the build stage leaves out of the stdlib
    venv = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    for where, x in (([sysconfig.get_path("stdlib")], ["-x", skip.group(1)] if skip else []),
                     (venv, []), ([os.path.join(tree, "proxy")], [])):
        subprocess.run([py, "-m", "compileall", "-q", "-j", "0", "-o", level, *x, *where],
                       env=cenv, stdout=subprocess.DEVNULL, check=False)
    return env


def nofile_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


NGINX_UPSTREAM_KEEPALIVE = 64  # nginx's idle upstream connections kept (nginx_conf)


def nginx_worker_connections(nofile):
    """nginx's one worker: every fd but a few for its logs and listeners (nginx_conf)."""
    return nofile - 32


def max_streams(nofile):
    """The most concurrent streams every column can hold on this host, so that each column's
    figures are over the same streams. A proxy needs 2 fds a stream (client and upstream), 64 kept
    for the rest. nginx's one worker has ``nginx_worker_connections`` connections, and once
    fewer than 1/16 of them are free it takes connections back ("worker_connections are not
    enough, reusing connections"): it closes those still waiting for their request head, and those
    clients see a reset. With its upstream keep-alive pool, it holds
    (15/16 of them - the pool) / 2 streams: 9,328 at 20,000 fds, where at 9,968 it lost 609 (6%)."""
    wc = nginx_worker_connections(nofile)
    return min((nofile - 64) // 2, (wc - wc // 16 - NGINX_UPSTREAM_KEEPALIVE) // 2)


# ----------------------------------------------------------------------------- wrk
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    for p in ("50", "90", "99"):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+([\d.]+)(us|ms|s|m)\s*$" % p, out, re.M)
        r["p%s_ms" % p] = float(m.group(1)) * UNIT[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["sock_err"] = sum(int(x) for x in m.groups()) if m else 0
    return r


class Target:
    def __init__(self, name, port, proc=None):
        self.name, self.port, self.proc = name, port, proc

    def pids(self):
        return tree(self.proc.pid) if self.proc else []


def measure(t, fn):
    pids = t.pids()
    c0, k0, s0, w0 = cpu_ticks(pids), cpu_ticks(pids, (12,)), proc_stat(), time.monotonic()
    out = fn()
    pids = t.pids() or pids
    c1, k1, s1, w1 = cpu_ticks(pids), cpu_ticks(pids, (12,)), proc_stat(), time.monotonic()
    sd = stat_delta(s0, s1)
    return out, {"proxy_cpu_s": (c1 - c0) / CLK, "wall_s": w1 - w0,
                 "sys_share": ((k1 - k0) / (c1 - c0)) if c1 > c0 else None,
                 "cpu0_busy": sd.get("cpu0", {}).get("busy"), "cpu1_busy": sd.get("cpu1", {}).get("busy"),
                 "steal": sd["cpu"]["steal"]}


def run_wrk(t, a, path, script=None, duration=None, conns=None):
    d = duration or a.duration
    cmd = ["taskset", "-c", a.client_cpus, "wrk", "-t1", "-c%d" % (conns or a.conns), "-d%ds" % d,
           "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", script]
    cmd.append("http://127.0.0.1:%d%s" % (t.port, path))

    def go():
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=d + 30)
        return p.stdout + p.stderr

    out, ex = measure(t, go)
    r = parse_wrk(out)
    r.update(ex)
    r["cpu_us_per_req"] = (1e6 * ex["proxy_cpu_s"] / r["requests"]) if (t.proc and r["requests"]) else None
    if r["rps"] is None:
        r["raw"] = out[-1500:]
    return r


def run_sse(t, a, k, events, interval_ms, timeout_s, stagger_ms=None, usage_share=None):
    cmd = ["taskset", "-c", a.client_cpus, sys.executable, os.path.join(HERE, "sse_client.py"),
           "http://127.0.0.1:%d" % t.port, "-k", str(k), "--events", str(events),
           "--interval-ms", str(interval_ms), "--timeout-s", str(timeout_s)]
    if stagger_ms is not None:
        cmd += ["--stagger-ms", str(stagger_ms)]
    if usage_share:
        cmd += ["--usage-share", str(usage_share)]
    pids = t.pids()
    if pids:
        reset_hwm(pids)
    rss0 = status_kb(pids, "VmRSS") if pids else None

    def go():
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
            return p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            return "", "sse_client timed out: %s" % (e.stderr or b"")[-500:], None

    (out, err, rc), ex = measure(t, go)
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        r = {"error": ("sse_client rc=%s: " % rc) + (out + err)[-1000:]}
    pids = t.pids() or pids
    r.update(ex)
    if pids:
        r["rss_before_mb"] = rss0 / 1024.0
        r["peak_rss_mb"] = status_kb(pids, "VmHWM") / 1024.0
        r["proxy_cpu_pct"] = 100.0 * ex["proxy_cpu_s"] / ex["wall_s"]
        ev = r.get("events") or 0
        r["cpu_us_per_event"] = (1e6 * ex["proxy_cpu_s"] / ev) if ev else None
    return r


def setup_run(t, a):
    """One setup run: --setup-k short streams opened over 0.5 s; the column's CPU per stream."""
    r = run_sse(t, a, a.setup_k, 2, 200, 60, stagger_ms=500, usage_share=0.1)
    r.setdefault("streams", a.setup_k)
    r["cpu_us_per_stream"] = 1e6 * r["proxy_cpu_s"] / a.setup_k if t.proc and r.get("proxy_cpu_s") else None
    return r


def llm_counters(admin_port):
    """The proxy's LLM usage counters (sidecar_llm_*_total on its admin /metrics), summed over labels."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5) as f:
            text = f.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    out = {"calls": 0, "unparsed": 0, "input": 0, "output": 0}
    for m in re.finditer(r"^sidecar_llm_(tokens|calls|events_unparsed)_total\{([^}]*)\}\s+(\S+)$", text, re.M):
        kind, labels, v = m.group(1), m.group(2), int(float(m.group(3)))
        if kind == "tokens":
            typ = re.search(r'type="([^"]*)"', labels)
            if typ and typ.group(1) in ("input", "output"):
                out[typ.group(1)] += v
        else:
            out["calls" if kind == "calls" else "unparsed"] += v
    return out


# ----------------------------------------------------------------------------- stats
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def fmt(x, nd=0):
    if x is None:
        return "-"
    return ("%%.%df" % nd) % x


def ratio(x, y):
    return (x / y) if (x is not None and y) else None


def mm(rs, key, nd=0):
    """'median [min-max]' of one key over runs."""
    xs = [r.get(key) for r in rs if r.get(key) is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0], nd)
    return "%s [%s-%s]" % (fmt(med(xs), nd), fmt(min(xs), nd), fmt(max(xs), nd))


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 rep, short runs, 2k big-SSE, 100k soak (~2-3 min)")
    ap.add_argument("--only", default="", help="comma list of columns (default: all)")
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                    help="comma list (default: %(default)s); 'all' adds streams (stream scale, ~8 min)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="wrk seconds per get/post run")
    ap.add_argument("--lat-duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--post-bytes", type=int, default=16384)
    ap.add_argument("--sse-events", type=int, default=20, help="events per stream at K=1000 (100 ms apart)")
    ap.add_argument("--sse-big-k", type=int, default=10000,
                    help="streams for the big SSE run (capped by the fd limit: max_streams)")
    ap.add_argument("--sse-big-events", type=int, default=10, help="events per stream in the big run (1 s apart)")
    ap.add_argument("--sse-big-stagger-ms", type=int, default=None,
                    help="spread the big run's stream starts over this many ms (default: one interval, 1 s)")
    ap.add_argument("--streams-k", default=None,
                    help="streams: comma list of concurrent stream counts (default 5000,10000; --quick 1000,2000), "
                         "each capped at what every column holds with the fd limit (max_streams)")
    ap.add_argument("--streams-events", type=int, default=None,
                    help="streams: events per stream, 1 s apart (default 20; --quick 8); the first 5 of each "
                         "stream are left out of the steady delay, so use more than 5")
    ap.add_argument("--setup-k", type=int, default=3000, help="short streams per setup run")
    ap.add_argument("--streams-usage-share", type=float, default=0.1,
                    help="streams: share of the streams that are LangGraph runs with token usage")
    ap.add_argument("--soak-requests", type=int, default=1_000_000)
    ap.add_argument("--soak-chunk", type=int, default=15, help="wrk seconds per soak chunk (RSS sampled between)")
    ap.add_argument("--max-minutes", type=float, default=9.5, help="optional work (steal re-runs) stops past this")
    ap.add_argument("--max-steal", type=float, default=20.0)
    ap.add_argument("--proxy-cpus", default="0")
    ap.add_argument("--upstream-cpus", default="1")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--base-port", type=int, default=18180)
    ap.add_argument("--docs", default=None, help="write this markdown report (default: docs/benchmarks.md "
                    "for a full run: every default scenario, not --quick; none otherwise)")
    ap.add_argument("--profile-summary", default=os.path.join(HERE, "profile", "summary.md"),
                    help="markdown included in the docs report if it exists (made by bench/profile.py)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("BENCH_RESULTS", "/tmp/sidecar-bench"),
                                                  time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--from-raw", help="re-render the table (and --docs) from a previous run's raw.json, no new runs")
    a = ap.parse_args()
    if a.from_raw:
        with open(a.from_raw) as f:
            raw = json.load(f)
        docs, prof = a.docs, a.profile_summary
        a = argparse.Namespace(**raw["args"])
        a.profile_summary = prof
        report = build_report(raw, a)
        print(report)
        if docs:
            write_docs(docs, raw, report, a)
            print("wrote %s" % docs)
        return
    if a.quick:
        a.reps, a.duration, a.lat_duration = 1, 2, 3
        a.sse_events, a.sse_big_k, a.sse_big_events = 10, 2000, 5
        a.soak_requests, a.soak_chunk = 100_000, 6
    if a.streams_k is None:
        a.streams_k = "1000,2000" if a.quick else "5000,10000"
    if a.streams_events is None:
        a.streams_events = 8 if a.quick else 20
    if a.scenarios == "all":
        a.scenarios = ",".join(ALL_SCENARIOS)
    scen = [x for x in a.scenarios.split(",") if x]
    if a.docs is None and not a.quick and set(DEFAULT_SCENARIOS) <= set(scen):
        a.docs = os.path.join(REPO, "docs", "benchmarks.md")
    nofile = nofile_limit()
    big_k = min(a.sse_big_k, max_streams(nofile))
    try:  # (requested K, K run): the targets name the requested size, the table the one run
        streams_ks = [(int(x), min(int(x), max_streams(nofile))) for x in a.streams_k.split(",") if x.strip()]
    except ValueError:
        ap.error("--streams-k: comma list of integers, got %r" % a.streams_k)

    os.makedirs(a.out, exist_ok=True)
    rd = os.path.join(a.out, "run")
    os.makedirs(rd, exist_ok=True)
    for d in ("nginx_body", "nginx_proxy", "nginx_fcgi", "nginx_uwsgi", "nginx_scgi"):
        os.makedirs(os.path.join(rd, d), exist_ok=True)
    only = [x for x in a.only.split(",") if x] or list(ALL_COLUMNS)
    bad = [x for x in scen if x not in ALL_SCENARIOS] + [x for x in only if x not in ALL_COLUMNS + EXTRA_COLUMNS]
    if bad:
        ap.error("unknown: %s" % ", ".join(bad))
    bp = a.base_port
    PORTS = {"direct": bp, "nginx": bp + 1, "naive": bp + 3, "proxy": bp + 4, "proxy-min": bp + 5,
             "proxy-buf": bp + 7, "proxy-null": bp + 8, "proxy-defaults": bp + 10, "proxy-base": bp + 11,
             "floor": bp + 12, "floor-raw": bp + 13}
    ADMIN = {"proxy": bp + 14, "proxy-min": bp + 15, "proxy-buf": bp + 17, "proxy-null": bp + 18,
             "proxy-defaults": bp + 20, "proxy-base": bp + 21}
    static_port, soak_port, soak_admin = bp + 9, bp + 6, bp + 16

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (stop_all(), sys.exit(130)))

    py = sys.executable
    t_start = time.time()
    deadline = t_start + 60 * a.max_minutes
    # every proxy checkout measured runs as its image runs it: with that image's Python settings
    # and from compiled modules only (a process that compiles its sources at start-up keeps
    # 1-3 MiB more idle RSS)
    envs = {tree: image_env(tree, py) for tree in {REPO, BASELINE} - {None}}

    def start_proxy(name, port, admin, up_port, minimal, tag):
        cfgp = os.path.join(rd, "%s-%s.yaml" % (name, tag))
        with open(cfgp, "w") as f:
            f.write(proxy_yaml(port, admin, up_port, minimal, defaults=name == "proxy-defaults"))
        ready = os.path.join(rd, "%s-%s.ready" % (name, tag))
        if os.path.exists(ready):  # from an earlier start with this tag (streams starts one per run)
            os.unlink(ready)
        # the image's Python settings (its Dockerfile); import list to stderr at start-up
        if name == "proxy-base" and not BASELINE:
            raise SystemExit("column proxy-base needs BENCH_BASELINE=/path/to/another/checkout")
        env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", **envs[BASELINE if name == "proxy-base" else REPO])
        if name == "proxy-buf":
            env.pop("PYTHONUNBUFFERED", None)
        if name == "proxy-base":
            env["PYTHONPATH"] = BASELINE
        p = start([py, "-m", "proxy", "--config", cfgp, "--ready-file", ready],
                  os.path.join(rd, "%s-%s.log" % (name, tag)), a.proxy_cpus, env=env,
                  stdout="/dev/null" if name == "proxy-null" else os.path.join(rd, "%s-%s.access.log" % (name, tag)),
                  cwd=BASELINE if name == "proxy-base" else REPO)
        t_end = time.time() + 30
        while not os.path.exists(ready):
            if p.poll() is not None or time.time() > t_end:
                raise RuntimeError("%s did not start; see %s" % (name, os.path.join(rd, "%s-%s.log" % (name, tag))))
            time.sleep(0.05)
        return p

    def start_targets(up_port, tag, names):
        ts = []
        for n in names:
            if n == "direct":
                ts.append(Target("direct", up_port))
            elif n == "nginx":
                conf = os.path.join(rd, "nginx-%s.conf" % tag)
                with open(conf, "w") as f:
                    f.write(nginx_conf(rd, PORTS["nginx"], up_port))
                p = start(["nginx", "-p", rd, "-c", conf, "-e", os.path.join(rd, "nginx_error.log")],
                          os.path.join(rd, "nginx.log"), a.proxy_cpus)
                ts.append(Target("nginx", PORTS["nginx"], p))
            elif n == "naive":
                p = start([py, os.path.join(HERE, "naive_proxy.py"), "--port", str(PORTS["naive"]),
                           "--upstream", "http://127.0.0.1:%d" % up_port, "--limit", "20000"],
                          os.path.join(rd, "naive.log"), a.proxy_cpus)
                ts.append(Target("naive", PORTS["naive"], p))
            elif n in FLOORS:
                p = start([py, os.path.join(HERE, FLOORS[n]), "--port", str(PORTS[n]),
                           "--upstream", "http://127.0.0.1:%d" % up_port],
                          os.path.join(rd, n + ".log"), a.proxy_cpus)
                ts.append(Target(n, PORTS[n], p))
            elif n in ("proxy", "proxy-min") + EXTRA_COLUMNS:
                p = start_proxy(n, PORTS[n], ADMIN[n], up_port, n == "proxy-min", tag)
                ts.append(Target(n, PORTS[n], p))
        for t in ts:
            wait_port(t.port, proc=t.proc)
        time.sleep(1.0)
        return ts

    raw = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "args": vars(a),
           "host": host_info(), "nofile": nofile, "big_k": big_k, "streams_k": streams_ks, "runs": {}}
    raw["preflight"] = wait_quiet()

    def save():
        with open(os.path.join(a.out, "raw.json"), "w") as f:
            json.dump(raw, f, indent=1, default=str)

    def record(sname, t, r, rep):
        r["rep"] = rep
        raw["runs"].setdefault(sname, {}).setdefault(t.name, []).append(r)
        save()

    def run_one(sname, t, rep, fn, show):
        """One run of one column; a run with steal > max is re-done once (while time allows)."""
        r = fn(t)
        if r.get("steal", 0) > a.max_steal and time.time() < deadline - 120:
            print("  [%s rep%d] %s steal %.0f%%: re-run" % (sname, rep, t.name, r["steal"]), flush=True)
            raw.setdefault("discarded", []).append(dict(r, scenario=sname, target=t.name))
            r = fn(t)
        record(sname, t, r, rep)
        print("  [%s rep%d] %-9s %s steal=%.0f%%" % (sname, rep, t.name, show(r), r.get("steal", 0)), flush=True)

    def interleave(sname, targets, reps, fn, show):
        """rep r runs the columns in an order rotated by r."""
        for rep in range(reps):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for t in order:
                run_one(sname, t, rep, fn, show)

    def show_wrk(r):
        return "rps=%s p50=%sms p99=%sms cpu=%sus/req cpu0=%s%% cpu1=%s%% err=%d%s" % (
            fmt(r["rps"]), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["cpu_us_per_req"]),
            fmt(r["cpu0_busy"]), fmt(r["cpu1_busy"]), r["non2xx"] + r["sock_err"],
            (" RAW: " + r["raw"]) if r.get("raw") else "")

    def show_sse(r):
        return "p50=%s p99=%s ttfe99=%s events=%s/%s peakRSS=%sMB cpu=%s%% %s" % (
            fmt(r.get("steady_p50_ms"), 2), fmt(r.get("steady_p99_ms"), 2), fmt(r.get("ttfb_p99_ms"), 1),
            r.get("events"), r.get("expected"), fmt(r.get("peak_rss_mb"), 1), fmt(r.get("proxy_cpu_pct")),
            r.get("errors") or r.get("error") or "")

    def show_streams(r):
        return "K=%s %s before=%sMB perStream=%sKiB cpu=%sus/ev llm=%s" % (
            r.get("k"), show_sse(r), fmt(r.get("rss_before_mb"), 1), fmt(r.get("mem_per_stream_kib"), 1),
            fmt(r.get("cpu_us_per_event"), 1),
            "-" if not r.get("llm") else "calls %d in %d out %d unparsed %d" % (
                r["llm"]["calls"], r["llm"]["input"], r["llm"]["output"], r["llm"]["unparsed"]))

    def show_setup(r):
        return "ok=%s/%s cpu=%sus/stream sys=%s%% ttfe50/99=%s/%sms" % (
            r.get("ok"), r.get("streams"), fmt(r.get("cpu_us_per_stream"), 1),
            fmt(100 * r["sys_share"] if r.get("sys_share") is not None else None), fmt(r.get("ttfb_p50_ms"), 1),
            fmt(r.get("ttfb_p99_ms"), 1))

    def streams_run(name, k_req, k):
        """One stream-scale run on a freshly started column process, warmed up first (50 short
        streams, 10 of them with usage: first-time allocations, code paths, upstream pool), so its
        RSS before the run is its idle RSS and nothing from an earlier size is in its heap."""
        ft = start_targets(PORTS["direct"], "streams", [name])[0]
        try:
            run_sse(ft, a, 50, 3, 50, 30, usage_share=0.2)
            time.sleep(0.5)
            llm0 = llm_counters(ADMIN[name]) if name in ADMIN else None
            r = run_sse(ft, a, k, a.streams_events, 1000, 60 + a.streams_events,
                        usage_share=a.streams_usage_share)
            r.update(k=k, k_req=k_req)
            r.setdefault("streams", k)  # also when the client failed: the run still counts against the targets
            r.setdefault("expected", k * a.streams_events)
            if r.get("peak_rss_mb") is not None and r.get("rss_before_mb") is not None:
                r["mem_per_stream_kib"] = (r["peak_rss_mb"] - r["rss_before_mb"]) * 1024.0 / k
            llm1 = llm_counters(ADMIN[name]) if name in ADMIN else None
            if llm0 is not None and llm1 is not None:  # what this run added (the warm-up counted too)
                r["llm"] = {key: llm1[key] - llm0[key] for key in llm1}
        finally:
            if ft.proc:
                stop(ft.proc)
        return r

    lua_post = os.path.join(rd, "post.lua")
    with open(lua_post, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n' % a.post_bytes)
    lua_rate = os.path.join(rd, "rate.lua")
    with open(lua_rate, "w") as f:  # 4 connections x (20 ms pause + latency) ~ 195 req/s
        f.write("function delay() return 20 end\n")

    try:
        # ------------------------------------------------ phase 1: aiohttp upstream
        if set(scen) & {"get", "post", "lat", "sse1k", "sse10k", "burst"}:
            up = start([py, os.path.join(HERE, "upstream.py"), "--port", str(PORTS["direct"])],
                       os.path.join(rd, "upstream.log"), a.upstream_cpus)
            wait_port(PORTS["direct"], proc=up)
            targets = start_targets(PORTS["direct"], "app", only)
            raw["idle_rss_mb"] = {t.name: status_kb(t.pids(), "VmRSS") / 1024.0 for t in targets if t.proc}
            raw["imports"] = import_report(rd)
            print("idle RSS MB: %s" % raw["idle_rss_mb"], flush=True)
            im = raw["imports"] or {}
            print("proxy imports: %s modules, LangGraph loaded: %s" % (im.get("modules"), im.get("langgraph_loaded")), flush=True)
            if "get" in scen or "post" in scen or "lat" in scen:
                for t in targets:  # warm-up: pools, caches, first-time allocations
                    run_wrk(t, a, "/small", duration=1)
            if "get" in scen:
                print("== get", flush=True)
                interleave("get", targets, a.reps, lambda t: run_wrk(t, a, "/small"), show_wrk)
            if "post" in scen:
                print("== post16k", flush=True)
                interleave("post", targets, a.reps, lambda t: run_wrk(t, a, "/echo", lua_post), show_wrk)
            if "lat" in scen:
                print("== latency at ~200 req/s", flush=True)
                lt = [t for t in targets if t.name != "naive"]
                interleave("lat", lt, a.reps,
                           lambda t: run_wrk(t, a, "/small", lua_rate, duration=a.lat_duration, conns=4), show_wrk)
            if "sse1k" in scen:
                print("== sse K=1000 x %d events @100ms" % a.sse_events, flush=True)
                interleave("sse1k", targets, a.reps,
                           lambda t: run_sse(t, a, 1000, a.sse_events, 100, 60), show_sse)
            if "sse10k" in scen:
                print("== sse K=%d x %d events @1000ms" % (big_k, a.sse_big_events), flush=True)
                bt = [t for t in targets if t.name in ("direct", "nginx", "proxy")]
                for t in bt:
                    time.sleep(1.0)
                    r = run_sse(t, a, big_k, a.sse_big_events, 1000, 60 + a.sse_big_events, getattr(a, "sse_big_stagger_ms", None))
                    record("sse10k", t, r, 0)
                    print("  [sse10k] %-9s %s steal=%.0f%%" % (t.name, show_sse(r), r.get("steal", 0)), flush=True)
            if "burst" in scen:
                print("== burst: 1,000 SSE streams at once into the shipped defaults", flush=True)
                bt = [t for t in targets if t.name in ("direct", "nginx")]
                bt += start_targets(PORTS["direct"], "burst", ["proxy-defaults"])
                for rep in range(a.reps):
                    for t in bt:
                        time.sleep(0.5)
                        r = run_sse(t, a, 1000, 4, 500, 60, stagger_ms=0)
                        record("burst", t, r, rep)
                        print("  [burst] %-14s ok=%s failed=%s %s" % (t.name, r.get("ok"), r.get("failed"), show_sse(r)), flush=True)
                stop(bt[-1].proc)
            raw["access_log"] = access_log_report(rd, "proxy-app")
            for t in targets:
                if t.proc:
                    stop(t.proc)
            stop(up)
            time.sleep(0.5)

        # ------------------------------------------------ phase 1b: stream scale (fresh processes per run)
        if "streams" in scen:
            # as sse10k: direct, nginx, proxy; a proxy variant (proxy-min, proxy-base, ...) only when --only names it
            cols = [Target(n, PORTS[n]) for n in only if n in (STREAMS_COLUMNS if a.only else ("direct", "nginx", "proxy"))]
            print("== streams: K=%s x %d events @1 s, %.0f%% LangGraph runs with token usage; columns %s" % (
                ",".join(str(k) for _, k in streams_ks), a.streams_events, 100 * a.streams_usage_share,
                ",".join(t.name for t in cols)), flush=True)
            up = start([py, os.path.join(HERE, "upstream.py"), "--port", str(PORTS["direct"])],
                       os.path.join(rd, "upstream-streams.log"), a.upstream_cpus)
            wait_port(PORTS["direct"], proc=up)
            for rep in range(a.reps):
                for k_req, k in streams_ks:
                    i = rep % len(cols) if cols else 0
                    for t in cols[i:] + cols[:i]:
                        run_one("streams", t, rep, lambda t, k_req=k_req, k=k: streams_run(t.name, k_req, k),
                                show_streams)
            stop(up)
            time.sleep(0.5)

        # ------------------------------------------------ phase 1c: set-up cost per stream
        if "setup" in scen:
            names = [n for n in only if n in (STREAMS_COLUMNS if a.only else ("nginx", "proxy")) and n != "direct"]
            print("== setup: %d short streams (2 events @200 ms) opened over 0.5 s; columns %s" % (
                a.setup_k, ",".join(names)), flush=True)
            up = start([py, os.path.join(HERE, "upstream.py"), "--port", str(PORTS["direct"])],
                       os.path.join(rd, "upstream-setup.log"), a.upstream_cpus)
            wait_port(PORTS["direct"], proc=up)
            st = start_targets(PORTS["direct"], "setup", names)
            for t in st:
                run_sse(t, a, 300, 2, 50, 30, stagger_ms=200, usage_share=0.2)  # warm-up: code paths, pool
            interleave("setup", st, a.reps, lambda t: setup_run(t, a), show_setup)
            for t in st:
                stop(t.proc)
            stop(up)
            time.sleep(0.5)

        # ------------------------------------------------ phase 2: static upstream (capacity, soak)
        if "static" in scen or "soak" in scen:
            body = subprocess.run([py, "-c", "import sys; sys.path.insert(0, %r); import upstream; "
                                   "sys.stdout.write(upstream.SMALL.decode())" % HERE],
                                  capture_output=True, text=True, check=True).stdout
            sconf = os.path.join(rd, "static.conf")
            with open(sconf, "w") as f:
                f.write(static_conf(rd, static_port, body))
            sup = start(["nginx", "-p", rd, "-c", sconf, "-e", os.path.join(rd, "static_error.log")],
                        os.path.join(rd, "static.log"), a.upstream_cpus)
            wait_port(static_port, proc=sup)
            if "static" in scen:
                print("== static upstream: proxy capacity (CPU0 saturated)", flush=True)
                st = start_targets(static_port, "static", [n for n in only if n != "direct"])
                for t in st:
                    run_wrk(t, a, "/small", duration=1)
                interleave("static", st, a.reps, lambda t: run_wrk(t, a, "/small"), show_wrk)
                for t in st:
                    stop(t.proc)
            if "soak" in scen and "proxy" in only:
                print("== soak: %d requests through proxy (static upstream)" % a.soak_requests, flush=True)
                raw["soak"] = soak(a, start_proxy, soak_port, soak_admin, static_port, rd)
                save()
            stop(sup)

        raw["elapsed_s"] = time.time() - t_start
        report = build_report(raw, a)
        raw["report"] = report
        save()
        with open(os.path.join(a.out, "table.txt"), "w") as f:
            f.write(report + "\n")
        print("\n" + report)
        print("results: %s  (%.0f s)" % (a.out, raw["elapsed_s"]))
        if a.docs:
            write_docs(a.docs, raw, report, a)
            print("wrote %s" % a.docs)
    finally:
        stop_all()
        for f in os.listdir(rd):  # access logs of 1M requests are ~300 MB: keep only the numbers
            if f.endswith(".access.log"):
                os.unlink(os.path.join(rd, f))


def soak(a, start_proxy, port, admin, up_port, rd):
    p = start_proxy("proxy-soak", port, admin, up_port, False, "static")
    t = Target("proxy-soak", port, p)
    time.sleep(1.0)
    res = {"rss_idle_mb": status_kb(t.pids(), "VmRSS") / 1024.0, "chunks": []}
    w = run_wrk(t, a, "/small", duration=3)  # warm-up: first-time allocations, pools
    res["warmup_requests"] = w["requests"]
    res["rss_warm_mb"] = status_kb(t.pids(), "VmRSS") / 1024.0
    done, cpu, wall = 0, 0.0, 0.0
    errs = 0
    for _ in range(200):  # bounded; normally ~8 chunks
        if done >= a.soak_requests:
            break
        rate = (done / wall) if wall else 8000.0
        d = max(2, min(a.soak_chunk, int((a.soak_requests - done) / max(rate, 1000.0)) + 1))
        r = run_wrk(t, a, "/small", duration=d)
        done += r["requests"]
        cpu += r["proxy_cpu_s"]
        wall += r["wall_s"]
        errs += r["non2xx"] + r["sock_err"]
        rss = status_kb(t.pids(), "VmRSS") / 1024.0
        res["chunks"].append({"requests": done, "rps": r["rps"], "rss_mb": rss, "cpu0": r["cpu0_busy"],
                              "steal": r["steal"], "cpu_us_per_req": r["cpu_us_per_req"]})
        print("  [soak] %8d requests  %s req/s  RSS %.1f MB  %s us/req  cpu0 %s%%" % (
            done, fmt(r["rps"]), rss, fmt(r["cpu_us_per_req"]), fmt(r["cpu0_busy"])), flush=True)
    time.sleep(1.0)
    res.update(requests=done, errors=errs, rss_after_mb=status_kb(t.pids(), "VmRSS") / 1024.0,
               cpu_us_per_req=1e6 * cpu / done if done else None, rps=done / wall if wall else None)
    res["growth_vs_warm_pct"] = 100.0 * (res["rss_after_mb"] / res["rss_warm_mb"] - 1)
    res["growth_vs_idle_pct"] = 100.0 * (res["rss_after_mb"] / res["rss_idle_mb"] - 1)
    res["access_log"] = access_log_report(rd, "proxy-soak-static")
    stop(p)
    return res


def import_report(rd):
    """Modules the proxy process imported (PYTHONPROFILEIMPORTTIME on its stderr at start-up)."""
    try:
        with open(os.path.join(rd, "proxy-app.log")) as f:
            mods = [ln.rsplit("|", 1)[-1].strip() for ln in f if ln.startswith("import time:")
                    and "|" in ln and "imported package" not in ln]
    except OSError:
        return None
    mods = [m for m in mods if m]
    tops = sorted({m.strip().split(".")[0] for m in mods})
    return {"modules": len(mods), "langgraph_loaded": any(m.startswith("langgraph") or m.startswith("langchain")
                                                            for m in tops),
            "top_level": tops}


def access_log_report(rd, stem):
    path = os.path.join(rd, "%s.access.log" % stem)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.readline()
        lines = None
        if size < 50_000_000:
            with open(path, "rb") as f:
                lines = sum(1 for _ in f)
        return {"bytes": size, "lines": lines, "sample": head.decode("utf-8", "replace").strip()}
    except OSError:
        return None


def host_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = "%.1f GiB" % (int(f.readline().split()[1]) / 1048576)
    except (OSError, ValueError):
        pass

    def ver(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "mem": mem,
            "python": platform.python_version(), "nginx": ver(["nginx", "-v"]), "wrk": ver(["wrk", "-v"]),
            "os": ver(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "loadavg_start": open("/proc/loadavg").read().split()[:3]}


# ----------------------------------------------------------------------------- report
TARGETS = [  # (label, test on the summary dict S, shown value)
    ("CPU per small request <= 100 us (get, proxy)", lambda S: S["get_us"]["proxy"] <= 100, lambda S: "%.0f us" % S["get_us"]["proxy"]),
    ("CPU per small request <= 2x nginx (get)", lambda S: S["get_us"]["proxy"] <= 2 * S["get_us"]["nginx"],
     lambda S: "%.2fx" % (S["get_us"]["proxy"] / S["get_us"]["nginx"])),
    ("CPU per small request <= naive/3 (get)", lambda S: S["get_us"]["proxy"] * 3 <= S["get_us"]["naive"],
     lambda S: "naive/proxy = %.2fx" % (S["get_us"]["naive"] / S["get_us"]["proxy"])),
    (">= 10,000 req/s per core (static, CPU0 saturated)", lambda S: S["cap"]["proxy"] >= 10000, lambda S: "%.0f req/s" % S["cap"]["proxy"]),
    ("added latency p50 <= 0.5 ms at 200 req/s", lambda S: S["lat_add"]["proxy"][0] <= 0.5, lambda S: "%.3f ms" % S["lat_add"]["proxy"][0]),
    ("added latency p99 <= 2 ms at 200 req/s", lambda S: S["lat_add"]["proxy"][1] <= 2.0, lambda S: "%.3f ms" % S["lat_add"]["proxy"][1]),
    ("SSE 1k: p99 forwarding delay <= 1.5x nginx", lambda S: S["sse_p99"]["proxy"] <= 1.5 * S["sse_p99"]["nginx"],
     lambda S: "%.2fx (%.2f vs %.2f ms)" % (S["sse_p99"]["proxy"] / S["sse_p99"]["nginx"], S["sse_p99"]["proxy"], S["sse_p99"]["nginx"])),
    ("SSE 10k: no event lost", lambda S: S["big"]["proxy"]["events"] == S["big"]["proxy"]["expected"],
     lambda S: "%d/%d streams=%d" % (S["big"]["proxy"]["events"], S["big"]["proxy"]["expected"], S["big"]["proxy"]["streams"])),
    ("SSE 10k: proxy peak RSS <= 300 MiB", lambda S: S["big"]["proxy"]["peak"] <= 300, lambda S: "%.0f MiB" % S["big"]["proxy"]["peak"]),
    ("idle RSS <= 45 MiB", lambda S: S["idle"]["proxy"] <= 45, lambda S: "%.1f MiB" % S["idle"]["proxy"]),
    ("no LangGraph in the proxy process", lambda S: not S["imports"]["langgraph_loaded"], lambda S: "%d modules" % S["imports"]["modules"]),
    ("RSS growth over the soak <= 5% (vs after warm-up)", lambda S: S["soak"]["growth_vs_warm_pct"] <= 5,
     lambda S: "%+.1f%% over %d req" % (S["soak"]["growth_vs_warm_pct"], S["soak"]["requests"])),
    ("all features <= 1.3x proxy-min (get CPU/req)", lambda S: S["get_us"]["proxy"] <= 1.3 * S["get_us"]["proxy-min"],
     lambda S: "%.2fx" % (S["get_us"]["proxy"] / S["get_us"]["proxy-min"])),
    # against the previous release in the same run (column proxy-base, BENCH_BASELINE)
    ("no regression: get CPU/req <= 1.05x proxy-base", lambda S: S["get_us"]["proxy"] <= 1.05 * S["get_us"]["proxy-base"],
     lambda S: "%.2fx (%.1f vs %.1f us)" % (S["get_us"]["proxy"] / S["get_us"]["proxy-base"], S["get_us"]["proxy"], S["get_us"]["proxy-base"])),
    ("no regression: SSE 1k p99 <= 1.05x proxy-base", lambda S: S["sse_p99"]["proxy"] <= 1.05 * S["sse_p99"]["proxy-base"],
     lambda S: "%.2fx (%.2f vs %.2f ms)" % (S["sse_p99"]["proxy"] / S["sse_p99"]["proxy-base"], S["sse_p99"]["proxy"], S["sse_p99"]["proxy-base"])),
    ("burst into the defaults: every stream completes", lambda S: S["burst"]["proxy-defaults"][1] == 0,
     lambda S: "ok %d failed %d (nginx ok %d failed %d)" % (S["burst"]["proxy-defaults"] + S["burst"]["nginx"])),
]


def errors_of(runs):
    """The distinct client errors of some runs, shortened for a table cell."""
    seen = set()
    for r in runs:
        seen.update(str(e) for e in (r.get("errors") or []))
        if r.get("error"):
            seen.add(str(r["error"])[:40])
    return ",".join(sorted(seen))[:20] or "none"


def failures_of(runs):
    """The commonest kind of failed stream over some runs ("4368 503 circuit_open"), for a cell."""
    kinds = {}
    for r in runs:
        for k, n in (r.get("failures") or {}).items():
            kinds[k] = kinds.get(k, 0) + n
    if not kinds:
        return "none"
    k = max(kinds, key=kinds.get)
    return ("%d %s" % (kinds[k], k.replace("status ", "")))[:22] + ("+" if len(kinds) > 1 else "")


def streams_failed(r):
    """Streams of one run that failed; a run whose client reported nothing failed them all."""
    return (r.get("failed") or 0) if r.get("ok") is not None else (r.get("streams") or 0)


def _kname(k):
    return "%dk" % (k // 1000) if k % 1000 == 0 else str(k)


def streams_targets(S):
    """Stream-scale targets, in the TARGETS style, for the sizes the targets name (5k, 10k; n/a when
    not run) and for any other size that was run. Figures are medians over the reps."""
    out = []
    for kr in sorted(set(STREAMS_TARGET_K) | set(S.get("streams", {}))):
        def P(S, key, col="proxy", kr=kr):
            return S["streams"][kr][col][key]
        n = "streams %s" % _kname(kr)
        out += [
            ("%s: steady p99 delay <= 1.5x nginx" % n, lambda S, P=P: P(S, "p99") <= 1.5 * P(S, "p99", "nginx"),
             lambda S, P=P: "%.2fx (%.1f vs %.1f ms)" % (P(S, "p99") / P(S, "p99", "nginx"), P(S, "p99"),
                                                         P(S, "p99", "nginx"))),
            ("%s: peak RSS <= nginx" % n, lambda S, P=P: P(S, "peak") <= P(S, "peak", "nginx"),
             lambda S, P=P: "%.2fx (%.0f vs %.0f MiB)" % (P(S, "peak") / P(S, "peak", "nginx"), P(S, "peak"),
                                                          P(S, "peak", "nginx"))),
            ("%s: every event delivered" % n,
             lambda S, P=P: P(S, "expected") > 0 and P(S, "events") == P(S, "expected") and P(S, "failed") == 0,
             lambda S, P=P, kr=kr: "%d/%d events, %d streams failed (K=%d, %d reps)" % (
                 P(S, "events"), P(S, "expected"), P(S, "failed"), S["streams"][kr]["k"], P(S, "reps"))),
            ("%s: TTFE p99 <= nginx" % n, lambda S, P=P: P(S, "ttfe99") <= P(S, "ttfe99", "nginx"),
             lambda S, P=P: "%.2fx (%.0f vs %.0f ms)" % (P(S, "ttfe99") / P(S, "ttfe99", "nginx"), P(S, "ttfe99"),
                                                         P(S, "ttfe99", "nginx"))),
            ("%s: RSS per stream <= 12 KiB over idle" % n, lambda S, P=P: P(S, "per_stream") <= 12,
             lambda S, P=P: "%.1f KiB (nginx %s)" % (P(S, "per_stream"), fmt(P(S, "per_stream", "nginx"), 1))),
        ]
    return out


def summary(raw):
    R = raw["runs"]

    def medk(sname, col, key):
        return med([r.get(key) for r in R.get(sname, {}).get(col, [])])

    S = {"get_us": {}, "cap": {}, "lat_add": {}, "sse_p99": {}, "big": {}, "idle": raw.get("idle_rss_mb", {}),
         "imports": raw.get("imports") or {}, "soak": raw.get("soak") or {}}
    for c in ALL_COLUMNS + EXTRA_COLUMNS:
        S["get_us"][c] = medk("get", c, "cpu_us_per_req")
        st = R.get("static", {}).get(c, [])
        S["cap"][c] = med([r["rps"] for r in st if (r.get("cpu0_busy") or 0) >= 85])
        S["sse_p99"][c] = medk("sse1k", c, "steady_p99_ms")
        # added latency: per rep, column minus direct of the same rep; then the median
        lat = R.get("lat", {})
        adds50, adds99 = [], []
        for r in lat.get(c, []):
            d = [x for x in lat.get("direct", []) if x["rep"] == r["rep"]]
            if d and r.get("p50_ms") is not None and d[0].get("p50_ms") is not None:
                adds50.append(r["p50_ms"] - d[0]["p50_ms"])
                adds99.append(r["p99_ms"] - d[0]["p99_ms"])
        S["lat_add"][c] = (med(adds50), med(adds99), rng(adds50), rng(adds99))
        bu = R.get("burst", {}).get(c)
        if bu:
            S.setdefault("burst", {})[c] = (sum(r.get("ok") or 0 for r in bu), sum(r.get("failed") or 0 for r in bu))
        b = R.get("sse10k", {}).get(c)
        if b:
            S["big"][c] = {"events": b[0].get("events") or 0, "expected": b[0].get("expected") or 0,
                           "streams": b[0].get("streams") or 0, "ok": b[0].get("ok"),
                           "peak": b[0].get("peak_rss_mb"), "failed": b[0].get("failed"),
                           "p99": b[0].get("steady_p99_ms"), "ttfb99": b[0].get("ttfb_p99_ms"),
                           "cpu_pct": b[0].get("proxy_cpu_pct"), "errors": b[0].get("errors") or b[0].get("error")}
    S["streams"] = {}
    for c, runs in R.get("streams", {}).items():
        for kr in sorted({r.get("k_req") for r in runs if r.get("k_req") is not None}):
            rs = [r for r in runs if r.get("k_req") == kr]
            S["streams"].setdefault(kr, {"k": rs[0].get("k")})[c] = {
                "p99": med([r.get("steady_p99_ms") for r in rs]), "ttfe99": med([r.get("ttfb_p99_ms") for r in rs]),
                "peak": med([r.get("peak_rss_mb") for r in rs]), "per_stream": med([r.get("mem_per_stream_kib") for r in rs]),
                "events": sum(r.get("events") or 0 for r in rs), "expected": sum(r.get("expected") or 0 for r in rs),
                "failed": sum(streams_failed(r) for r in rs),
                "reps": len(rs)}
    return S


def build_report(raw, a):
    R = raw["runs"]
    cols = [c for c in ALL_COLUMNS + EXTRA_COLUMNS if any(c in R.get(s, {}) for s in R) or c in raw.get("idle_rss_mb", {})]
    L = []
    w = 22

    def row(label, vals):
        L.append(("%-34s" % label) + "".join(("%" + str(w) + "s") % v for v in vals))

    def section(title):
        L.append("")
        L.append("-- " + title)
        row("", cols)

    def medc(rs, c, key):
        """Median of ``key`` over column ``c``'s runs in ``rs`` (column -> runs; a column may be absent)."""
        return med([r.get(key) for r in rs.get(c, ())])

    def vs_nginx(rs, key, nd=2):
        return [fmt(ratio(medc(rs, c, key), medc(rs, "nginx", key)), nd) if rs.get(c) else "-" for c in cols]

    def wrk_rows(sname, label):
        rs = R.get(sname, {})
        if not rs:
            return
        section("%s (median [min-max] of %d interleaved reps)" % (label, max(len(v) for v in rs.values())))
        row("proxy CPU us/request", [mm(rs.get(c, []), "cpu_us_per_req") for c in cols])
        d = med([r["rps"] for r in rs.get("direct", [])])
        n = med([r["rps"] for r in rs.get("nginx", [])])
        nus = med([r.get("cpu_us_per_req") for r in rs.get("nginx", [])])
        row("  CPU/req x nginx", [fmt(ratio(med([r.get("cpu_us_per_req") for r in rs.get(c, [])]), nus), 2) for c in cols])
        row("req/s", [mm(rs.get(c, []), "rps") for c in cols])
        row("  req/s x direct", [fmt(ratio(med([r["rps"] for r in rs.get(c, [])]), d), 2) for c in cols])
        row("  req/s x nginx", [fmt(ratio(med([r["rps"] for r in rs.get(c, [])]), n), 2) for c in cols])
        row("p50 / p99 ms (wrk, -c%d)" % (4 if sname == "lat" else a.conns),
            ["%s / %s" % (fmt(med([r["p50_ms"] for r in rs.get(c, [])]), 2), fmt(med([r["p99_ms"] for r in rs.get(c, [])]), 2)) for c in cols])
        row("kernel share of proxy CPU %", [fmt(100 * med([r.get("sys_share") for r in rs.get(c, [])] or [None])) if c in rs and med([r.get("sys_share") for r in rs.get(c, [])]) is not None else "-" for c in cols])
        row("CPU0 busy % (proxy core)", [fmt(med([r["cpu0_busy"] for r in rs.get(c, [])])) for c in cols])
        row("errors (non-2xx + socket)", [str(sum(r["non2xx"] + r["sock_err"] for r in rs.get(c, []))) if c in rs else "-" for c in cols])

    S = summary(raw)
    L.append("== sidecar benchmark %s  (%s, %d vCPU, kernel %s; proxy pinned to CPU%s, upstream+load CPU%s)" % (
        raw["started"], raw["host"]["cpu"], raw["host"]["nproc"], raw["host"]["kernel"], a.proxy_cpus, a.upstream_cpus))
    wrk_rows("get", "GET /small, aiohttp upstream, wrk -t1 -c%d %ds" % (a.conns, a.duration))
    wrk_rows("post", "POST /echo 16 KiB, wrk -t1 -c%d %ds" % (a.conns, a.duration))
    if R.get("lat"):
        section("latency at a fixed ~200 req/s (wrk -c4, 20 ms pause per connection, %ds)" % a.lat_duration)
        lat = R["lat"]
        row("achieved req/s", [mm(lat.get(c, []), "rps") for c in cols])
        row("p50 ms", [mm(lat.get(c, []), "p50_ms", 3) for c in cols])
        row("p99 ms", [mm(lat.get(c, []), "p99_ms", 3) for c in cols])
        row("added p50 ms over direct", ["%s [%s..%s]" % (fmt(S["lat_add"][c][0], 3), fmt(S["lat_add"][c][2][0], 3), fmt(S["lat_add"][c][2][1], 3))
                                         if S["lat_add"][c][0] is not None and c != "direct" else "-" for c in cols])
        row("added p99 ms over direct", ["%s [%s..%s]" % (fmt(S["lat_add"][c][1], 3), fmt(S["lat_add"][c][3][0], 3), fmt(S["lat_add"][c][3][1], 3))
                                         if S["lat_add"][c][1] is not None and c != "direct" else "-" for c in cols])
        row("proxy CPU us/request", [mm(lat.get(c, []), "cpu_us_per_req") for c in cols])
    if R.get("sse1k"):
        rs = R["sse1k"]
        section("SSE 1,000 streams x %d events @100 ms (10k events/s; delay = client recv - upstream send; "
                "first 5 events/stream skipped)" % a.sse_events)
        row("p50 delay ms", [mm(rs.get(c, []), "steady_p50_ms", 2) for c in cols])
        row("p99 delay ms", [mm(rs.get(c, []), "steady_p99_ms", 2) for c in cols])
        row("  p99 x nginx", [fmt(ratio(S["sse_p99"][c], S["sse_p99"]["nginx"]), 2) for c in cols])
        row("  p99 x direct", [fmt(ratio(S["sse_p99"][c], S["sse_p99"]["direct"]), 2) for c in cols])
        row("time to first event p50 / p99 ms", ["%s / %s" % (fmt(med([r.get("ttfb_p50_ms") for r in rs.get(c, [])]), 1),
                                                              fmt(med([r.get("ttfb_p99_ms") for r in rs.get(c, [])]), 1)) for c in cols])
        row("events received / expected", ["%d/%d" % (sum(r.get("events") or 0 for r in rs.get(c, [])),
                                                      sum(r.get("expected") or 0 for r in rs.get(c, []))) if c in rs else "-" for c in cols])
        row("proxy peak RSS MiB", [mm(rs.get(c, []), "peak_rss_mb", 1) for c in cols])
        row("proxy CPU us/event", [mm(rs.get(c, []), "cpu_us_per_event", 1) for c in cols])
    if R.get("sse10k"):
        section("SSE %d concurrent streams x %d events @1 s (1 run each)" % (raw["big_k"], a.sse_big_events))
        B = S["big"]
        row("events received / expected", ["%d/%d" % (B[c]["events"], B[c]["expected"]) if c in B else "-" for c in cols])
        row("streams ok / failed", ["%s/%s" % (B[c]["ok"], B[c]["failed"]) if c in B else "-" for c in cols])
        row("proxy peak RSS MiB", [fmt(B[c]["peak"], 1) if c in B else "-" for c in cols])
        row("p99 delay ms / TTFE p99 ms", ["%s / %s" % (fmt(B[c]["p99"], 1), fmt(B[c]["ttfb99"], 0)) if c in B else "-" for c in cols])
        row("proxy CPU %", [fmt(B[c]["cpu_pct"]) if c in B else "-" for c in cols])
    if R.get("burst"):
        rs = R["burst"]
        section("burst: 1,000 SSE streams opened at once (4 events @500 ms), proxy with shipped defaults")
        row("streams ok / failed (all reps)", ["%d/%d" % (sum(r.get("ok") or 0 for r in rs[c]), sum(r.get("failed") or 0 for r in rs[c]))
                                              if c in rs else "-" for c in cols])
        row("events received / expected", ["%d/%d" % (sum(r.get("events") or 0 for r in rs[c]), sum(r.get("expected") or 0 for r in rs[c]))
                                          if c in rs else "-" for c in cols])
        row("time to first event p99 ms", [mm(rs.get(c, []), "ttfb_p99_ms", 1) for c in cols])
        row("first errors", [",".join(sorted({e for r in rs[c] for e in (r.get("errors") or [])}))[:20] or "none"
                             if c in rs else "-" for c in cols])
    for kr in sorted(S["streams"]):
        rs = {c: [r for r in R["streams"].get(c, []) if r.get("k_req") == kr] for c in cols}
        reps = max(len(v) for v in rs.values())
        ev = getattr(a, "streams_events", None) or 0
        section("streams: %d concurrent SSE streams%s x %d events @1 s, %.0f%% LangGraph runs with token usage; "
                "a fresh warmed-up process per run (median [min-max] of %d reps)" % (
                    S["streams"][kr]["k"], "" if S["streams"][kr]["k"] == kr else " (%d asked, fd limit)" % kr, ev,
                    100 * (getattr(a, "streams_usage_share", 0) or 0), reps))

        row("streams ok / failed (all reps)", ["%d/%d" % (sum(r.get("ok") or 0 for r in rs[c]),
                                                          sum(streams_failed(r) for r in rs[c]))
                                               if rs[c] else "-" for c in cols])
        row("events received / expected", ["%d/%d" % (sum(r.get("events") or 0 for r in rs[c]),
                                                      sum(r.get("expected") or 0 for r in rs[c])) if rs[c] else "-" for c in cols])
        row("p50 delay ms", [mm(rs[c], "steady_p50_ms", 2) for c in cols])
        row("p99 delay ms", [mm(rs[c], "steady_p99_ms", 2) for c in cols])
        row("  p99 x nginx", vs_nginx(rs, "steady_p99_ms"))
        row("p99 delay ms mid-stream (no last 2 events)", [mm(rs[c], "mid_p99_ms", 2) for c in cols])
        row("  mid-stream p99 x nginx", vs_nginx(rs, "mid_p99_ms"))
        row("time to first event p50 / p99 ms", ["%s / %s" % (fmt(medc(rs, c, "ttfb_p50_ms"), 1), fmt(medc(rs, c, "ttfb_p99_ms"), 1))
                                                 if rs[c] else "-" for c in cols])
        row("  TTFE p99 x nginx", vs_nginx(rs, "ttfb_p99_ms"))
        row("RSS before the run MiB", [mm(rs[c], "rss_before_mb", 1) for c in cols])
        row("peak RSS MiB", [mm(rs[c], "peak_rss_mb", 1) for c in cols])
        row("  peak RSS x nginx", vs_nginx(rs, "peak_rss_mb"))
        row("KiB per stream (peak-before)/K", [mm(rs[c], "mem_per_stream_kib", 1) for c in cols])
        row("proxy CPU us/event", [mm(rs[c], "cpu_us_per_event", 1) for c in cols])
        row("proxy CPU %", [mm(rs[c], "proxy_cpu_pct") for c in cols])
        # LLM usage the proxy counted (its /metrics, a fresh process per run) against what the usage
        # streams carried: bench/upstream.py sends 7 input tokens per call and 1 output token per event
        llm = {c: [r for r in rs[c] if r.get("llm")] for c in cols}
        row("LLM calls counted / usage streams", ["%d/%d" % (sum(r["llm"]["calls"] for r in llm[c]),
                                                             sum(r.get("usage_streams") or 0 for r in llm[c]))
                                                  if llm[c] else "-" for c in cols])
        row("LLM tokens in+out / carried", ["%d/%d" % (sum(r["llm"]["input"] + r["llm"]["output"] for r in llm[c]),
                                                       sum((r.get("usage_streams") or 0) * USAGE_INPUT_TOKENS
                                                           + (r.get("usage_events") or 0) for r in llm[c]))
                                            if llm[c] else "-" for c in cols])
        row("LLM events unparsed", [str(sum(r["llm"]["unparsed"] for r in llm[c])) if llm[c] else "-" for c in cols])
        row("first errors", [errors_of(rs[c]) if rs[c] else "-" for c in cols])
        row("most failed streams (all reps)", [failures_of(rs[c]) if rs[c] else "-" for c in cols])
    if R.get("setup"):
        rs = R["setup"]
        section("setup: %d short SSE streams (request, 2 events 200 ms apart, end) opened over 0.5 s, "
                "a warmed-up process per column (median [min-max] of %d reps)" % (
                    getattr(a, "setup_k", 0), max(len(v) for v in rs.values())))
        row("streams ok / failed (all reps)", ["%d/%d" % (sum(r.get("ok") or 0 for r in rs[c]),
                                                          sum(streams_failed(r) for r in rs[c]))
                                               if c in rs else "-" for c in cols])
        row("CPU us per stream", [mm(rs.get(c, []), "cpu_us_per_stream", 1) for c in cols])
        row("  x nginx", vs_nginx(rs, "cpu_us_per_stream"))
        row("kernel share of that CPU %", [fmt(100 * medc(rs, c, "sys_share")) if medc(rs, c, "sys_share") is not None
                                           else "-" for c in cols])
        row("user-space CPU us per stream", [fmt(med([r["cpu_us_per_stream"] * (1 - r["sys_share"]) for r in rs[c]
                                                      if r.get("cpu_us_per_stream") and r.get("sys_share") is not None]), 1)
                                             if c in rs else "-" for c in cols])
        row("time to first event p50 / p99 ms", ["%s / %s" % (fmt(medc(rs, c, "ttfb_p50_ms"), 1),
                                                              fmt(medc(rs, c, "ttfb_p99_ms"), 1))
                                                 if c in rs else "-" for c in cols])
    wrk_rows("static", "capacity: GET /small, static nginx upstream on CPU1, wrk -c%d %ds" % (a.conns, a.duration))
    if R.get("static"):
        row("capacity req/s per core (CPU0>=85%)", [fmt(S["cap"].get(c)) for c in cols])
    if raw.get("idle_rss_mb"):
        section("memory")
        row("idle RSS MiB (process tree)", [fmt(raw["idle_rss_mb"].get(c), 1) for c in cols])
    sk = raw.get("soak")
    if sk:
        L.append("")
        L.append("-- soak: proxy (all features), static upstream: %d requests at %s req/s, %s us/req, %d errors" % (
            sk["requests"], fmt(sk["rps"]), fmt(sk["cpu_us_per_req"]), sk["errors"]))
        L.append("   RSS MiB idle %.1f -> after 3 s warm-up %.1f -> after soak %.1f  (growth %+.1f%% vs warm-up, %+.1f%% vs idle)" % (
            sk["rss_idle_mb"], sk["rss_warm_mb"], sk["rss_after_mb"], sk["growth_vs_warm_pct"], sk["growth_vs_idle_pct"]))
        L.append("   RSS trajectory: " + " ".join("%dk:%.1f" % (c["requests"] // 1000, c["rss_mb"]) for c in sk["chunks"]))
    L.append("")
    L.append("-- targets (same-run ratios)")
    for label, test, show in TARGETS + streams_targets(S):
        try:
            ok = "PASS" if test(S) else "FAIL"
            val = show(S)
        except (KeyError, TypeError, ZeroDivisionError, IndexError):
            ok, val = "n/a", "not measured"
        L.append("  %-4s %-52s %s" % (ok, label, val))
    steals = [r.get("steal", 0) for s in R.values() for rs in s.values() for r in rs]
    L.append("")
    L.append("host: steal %% of kept runs median %s max %s; %d runs re-done for steal > %.0f%%; total %.0f s" % (
        fmt(med(steals), 1), fmt(max(steals) if steals else None, 1), len(raw.get("discarded", [])), a.max_steal,
        raw.get("elapsed_s", 0)))
    if raw.get("access_log"):
        al = raw["access_log"]
        L.append("proxy access log (stdout -> file): %s lines, %.1f MB during phase 1" % (al.get("lines"), al["bytes"] / 1e6))
    return "\n".join(L)


def run_cmd(a):
    """The bench/run.sh command line a run's report names."""
    cmd = "bench/run.sh" + (" --quick" if a.quick else "")
    sc = getattr(a, "scenarios", None)
    if sc and sc != ",".join(DEFAULT_SCENARIOS):
        cmd += " --scenarios " + ("all" if sc == ",".join(ALL_SCENARIOS) else sc)
    return cmd


HAND_WRITTEN = "<!-- Hand-written below: bench/run.py keeps everything from this line on"


def write_docs(path, raw, report, a):
    h = raw["host"]
    prof = ""
    if a.profile_summary and os.path.exists(a.profile_summary):
        with open(a.profile_summary) as f:
            prof = f.read()
    tmpl_path = os.path.join(HERE, "benchmarks_template.md")
    with open(tmpl_path) as f:
        tmpl = f.read()
    sk = raw.get("soak") or {}
    al = raw.get("access_log") or {}
    out = tmpl.format(
        date=raw["started"], cpu=h["cpu"], nproc=h["nproc"], kernel=h["kernel"], mem=h["mem"], os=h["os"],
        python=h["python"], nginx=h["nginx"], wrk=h["wrk"], nofile=raw["nofile"], big_k=raw["big_k"],
        streams_events=getattr(a, "streams_events", None) or 20,
        elapsed="%.0f" % raw.get("elapsed_s", 0), report=report, profile=prof or "_(no profile summary found)_",
        access_sample=al.get("sample", "-"), reps=a.reps, soak_requests=sk.get("requests", "-"),
        cmd=run_cmd(a))
    if os.path.exists(path):
        # the analysis sections written by hand (round two, stream scale) survive a re-run
        with open(path) as f:
            old = f.read()
        at = old.find(HAND_WRITTEN)
        if at >= 0:
            out = out.rstrip("\n") + "\n\n" + old[at:]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main()
