"""Stream scale: opening thousands of streams runs no full garbage collection (the pause that
held every stream's events: proxy/gcpolicy.py), and the streams leave no cycles for any collection
to find (tests/proxy/test_gc_cycles.py for every way an exchange ends); the full collection runs
on its timer. The real proxy, real streams, ``/status`` read over HTTP."""
from __future__ import annotations

import asyncio
import signal
import time

from proxy_harness import deep_merge
from test_capacity import sse_burst
from test_gc_cycles import gc_status

from proxy import gcpolicy


async def test_streams_open_without_a_full_collection_and_the_timer_runs_it(upstream, make_proxy):
    p = make_proxy(upstream.url, {"server": {"gc_full_interval": "1h"}, "upstream": {"max_connections": 1200},
                                  "limits": {"max_concurrent_requests": 1200}})
    before = await gc_status(p)
    assert before["thresholds"] == list(gcpolicy.YOUNG_THRESHOLDS)
    assert before["frozen_objects"] > 10_000, before    # start-up objects are never scanned again

    # 1,000 streams at once, each held ~1.5 s: their objects live through many young collections
    got = await sse_burst(p.url, 1000, "/sse?events=4&interval=0.5")
    assert got == {(200, 4): 1000}, got
    during = await gc_status(p)
    young = [during["generations"][g]["collections"] - before["generations"][g]["collections"] for g in (0, 1)]
    assert young[0] > 0 and young[1] > 0, during      # objects were promoted to the old generation...
    assert during["generations"][2]["collections"] == before["generations"][2]["collections"], during  # ...never scanned
    freed = sum(during["generations"][g]["collected"] - before["generations"][g]["collected"] for g in (0, 1))
    assert freed < 100, during                        # and the 1,000 ended streams left no cycles

    # a reload shortens the interval; the timer runs the full collection within about a second
    p.write_config(deep_merge(p.cfg, {"server": {"gc_full_interval": "1s"}}))
    p.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        after = await gc_status(p)
        if after["generations"][2]["collections"] > during["generations"][2]["collections"]:
            break
        assert time.monotonic() < deadline, after
        await asyncio.sleep(0.2)
    assert after["generations"][2]["pause_seconds_max"] > 0
