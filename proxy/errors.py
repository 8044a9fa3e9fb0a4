"""The one table that maps a failure to what the client sees.

Every error the proxy answers itself is JSON:
``{"error": {"type": "upstream_timeout", "message": "...", "request_id": "..."}}``.
"""
from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import ClientConnectionResetError

# what a write to a client that went away raises
CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ClientConnectionResetError)


class ProxyError(Exception):
    """Base of every failure the proxy turns into its own response.

    ``who`` names the side that ended the exchange (see :mod:`proxy.outcome`): ``upstream``
    (only these feed breakers and retries), ``proxy`` (it chose not to serve: sheds, an open
    breaker, no pool slot, shutdown; or its own bug) or ``client``.
    """
    status = 500
    type = "internal_error"
    who = "proxy"
    headers: tuple[tuple[str, str], ...] = ()
    # after this error the rest of the request (its body) is unread or its framing not trusted:
    # close the connection; ``stop_lingering`` also skips the server's lingering read of that body
    close_connection = False
    stop_lingering = False

    def __init__(self, message: str | None = None):
        super().__init__(message or self.default_message())

    def default_message(self) -> str:
        return self.type.replace("_", " ")


class UpstreamError(ProxyError):
    """Something the upstream did (or failed to do): the only failures breakers and retries see."""
    status, type, who = 502, "upstream_error", "upstream"


class UpstreamConnectError(UpstreamError):
    status, type = 502, "upstream_unreachable"
    kind = "connect"


class UpstreamReset(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""
    status, type = 502, "upstream_reset"
    kind = "reset"


class UpstreamProtocolError(UpstreamError):
    status, type = 502, "upstream_protocol_error"
    kind = "protocol"


class UpstreamTimeout(UpstreamError):
    """A timeout fired; ``kind`` is connect, first_byte, idle, event_idle, request or stream."""
    status, type = 504, "upstream_timeout"

    def __init__(self, kind: str, message: str | None = None):
        self.kind = kind
        if kind == "connect":
            self.status = 502  # nothing answered at all: unreachable, as a refused connect
        super().__init__(message or f"upstream {kind.replace('_', ' ')} timeout fired")


class UpgradeRefused(ProxyError):
    """The upstream answered a WebSocket upgrade with a plain HTTP status: that status is passed
    on (a 4xx is the client's doing, a 5xx the upstream's)."""
    type = "upstream_refused_upgrade"

    def __init__(self, status: int, message: str):
        self.status = status if 400 <= status <= 599 else 502
        self.who = "upstream" if self.status >= 500 else "client"
        super().__init__(f"{message} (status {status})")


class BreakerOpen(ProxyError):
    status, type = 503, "circuit_open"

    def __init__(self, breaker: str, retry_after: float):
        self.breaker = breaker
        self.headers = (("Retry-After", str(max(1, int(retry_after + 0.999)))),)
        super().__init__(f"circuit breaker {breaker!r} is open: the upstream is failing; retry later")


class Shed(ProxyError):
    """Load shedding: refused at once instead of queueing. The proxy's own capacity, never an
    upstream failure: not retried, not seen by any breaker, counted in ``shed_total{reason}``."""
    status, type = 503, "overloaded"
    headers = (("Retry-After", "1"),)

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class PoolExhausted(Shed):
    """No upstream connection became free within ``upstream.pool_timeout``."""
    type = "pool_exhausted"

    def __init__(self, message: str):
        super().__init__("pool_exhausted", message)


class ShuttingDown(ProxyError):
    """The proxy cut the exchange because its own shutdown grace ran out."""
    status, type = 503, "shutdown"
    headers = (("Retry-After", "1"),)


class ClientFault(ProxyError):
    """Caused by the client, not the upstream: never a circuit breaker failure."""
    who = "client"


class ClientGone(ClientFault):
    """The client went away (disconnect, or a write to it failed)."""
    status, type = 499, "client_disconnected"


class BodyTooLarge(ClientFault):
    status, type = 413, "body_too_large"
    close_connection = True


class HeadersTooLarge(ClientFault):
    status, type = 431, "headers_too_large"


class HeaderFieldTooLarge(ClientFault):
    status, type = 431, "header_field_too_large"


class UriTooLong(ClientFault):
    status, type = 414, "uri_too_long"


class BadRequest(ClientFault):
    status, type = 400, "bad_request"
    close_connection = stop_lingering = True


class VersionNotSupported(ClientFault):
    status, type = 505, "http_version_not_supported"
    close_connection = True


class ClientTimeout(ClientFault):
    """The client was too slow sending its request body."""
    status, type = 408, "client_timeout"
    # a client already too slow to send its body would keep its slot for lingering_time
    close_connection = stop_lingering = True


class ClientSlow(ClientFault):
    """The client did not read the answer in time: ``server.client_write_timeout`` (``kind``
    ``client_write``) or the request/stream deadline (``kind`` ``request``/``stream``) passed
    while the proxy was blocked writing to it. Its connection is aborted."""
    status, type = 504, "client_slow"

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def settled(exc: BaseException) -> BaseException:
    """``exc``, kept after what it means was decided (on an exchange, as the failure that ended
    it): without the tracebacks of it and the exceptions it chained to. A traceback holds every
    frame it went through, those frames hold the exchange, and the exchange would hold the
    exception: a reference cycle that keeps the whole exchange until a garbage collection finds it
    (tests/proxy/test_gc_cycles.py). Log with the traceback before, not after."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is not None and id(e) not in seen:
            seen.add(id(e))
            e.__traceback__ = None
            todo += (e.__cause__, e.__context__)
    return exc


def classify(exc: BaseException) -> tuple[int, str]:
    """(status, error type) for any exception; unknown ones are 500 internal_error."""
    if isinstance(exc, ProxyError):
        return exc.status, exc.type
    return 500, "internal_error"


def raw_response(err: ProxyError, request_id: str | None) -> bytes:
    """A whole HTTP/1.1 error response (closing the connection), for a transport written to
    directly, where no aiohttp response exists (a connection refused at accept, a malformed head)."""
    body = error_body(err.type, str(err), request_id)
    try:
        reason = HTTPStatus(err.status).phrase.encode()
    except ValueError:
        reason = b"Error"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n" % (err.status, reason)
    if request_id is not None:
        head += b"X-Request-ID: %s\r\n" % request_id.encode("latin-1")
    for k, v in err.headers:
        head += f"{k}: {v}\r\n".encode("latin-1")
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def error_body(status_type: str, message: str, request_id: str | None, **extra) -> bytes:
    err = {"type": status_type, "message": message, "request_id": request_id}
    err.update(extra)
    return json.dumps({"error": err}).encode()


def sse_error_event(status_type: str, message: str, request_id: str) -> bytes:
    """The final SSE event written when a stream fails after its headers were sent."""
    return b"event: error\r\ndata: " + json.dumps(
        {"error": status_type, "message": message, "request_id": request_id}).encode() + b"\r\n\r\n"
