"""Garbage collection for thousands of long-lived streams.

CPython's automatic full collection runs whenever the objects that survived two young collections
have grown by a quarter since the last one. While thousands of streams open, that is a full pass
over every live stream's objects (~0.5 s at 5,000 streams), several times in a row, and every
stream's events wait for it: it was the largest part of the proxy's p99 event delay at stream scale
(docs/benchmarks.md, "Stream scale"). Yet the proxy's objects die by reference counting: an ended
exchange leaves nothing in reference cycles, whatever ended it (a failure's traceback is dropped
once the failure is recorded, ``errors.settled``; a closed upstream connection lets go of its
parser: tests/proxy/test_gc_cycles.py).

So, per process:
- start-up objects (modules, config, the metric registry) are frozen, never scanned again;
- the young generations are collected as CPython does, in small batches (``YOUNG_THRESHOLDS``): a
  young collection scans only what was allocated since the last one, so it stays short however many
  streams live. What a new stream keeps is scanned at most once in the youngest generation and once
  in the middle one, whatever the thresholds, yet smaller batches cost less in all (measured; likely
  because a small batch is scanned while it is still in the CPU's cache).
  (500, 1) instead of (1000, 10) took the collections' time in a 9,328-stream ramp from 0.14-0.20 s
  to 0.08-0.11 s and their longest pause from 4-9 ms to 1-2 ms in most ramps (docs/benchmarks.md,
  "Smaller young collections");
- the full collection never runs automatically: it runs every ``server.gc_full_interval`` (10 min),
  and only when anything reached the old generation since the last one. The cyclic garbage the proxy
  can hold is what it made in one interval; the pause is taken once per interval, not per burst.

``stats()`` (in ``/status``) shows what ran and how long the longest pause was.
"""
from __future__ import annotations

import asyncio
import gc
import time

YOUNG_THRESHOLDS = (500, 1)
_NEVER = 1 << 30          # gen-2 threshold: no automatic full collection

_pauses = {0: 0.0, 1: 0.0, 2: 0.0}
_max_pause = {0: 0.0, 1: 0.0, 2: 0.0}
_started = [0.0]


def _time(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    g = info["generation"]
    d = time.perf_counter() - _started[0]
    _pauses[g] += d
    if d > _max_pause[g]:
        _max_pause[g] = d


def setup() -> None:
    """At start-up, after every module is imported: freeze what exists, set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLDS[0], YOUNG_THRESHOLDS[1], _NEVER)
    if _time not in gc.callbacks:
        gc.callbacks.append(_time)


async def periodic(interval) -> None:
    """The full collection on a timer: ``interval()`` seconds after the last one (read every second,
    so a reload applies at once), and only when a young collection promoted anything since."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(1.0)
        if loop.time() - last >= interval():
            last = loop.time()
            if gc.get_count()[2] > 0:
                gc.collect(2)


def stats() -> dict:
    per_gen = gc.get_stats()
    return {
        "thresholds": list(gc.get_threshold()[:2]),
        "frozen_objects": gc.get_freeze_count(),
        "generations": [{"collections": s["collections"], "collected": s["collected"],
                         "uncollectable": s["uncollectable"], "pause_seconds_total": round(_pauses[g], 4),
                         "pause_seconds_max": round(_max_pause[g], 4)} for g, s in enumerate(per_gen)],
    }
