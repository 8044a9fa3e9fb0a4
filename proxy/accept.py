"""The traffic server: aiohttp's low-level HTTP server plus the guards aiohttp lacks.

aiohttp has no limit on open connections and no deadline for a request head, so one slowloris
client could hold thousands of sockets. Here a connection beyond ``server.max_connections`` gets
a 503 and is closed at accept, and a request head not complete within ``header_read_timeout``
closes its connection.
"""
from __future__ import annotations

import json

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

_OVER_LIMIT_BODY = json.dumps({"error": {"type": "overloaded", "message":
                                         "too many open connections (server.max_connections)",
                                         "request_id": None}}).encode()
_OVER_LIMIT = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(_OVER_LIMIT_BODY)
               + _OVER_LIMIT_BODY)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with a deadline on each request head."""

    __slots__ = ("_head_timer", "_head_timeout", "_last_payload")

    def __init__(self, manager, *, head_timeout: float, **kwargs):
        super().__init__(manager, **kwargs)
        self._head_timer = None
        self._head_timeout = head_timeout
        self._last_payload = None

    def data_received(self, data: bytes) -> None:
        if self._payload_parser is not None or self._upgraded or not data:
            return super().data_received(data)
        lp = self._last_payload
        in_body = lp is not None and not lp.is_eof()  # body bytes of the current request
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._last_payload = self._messages[-1][1] if self._messages else None
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif not in_body and self._head_timer is None and not (self._force_close or self._close):
            # part of a request head: the rest must follow within the deadline
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.manager_note_slow()
        if self.transport is not None:
            self.transport.close()

    def manager_note_slow(self) -> None:
        cb = getattr(self._manager, "on_slow_client", None)
        if cb is not None:
            cb()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class GuardedServer(web.Server):
    """``web.Server`` with a connection cap and slow-head protection."""

    def __init__(self, handler, *, max_connections: int, head_timeout: float, on_shed=None,
                 on_slow_client=None, **kwargs):
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.on_shed = on_shed
        self.on_slow_client = on_slow_client

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, head_timeout=self.head_timeout, **self._kwargs)

    def connection_made(self, handler, transport) -> None:
        if len(self._connections) >= self.max_connections:
            transport.write(_OVER_LIMIT)
            transport.close()
            if self.on_shed is not None:
                self.on_shed()
        super().connection_made(handler, transport)


def make_server(rt, server_cfg) -> GuardedServer:
    shed = rt.metrics.shed
    return GuardedServer(
        rt.handle, handler_cancellation=True, access_log=None,
        max_connections=server_cfg.max_connections, head_timeout=server_cfg.header_read_timeout,
        on_shed=lambda: shed.labels("connections").inc(),
        on_slow_client=lambda: shed.labels("slow_client").inc(),
        keepalive_timeout=server_cfg.keepalive_timeout,
        max_line_size=server_cfg.max_line_bytes, max_field_size=server_cfg.max_field_bytes,
        read_bufsize=256 * 1024,
    )
