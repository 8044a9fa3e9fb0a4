"""The innermost layer: stream one request to the upstream and its response back.

Nothing is buffered but what must be: a small request body (so a safe retry can resend it) and a
non-streaming answer with a Content-Length up to ``limits.max_buffered_response_bytes``, read whole
so its upstream connection goes back to the pool at once whatever the client's speed (the
process-wide :class:`BufferBudget` bounds all of them together; the ``deliver`` layer writes it
out). Everything else moves chunk by chunk; SSE chunks are written the moment they arrive and are
never buffered. Upstream timeouts are armed on the upstream connection (one deadline each); every
write to the client that would block is bounded by ``server.client_write_timeout`` and by the
exchange's own deadline. Failures after the response started end it unmistakably: an SSE
``event: error`` for event streams, an aborted connection for everything else, so a truncated
body can never pass for a complete one.
"""
from __future__ import annotations

import asyncio
import collections
from time import monotonic

from aiohttp import web

from . import errors as E
from .exchange import Exchange
from .headers import DOWN_STRIP, URL_HEADERS, client_host, client_url, connection_tokens, upstream_head, upstream_strip
from .langgraph import DisconnectIntent
from .outcome import IDEMPOTENT, count_failure
from .server import send_now, sends_now
from .sse import SSEScanner
from .upstream import UpstreamConnection, UpstreamPool

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SMALL = 64 * 1024  # request bodies up to this are read whole (a retry can resend them)
# A stream's last chunk, when its end has come with it, is written together with the final chunk
# by aiohttp's write_eof (one send, not two: thousands of streams that end together). Only up to
# this size and onto an empty write buffer: below uvloop's 64 KiB high-water mark the write can
# never pause the transport, so write_eof's drain (which has no timeout) never waits on the client
_LAST_WITH_END = 16 * 1024
_CLIENT_GONE = E.CLIENT_GONE


class BufferBudget:
    """The process-wide bound on whole answers held in memory for slow clients.

    ``take(n)`` reserves ``n`` bytes if they fit under ``limit`` (else the answer streams);
    ``give(n)`` returns them once the answer was written or dropped. Lives in the Runtime, so a
    reload never forgets what is held.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


async def write_within(writer, loop, write_timeout: float, deadline: float | None, deadline_kind: str) -> None:
    """Wait until the client's socket takes more bytes, for ``server.client_write_timeout`` at
    most, or until the exchange's own ``deadline`` (loop time; None: none) if that comes first:
    every deadline holds while the proxy waits on a slow client.

    Only called when the transport is paused (the client reads slower than we write), so a
    client that keeps up never pays for a timer.
    """
    until = loop.time() + write_timeout
    why = f"server.client_write_timeout ({write_timeout:g}s)"
    if deadline is not None and deadline < until:
        until, why = deadline, f"the {deadline_kind} deadline"
    try:
        async with asyncio.timeout_at(until):
            await writer.drain()
    except TimeoutError:
        raise E.ClientSlow("client_write", f"the client read nothing of its answer within {why}") from None


class HeadWithFirstBytes(web.StreamResponse):
    """An answer whose first body bytes are in hand when it starts: its headers go out with them,
    in one write (as aiohttp's ``Response`` does), not ahead of them. Used for a whole answer (the
    ``deliver`` layer writes it) and for a stream whose first bytes came in the same read as the
    upstream's head (the relay writes them at once): one send, and one read for the client,
    instead of two, at every stream's start. A stream whose first bytes are not there yet sends
    its head at once (``web.StreamResponse``): its client may wait seconds for the first token."""

    _send_headers_immediately = False


class Forwarder:
    """Forwards an exchange upstream through ``pool``; the contract of every layer:
    ``await forwarder(request, ex) -> StreamResponse`` (prepared when streamed: its head sent, or
    going out with the first bytes the relay in ``ex.tail`` writes at once; or an unsent
    :class:`HeadWithFirstBytes` whose chunks are in ``ex.answer``, written by the ``deliver`` layer).

    ``on_client_gone(ex)`` is called (synchronously) when a client leaves mid-response, e.g. to
    cancel a LangGraph run; ``max_body`` bounds streamed request bodies (413 / abort).
    """

    def __init__(self, pool: UpstreamPool, *, limits, server, deadline_header: str | None = None,
                 on_client_gone=None, run_tracker=None, metrics=None, buffers: BufferBudget | None = None,
                 llm=None):
        self.pool = pool
        self.loop = pool.loop
        self.max_body = limits.max_body_bytes
        self.max_buffered = limits.max_buffered_response_bytes
        self.body_read_timeout = server.body_read_timeout
        self.write_timeout = server.client_write_timeout
        self.deadline_header = deadline_header.encode() if deadline_header else None
        # the client's own trace context and deadline header are replaced by ours, never doubled
        self.strip_up = upstream_strip([b"traceparent", b"tracestate"]
                                       + ([self.deadline_header.lower()] if self.deadline_header else []))
        self.on_client_gone = on_client_gone
        self.run_tracker = run_tracker
        self.metrics = metrics
        self.streams_gauge = metrics.in_flight_streams if metrics is not None else None
        self.buffers = buffers
        self.llm = llm  # proxy.llm.LLMTelemetry: token usage read off run answers as they pass

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
                if ex.run_intent is not None:
                    ex.run_intent.feed(chunk)
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
        extra = ex.trace.upstream_headers() if ex.trace is not None else None
        if self.deadline_header is not None and ex.deadline is not None:
            remaining = max(0, int((ex.deadline - self.loop.time()) * 1000))
            extra = (extra or []) + [(self.deadline_header, str(remaining).encode())]
        if route.run_kind is not None and self.llm is not None and ex.llm is None:
            ex.llm = self.llm.exchange(route.name, ex.start, request_body=ex.body,
                                       exemplar=ex.trace.exemplar() if ex.trace is not None else None)
        head = upstream_head(method, request.raw_path, request.raw_headers,
                             upstream=self.pool, preserve_host=route.preserve_host, request_id=ex.request_id,
                             client_ip=ex.client_ip, proto=request.scheme, body_framing=framing,
                             extra=extra, strip=self.strip_up)
        extra = None  # in the head now: the stream's frame keeps no copy
        if body:
            head += body

        # a connect may wait past connect_timeout while the upstream accepts or answers others
        # (a burst filled its accept queue), as long as the first byte could still come in time
        patience = t.first_byte
        if ex.deadline is not None:
            left = ex.deadline - self.loop.time()
            patience = left if patience is None else min(patience, left)
        try:
            conn = await self.pool.acquire(patience or 0.0)
        except E.PoolExhausted:
            if self.metrics is not None:
                self.metrics.shed.labels("pool_exhausted").inc()
            raise
        total = t.request
        if ex.deadline is not None:
            total = max(0.001, ex.deadline - self.loop.time())  # what the wait for a connection left
        pump = None
        while True:
            ex.upstream_start = monotonic()
            conn.begin(head, first_byte=t.first_byte, total=total, total_kind="request",
                       idle=t.idle, head_only=method == "HEAD")
            ex.sent_any = True
            try:
                if stream_body:
                    # full duplex: the body goes up while we wait for (and then relay) the answer,
                    # so an upstream that answers as it reads never deadlocks against us
                    if route.cancel_on_disconnect:
                        ex.run_intent = DisconnectIntent()  # the client's own choice, read as it streams
                    pump = self.loop.create_task(self._send_body(request, conn, ex, framing.startswith(b"Transfer")))
                    await asyncio.wait((pump, conn.hdr_fut), return_when=asyncio.FIRST_COMPLETED)
                    if pump.done() and pump.exception() is not None:
                        raise pump.exception()
                status, answer_head = await conn.headers()
                answer_head = [answer_head]  # _respond takes it out: no frame keeps it past the headers
                break
            except (E.UpstreamReset, E.UpstreamProtocolError) as e:
                # a pooled connection the upstream had just closed: retry on a fresh one, only when
                # that cannot run anything twice, and only within retries.attempts (this attempt
                # counts like any other: the upstream may see the request at most that often)
                stale = (conn.reused and not conn.received_any and not stream_body
                         and method in IDEMPOTENT and ex.attempts < route.attempts)
                if pump is not None:
                    await _stop(pump)
                conn.abort()
                self.pool.release(conn)
                if not stale:
                    raise
                ex.attempts += 1
                if self.metrics is not None:
                    count_failure(self.metrics, route.name, e)
                    self.metrics.retries.labels(route.name).inc()
                conn = await self.pool.connect()
            except BaseException:
                if pump is not None:
                    await _stop(pump)
                conn.abort()
                self.pool.release(conn)
                raise
        head = None  # the request head (and small body) went up: the stream's frame keeps no copy
        try:
            resp = await self._respond(request, ex, conn, status, answer_head, pump)
        except BaseException:
            await self._settle(conn, pump)
            raise
        if ex.tail is None:  # a whole answer (else the tail owns the connection now)
            if pump is None:
                self.pool.release(conn)
            else:
                await self._settle(conn, pump)
        return resp

    async def _settle(self, conn: UpstreamConnection, pump: asyncio.Task | None) -> None:
        """The exchange is done with its upstream connection: back to the pool (or closed)."""
        try:
            if pump is not None and not pump.done():
                # the upstream answered before taking the whole body: the connection is spent
                conn.abort()
                await _stop(pump)
        finally:
            self.pool.release(conn)

    async def _respond(self, request, ex: Exchange, conn: UpstreamConnection, status: int,
                       answer_head: list, pump: asyncio.Task | None) -> web.StreamResponse:
        raw = answer_head.pop()
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
                elif kl == b"connection" and v.lower() != b"keep-alive":  # a header DOWN_STRIP drops anyway
                    conn_listed = True
                continue
            if kl == b"content-type" and v[:17].lower() == b"text/event-stream":
                sse = True
            elif kl in URL_HEADERS:
                v = client_url(v, upstream=self.pool, sent_host=client_host(request.raw_headers))
                if kl == b"content-location":
                    ex.content_location = v.decode("latin-1")
            hdrs.append((k.decode("latin-1"), v.decode("latin-1")))
        if conn_listed:
            dropped = connection_tokens(raw)
            hdrs = [(k, v) for k, v in hdrs if k.lower().encode("latin-1") not in dropped]
        hdrs.append(("X-Request-ID", ex.request_id))
        del raw
        tracker = self.run_tracker if route.run_kind is not None else None

        if (not sse and clen is not None and ex.method != "HEAD" and clen <= self.max_buffered
                and self.buffers is not None and self.buffers.take(clen)):
            # a whole, length-delimited answer: read it now (the upstream's timers still apply),
            # so the connection goes back to the pool before a slow client has read a byte; it is
            # kept as the chunks that came (no joined copy) and written out by the deliver layer
            ex.buffered = clen
            parts = collections.deque()
            try:
                while True:
                    chunk = await conn.next_chunk()
                    if chunk is None:
                        break
                    parts.append(chunk)
            except BaseException:
                self.buffers.give(clen)  # nothing to deliver (a retry may take its own)
                ex.buffered = 0
                raise
            ex.upstream_time = monotonic() - ex.upstream_start
            ex.resp_bytes = clen
            ex.answer = parts
            usage = ex.llm
            if usage is not None:
                for chunk in parts:
                    usage.feed_body(chunk)
                usage.end_body()
            if tracker is not None:
                head = None
                for chunk in parts:
                    head = tracker.body_head(chunk)
                    if head is not None:
                        break
                tracker.wait_body(ex, head or b"")
            resp = HeadWithFirstBytes(status=status, headers=hdrs)
            resp.content_length = clen
            return resp

        # the relay's first write carries the head when the first body bytes are already here
        resp = (HeadWithFirstBytes if conn.chunks else web.StreamResponse)(status=status, headers=hdrs)
        hdrs = None  # copied into resp.headers
        if clen is not None:
            resp.content_length = clen
        scanner = None
        gauge = None
        if sse:
            ex.is_stream = True
            gauge = self.streams_gauge
            if gauge is not None:
                gauge.inc()
            scanner = SSEScanner(ex.llm)
        limits = route.body_timeouts(sse)  # after the headers: the route's timeout class decides
        if limits is not None:
            conn.set_stream_timeouts(**limits)
        try:
            ex.headers_sent = True
            await resp.prepare(request)
        except _CLIENT_GONE:
            if gauge is not None:
                gauge.dec()
            raise E.ClientGone() from None
        resp.headers.clear()  # sent: the stream keeps no copy of them (~1 KiB a stream)
        request.release_head()  # nothing reads the request's head again
        # the body is relayed after every layer has returned (see proxy/layers.py): the runtime
        # awaits this one frame for the life of the stream
        ex.tail = self._stream(request, ex, conn, resp, scanner, gauge, tracker, pump)
        return resp

    async def _stream(self, request, ex: Exchange, conn: UpstreamConnection, resp: web.StreamResponse,
                      scanner: SSEScanner | None, gauge, tracker, pump: asyncio.Task | None) -> None:
        """A streamed answer's body, chunk by chunk, then the end of the exchange: the connection
        goes back, a clean run's outcome is confirmed, and the layers' ``end`` work runs
        (:meth:`Exchange.end`). Raises only CancelledError: the answer had started, so whatever
        ended it leaves nothing to send (the errors layer's ``end`` aborted what needed it).
        One frame for the life of a stream, so the relay is not split into helpers; its chunks are
        written by :meth:`_Relay.push` in the upstream connection's read (see
        :meth:`UpstreamConnection.set_sink`), and this frame runs only for what ``push`` declines:
        the head, a client that is not reading, the end, a failure."""
        loop = self.loop
        route = ex.route
        writer = request.writer
        proto = writer.protocol
        write_timeout = self.write_timeout
        usage = ex.llm if scanner is None else None  # a streamed (padded) wait answer
        r = _Relay(loop, ex, writer, proto, scanner, tracker, usage)
        completed = False
        exc = None
        last = b""
        try:
            try:
                while True:
                    if conn.sink is None and sends_now(writer):
                        conn.set_sink(r.push)
                    while (w := conn.wait_chunk()) is not None:
                        await w  # the future itself: no coroutine per event
                        if r.failed is not None:
                            e, r.failed = r.failed, None
                            raise e
                        if proto.writing_paused:
                            await write_within(writer, loop, write_timeout, conn.total_at, conn.total_kind)
                    chunk = conn.take_chunk()
                    if chunk is None:
                        break
                    r.note(conn, chunk)
                    if (conn.done and not conn.chunks and conn.error is None and len(chunk) <= _LAST_WITH_END
                            and not proto.writing_paused and (tr := request.transport) is not None
                            and not tr.get_write_buffer_size()):
                        last = chunk  # the answer's last bytes go out with its end: one write, not two
                        break
                    if not send_now(writer, chunk):
                        await writer.write(chunk, drain=False)
                    chunk = None  # sent: a quiet stream holds no copy of its last event while it waits
                    if proto.writing_paused:
                        await write_within(writer, loop, write_timeout, conn.total_at, conn.total_kind)
                ex.upstream_time = monotonic() - ex.upstream_start
                if proto.writing_paused:
                    await write_within(writer, loop, write_timeout, conn.total_at, conn.total_kind)
                await resp.write_eof(last)
                completed = True
            except E.ClientSlow as e:
                # the client stopped reading: cut it (the upstream connection is closed by release)
                ex.upstream_time = monotonic() - ex.upstream_start
                ex.error = E.settled(e)
                conn.abort()
                tr = request.transport
                if tr is not None:
                    tr.abort()
                if route.cancel_on_disconnect and self.on_client_gone is not None:
                    self.on_client_gone(ex)
            except E.ProxyError as e:
                # the upstream failed (or the proxy's shutdown cut it) after the client got headers:
                # end the answer unmistakably. An SSE client first gets a last `event: error` saying
                # why; then every cut answer ends without its final chunk (DESIGN: it must look cut)
                ex.upstream_time = monotonic() - ex.upstream_start
                ex.error = E.settled(e)
                if scanner is not None:
                    try:
                        # end a half-written event first, so the error event parses on its own
                        prefix = b"\r\n\r\n" if scanner.mid_event else b""
                        await writer.write(prefix + E.sse_error_event(e.type, str(e), ex.request_id), drain=False)
                        if proto.writing_paused:
                            await write_within(writer, loop, write_timeout, conn.total_at, conn.total_kind)
                    except (E.ClientSlow, *_CLIENT_GONE):
                        pass
                tr = request.transport
                if tr is not None:
                    # close after the bytes already queued (the error event) are sent, never with a final chunk
                    tr.close()
            except _CLIENT_GONE:
                if route.cancel_on_disconnect and self.on_client_gone is not None:
                    self.on_client_gone(ex)
                raise E.ClientGone() from None
            except asyncio.CancelledError:
                if isinstance(conn.error, E.ShuttingDown):
                    ex.error = E.settled(conn.error)  # cut by our own shutdown while blocked on the client, not its leaving
                elif route.cancel_on_disconnect and self.on_client_gone is not None:
                    self.on_client_gone(ex)
                raise
            finally:
                if gauge is not None:
                    gauge.dec()
                ex.resp_bytes = r.sent
                if scanner is not None:
                    ex.events = scanner.events
                if tracker is not None and completed:
                    if scanner is not None:
                        tracker.stream_end(ex, scanner)
                    elif r.head_bytes is not None:
                        tracker.wait_body(ex, r.head_bytes)
                    if usage is not None:
                        usage.end_body()
                conn.set_sink(None)  # it holds this exchange
                r.failed = None  # a write failure this frame never raised (cancelled first): its traceback holds r
                if pump is None:
                    self.pool.release(conn)
                else:
                    await self._settle(conn, pump)
            if ex.run_outcome == "success" and ex.is_stream and self.run_tracker is not None:
                # a stream that ended cleanly may still be an interrupted run (its client already
                # has the whole answer; only the run outcome waits for this one status read)
                await self.run_tracker.confirm(ex)
        except (asyncio.CancelledError, Exception) as e:
            exc = e
        ex.end(request, exc)  # the layers' ends see (and log) it whole
        if exc is not None:
            E.settled(exc)  # this frame holds it, and the future it was thrown from: no cycle left
            raise asyncio.CancelledError() from None


class _Relay:
    """What a streamed answer's relay keeps between chunks (112 bytes with its 10 slots, and the
    bound ``push`` the upstream connection holds as its sink: closures and their cells cost
    1.0 KiB a stream, measured). ``sent`` and ``head_bytes`` are read by ``Forwarder._stream`` at the end."""

    __slots__ = ("loop", "ex", "writer", "proto", "scanner", "tracker", "usage", "sent", "head_bytes", "failed")

    def __init__(self, loop, ex: Exchange, writer, proto, scanner: SSEScanner | None, tracker, usage):
        self.loop = loop
        self.ex = ex
        self.writer = writer
        self.proto = proto
        self.scanner = scanner
        self.tracker = tracker
        self.usage = usage
        self.sent = 0
        self.head_bytes = None
        self.failed = None  # what push's write raised, for the relay's frame to raise

    def note(self, conn: UpstreamConnection, chunk: bytes) -> None:
        """What the relay learns from a chunk it is about to write."""
        scanner = self.scanner
        if scanner is not None and scanner.feed(chunk):
            conn.last_event = self.loop.time()
            ex = self.ex
            if ex.first_event is None:
                ex.first_event = monotonic() - ex.start
                if ex.on_stream_start is not None:
                    ex.on_stream_start(ex)
        elif self.tracker is not None:
            if self.head_bytes is None:
                self.head_bytes = self.tracker.body_head(chunk)
            if self.usage is not None:
                self.usage.feed_body(chunk)
        self.sent += len(chunk)

    def push(self, conn: UpstreamConnection) -> bool:
        """The upstream connection's sink: the chunk read now, written now. False wakes the relay's
        frame: the client's buffer is full (a write must wait, within its timeouts), or the write
        failed (``failed``, raised there as if the frame had written)."""
        proto = self.proto
        if proto.writing_paused:
            return False
        try:
            chunk = conn.take_chunk()
            self.note(conn, chunk)
            send_now(self.writer, chunk)  # sends_now(writer) held when the sink was set
        except Exception as e:  # noqa: BLE001 - raised by the relay's frame
            self.failed = e
            return False
        return not proto.writing_paused


async def _stop(task: asyncio.Task) -> None:
    """Cancel a helper task and wait for it, keeping its outcome quiet."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - its failure is already accounted for
        pass
