"""The traffic port's HTTP/1.1 server side: a protocol on httptools (llhttp) instead of aiohttp's.

Why (docs/benchmarks.md, "The wall is aiohttp's server side"): at thousands of quiet streams,
aiohttp's server side (``web_protocol``, ``web_request``, ``web_server``) held ~6.6 KiB of each
stream's ~19 KiB of Python heap (a parsed message with headers as str and as bytes and a URL, a
connection task plus a task per request, a message deque, a keep-alive timer) and cost ~60 us of
CPU per small request. This module replaces exactly that part: parsing, the connection's
keep-alive loop and the request object. What answers stays aiohttp's: responses are
``aiohttp.web`` responses written through aiohttp's ``StreamWriter``, so status lines, ``Date``,
``Connection``, chunking, HEAD/204/304 bodies and HTTP/1.0 framing are exactly what they were.

One :class:`Connection` per client connection, one task per request (none while idle). It keeps
what the sidecar's server side always did (see proxy/accept.py for the admin port's version):

* ``server.max_connections``: a connection beyond it gets a JSON 503 at accept and is closed;
* ``server.header_read_timeout``: a request head must be complete within it (from accept for the
  first request, from its first byte for later ones), else the connection closes;
* ``server.max_line_bytes`` / ``max_field_bytes`` / 128 header lines: 414 / 431 in the proxy's
  JSON error shape, and every other malformed head a 400, logged once without a traceback; a
  header line still arriving is bounded too, so no head holds more than its limits;
* request bodies as they arrive (:class:`Body`), reading paused above 256 KiB unread;
* pipelined requests answered in order (reading paused while one waits); a malformed head drops
  the requests parsed from the same read, as aiohttp's parser did;
* ``server.keepalive_timeout`` between requests; a body the handler left unread is read and
  dropped for up to 10 s (lingering close, so the client gets its answer, not a reset) unless
  the handler called ``request.protocol.stop_lingering()``;
* the handler is cancelled when its client goes away (handler cancellation);
* ``pre_shutdown()`` / ``shutdown(timeout)`` as the lifecycle uses them.

Upgrade requests (WebSocket, any ``Connection: upgrade``, CONNECT) are rare and long-lived: such a
connection is handed, with the request re-serialised, to aiohttp's protocol (``upgrades``, the
guarded ``web.Server`` of proxy/accept.py) and goes through the same layers there, so the WebSocket
relay keeps aiohttp's WebSocket server.
"""
from __future__ import annotations

import asyncio
import logging

import httptools
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import HttpVersion10, HttpVersion11, StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy

from . import errors as E
from .headers import new_request_id
from .upstream import loop_sets_nodelay

log = logging.getLogger("proxy.accept")

MAX_HEADERS = 128          # header lines per request (aiohttp's cap, kept)
BODY_HIGH = 256 * 1024     # unread request-body bytes before reading from the client pauses
LINGERING_TIME = 10.0      # seconds an unread body is read and dropped after the answer (aiohttp's)
_VERSIONS = {"1.1": HttpVersion11, "1.0": HttpVersion10}
# written at accept, before any request: the same JSON error shape as every other answer
OVER_LIMIT = E.raw_response(E.Shed("connections", "too many open connections (server.max_connections)"), None)

# headers a request may carry once (aiohttp's list): a second one is a 400
_SINGLETONS = frozenset({b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
                         b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent"})
# reasons reading from a client is paused (a bit each)
_HOLD_BODY, _HOLD_QUEUE = 1, 2


# An oversized head is refused in the same words on both servers (proxy/accept.py uses these).
def uri_too_long() -> E.ProxyError:
    return E.UriTooLong("request line exceeds server.max_line_bytes")


def field_too_large() -> E.ProxyError:
    return E.HeaderFieldTooLarge("a header line exceeds server.max_field_bytes")


def too_many_headers() -> E.ProxyError:
    return E.HeadersTooLarge("too many header lines in the request")


def log_refusal(err: E.ProxyError, reason: str, peer: str | None) -> str:
    """The one INFO line (never a traceback) for a request the parser refused; its new request id."""
    rid = new_request_id()
    log.info("rejected malformed request", extra={"fields": {
        "request_id": rid, "status": err.status, "reason": reason, "peer": peer}})
    return rid


def _with(items: list | tuple, item) -> list:
    """``items`` with ``item`` appended: a connection's waiting lists are () while empty."""
    if items:
        items.append(item)
        return items
    return [item]


def sends_now(writer: StreamWriter) -> bool:
    """Whether :func:`send_now` can write this answer's (non-empty) chunks: its headers are sent
    and it needs nothing that only aiohttp's ``write`` does (compression, a Content-Length to clip
    to, hooks). Once true, it stays true for the answer's life."""
    return (writer._headers_written and writer._compress is None and writer.length is None
            and writer._on_chunk_sent is None and writer.on_body_write is None)


def send_now(writer: StreamWriter, chunk: bytes) -> bool:
    """Write a body chunk through aiohttp's ``StreamWriter`` without its ``write`` coroutine (one
    object fewer per SSE event): True when written; False when the answer needs what only
    ``write`` does (see :func:`sends_now`), and the caller awaits ``writer.write``. The chunk
    framing stays aiohttp's."""
    if not chunk or not sends_now(writer):
        return False
    if writer.chunked:
        writer._write_chunked_payload(chunk)
    else:
        writer._write(chunk)
    return True


def _peer(transport) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if isinstance(peer, (list, tuple)) else peer


class Body:
    """A request body as it arrives, for ``readany()`` / ``read()`` (aiohttp's StreamReader API
    as the forwarder uses it). Unread bytes are bounded: above :data:`BODY_HIGH` the connection
    stops reading until the handler takes them."""

    __slots__ = ("_conn", "_chunks", "_size", "_eof", "_waiter", "_exc")

    def __init__(self, conn: "Connection"):
        self._conn = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._waiter = None
        self._exc = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH:
            self._conn.hold(_HOLD_BODY)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._eof:
            self._exc = exc
            self._wake()

    def is_eof(self) -> bool:
        return self._eof and not self._chunks

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def readany(self) -> bytes:
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._waiter = self._conn._loop.create_future()
            await self._waiter
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._size > BODY_HIGH:
            self._conn.release(_HOLD_BODY)
        self._size = 0
        return data

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)


class _NoBody:
    """The body of a request that declares none."""

    __slots__ = ()

    def is_eof(self) -> bool:
        return True

    def fail(self, exc) -> None:
        pass

    def feed_eof(self) -> None:
        pass

    async def readany(self) -> bytes:
        return b""

    async def read(self) -> bytes:
        return b""


NO_BODY = _NoBody()


class Request:
    """One parsed request, with the part of aiohttp's ``BaseRequest`` API the layers use:
    ``method``, ``raw_path`` (str), ``version``, ``raw_headers`` ((bytes, bytes) pairs as sent),
    ``headers`` (a case-insensitive view, built on first use), ``content`` / ``read()``,
    ``body_exists``, ``content_length``, ``keep_alive``, ``transport``, ``writer``, ``protocol``,
    ``remote``, ``host``, ``scheme``."""

    __slots__ = ("method", "raw_path", "version", "raw_headers", "keep_alive", "content", "content_length",
                 "body_exists", "protocol", "_payload_writer", "_headers")

    scheme = "http"
    # upgrades never reach the layers from this server (they are handed to aiohttp's), so the
    # upgrade branch needs no header lookup for these requests
    plain = True

    def __init__(self, conn: "Connection", method: str, raw_path: str, version, raw_headers: list,
                 keep_alive: bool, content, content_length: int | None):
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.keep_alive = keep_alive
        self.content = content
        self.content_length = content_length
        self.body_exists = content is not NO_BODY
        self.protocol = conn
        self._payload_writer = StreamWriter(conn, conn._loop)
        self._headers = None

    @property
    def headers(self) -> CIMultiDictProxy:
        h = self._headers
        if h is None:
            h = self._headers = CIMultiDictProxy(CIMultiDict(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]))
        return h

    @property
    def transport(self):
        return self.protocol.transport

    @property
    def writer(self) -> StreamWriter:
        return self._payload_writer

    @property
    def remote(self) -> str | None:
        return _peer(self.protocol.transport)

    @property
    def host(self) -> str:
        """The Host header, else the address the client connected to (never a DNS lookup)."""
        host = self.headers.get("Host")
        if host:
            return host
        tr = self.protocol.transport
        local = tr.get_extra_info("sockname") if tr is not None else None
        return str(local[0]) if isinstance(local, (list, tuple)) else "localhost"

    async def read(self) -> bytes:
        return await self.content.read()

    def release_head(self) -> None:
        """The answer has started: nothing reads the request's headers again (no retry after
        that point), so a long stream keeps neither them (~0.8 KiB) nor an idle parser."""
        self.raw_headers = ()
        self._headers = None
        self.protocol.park_parser()

    async def _prepare_hook(self, response) -> None:  # aiohttp's StreamResponse.prepare calls it
        return None


class _Reject(Exception):
    """A head refused while it is parsed (too long, too many lines): raised out of a callback."""

    def __init__(self, err: E.ProxyError):
        super().__init__(str(err))
        self.err = err


class Connection(BaseProtocol):
    """One client connection (see the module docstring)."""

    __slots__ = ("server", "_hp", "_url", "_fields", "_line", "_in_head", "_building", "_fresh",
                 "_queue", "_task", "_head_timer", "_ka_timer", "_holds", "_close", "_linger",
                 "_dead", "_current")

    def __init__(self, server: "TrafficServer"):
        super().__init__(server.loop)
        self.server = server
        self._hp = httptools.HttpRequestParser(self)
        self._url = b""
        self._fields: list | None = None   # the head's fields while it is parsed (none while it is served)
        self._line = 0             # bytes of a head line still arriving (bounded by the limits)
        self._in_head = False
        self._building: Request | None = None   # the request whose body is being parsed
        # both () while empty, a list only while something waits: an open stream keeps no empty
        # list (56 B each); a deque would cost 624 B
        self._fresh: list | tuple = ()   # requests parsed from the current read (dispatched after it)
        self._queue: list | tuple = ()   # requests (or a refusal, or an upgrade) waiting
        self._task: asyncio.Task | None = None  # the request being answered
        self._current: Request | None = None
        self._head_timer = None
        self._ka_timer = None
        self._holds = 0
        self._close = False        # close after the current request (drain, HTTP/1.0, errors)
        self._linger = LINGERING_TIME
        self._dead = False         # refused or handed over: ignore further bytes

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport) -> None:
        srv = self.server
        if srv.nodelay_by_loop:
            self.transport = transport  # all BaseProtocol.connection_made does but set TCP_NODELAY again
        else:
            super().connection_made(transport)
        if srv.open_count() >= srv.max_connections:
            self._dead = True
            transport.write(OVER_LIMIT)
            transport.close()
            if srv.on_shed is not None:
                srv.on_shed()
            return
        srv.connections.add(self)
        # the first head is due within the deadline from accept: a client that connects and sends
        # nothing would otherwise hold its slot for the whole keep-alive timeout
        self._head_timer = self._loop.call_later(srv.head_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        hp = self._hp
        if hp is None:
            hp = self._hp = httptools.HttpRequestParser(self)
        try:
            hp.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgrade(data[e.args[0]:])
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._refuse(cause.err if isinstance(cause, _Reject) else E.BadRequest("malformed HTTP request"),
                         type(cause).__name__ if isinstance(cause, _Reject) else type(e).__name__)
            return
        except httptools.HttpParserError as e:
            msg = str(e) or type(e).__name__
            if "HTTP version" in msg:
                err = E.VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served on this port")
            elif "after `Connection: close`" in msg and self._fresh_or_busy():
                # bytes after a request that closes the connection: answered, then closed
                self._dead = True
                self._close = True
                self._dispatch()
                return
            else:
                err = E.BadRequest("malformed HTTP request: " + msg.split("\n", 1)[0].strip())
            self._refuse(err, type(e).__name__)
            return
        if self._in_head:
            # a head line still arriving: bounded here, since the parser keeps it whole until its end
            nl = data.rfind(b"\n")
            self._line = self._line + len(data) if nl < 0 else len(data) - nl - 1
            if self._line > self.server.max_head_line:
                self._refuse(field_too_large(), "LineTooLong")
                return
        if self._fresh:
            self._dispatch()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self._dead = True
        self._hp = None   # the parser calls back into this object: no cycle outlives the connection
        self._cancel_timers()
        self.server.connections.discard(self)
        gone = ConnectionResetError("Connection lost")
        if self._building is not None:
            self._building.content.fail(gone)
        for item in self._queue:
            if isinstance(item, Request):
                item.content.fail(gone)
        if self._current is not None:
            self._current.content.fail(gone)
        if self._task is not None and not self._task.done():
            self._task.cancel()   # handler cancellation: nobody is left to answer

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._fields = []
        self._line = 0
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        if self._head_timer is None:
            # a later head: due within the deadline from its first byte
            self._head_timer = self._loop.call_later(self.server.head_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_line:
            raise _Reject(uri_too_long())

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        if len(fields) >= MAX_HEADERS:
            raise _Reject(too_many_headers())
        if len(name) > self.server.max_field or len(value) > self.server.max_field:
            raise _Reject(field_too_large())
        fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._line = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        hp = self._hp
        clen = None
        chunked = False
        seen = set()
        for k, v in self._fields:
            kl = k.lower()
            if kl in _SINGLETONS:
                if kl in seen:
                    # two Hosts (or lengths, types, ...): which one counts is ambiguous, so neither
                    raise _Reject(E.BadRequest(f"malformed HTTP request: duplicate {k.decode('latin-1')!r} header"))
                seen.add(kl)
                if kl == b"content-length":
                    clen = int(v) if v.strip().isdigit() else None
                elif kl == b"transfer-encoding":
                    chunked = b"chunked" in v.lower()
        v = hp.get_http_version()
        version = _VERSIONS.get(v)
        if version is None:  # 0.9 or 2.0: parsed, and refused with 505 by the target check
            major, _, minor = v.partition(".")
            version = (int(major), int(minor or 0)) if major.isdigit() else (0, 9)
        try:
            path = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise _Reject(E.BadRequest("malformed HTTP request: the request target is not ASCII")) from None
        content = Body(self) if chunked or (clen is not None and clen > 0) else NO_BODY
        req = Request(self, hp.get_method().decode("ascii"), path, version, self._fields,
                      hp.should_keep_alive(), content, clen)
        self._fields = None
        self._url = b""
        self._building = req
        self._fresh = _with(self._fresh, req)

    def on_body(self, body: bytes) -> None:
        self._building.content.feed(body)

    def on_message_complete(self) -> None:
        req = self._building
        if req is not None:
            req.content.feed_eof()
            self._building = None

    # ------------------------------------------------------------------ flow control
    def hold(self, why: int) -> None:
        if not self._holds and self.transport is not None:
            self._pause_transport_reading()
        self._holds |= why

    def release(self, why: int) -> None:
        if self._holds & why:
            self._holds &= ~why
            if not self._holds:
                self._resume_transport_reading()

    def park_parser(self) -> None:
        """Drop the parser between messages (a stream's client sends nothing for its whole life:
        ~0.9 KiB a stream); the next bytes get a fresh one, which is all a parser between
        messages is."""
        if not self._in_head and self._building is None and not self._dead:
            self._hp = None

    def stop_lingering(self) -> None:
        """Close right after the current answer instead of reading (up to 10 s) the rest of a
        body nobody will use: for a client already too slow to send it."""
        self._linger = 0.0

    # ------------------------------------------------------------------ requests
    def _fresh_or_busy(self) -> bool:
        return bool(self._fresh) or self._task is not None

    def _dispatch(self) -> None:
        fresh, self._fresh = self._fresh, ()
        if self._queue:
            self._queue.extend(fresh)
        else:
            self._queue = fresh
        if self._task is None:
            self._next()
        if self._queue:
            self.hold(_HOLD_QUEUE)  # pipelined: read on once they are answered

    def _next(self) -> None:
        while self._queue:
            item = self._queue.pop(0)
            if not self._queue:
                self._queue = ()
            if isinstance(item, Request):
                self._current = item
                self._task = self._loop.create_task(self._serve(item))
                if not self._queue:
                    self.release(_HOLD_QUEUE)  # its body may still be on the way
                return
            if isinstance(item, bytes):       # an upgrade, now that the requests before it are answered
                self._hand_over(item)
                return
            self._write_refusal(*item)        # a refused head: answered in its turn, then closed
            return
        self.release(_HOLD_QUEUE)
        if self._close or self._dead:
            if self.transport is not None:
                self.transport.close()
            return
        if self._ka_timer is None and self.transport is not None:
            self._ka_timer = self._loop.call_later(self.server.keepalive_timeout, self._idle_timed_out)

    async def _serve(self, req: Request) -> None:
        resp = None
        keep = False
        try:
            resp = await self.server.handler(req)
            await resp.prepare(req)
            await resp.write_eof()
            keep = bool(resp.keep_alive) and req.keep_alive
            if not req.content.is_eof():
                # read and drop the rest of the body even when closing: closing a socket with
                # unread bytes resets it, and the client could lose the answer it was just sent
                drained = await self._drop_body(req.content)
                keep = keep and drained
        except asyncio.CancelledError:
            pass  # the client left, or the layers ended the answer themselves (aborted)
        except ConnectionError:
            pass  # the client left while its answer was written
        except Exception:  # noqa: BLE001 - a bug in a layer; the errors layer normally answers everything
            log.exception("unhandled error while serving a request")
            self._write_500(resp)
        finally:
            self._task = None
            self._current = None
        if not keep:
            self._close = True
        if self._close:
            self._dead = True
            self._queue = ()
            if self.transport is not None:
                self.transport.close()
            return
        self._next()

    async def _drop_body(self, content) -> bool:
        """Read and drop the rest of a body the answer did not need; True when it all came."""
        if not self._linger:
            return False
        try:
            async with asyncio.timeout(self._linger):
                while await content.readany():
                    pass
        except (TimeoutError, ConnectionError):
            return False
        return content.is_eof()

    def _write_500(self, resp) -> None:
        tr = self.transport
        if tr is None:
            return
        if resp is None or not resp.prepared:
            tr.write(E.raw_response(E.ProxyError("internal error in the proxy"), None))
        tr.close()

    # ------------------------------------------------------------------ refusals and timers
    def _refuse(self, err: E.ProxyError, reason: str) -> None:
        """A head the proxy will not serve: answered in its turn with the JSON error shape, then
        the connection closes (what follows a malformed head cannot be framed)."""
        self._dead = True
        self._fresh = ()   # like aiohttp: the requests parsed from the same read are dropped
        building, self._building = self._building, None
        if building is not None and (building is self._current or building in self._queue):
            # its body broke off mid-way: that request fails (its handler answers), then we close
            building.content.fail(E.BadRequest("malformed request body: " + str(err)))
            self._close = True
            return
        self._queue = _with(self._queue, (err, reason))
        if self._task is None:
            self._next()

    def _write_refusal(self, err: E.ProxyError, reason: str) -> None:
        rid = log_refusal(err, reason, _peer(self.transport))
        self._cancel_timers()
        tr = self.transport
        if tr is not None:
            tr.write(E.raw_response(err, rid))
            tr.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.server.on_slow_client is not None:
            self.server.on_slow_client()
        if self.transport is not None:
            self.transport.close()

    def _idle_timed_out(self) -> None:
        self._ka_timer = None
        if self._task is None and not self._queue and self.transport is not None and not self._in_head:
            self.transport.close()

    def _cancel_timers(self) -> None:
        for t in (self._head_timer, self._ka_timer):
            if t is not None:
                t.cancel()
        self._head_timer = self._ka_timer = None

    # ------------------------------------------------------------------ upgrades
    def _upgrade(self, rest: bytes) -> None:
        req = self._fresh.pop() if self._fresh else self._building
        self._building = None
        if req is None:
            self._refuse(E.BadRequest("malformed HTTP request: an upgrade without its request"), "Upgrade")
            return
        major, minor = req.version
        head = [b"%s %s HTTP/%d.%d\r\n" % (req.method.encode(), req.raw_path.encode(), major, minor)]
        head += [b"%s: %s\r\n" % kv for kv in req.raw_headers]
        head.append(b"\r\n")
        self._dead = True
        # in its turn, after the requests before it; reading stays paused until then
        self._fresh = _with(self._fresh, b"".join(head) + rest)
        self._dispatch()

    def _hand_over(self, raw: bytes) -> None:
        """Give this connection to aiohttp's protocol (WebSocket and other upgrades)."""
        tr = self.transport
        self._cancel_timers()
        self.server.connections.discard(self)
        if tr is None or tr.is_closing():
            return
        self._holds = 0
        self._resume_transport_reading()
        proto = self.server.upgrades()
        self.transport = None
        self._hp = None
        tr.set_protocol(proto)
        proto.connection_made(tr)
        proto.data_received(raw)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Close when idle: now if no request is in progress, else after its answer."""
        self._close = True
        if self._task is None and not self._in_head and self.transport is not None:
            self._cancel_timers()
            self.transport.close()

    async def shutdown(self, timeout: float) -> None:
        """Give the request in progress ``timeout`` to finish, then cancel it; then close."""
        self._close = True
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait([task], timeout=timeout)
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()


class TrafficServer:
    """The protocol factory for the traffic port, and what the lifecycle drains and shuts down.

    ``upgrades`` is aiohttp's guarded server for the connections handed over at an upgrade; its
    connections count towards ``max_connections`` too."""

    def __init__(self, handler, *, loop, max_connections: int, head_timeout: float, keepalive_timeout: float,
                 max_line: int, max_field: int, upgrades, on_shed=None, on_slow_client=None):
        self.handler = handler
        self.loop = loop
        self.max_connections = max_connections
        self.nodelay_by_loop = loop_sets_nodelay(loop)
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_line = max_line
        self.max_field = max_field
        # a header line is at most a name and a value of max_field bytes each
        self.max_head_line = max(max_line, 2 * max_field) + 16
        self.upgrades = upgrades
        self.on_shed = on_shed
        self.on_slow_client = on_slow_client
        self.connections: set[Connection] = set()

    def __call__(self) -> Connection:
        return Connection(self)

    def open_count(self) -> int:
        return len(self.connections) + len(self.upgrades._connections)

    def pre_shutdown(self) -> None:
        for conn in list(self.connections):
            conn.close()
        self.upgrades.pre_shutdown()

    async def shutdown(self, timeout: float) -> None:
        await asyncio.gather(*(c.shutdown(timeout) for c in list(self.connections)),
                             self.upgrades.shutdown(timeout))
