"""Load shedding and size limits: refuse at once, never queue without bound."""
from __future__ import annotations

from .. import errors as E
from ..exchange import until_end


class Counts:
    """In-flight requests and streams of the whole process. Lives in the Runtime, so a reload
    (which builds a new :class:`Limits`) never forgets what is running."""

    __slots__ = ("active", "streams")

    def __init__(self) -> None:
        self.active = 0
        self.streams = 0


class Limits:
    """Sheds with 503 above ``max_concurrent`` requests (or ``max_streams`` stream requests),
    413 for a declared body above ``max_body``, 431 for request headers above ``max_header``.
    Streamed bodies without a declared length are bounded by the forwarder as they pass."""

    def __init__(self, next_handler, *, counts: Counts, max_concurrent: int, max_streams: int | None,
                 max_body: int, max_header: int, metrics):
        self.next = next_handler
        self.counts = counts
        self.max_concurrent = max_concurrent
        self.max_streams = max_streams
        self.max_body = max_body
        self.max_header = max_header
        self.shed = metrics.shed

    def __call__(self, request, ex):
        counts = self.counts
        if counts.active >= self.max_concurrent:
            self.shed.labels("concurrency").inc()
            raise E.Shed("concurrency", f"more than limits.max_concurrent_requests ({self.max_concurrent}) "
                                        "requests in flight; retry shortly")
        clen = request.content_length
        if clen is not None and clen > self.max_body:
            self.shed.labels("body_too_large").inc()
            raise E.BodyTooLarge(f"request body of {clen} bytes exceeds limits.max_body_bytes ({self.max_body})")
        size = 0
        for k, v in request.raw_headers:
            size += len(k) + len(v) + 4
        if size > self.max_header:
            self.shed.labels("headers_too_large").inc()
            raise E.HeadersTooLarge(f"request headers of {size} bytes exceed limits.max_header_bytes ({self.max_header})")
        stream = self.max_streams is not None and _wants_stream(request, ex)
        if stream:
            if counts.streams >= self.max_streams:
                self.shed.labels("streams").inc()
                raise E.Shed("streams", f"more than limits.max_concurrent_streams ({self.max_streams}) streams open")
            counts.streams += 1
            ex.holds_stream = True
        counts.active += 1
        return until_end(self, request, ex)  # a stream holds its slots until its relay ends

    def end(self, request, ex, exc) -> None:
        """Give back the exchange's slots."""
        counts = self.counts
        counts.active -= 1
        if ex.holds_stream:
            ex.holds_stream = False
            counts.streams -= 1


def _wants_stream(request, ex) -> bool:
    if ex.route.run_kind == "stream":
        return True
    accept = request.headers.get("Accept", "")
    return "text/event-stream" in accept or request.headers.get("Upgrade", "").lower() == "websocket"
