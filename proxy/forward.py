"""The innermost layer: stream one request to the upstream and its response back.

Nothing is buffered but what must be: a small request body (so a safe retry can resend it) and a
small, complete response (one write instead of several). Everything else moves chunk by chunk;
SSE chunks are written the moment they arrive. Timeouts are armed on the upstream connection
(one timer each), and failures after the response started end the stream cleanly: an SSE
``event: error`` for event streams, an aborted connection for everything else, so a truncated
body can never pass for a complete one.
"""
from __future__ import annotations

import asyncio
from time import monotonic

from aiohttp import web

from . import errors as E
from .exchange import Exchange
from .headers import DOWN_STRIP, connection_tokens, upstream_head
from .sse import SSEScanner
from .upstream import UpstreamConnection, UpstreamPool
from .websocket import is_upgrade

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SMALL = 64 * 1024
_CLIENT_GONE = (ConnectionResetError, BrokenPipeError)
try:  # aiohttp >= 3.10 raises its own subclass on writes to a closed client
    from aiohttp import ClientConnectionResetError as _CCRE
    _CLIENT_GONE = _CLIENT_GONE + (_CCRE,)
except ImportError:  # pragma: no cover
    pass


class Forwarder:
    """Forwards an exchange upstream through ``pool``; the contract of every layer:
    ``await forwarder(request, ex) -> StreamResponse`` (already sent when streamed).

    ``on_client_gone(ex)`` is called (synchronously) when a client leaves mid-response, e.g. to
    cancel a LangGraph run; ``max_body`` bounds streamed request bodies (413 / abort).
    """

    def __init__(self, pool: UpstreamPool, *, max_body: int, body_read_timeout: float,
                 deadline_header: str | None = None, on_client_gone=None, run_tracker=None,
                 streams_gauge=None, websocket=None, retries=None):
        self.pool = pool
        self.loop = pool.loop
        self.max_body = max_body
        self.body_read_timeout = body_read_timeout
        self.deadline_header = deadline_header.encode() if deadline_header else None
        self.on_client_gone = on_client_gone
        self.run_tracker = run_tracker
        self.streams_gauge = streams_gauge
        self.websocket = websocket
        self.retries = retries  # counter: the transparent retry after a stale pooled connection counts too

    # ---------------------------------------------------------------- request side
    async def _read_small_body(self, request) -> bytes:
        """A small body must arrive whole within the timeout: a client trickling a byte a second
        (slow-body attack) would otherwise hold its connection for as long as it likes."""
        try:
            async with asyncio.timeout(self.body_read_timeout):
                return await request.read()
        except TimeoutError:
            raise E.ClientTimeout(f"request body not received within server.body_read_timeout "
                                  f"({self.body_read_timeout:g}s)") from None

    @staticmethod
    def _framing(request, method: str):
        """(framing header sent upstream, does the request carry a body?)."""
        if not request.body_exists:
            return (b"Content-Length: 0" if method in BODY_METHODS else None), False
        clen = request.content_length
        if clen is not None:
            return b"Content-Length: %d" % clen, True
        return b"Transfer-Encoding: chunked", True

    async def _send_body(self, request, conn: UpstreamConnection, ex: Exchange, chunked: bool) -> None:
        """Stream the client's body up, never holding more than a chunk, with a read-idle timeout."""
        try:
            await self._pump_body(request, conn, ex, chunked)
        except TimeoutError:
            raise E.ClientTimeout(f"request body stalled for server.body_read_timeout "
                                  f"({self.body_read_timeout:g}s)") from None

    async def _pump_body(self, request, conn: UpstreamConnection, ex: Exchange, chunked: bool) -> None:
        content = request.content
        total = 0
        loop = self.loop
        async with asyncio.timeout(self.body_read_timeout) as cm:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                total += len(chunk)
                if total > self.max_body:
                    raise E.BodyTooLarge(f"request body exceeds limits.max_body_bytes ({self.max_body} bytes)")
                if conn.done:  # the upstream answered (or failed) before taking the whole body
                    conn.keep_alive = False
                    break
                if chunked:
                    conn.write_body(b"%x\r\n" % len(chunk))
                    conn.write_body(chunk)
                    conn.write_body(b"\r\n")
                else:
                    conn.write_body(chunk)
                await conn.drain()
                cm.reschedule(loop.time() + self.body_read_timeout)
        if chunked and not conn.done:
            conn.write_body(b"0\r\n\r\n")
        ex.req_bytes = total

    # ---------------------------------------------------------------- the exchange
    async def __call__(self, request, ex: Exchange) -> web.StreamResponse:
        method = ex.method
        if self.websocket is not None and "Upgrade" in request.headers and is_upgrade(request):
            return await self.websocket(request, ex)
        route = ex.route
        t = route.timeouts
        framing, stream_body = self._framing(request, method)
        body = b""
        if (stream_body and ex.body is None and request.version >= (1, 1)
                and request.headers.get("Expect", "").lower() == "100-continue"):
            # the limits passed: now invite the body (the low-level server leaves this to us;
            # HTTP/1.0 clients never get a 1xx, RFC 9110 §15.2)
            try:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            except _CLIENT_GONE:
                raise E.ClientGone() from None
        if stream_body and request.content_length is not None and request.content_length <= SMALL:
            body = ex.body if ex.body is not None else await self._read_small_body(request)
            ex.body = body
            stream_body = False
            ex.req_bytes = len(body)
        elif stream_body and ex.body is not None:
            raise E.BadRequest("request body was already consumed by an earlier attempt")
        extra = None
        if self.deadline_header is not None and ex.deadline is not None:
            remaining = max(0, int((ex.deadline - self.loop.time()) * 1000))
            extra = [(self.deadline_header, str(remaining).encode())]
        head = upstream_head(method, request.raw_path, request.raw_headers,
                             host=self.pool.host_header, request_id=ex.request_id,
                             client_ip=ex.client_ip, proto=request.scheme, body_framing=framing,
                             extra=extra)
        if body:
            head += body

        total = t.request
        if ex.deadline is not None:
            total = max(0.001, ex.deadline - self.loop.time())
        conn = await self.pool.acquire()
        pump = None
        for attempt in (0, 1):
            ex.upstream_start = monotonic()
            conn.begin(head, first_byte=t.first_byte, total=total, total_kind="request",
                       idle=t.idle, head_only=method == "HEAD")
            ex.sent_any = True
            try:
                if stream_body:
                    # full duplex: the body goes up while we wait for (and then relay) the answer,
                    # so an upstream that answers as it reads never deadlocks against us
                    pump = self.loop.create_task(self._send_body(request, conn, ex, framing.startswith(b"Transfer")))
                    await asyncio.wait((pump, conn.hdr_fut), return_when=asyncio.FIRST_COMPLETED)
                    if pump.done() and pump.exception() is not None:
                        raise pump.exception()
                status, raw = await conn.headers()
                break
            except (E.UpstreamReset, E.UpstreamProtocolError):
                # a pooled connection the upstream had just closed: retry once on a fresh one,
                # only when that cannot run anything twice
                stale = (conn.reused and not conn.received_any and not stream_body
                         and method in IDEMPOTENT)
                if pump is not None:
                    await _stop(pump)
                conn.abort()
                self.pool.release(conn)
                if attempt or not stale:
                    raise
                if self.retries is not None:
                    self.retries.labels(route.name).inc()
                conn = await self.pool.connect()
            except BaseException:
                if pump is not None:
                    await _stop(pump)
                conn.abort()
                self.pool.release(conn)
                raise
        try:
            return await self._respond(request, ex, conn, status, raw)
        finally:
            if pump is not None and not pump.done():
                # the upstream answered before taking the whole body: the connection is spent
                conn.abort()
                await _stop(pump)
            self.pool.release(conn)

    async def _respond(self, request, ex: Exchange, conn: UpstreamConnection, status: int, raw) -> web.StreamResponse:
        loop = self.loop
        ex.ttfb = monotonic() - ex.upstream_start
        ex.status = status
        route = ex.route
        # one pass over the upstream headers: copy what the client gets, note what we need
        hdrs = []
        clen = None
        sse = False
        conn_listed = False
        for k, v in raw:
            kl = k.lower()
            if kl in DOWN_STRIP:
                if kl == b"content-length":
                    clen = int(v) if v.isdigit() else None
                elif kl == b"connection":
                    conn_listed = True
                continue
            if kl == b"content-type" and v[:17].lower() == b"text/event-stream":
                sse = True
            elif kl == b"content-location":
                ex.content_location = v.decode("latin-1")
            hdrs.append((k.decode("latin-1"), v.decode("latin-1")))
        if conn_listed:
            dropped = connection_tokens(raw)
            hdrs = [(k, v) for k, v in hdrs if k.lower().encode("latin-1") not in dropped]
        hdrs.append(("X-Request-ID", ex.request_id))
        tracker = self.run_tracker if route.run_kind is not None else None

        if not sse and clen is not None and clen <= SMALL and ex.method != "HEAD":
            # small, length-delimited body: gather it and answer with one write
            parts = []
            while True:
                chunk = await conn.next_chunk()
                if chunk is None:
                    break
                parts.append(chunk)
            body = b"".join(parts) if len(parts) != 1 else parts[0]
            ex.upstream_time = monotonic() - ex.upstream_start
            ex.resp_bytes = len(body)
            if tracker is not None:
                tracker.wait_body(ex, body)
            resp = web.Response(status=status, headers=hdrs, body=body)
            ex.headers_sent = True
            return resp

        resp = web.StreamResponse(status=status, headers=hdrs)
        if clen is not None:
            resp.content_length = clen
        scanner = None
        gauge = None
        if sse:
            ex.is_stream = True
            gauge = self.streams_gauge
            if gauge is not None:
                gauge.inc()
            scanner = SSEScanner()
            t = route.timeouts
            conn.set_stream_timeouts(total=t.stream, total_kind="stream", idle=t.idle,
                                     event_idle=t.event_idle)
        try:
            await resp.prepare(request)
        except _CLIENT_GONE:
            raise E.ClientGone() from None
        ex.headers_sent = True
        sent = 0
        head_bytes = None
        completed = False
        try:
            while True:
                chunk = await conn.next_chunk()
                if chunk is None:
                    break
                if scanner is not None and scanner.feed(chunk):
                    conn.last_event = loop.time()
                    if ex.first_event is None:
                        ex.first_event = monotonic() - ex.start
                elif tracker is not None and head_bytes is None:
                    head_bytes = tracker.body_head(chunk)
                sent += len(chunk)
                await resp.write(chunk)
            ex.upstream_time = monotonic() - ex.upstream_start
            await resp.write_eof()
            completed = True
        except E.ProxyError as e:
            # the upstream failed after the client got headers: end the stream unmistakably
            ex.upstream_time = monotonic() - ex.upstream_start
            ex.error = e
            ex.upstream_failure = True
            if scanner is not None:
                try:
                    # end a half-written event first, so the error event parses on its own
                    prefix = b"\r\n\r\n" if scanner.mid_event else b""
                    await resp.write(prefix + E.sse_error_event(e.type, str(e), ex.request_id))
                    await resp.write_eof()
                except _CLIENT_GONE:
                    pass
            else:
                tr = request.transport
                if tr is not None:
                    tr.abort()
        except _CLIENT_GONE:
            if route.cancel_on_disconnect and self.on_client_gone is not None:
                self.on_client_gone(ex)
            raise E.ClientGone() from None
        except asyncio.CancelledError:
            if route.cancel_on_disconnect and self.on_client_gone is not None:
                self.on_client_gone(ex)
            raise
        finally:
            if gauge is not None:
                gauge.dec()
            ex.resp_bytes = sent
            if scanner is not None:
                ex.events = scanner.events
            if tracker is not None and completed:
                if scanner is not None:
                    tracker.stream_end(ex, scanner)
                elif head_bytes is not None:
                    tracker.wait_body(ex, head_bytes)
        return resp


async def _stop(task: asyncio.Task) -> None:
    """Cancel a helper task and wait for it, keeping its outcome quiet."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - its failure is already accounted for
        pass
