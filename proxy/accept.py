"""aiohttp's low-level HTTP server plus the guards aiohttp lacks: the admin port's server, and
the traffic port's for the connections proxy/server.py hands over at an upgrade (WebSocket).
``make_server`` builds the traffic port's server (proxy/server.py) with this one behind it.

aiohttp has no limit on open connections and no deadline for a request head, so one slowloris
client could hold thousands of sockets. Here a connection beyond ``server.max_connections`` gets
a 503 and is closed at accept, and a request head not complete within ``header_read_timeout``
(from accept for the first request, from its first byte for later ones) closes its connection.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from . import errors as E
from .server import OVER_LIMIT, TrafficServer, field_too_large, log_refusal, too_many_headers, uri_too_long

if TYPE_CHECKING:  # the Runtime builds this module's objects; no import cycle at run time
    from .app import Runtime


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with a deadline on each request head.

    Requests the parser rejects get the proxy's JSON error shape with the right status (414 for
    a request line over ``server.max_line_bytes``, 431 for a header line over
    ``server.max_field_bytes``, 400 otherwise; aiohttp says 400 for all of them) and one log
    line without a traceback, so hostile input cannot flood the log with stack traces.
    """

    __slots__ = ("_head_timer", "_head_timeout", "_last_payload", "_line_len", "_line_open",
                 "_line_limit", "_line_over")

    def __init__(self, manager, *, head_timeout: float, **kwargs):
        super().__init__(manager, **kwargs)
        self._head_timer = None
        self._head_timeout = head_timeout
        self._last_payload = None
        self._line_limit = kwargs.get("max_line_size", 8190)
        self._line_len = 0       # bytes of the current request line seen so far
        self._line_open = True   # its line end not seen yet
        self._line_over = False  # it is longer than max_line_size (kept past the parse error)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.transport is not None and not transport.is_closing():
            # the first head is due within the deadline from accept: a client that connects and
            # sends nothing would otherwise hold its slot for the whole keep-alive timeout
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._payload_parser is not None or self._upgraded or not data:
            return super().data_received(data)
        lp = self._last_payload
        in_body = lp is not None and not lp.is_eof()  # body bytes of the current request
        if not in_body and self._line_open:
            end = data.find(b"\n")
            self._line_len += len(data) if end < 0 else end
            self._line_open = end < 0
            self._line_over = self._line_len > self._line_limit
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            # a new head starts after this message (pipelined bytes in ``data`` may already be
            # part of it; a too-long request line there is then reported as 431, not 414)
            self._line_len, self._line_open = 0, True
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

    def stop_lingering(self) -> None:
        """Close right after the current response instead of reading (up to ``lingering_time``)
        the rest of a body nobody will use: for a client already too slow to send it."""
        self._lingering_time = 0.0

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            err = uri_too_long() if self._line_over else field_too_large()
        elif "Too many headers" in (exc.message or ""):
            # aiohttp's cap on the number of header lines (128): the head is too large, not malformed
            err = too_many_headers()
        else:
            err = E.BadRequest("malformed HTTP request: "
                               + (exc.message or type(exc).__name__).split("\n", 1)[0].strip().rstrip(":"))
        rid = log_refusal(err, type(exc).__name__, request.remote)
        resp = web.Response(status=err.status, body=E.error_body(err.type, str(err), rid),
                            content_type="application/json")
        resp.headers["X-Request-ID"] = rid
        resp.force_close()
        return resp

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
            transport.write(OVER_LIMIT)  # proxy/server.py's: the same JSON 503 on both servers
            transport.close()
            if self.on_shed is not None:
                self.on_shed()
        super().connection_made(handler, transport)


class UpgradeRequest(web.BaseRequest):
    """aiohttp's request, for a connection proxy/server.py handed over at an upgrade, with the
    members the layers use on server.py's requests, so no layer asks which server it came from."""

    plain = False  # may be an upgrade: the upgrade branch reads its headers

    def release_head(self) -> None:
        """Nothing to give back: aiohttp's request keeps its head (upgrades are few)."""


class UpgradeServer(GuardedServer):
    """The guarded server behind proxy/server.py, for the connections it hands over."""

    def _make_request(self, message, payload, protocol, writer, task) -> UpgradeRequest:
        return UpgradeRequest(message, payload, protocol, writer, task, self._loop)


def make_server(rt: "Runtime", server_cfg) -> TrafficServer:
    """The traffic port's server (proxy/server.py), with aiohttp's guarded server behind it for
    the connections it hands over at an upgrade (WebSocket)."""
    shed = rt.metrics.shed
    on_shed = lambda: shed.labels("connections").inc()  # noqa: E731
    on_slow = lambda: shed.labels("slow_client").inc()  # noqa: E731
    upgrades = UpgradeServer(
        rt.handle, handler_cancellation=True, access_log=None,
        max_connections=server_cfg.max_connections, head_timeout=server_cfg.header_read_timeout,
        on_shed=on_shed, on_slow_client=on_slow, keepalive_timeout=server_cfg.keepalive_timeout,
        max_line_size=server_cfg.max_line_bytes, max_field_size=server_cfg.max_field_bytes,
        read_bufsize=256 * 1024,
    )
    return TrafficServer(rt.handle, loop=rt.loop, max_connections=server_cfg.max_connections,
                         head_timeout=server_cfg.header_read_timeout, keepalive_timeout=server_cfg.keepalive_timeout,
                         max_line=server_cfg.max_line_bytes, max_field=server_cfg.max_field_bytes,
                         upgrades=upgrades, on_shed=on_shed, on_slow_client=on_slow)


class GuardedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose connections get the same guards and JSON parse errors as the
    traffic port (used for the admin app, so hostile input there is answered just as quietly)."""

    def __init__(self, app: web.Application, *, head_timeout: float, max_connections: int, **kwargs):
        super().__init__(app, **kwargs)
        self._guard = {"head_timeout": head_timeout, "max_connections": max_connections}

    async def _make_server(self) -> web.Server:
        app = self._app
        loop = asyncio.get_running_loop()
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        return GuardedServer(app._handle, request_factory=app._make_request, loop=loop,
                             **self._guard, **self._kwargs)
