"""The main job on a laptop: the example agent behind the sidecar, offline, on localhost.

Starts ``python -m agent_app`` on 127.0.0.1:8123 and ``python -m proxy`` (traffic :8080, admin
:9090) with ``deploy/local.yaml``, waits until the proxy reports ready, prints what to try, and
stops both on Ctrl-C / SIGTERM. ``--smoke`` runs one request through and exits (used by CI).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_http(url: str, timeout: float, ok=(200,)) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="send one run through the proxy, then stop")
    ap.add_argument("--agent-port", type=int, default=8123)
    args = ap.parse_args()
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    agent = subprocess.Popen([sys.executable, "-m", "agent_app", "--host", "127.0.0.1", "--port", str(args.agent_port),
                              "--db", str(var / "agent.sqlite")], cwd=ROOT, env=env)
    proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(ROOT / "deploy" / "local.yaml")],
                             cwd=ROOT, env=env)
    procs = [proxy, agent]

    def stop(*_):
        for p in procs:  # proxy first: it drains, then the agent goes
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(0)))
    try:
        if not wait_http(f"http://127.0.0.1:{args.agent_port}/ok", 60) or not wait_http("http://127.0.0.1:9090/readyz", 60):
            print("agent app or proxy did not become ready; see the logs above", file=sys.stderr)
            return 1
        print("\nready: the example agent is behind the sidecar\n"
              "  traffic  http://127.0.0.1:8080   (LangGraph Server API: /runs/wait, /runs/stream, /threads, ...)\n"
              "  admin    http://127.0.0.1:9090   (/healthz /readyz /metrics /status)\n"
              "  try:     curl -s localhost:8080/runs/wait -H 'Content-Type: application/json' \\\n"
              "             -d '{\"assistant_id\":\"agent\",\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"What is 6*7?\"}]}}'\n",
              flush=True)
        if args.smoke:
            body = json.dumps({"assistant_id": "agent", "input": {"messages": [
                {"role": "user", "content": "Reply with the single word PONG."}]}}).encode()
            req = urllib.request.Request("http://127.0.0.1:8080/runs/wait", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.loads(r.read())
            text = answer["messages"][-1]["content"]
            print(f"smoke: /runs/wait through the proxy answered {text!r}")
            return 0 if "PONG" in text else 1
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
