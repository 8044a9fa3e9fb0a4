"""The small layers: request id, route, the error table applied to responses, the target check,
delivery of whole answers to the client, and the WebSocket branch."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from collections.abc import Awaitable, Callable
from typing import Any

from . import errors as E
from .exchange import Exchange
from .forward import write_within
from .headers import request_id_from
from .tracing import from_headers
from .websocket import is_upgrade

# The contract of every layer and of the forwarder: take the request and its Exchange, return the
# response or raise a proxy.errors exception. A streamed answer returns once its head is sent (or
# held for the relay's first write, when its first bytes are already in hand), with
# its body's relay left in ``ex.tail`` (the runtime awaits it after the chain returned), so no layer
# keeps a coroutine frame for the life of a stream (thousands of streams: a frame each, per layer).
# A layer that acts only before the next one (request id, route, target check, deadline, the
# upgrade branch) is a plain ``def`` returning the next handler's awaitable. A layer with work for
# the exchange's end (telemetry, limits, breaker) has an ``end(request, ex, exc)`` method and
# returns ``exchange.until_end(self, request, ex)``, which runs it at once when the next handler
# raised, else through ``ex.at_end``: now for a complete answer, when the stream's tail ends
# otherwise. The errors layer, which also turns exceptions into answers, does the same by hand.
Handler = Callable[[web.BaseRequest, Exchange], Awaitable[web.StreamResponse]]
# One entry of the layer list in proxy/app.py: (name, class, settings); built as cls(next, **settings).
LayerEntry = tuple[str, type, dict[str, Any]]

_CLIENT_GONE = E.CLIENT_GONE

log = logging.getLogger("proxy.errors")


class RequestId:
    """Takes the client's X-Request-ID (when sane) or makes one; the forwarder sends it upstream
    and back, the error layer puts it in every error body. A request whose id a probe of this
    process registered (random, single use) is marked as that probe's exchange."""

    def __init__(self, next_handler: Handler, probes: dict, tracing=None):
        self.next = next_handler
        self.probes = probes
        self.sample_ratio = tracing.sample_ratio if tracing is not None and tracing.enabled else None

    def __call__(self, request, ex):
        ex.request_id = rid = request_id_from(request.raw_headers)
        if self.probes and rid in self.probes:
            ex.probe = self.probes[rid].probe_name
        if self.sample_ratio is not None:
            # the client's W3C trace continued (or one started): sent upstream, logged, exemplars
            ex.trace = from_headers(request.raw_headers, self.sample_ratio)
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        ex.client_ip = peer[0] if peer else None
        return self.next(request, ex)


class RouteMatch:
    """Names the request by the first matching route template (``other`` when none matches)."""

    def __init__(self, next_handler, table):
        self.next = next_handler
        self.table = table

    def __call__(self, request, ex):
        path = ex.path
        q = path.find("?")
        ex.route = self.table.match(ex.method, path if q < 0 else path[:q])
        return self.next(request, ex)


def check_target(request) -> None:
    """Only origin-form targets (``/path?query``), or ``*`` for OPTIONS, reach the upstream.

    HTTP parsers accept absolute-form (``GET http://other/ HTTP/1.1``) and authority-form
    (``CONNECT host:443``) targets; forwarded as they are, the upstream would see a request
    line naming another host, the classic way to turn a reverse proxy into an open one or to
    make the upstream route on a host the client chose. The upstream is fixed by config.
    """
    target = request.raw_path
    if not target.startswith("/") and not (target == "*" and request.method == "OPTIONS"):
        raise E.BadRequest("request target must be a path starting with '/' "
                           "(absolute-form and authority-form targets are not proxied)")
    if request.version not in ((1, 1), (1, 0)):
        raise E.VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served on this port")


class TargetCheck:
    """Refuses (400/505) requests whose target or version cannot be proxied safely, before any
    policy or the upstream sees them; see :func:`check_target`."""

    def __init__(self, next_handler):
        self.next = next_handler

    def __call__(self, request, ex):
        check_target(request)
        return self.next(request, ex)


class Errors:
    """Turns every exception into the JSON error response of :mod:`proxy.errors`.

    After the response has started, there is nothing left to send: the connection is aborted
    (the forwarder already ended SSE streams with an error event where it could).
    """

    def __init__(self, next_handler):
        self.next = next_handler

    async def __call__(self, request, ex):
        try:
            resp = await self.next(request, ex)
        except asyncio.CancelledError:
            raise
        except E.ClientGone:
            raise asyncio.CancelledError() from None  # nobody to answer; the server drops it quietly
        except Exception as e:
            if ex.headers_sent:
                self.end(request, ex, e)
                raise asyncio.CancelledError() from None
            if not isinstance(e, E.ProxyError):
                _log_unexpected(ex, e)
            status, etype = E.classify(e)
            message = str(e) if isinstance(e, E.ProxyError) else "internal error in the proxy"
            resp = web.Response(status=status, body=E.error_body(etype, message, ex.request_id),
                                content_type="application/json")
            resp.headers["X-Request-ID"] = ex.request_id
            for k, v in getattr(e, "headers", ()):
                resp.headers[k] = v
            if getattr(e, "close_connection", False):
                resp.force_close()
                if e.stop_lingering:
                    stop = getattr(request.protocol, "stop_lingering", None)
                    if stop is not None:
                        stop()
            return resp
        ex.at_end(self, request)
        return resp

    @staticmethod
    def end(request, ex, exc) -> None:
        """The answer had started: nothing is left to send. A failure other than the client's
        leaving aborts the connection (an unexpected one is logged first); the forwarder already
        ended SSE streams with an error event where it could."""
        if exc is None or isinstance(exc, (asyncio.CancelledError, E.ClientGone)):
            return
        if not isinstance(exc, E.ProxyError):
            _log_unexpected(ex, exc)
        tr = request.transport
        if tr is not None:
            tr.abort()


def _log_unexpected(ex, e: BaseException) -> None:
    log.error("unexpected error while proxying", exc_info=e, extra={"fields": {"request_id": ex.request_id}})


class Deliver:
    """Writes a whole answer (one the forwarder read into memory) to the client, bounded by
    ``server.client_write_timeout`` and the request deadline, then gives its bytes back to the
    process-wide :class:`~proxy.forward.BufferBudget`. It sits outside the limits, so a slow
    reader holds neither a concurrency slot nor an upstream connection, only its bounded buffer.
    Streamed answers were written by the forwarder already and pass through."""

    def __init__(self, next_handler, *, buffers, write_timeout: float, loop, draining):
        self.next = next_handler
        self.buffers = buffers
        self.write_timeout = write_timeout
        self.loop = loop
        self.draining = draining  # () -> bool: tell keep-alive clients to reconnect (elsewhere)

    async def __call__(self, request, ex):
        try:
            resp = await self.next(request, ex)
            if resp.prepared or not ex.buffered:
                return resp
            if self.draining():
                resp.force_close()
            ex.headers_sent = True
            parts = ex.answer
            try:
                await resp.prepare(request)
                writer = request.writer
                proto = writer.protocol
                while parts:
                    # chunk by chunk, each freed once written (never a joined copy); a timer only
                    # when the client's socket is full, so a client that keeps up costs none
                    await writer.write(parts.popleft(), drain=False)
                    if proto.writing_paused:
                        await write_within(writer, self.loop, self.write_timeout, ex.deadline, "request")
                await resp.write_eof()
            except _CLIENT_GONE:
                raise E.ClientGone() from None
            return resp
        finally:
            if ex.buffered:
                self.buffers.give(ex.buffered)
                ex.buffered = 0
                ex.answer = None


class Upgrade:
    """The WebSocket branch: upgrade requests go to the relay, everything else to the forwarder."""

    def __init__(self, next_handler, relay):
        self.next = next_handler
        self.relay = relay

    def __call__(self, request, ex):
        # the traffic server hands upgrades to aiohttp's server (proxy/server.py): its own
        # requests (``plain``) are never one, and need no header lookup here
        if not request.plain and "Upgrade" in request.headers and is_upgrade(request):
            return self.relay(request, ex)
        return self.next(request, ex)
