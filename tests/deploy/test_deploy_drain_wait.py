"""deploy/docker/drain_wait.py: the agent's preStop waits for the proxy's in-flight gauges."""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployutil import DEPLOY

spec = importlib.util.spec_from_file_location("drain_wait", DEPLOY / "docker" / "drain_wait.py")
drain_wait = importlib.util.module_from_spec(spec)
spec.loader.exec_module(drain_wait)

SCRAPE = """# HELP sidecar_in_flight_requests x
# TYPE sidecar_in_flight_requests gauge
sidecar_in_flight_requests{{route="run_wait"}} {a}
sidecar_in_flight_requests{{route="other"}} 0.0
# TYPE sidecar_in_flight_streams gauge
sidecar_in_flight_streams {s}
sidecar_in_flight_requests_created 1.7e9
"""


def test_in_flight_sums_requests_and_streams():
    assert drain_wait.in_flight(SCRAPE.format(a="2.0", s="1.0")) == 3
    assert drain_wait.in_flight(SCRAPE.format(a="0.0", s="0.0")) == 0


@pytest.fixture
def fake_proxy():
    state = {"busy": 2, "polls": 0, "drains": [], "delay_left": 0.0}

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            state["drains"].append((self.path, state["polls"]))
            body = json.dumps({"state": "draining", "drain_delay_remaining_seconds": state["delay_left"]}).encode()
            self.send_response(202)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            state["polls"] += 1
            if state["polls"] >= 3:
                state["busy"] = 0
            body = SCRAPE.format(a=float(state["busy"]), s="0.0").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", state
    srv.shutdown()
    srv.server_close()


def test_waits_until_drained(fake_proxy):
    url, state = fake_proxy
    t0 = time.monotonic()
    assert drain_wait.wait(url, min_s=0.1, max_s=10, poll_s=0.05) == "drained"
    assert state["polls"] == 3 and time.monotonic() - t0 < 5


def test_gives_up_at_the_deadline(fake_proxy):
    url, state = fake_proxy
    state["polls"] = -10**9  # never drains
    t0 = time.monotonic()
    assert drain_wait.wait(url, min_s=0, max_s=0.5, poll_s=0.05) == "deadline"
    assert time.monotonic() - t0 < 2


def test_stops_when_the_proxy_is_gone():
    assert drain_wait.wait("http://127.0.0.1:9", min_s=0, max_s=30, poll_s=0.01) == "unreachable"
    assert drain_wait.main(["--admin", "http://127.0.0.1:9", "--min", "0", "--max", "1", "--poll", "0.01"]) == 0


def test_starts_the_drain_first_and_waits_out_the_drain_delay(fake_proxy):
    url, state = fake_proxy
    state["delay_left"] = 0.6
    t0 = time.monotonic()
    assert drain_wait.wait(url, min_s=0.1, max_s=10, poll_s=0.05) == "drained"
    assert state["drains"] == [("/drain", 0)], "POST /drain before any poll"
    assert time.monotonic() - t0 >= 0.6, "the proxy's remaining drain_delay, not only --min"


def test_no_drain_only_waits(fake_proxy):
    url, state = fake_proxy
    assert drain_wait.wait(url, min_s=0, max_s=10, poll_s=0.05, drain=False) == "drained"
    assert state["drains"] == []
