"""The one table that maps a failure to what the client sees.

Every error the proxy answers itself is JSON:
``{"error": {"type": "upstream_timeout", "message": "...", "request_id": "..."}}``.
"""
from __future__ import annotations

import json


class ProxyError(Exception):
    """Base of every failure the proxy turns into its own response."""
    status = 500
    type = "internal_error"
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str | None = None):
        super().__init__(message or self.default_message())

    def default_message(self) -> str:
        return self.type.replace("_", " ")


class UpstreamConnectError(ProxyError):
    status, type = 502, "upstream_unreachable"
    kind = "connect"


class UpstreamReset(ProxyError):
    """The upstream closed or reset the connection before the response was complete."""
    status, type = 502, "upstream_reset"
    kind = "reset"


class UpstreamProtocolError(ProxyError):
    status, type = 502, "upstream_protocol_error"
    kind = "protocol"


class UpstreamTimeout(ProxyError):
    """A timeout fired; ``kind`` is connect, first_byte, idle, event_idle, request or stream."""
    status, type = 504, "upstream_timeout"

    def __init__(self, kind: str, message: str | None = None):
        self.kind = kind
        if kind == "connect":
            self.status = 502  # nothing answered at all: unreachable, as a refused connect
        super().__init__(message or f"upstream {kind.replace('_', ' ')} timeout fired")


class BreakerOpen(ProxyError):
    status, type = 503, "circuit_open"

    def __init__(self, breaker: str, retry_after: float):
        self.breaker = breaker
        self.headers = (("Retry-After", str(max(1, int(retry_after + 0.999)))),)
        super().__init__(f"circuit breaker {breaker!r} is open: the upstream is failing; retry later")


class Shed(ProxyError):
    """Load shedding: refused at once instead of queueing."""
    status, type = 503, "overloaded"
    headers = (("Retry-After", "1"),)

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class ClientFault(ProxyError):
    """Caused by the client, not the upstream: never a circuit breaker failure."""


class ClientGone(ClientFault):
    """The client went away (disconnect, or a write to it failed)."""
    status, type = 499, "client_disconnected"


class BodyTooLarge(ClientFault):
    status, type = 413, "body_too_large"


class HeadersTooLarge(ClientFault):
    status, type = 431, "headers_too_large"


class BadRequest(ClientFault):
    status, type = 400, "bad_request"


class ClientTimeout(ClientFault):
    """The client was too slow sending its request body."""
    status, type = 408, "client_timeout"


def classify(exc: BaseException) -> tuple[int, str]:
    """(status, error type) for any exception; unknown ones are 500 internal_error."""
    if isinstance(exc, ProxyError):
        return exc.status, exc.type
    return 500, "internal_error"


def error_body(status_type: str, message: str, request_id: str, **extra) -> bytes:
    err = {"type": status_type, "message": message, "request_id": request_id}
    err.update(extra)
    return json.dumps({"error": err}).encode()


def sse_error_event(status_type: str, message: str, request_id: str) -> bytes:
    """The final SSE event written when a stream fails after its headers were sent."""
    return b"event: error\r\ndata: " + json.dumps(
        {"error": status_type, "message": message, "request_id": request_id}).encode() + b"\r\n\r\n"
