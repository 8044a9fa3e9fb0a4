"""The deadline policy: fixes the request's total deadline once, across all attempts.

The timeouts themselves fire on the upstream connection (one timer per connection, armed by the
forwarder from ``ex.route.timeouts``); this layer decides the total deadline that retries, the
optional deadline header and writes to a slow client must respect.
"""
from __future__ import annotations


class Deadline:
    """Sets ``ex.deadline`` (loop time) from the route's ``request`` timeout, once per request."""

    def __init__(self, next_handler, loop):
        self.next = next_handler
        self.loop = loop

    def __call__(self, request, ex):
        # acts only before the next layer: a plain def returning its awaitable (see proxy/layers.py)
        if ex.deadline is None:
            total = ex.route.timeouts.request
            if total:
                ex.deadline = self.loop.time() + total
        return self.next(request, ex)
