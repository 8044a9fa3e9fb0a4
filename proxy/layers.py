"""The small outer layers: request id, route, and the error table applied to responses."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from . import errors as E
from .headers import request_id_from

log = logging.getLogger("proxy.errors")


class RequestId:
    """Takes the client's X-Request-ID (when sane) or makes one; the forwarder sends it upstream
    and back, the error layer puts it in every error body."""

    def __init__(self, next_handler):
        self.next = next_handler

    async def __call__(self, request, ex):
        ex.request_id = request_id_from(request.raw_headers)
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        ex.client_ip = peer[0] if peer else None
        return await self.next(request, ex)


class RouteMatch:
    """Names the request by the first matching route template (``other`` when none matches)."""

    def __init__(self, next_handler, table):
        self.next = next_handler
        self.table = table

    async def __call__(self, request, ex):
        path = ex.path
        q = path.find("?")
        ex.route = self.table.match(ex.method, path if q < 0 else path[:q])
        return await self.next(request, ex)


class VersionNotSupported(E.ClientFault):
    status, type = 505, "http_version_not_supported"


def check_target(request) -> None:
    """Only origin-form targets (``/path?query``), or ``*`` for OPTIONS, reach the upstream.

    aiohttp accepts absolute-form (``GET http://other/ HTTP/1.1``) and authority-form
    (``CONNECT host:443``) targets; forwarded as they are, the upstream would see a request
    line naming another host, the classic way to turn a reverse proxy into an open one or to
    make the upstream route on a host the client chose. The upstream is fixed by config.
    """
    target = request.raw_path
    if not target.startswith("/") and not (target == "*" and request.method == "OPTIONS"):
        raise E.BadRequest("request target must be a path starting with '/' "
                           "(absolute-form and authority-form targets are not proxied)")
    if request.version not in ((1, 1), (1, 0)):
        raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served on this port")


class TargetCheck:
    """Refuses (400/505) requests whose target or version cannot be proxied safely, before any
    policy or the upstream sees them; see :func:`check_target`."""

    def __init__(self, next_handler):
        self.next = next_handler

    async def __call__(self, request, ex):
        check_target(request)
        return await self.next(request, ex)


_CLOSE_AFTER = (E.BadRequest, VersionNotSupported, E.ClientTimeout, E.BodyTooLarge)


class Errors:
    """Turns every exception into the JSON error response of :mod:`proxy.errors`.

    After the response has started, there is nothing left to send: the connection is aborted
    (the forwarder already ended SSE streams with an error event where it could).
    """

    def __init__(self, next_handler):
        self.next = next_handler

    async def __call__(self, request, ex):
        try:
            return await self.next(request, ex)
        except asyncio.CancelledError:
            raise
        except E.ClientGone:
            raise asyncio.CancelledError() from None  # nobody to answer; aiohttp drops it quietly
        except Exception as e:
            if not isinstance(e, E.ProxyError):
                log.exception("unexpected error while proxying", extra={"fields": {"request_id": ex.request_id}})
            if ex.headers_sent:
                tr = request.transport
                if tr is not None:
                    tr.abort()
                raise asyncio.CancelledError() from None
            status, etype = E.classify(e)
            message = str(e) if isinstance(e, E.ProxyError) else "internal error in the proxy"
            resp = web.Response(status=status, body=E.error_body(etype, message, ex.request_id),
                                content_type="application/json")
            resp.headers["X-Request-ID"] = ex.request_id
            for k, v in getattr(e, "headers", ()):
                resp.headers[k] = v
            if isinstance(e, _CLOSE_AFTER):
                # the rest of this request's body is unread (or its framing is not trusted):
                # close instead of letting aiohttp linger reading it (a slow-body client would
                # keep its connection slot for lingering_time after its 408)
                resp.force_close()
                if isinstance(e, (E.ClientTimeout, E.BadRequest)):
                    stop = getattr(request.protocol, "stop_lingering", None)
                    if stop is not None:
                        stop()
            return resp
