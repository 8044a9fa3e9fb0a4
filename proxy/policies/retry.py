"""Retries only where they cannot run anything twice."""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque

from .. import errors as E

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


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
    """Repeats an attempt after a failure before any response reached the client, when safe:
    a connect failure (no byte reached the upstream) for any method; a reset or protocol error
    only for idempotent methods. POSTs that may have started a LangGraph run are never repeated.
    Attempts back off with jitter, stay inside the request deadline and the retry budget."""

    def __init__(self, next_handler, *, backoff: float, max_backoff: float, budget: RetryBudget, metrics):
        self.next = next_handler
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.budget = budget
        self.retries = metrics.retries

    async def __call__(self, request, ex):
        attempts = ex.route.attempts
        self.budget.request()
        if attempts <= 1:
            return await self.next(request, ex)
        n = 1
        while True:
            ex.attempts = n
            try:
                return await self.next(request, ex)
            except (E.UpstreamConnectError, E.UpstreamTimeout, E.UpstreamReset, E.UpstreamProtocolError) as e:
                if n >= attempts or ex.headers_sent or not self._safe(request, ex, e):
                    raise
                delay = min(self.max_backoff, self.backoff * (2 ** (n - 1))) * random.uniform(0.5, 1.5)
                loop = asyncio.get_running_loop()
                if ex.deadline is not None and loop.time() + delay >= ex.deadline:
                    raise
                if not self.budget.try_spend():
                    raise
                self.retries.labels(ex.route.name).inc()
                await asyncio.sleep(delay)
                n += 1

    @staticmethod
    def _safe(request, ex, e) -> bool:
        body_resendable = ex.body is not None or not request.body_exists
        connect = isinstance(e, E.UpstreamConnectError) or (isinstance(e, E.UpstreamTimeout) and e.kind == "connect")
        if connect:
            # nothing reached the upstream; a streamed body was not read yet either
            return body_resendable or not ex.sent_any
        if isinstance(e, E.UpstreamTimeout):
            return False  # an LLM that is slow now will be slow again; don't double the cost
        return ex.method in IDEMPOTENT and body_resendable
