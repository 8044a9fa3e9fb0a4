"""Retries only where they cannot run anything twice."""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque

from ..outcome import count_failure, retryable


class RetryBudget:
    """Retries may be at most ``ratio`` of requests over a 10 s window, plus ``min_per_second``
    always allowed, so a failing upstream is never hit with a retry storm."""

    WINDOW = 10

    def __init__(self, ratio: float, min_per_second: float, clock=time.monotonic):
        self.ratio = ratio
        self.floor = min_per_second * self.WINDOW
        self.clock = clock
        self._buckets: deque[list] = deque()  # [second, requests, retries]

    def _bucket(self) -> list:
        now = int(self.clock())
        b = self._buckets
        if not b or b[-1][0] != now:
            b.append([now, 0, 0])
            while b[0][0] <= now - self.WINDOW:
                b.popleft()
        return b[-1]

    def request(self) -> None:
        self._bucket()[1] += 1

    def try_spend(self) -> bool:
        cur = self._bucket()
        requests = sum(x[1] for x in self._buckets)
        retries = sum(x[2] for x in self._buckets)
        if retries < max(self.floor, self.ratio * requests):
            cur[2] += 1
            return True
        return False


class Retry:
    """Repeats an attempt after an upstream failure before any response reached the client, when
    :func:`proxy.outcome.retryable` says it is safe. ``route.attempts`` bounds how often the
    upstream may see the request in all (the forwarder's transparent retry on a stale pooled
    connection included: it advances ``ex.attempts`` too). Every failed attempt that is retried is
    counted by kind here; the last one is counted by telemetry. Attempts back off with jitter,
    stay inside the request deadline and the retry budget."""

    def __init__(self, next_handler, *, backoff: float, max_backoff: float, budget: RetryBudget, metrics):
        self.next = next_handler
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.budget = budget
        self.metrics = metrics
        self.retries = metrics.retries

    async def __call__(self, request, ex):
        attempts = ex.route.attempts
        self.budget.request()
        ex.attempts = 1
        if attempts <= 1:
            return await self.next(request, ex)
        while True:
            try:
                return await self.next(request, ex)
            except Exception as e:
                n = ex.attempts
                if n >= attempts or ex.headers_sent or not retryable(ex, e, ex.body is not None or not request.body_exists):
                    raise
                delay = min(self.max_backoff, self.backoff * (2 ** (n - 1))) * random.uniform(0.5, 1.5)
                loop = asyncio.get_running_loop()
                if ex.deadline is not None and loop.time() + delay >= ex.deadline:
                    raise
                if not self.budget.try_spend():
                    raise
                count_failure(self.metrics, ex.route.name, e)
                self.retries.labels(ex.route.name).inc()
                await asyncio.sleep(delay)
                ex.attempts = n + 1
