"""WebSocket pass-through (LangGraph's ``/threads/{thread_id}/stream/events`` and any upgrade).

Upgrades are rare and long-lived, so this path uses aiohttp's WebSocket client and server
instead of the raw pool: frames are relayed both ways as they come, a close on either side is
propagated to the other with its code, and the route's ``idle`` timeout closes a silent socket.
"""
from __future__ import annotations

import asyncio
import logging
from time import monotonic

import aiohttp
from aiohttp import web

from urllib.parse import urlsplit

from . import errors as E
from .headers import HOP_BY_HOP, upstream_target

log = logging.getLogger("proxy.websocket")
_SKIP = HOP_BY_HOP | {b"host", b"content-length", b"sec-websocket-key", b"sec-websocket-version",
                      b"sec-websocket-extensions", b"sec-websocket-protocol", b"x-request-id",
                      b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


def is_upgrade(request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


class WebSocketRelay:
    """Relays one WebSocket session; counted as a stream (outcome) and per-message metrics."""

    def __init__(self, upstream_url: str, metrics, connect_timeout: float, ssl_context=None):
        u = urlsplit(upstream_url)
        self.origin = ("wss://" if u.scheme == "https" else "ws://") + u.netloc
        self.base_path = u.path.rstrip("/")  # applied by headers.upstream_target, as for all traffic
        self.m = metrics
        self.connect_timeout = connect_timeout
        # wss://: the upstream pool's own TLS context (one CA store for all upstream traffic; the
        # contexts aiohttp makes at import are never used, see proxy/__main__.py)
        self.ssl = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, request, ex) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
                   if k.lower() not in _SKIP]
        fwd = request.headers.get("X-Forwarded-For")
        headers += [("X-Forwarded-For", f"{fwd}, {ex.client_ip}" if fwd else (ex.client_ip or "")),
                    ("X-Forwarded-Proto", request.scheme), ("X-Forwarded-Host", request.host),
                    ("X-Request-ID", ex.request_id)]
        if ex.route.preserve_host and request.headers.get("Host"):
            headers.append(("Host", request.headers["Host"]))  # as for HTTP: server-built URLs name the sidecar
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        t = ex.route.timeouts
        ex.upstream_start = monotonic()
        try:
            up = await self.session().ws_connect(
                self.origin + upstream_target(self, request.raw_path), headers=headers, protocols=protocols,
                autoping=True, heartbeat=None, max_msg_size=0, compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                autoclose=False, ssl=self.ssl)
        except aiohttp.WSServerHandshakeError as e:
            ex.status = e.status
            raise E.UpgradeRefused(e.status, e.message or "upstream refused the WebSocket upgrade") from None
        except aiohttp.ClientConnectorError as e:
            raise E.UpstreamConnectError(f"cannot connect to upstream for a WebSocket: {e}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, OSError) as e:
            # connected, then closed or reset before any answer to the upgrade: the upstream's doing
            raise E.UpstreamReset(f"upstream closed the connection before answering the WebSocket upgrade"
                                  f" ({type(e).__name__})") from None
        except asyncio.TimeoutError:
            raise E.UpstreamTimeout("connect") from None
        except aiohttp.ClientError as e:  # an answer that is not HTTP, or a broken one
            raise E.UpstreamProtocolError(f"upstream answered the WebSocket upgrade with an invalid response"
                                          f" ({type(e).__name__})") from None
        ex.ttfb = monotonic() - ex.upstream_start
        ws = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (), autoping=True,
                                   max_msg_size=0, autoclose=False, compress=False)
        await ws.prepare(request)
        ex.status = 101
        ex.headers_sent = True
        ex.is_stream = True
        gauge = self.m.in_flight_streams
        gauge.inc()
        route = ex.route.name
        up_count = self.m.websocket_messages.labels(route, "client_to_upstream")
        down_count = self.m.websocket_messages.labels(route, "upstream_to_client")
        idle = t.idle
        last = [asyncio.get_running_loop().time()]

        async def pump(src, dst, counter):
            async for msg in src:
                last[0] = asyncio.get_running_loop().time()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == aiohttp.WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    await dst.pong(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
                else:
                    continue
                counter.inc()
                ex.events += 1
            return src

        async def idle_watch():
            loop = asyncio.get_running_loop()
            while True:
                wait = last[0] + idle - loop.time()
                if wait <= 0:
                    return None
                await asyncio.sleep(wait)

        tasks = [asyncio.ensure_future(pump(ws, up, up_count)), asyncio.ensure_future(pump(up, ws, down_count))]
        if idle:
            tasks.append(asyncio.ensure_future(idle_watch()))
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            for p in pending:
                p.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            exc = first.exception() if not first.cancelled() else None
            if first is tasks[0] and exc is None:
                # the client closed: tell the upstream, with the client's code
                await up.close(code=ws.close_code or aiohttp.WSCloseCode.OK)
                await ws.close()
            elif len(tasks) > 2 and first is tasks[2]:
                ex.error = E.UpstreamTimeout("idle", "WebSocket idle timeout fired")
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"idle timeout")
                await up.close(code=aiohttp.WSCloseCode.GOING_AWAY)
            else:
                # the upstream closed (or failed): tell the client, with the upstream's code
                code = up.close_code or (aiohttp.WSCloseCode.INTERNAL_ERROR if exc else aiohttp.WSCloseCode.OK)
                if exc is not None:
                    ex.error = E.UpstreamReset(f"upstream WebSocket failed: {exc}")
                await ws.close(code=code)
                await up.close()
        finally:
            for task in tasks:
                task.cancel()
            if not up.closed:
                await up.close()
            gauge.dec()
            ex.upstream_time = monotonic() - ex.upstream_start
        return ws
