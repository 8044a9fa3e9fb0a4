"""preStop hook of the agent container: start the proxy's drain, hold the agent up until it is done.

    python /opt/sidecar/drain_wait.py --min 5 --max 905 [--admin http://127.0.0.1:9090]

Why: in a pod the kubelet runs the app container's preStop first and sends it SIGTERM after (with
a native sidecar, the proxy only gets SIGTERM after the app has exited; with a classic sidecar both
get it together). So this hook is the first thing that learns the pod is terminating. It sends
``POST /drain`` to the proxy's admin port: from then on /readyz answers 503 and answers say
``Connection: close``, while new connections are still accepted for the proxy's drain_delay (the
endpoints need a moment to drop the pod). The proxy still carries client streams whose runs live
in the agent, so the agent must not stop before those streams end: the hook waits at least --min
seconds and at least what is left of the proxy's drain_delay, then until the proxy reports no
in-flight requests and no in-flight streams, at most --max seconds in total. It always exits 0: a
hook that fails must not turn a shutdown into a crash loop, and the termination grace period is the
hard bound anyway. Standard library only, so it runs in either image.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request

IN_FLIGHT = ("_in_flight_requests", "_in_flight_streams")


def in_flight(metrics_text: str, prefix: str = "sidecar") -> float:
    """Sum of the proxy's in-flight request and stream gauges in a Prometheus text scrape."""
    total = 0.0
    names = tuple(prefix + s for s in IN_FLIGHT)
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            total += float(line.rsplit(" ", 1)[-1] if "}" not in line else line.rsplit("}", 1)[1].split()[0])
    return total


def start_drain(admin: str) -> float:
    """POST /drain; returns the seconds of drain_delay the proxy has left (0 if it cannot be reached)."""
    req = urllib.request.Request(admin.rstrip("/") + "/drain", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return float(json.loads(resp.read()).get("drain_delay_remaining_seconds", 0))
    except (OSError, ValueError):
        return 0.0   # an older proxy, or none: the --min wait still covers endpoint removal


def wait(admin: str, min_s: float, max_s: float, poll_s: float = 1.0, prefix: str = "sidecar",
         clock=time.monotonic, sleep=time.sleep, drain: bool = True) -> str:
    """Start the drain, block until drained; returns why it stopped waiting: drained, deadline or unreachable."""
    start = clock()
    delay_left = start_drain(admin) if drain else 0.0
    sleep(min(max(min_s, delay_left), max_s))
    failures = 0
    while True:
        try:
            with urllib.request.urlopen(admin.rstrip("/") + "/metrics", timeout=2) as resp:
                busy = in_flight(resp.read().decode("utf-8", "replace"), prefix)
            failures = 0
        except OSError:
            # the proxy has already exited (classic sidecar) or is not up: nothing left to wait for
            failures += 1
            if failures >= 3:
                return "unreachable"
            busy = None
        if busy == 0:
            return "drained"
        if clock() - start + poll_s >= max_s:
            return "deadline"
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__ and __doc__.splitlines()[0])  # None under -OO (the proxy image)
    p.add_argument("--admin", default="http://127.0.0.1:9090")
    p.add_argument("--min", type=float, default=5.0, help="always wait this long (seconds)")
    p.add_argument("--max", type=float, default=905.0, help="never wait longer (seconds)")
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--prefix", default="sidecar")
    p.add_argument("--no-drain", action="store_true", help="only wait; do not POST /drain")
    a = p.parse_args(argv)
    why = wait(a.admin, a.min, a.max, a.poll, a.prefix, drain=not a.no_drain)
    print(f"drain_wait: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
