"""Keep-alive connection pool to the one upstream, parsed by httptools (llhttp, in C).

Why not aiohttp's ClientSession: per proxied request it costs several times the CPU of this
minimal client (see docs/benchmarks.md). This module does one thing: send a request head and body
on a pooled connection and hand back the response head and body chunks, with the timeouts the
caller armed enforced by one deadline per connection, kept in its pool's heap under one loop
timer (no per-chunk ``wait_for``, no timer object per connection).
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import socket
import ssl
from urllib.parse import urlsplit

import httptools

from .errors import PoolExhausted, UpstreamConnectError, UpstreamProtocolError, UpstreamReset, UpstreamTimeout

# Body bytes queued per connection before we stop reading from the upstream socket (a client
# slower than its upstream): the per-exchange bound is this plus one socket read, which the
# receive buffer below keeps to about twice its size.
_HIGH_WATER = 32 * 1024
_LOW_WATER = 8 * 1024
# The upstream socket's receive buffer (the kernel doubles it): the bound on one read, and never
# less than two segments of a loopback connection (MSS ~64 KiB: the sidecar's upstream is in its
# pod). Below one segment the kernel's receive-side silly-window avoidance advertises a zero
# window whenever the buffer is half full, and the upstream waits on its persist timer: at 16 KiB
# a 40 KB SSE event took ~0.2 s longer through the sidecar, a 150 KB one ~1 s, a 500 KB one 3.3 s
# (a LangGraph `values` event carries the whole state); at 64 KiB each is within a few ms of direct.
_RCVBUF = 64 * 1024
_MAX_HEAD_BYTES = 64 * 1024   # response header fields; llhttp itself sets no limit


def loop_sets_nodelay(loop) -> bool:
    """Does ``loop`` set TCP_NODELAY on every TCP socket it accepts or connects? uvloop does
    (``tests/proxy/test_units.py`` checks it), so setting it again costs a setsockopt and a socket
    object per connection for nothing: in a burst of thousands of new streams, ~3% of the CPU."""
    return type(loop).__module__.partition(".")[0] == "uvloop"


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection; serves one exchange at a time.

    Contract: ``begin()`` arms timeouts and writes the head; ``write_body``/``drain`` send the body;
    ``await headers()`` returns ``(status, raw_headers)``; ``await next_chunk()`` yields body bytes
    and ``None`` at the end (or, without a coroutine per chunk: await ``wait_chunk()`` while it
    gives a future, then ``take_chunk()``). Any failure (reset, parse error, a timeout firing) is raised from the
    next await as an :mod:`proxy.errors` exception that says what happened.
    """

    __slots__ = ("pool", "transport", "parser", "loop", "status", "raw_headers", "hdr_fut",
                 "chunks", "waiter", "done", "closed", "error", "paused", "keep_alive", "reused",
                 "idle_since", "last_rx", "last_event", "received_any", "head_only",
                 "_write_paused", "_drain_waiter", "_timer", "first_byte_at", "total_at",
                 "total_kind", "idle", "event_idle", "upgrade", "eof_body", "in_pool",
                 "head_only_last", "head_bytes", "queued", "sink")

    def __init__(self, pool: "UpstreamPool"):
        self.pool = pool
        self.loop = pool.loop
        self.transport = None
        self.parser = None
        self.in_pool = False
        self.head_only_last = False
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drain_waiter = None
        self._timer = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.head_bytes = 0
        self.raw_headers = []
        self.hdr_fut = None
        self.chunks = []   # a list, not a deque: 56 bytes, not 624, per connection (next_chunk takes it all)
        self.queued = 0
        self.waiter = None
        self.sink = None
        self.done = False
        self.error = None
        self.paused = False
        self.keep_alive = False
        self.received_any = False
        self.head_only = False
        self.first_byte_at = None
        self.total_at = None
        self.total_kind = "request"
        self.idle = None
        self.event_idle = None
        self.last_rx = 0.0
        self.last_event = 0.0
        self.upgrade = False
        self.eof_body = False

    # ---- asyncio.Protocol ----
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_rx = self.loop.time()
        if self.in_pool:
            # bytes while idle in the pool: the server is not speaking HTTP/1.1 keep-alive properly
            self.closed = True
            self.transport.abort()
            return
        if self.done:
            # bytes after the end of the answer (a Content-Length shorter than the body, or a
            # second, unrequested response): never parse them as the next request's answer
            return self._surplus()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as e:
            self._fail(UpstreamProtocolError(f"malformed response from upstream: {e}"))
        if self.sink is not None and self.chunks and not self.done:
            # body bytes for a relay parked on its waiter: it takes them here, in this read, or
            # says it must run (see set_sink)
            w = self.waiter
            if w is not None and not w.done() and not self.sink(self):
                w.set_result(None)
        if self.queued > _HIGH_WATER and not self.paused and not self.closed:
            # after the sink, not per parsed piece: a read the sink took leaves nothing queued,
            # and reading is not paused and resumed within the one read
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._cancel_timer()
        self.pool.busy.discard(self)
        if not self.done:
            if self.eof_body and self.status and exc is None:
                # a body delimited by connection close (no Content-Length, not chunked): a clean
                # FIN ends it; a reset (exc set) never does, or a cut body would pass for whole
                self.keep_alive = False
                self.on_message_complete()
            else:
                self._fail(UpstreamReset("upstream closed the connection" + (f": {exc}" if exc else "")))
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self.parser = None  # it holds this connection's callbacks: a cycle once the connection is gone

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _surplus(self) -> None:
        """The upstream sent more than one answer's worth: the connection is out of step with
        us, so it is closed and never reused (what was already parsed stays queued)."""
        self.keep_alive = False
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # ---- httptools callbacks ----
    # httptools goes on parsing after a message completes, when one read holds more bytes than
    # the answer: every callback ignores what comes after ``done`` (see _surplus).
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            return self._surplus()
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > _MAX_HEAD_BYTES:
            return self._fail(UpstreamProtocolError(
                f"upstream response headers exceed {_MAX_HEAD_BYTES} bytes"))
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return self._surplus()
        p = self.parser
        status = p.get_status_code()
        if status == 100 or status == 103:
            # interim response (103 Early Hints, a stray 100): not the answer, keep waiting
            self.raw_headers = []
            self.head_bytes = 0
            return
        if status == 101:
            # the pool never sends an upgrade request (Upgrade is hop-by-hop, WebSockets go
            # through proxy/websocket.py): switching protocols here would pass raw bytes on
            return self._fail(UpstreamProtocolError("upstream switched protocols (101) on a plain request"))
        if not 200 <= status <= 599:
            # 000, 099, 102, 6xx...: nothing a client could be handed as an answer
            return self._fail(UpstreamProtocolError(f"upstream answered with invalid status code {status:03d}"))
        self.status = status
        self.pool.progress += 1
        self.keep_alive = p.should_keep_alive()
        self.upgrade = p.should_upgrade()
        self.first_byte_at = None
        if self.idle and (self._timer is None or self._timer[0] > self.last_rx + self.idle):
            self._arm()  # the first-byte timer was set later than the idle deadline now due
        if not self.head_only and self.status not in (204, 304):
            framed = False
            for k, _ in self.raw_headers:
                kl = k.lower()
                if kl == b"content-length" or kl == b"transfer-encoding":
                    framed = True
                    break
            self.eof_body = not framed
        f = self.hdr_fut
        if f is not None and not f.done():
            f.set_result(None)
        if self.head_only:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.done:
            return self._surplus()
        self.chunks.append(body)
        self.queued += len(body)  # above _HIGH_WATER, reading stops at the end of this read (data_received)
        if self.sink is None:
            w = self.waiter
            if w is not None and not w.done():
                w.set_result(None)

    def on_message_complete(self) -> None:
        if self.done:
            return
        if self.status == 0:
            return  # the end of an interim 1xx response: the real answer follows
        self.done = True
        # the timer stays: it fires at most once per timeout period, finds nothing due and is
        # re-armed for the next exchange; arming and cancelling one per request costs more
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- failure and timers ----
    def _fail(self, exc: Exception) -> None:
        if self.done:
            # e.g. a parse error in bytes that followed a complete answer
            return self._surplus()
        self.error = exc
        self.done = True
        self.keep_alive = False
        self._cancel_timer()
        f = self.hdr_fut
        if f is not None and not f.done():
            f.set_exception(exc)
            f.exception()  # mark retrieved: a caller that already left must not log "never retrieved"
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _cancel_timer(self) -> None:
        self._timer = None  # its heap entry is stale now; the pool drops it when it comes up

    def _arm(self) -> None:
        """Schedule the one timer at the earliest moment any armed timeout could fire."""
        when = None
        for t in (self.first_byte_at, self.total_at,
                  (self.last_rx + self.idle) if (self.idle and not self.first_byte_at and not self.paused) else None,
                  (self.last_event + self.event_idle) if (self.event_idle and not self.first_byte_at) else None):
            if t is not None and (when is None or t < when):
                when = t
        self._cancel_timer()
        if when is not None and not self.done:
            self._timer = self.pool.schedule(self, when)

    def _on_timer(self) -> None:
        self._timer = None
        if self.done:
            return  # idle in the pool (or finished): the next begin() arms again
        now = self.loop.time()
        if self.first_byte_at is not None and now >= self.first_byte_at:
            return self._fail(UpstreamTimeout("first_byte"))
        if self.total_at is not None and now >= self.total_at:
            return self._fail(UpstreamTimeout(self.total_kind))
        if self.first_byte_at is None:
            # while reading is paused (the client is slow) upstream silence is not the upstream's fault
            if self.idle and not self.paused and now >= self.last_rx + self.idle:
                return self._fail(UpstreamTimeout("idle"))
            if self.event_idle and now >= self.last_event + self.event_idle:
                return self._fail(UpstreamTimeout("event_idle"))
        self._arm()

    # ---- the exchange API ----
    def begin(self, head: bytes, *, first_byte: float | None, total: float | None, total_kind: str,
              idle: float | None, head_only: bool) -> None:
        """Write the request head and arm the timeouts (seconds from now; None = off)."""
        self._reset_exchange()
        if self.parser is None or head_only or self.head_only_last:
            # llhttp resets itself after each complete message; a HEAD answer has no body it
            # can know of, so around HEAD a fresh parser keeps the framing right
            self.parser = httptools.HttpResponseParser(self)
        self.in_pool = False
        self.head_only = self.head_only_last = head_only
        self.hdr_fut = self.loop.create_future()
        now = self.loop.time()
        self.last_rx = self.last_event = now
        self.idle = idle
        self.first_byte_at = now + first_byte if first_byte else None
        if total:
            self.total_at = now + total
            self.total_kind = total_kind
        self.transport.write(head)
        due = self.first_byte_at if self.total_at is None or (
            self.first_byte_at is not None and self.first_byte_at < self.total_at) else self.total_at
        if due is not None and (self._timer is None or self._timer[0] > due):
            self._arm()

    def set_stream_timeouts(self, *, total: float | None, total_kind: str, idle: float | None,
                            event_idle: float | None) -> None:
        """After headers: switch to the stream's own limits (its max duration, event idle)."""
        now = self.loop.time()
        self.idle = idle
        self.event_idle = event_idle
        self.last_event = now
        self.total_at = now + total if total else None
        self.total_kind = total_kind
        self._arm()

    def write_body(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None
        if self.error is not None:
            raise self.error

    async def headers(self):
        """``(status, raw_headers)`` once the head has come. The headers are the caller's: the
        connection keeps no copy (a stream would hold them twice for its whole life)."""
        await self.hdr_fut
        self.hdr_fut = None  # done with: a stream keeps no spent future
        raw, self.raw_headers = self.raw_headers, []
        return self.status, raw

    async def next_chunk(self) -> bytes | None:
        while (w := self.wait_chunk()) is not None:
            await w
        return self.take_chunk()

    def set_sink(self, sink) -> None:
        """Hand body bytes to ``sink(conn)`` as they are read, while the relay is parked on the
        future :meth:`wait_chunk` gave it: ``sink`` takes them with :meth:`take_chunk` and returns
        True, or returns False (it took nothing, or must run) and the future is woken as without a
        sink. So a stream's event costs no future and no task step; the relay still runs for the
        end, a failure, and whatever the sink declines. The sink must not raise. ``None`` stops
        it (a relay that ends clears it: the sink holds its exchange)."""
        self.sink = sink

    def wait_chunk(self) -> asyncio.Future | None:
        """None when :meth:`take_chunk` has something to give (bytes, the end or the failure);
        else a future to await before asking again. A relay that awaits this future itself, not a
        coroutine around it, makes one object fewer per event, alive all the while a quiet stream waits."""
        if self.chunks or self.done:
            self.waiter = None
            return None
        w = self.waiter = self.loop.create_future()
        return w

    def take_chunk(self) -> bytes | None:
        """The body bytes queued now, as one chunk; None at the end; raises the exchange's failure.
        Only after :meth:`wait_chunk` said there is something to take."""
        chunks = self.chunks
        if not chunks:
            if self.error is not None:
                raise self.error
            return None
        # everything queued goes out as one chunk (what has arrived, never more: at most _HIGH_WATER
        # plus one read), so the queue is a plain list and never shifted item by item
        chunk = chunks.pop() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.queued -= len(chunk)
        if self.paused and self.queued <= _LOW_WATER:
            self.paused = False
            self.last_rx = self.loop.time()  # the silence while we did not read was ours
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return self.done and self.error is None and not self.closed and self.keep_alive and not self.upgrade

    def abort(self) -> None:
        self._cancel_timer()
        self.done = True
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class UpstreamPool:
    """A bounded LIFO pool of keep-alive connections to one ``http(s)://host:port``.

    ``acquire()`` returns an idle connection that is younger than ``keepalive_timeout`` or opens a
    new one within ``connect_timeout``; at ``max_connections`` callers wait for a release, at most
    ``pool_timeout`` in all, then get :class:`~proxy.errors.PoolExhausted` (the proxy's own
    capacity: a 503 shed, never an upstream failure). ``release()`` keeps a connection only if its
    exchange ended cleanly. ``busy`` holds the connections lent out now.

    ``connect_timeout`` is how long a connect may wait with no sign of life from the upstream. A
    connect that outlasts it while the upstream completed other connects or sent other answers
    (``progress``) met a full accept queue, not a dead upstream: the kernel dropped its SYN and
    would resend it only after 1, 3, 7 s. It is made again at once, within the caller's
    ``patience`` (the first-byte timeout), and counted by ``on_connect_wait``.
    """

    def __init__(self, url: str, *, connect_timeout: float, max_connections: int, keepalive_timeout: float,
                 pool_timeout: float = 0.5):
        u = urlsplit(url)
        self.loop = asyncio.get_running_loop()
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        default_port = self.port == (443 if u.scheme == "https" else 80)
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = (netloc if default_port else f"{netloc}:{self.port}").encode("idna")
        self.base_path = u.path.rstrip("/")
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        self.nodelay_by_loop = loop_sets_nodelay(self.loop)
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self.max_connections = max_connections
        self.busy: set[UpstreamConnection] = set()
        self.keepalive_timeout = keepalive_timeout
        self.idle: list[UpstreamConnection] = []
        self.open_count = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._sweeper = None
        self._closed = False
        self.progress = 0          # connects completed + answer heads received: the upstream is alive
        self.on_connect_wait = None  # called for each connect made again after a full accept queue
        # the connections' deadlines: (when, seq, connection) entries in a heap, one loop timer
        # for the earliest (a uvloop timer costs ~0.5 KiB; an entry 64 bytes). A connection's live
        # entry is its ``_timer``; others are stale, dropped as they come up or all at once when
        # the heap passes ``_compact_at`` (twice what the last compaction kept, plus 64)
        self._deadlines: list[tuple] = []
        self._seq = itertools.count()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0
        self._compact_at = 64

    def start(self) -> None:
        if self.keepalive_timeout > 0 and self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        # close idle connections before the upstream does, so none is reused as it closes
        while True:
            await asyncio.sleep(max(self.keepalive_timeout / 4, 0.05))
            deadline = self.loop.time() - self.keepalive_timeout
            keep = []
            for c in self.idle:
                if c.closed or c.idle_since < deadline:
                    self._discard(c)
                else:
                    keep.append(c)
            self.idle = keep

    def _discard(self, c: UpstreamConnection) -> None:
        c.abort()
        # its failure (an exception whose traceback holds the frames that hold this connection)
        # and the futures that carried it: dropped, so the whole exchange dies by reference counting
        c.error = c.hdr_fut = c.waiter = None
        self.open_count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def _take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        # reuse only connections well inside the keep-alive window
        limit = self.loop.time() - self.keepalive_timeout
        while idle:
            c = idle.pop()
            if not c.closed and c.idle_since >= limit:
                c.reused = True
                self.busy.add(c)
                return c
            self._discard(c)
        return None

    async def acquire(self, patience: float = 0.0) -> UpstreamConnection:
        c = self._take_idle() if self.idle else None
        if c is not None:
            return c
        if self.open_count < self.max_connections:
            return await self.connect(patience)
        # full: wait for a release, within one deadline however often another caller wins the slot
        deadline = self.loop.time() + self.pool_timeout
        while True:
            w = self.loop.create_future()
            self._waiters.append(w)
            try:
                async with asyncio.timeout_at(deadline):
                    await w
            except TimeoutError:
                raise PoolExhausted(f"no upstream connection became free within upstream.pool_timeout "
                                    f"({self.pool_timeout:g}s; {self.max_connections} connections busy)") from None
            except BaseException:
                if w.done() and not w.cancelled():
                    self._wake_one()  # we were handed a slot we no longer take: pass it on
                raise
            finally:
                if not w.done():
                    w.cancel()
                    try:
                        self._waiters.remove(w)  # so ``waiting`` counts only callers still waiting
                    except ValueError:
                        pass
            c = self._take_idle() if self.idle else None
            if c is not None:
                return c
            if self.open_count < self.max_connections:
                return await self.connect(patience)

    async def connect(self, patience: float = 0.0) -> UpstreamConnection:
        """A fresh connection (counted against max_connections), lent out as busy. Each try gets
        ``connect_timeout``; another follows while the upstream shows progress, until ``patience``
        seconds from now have passed (see the class docstring)."""
        self.open_count += 1
        loop = self.loop
        give_up = loop.time() + patience
        window = self.connect_timeout
        try:
            while True:
                seen = self.progress
                try:
                    async with asyncio.timeout(window):
                        _, conn = await loop.create_connection(
                            lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl)
                    break
                except TimeoutError:
                    window = min(self.connect_timeout, give_up - loop.time())
                    if self.progress == seen or window < 0.01:
                        raise
                    if self.on_connect_wait is not None:
                        self.on_connect_wait()
        except TimeoutError:
            self.open_count -= 1
            self._wake_one()
            raise UpstreamTimeout("connect") from None
        except OSError as e:
            self.open_count -= 1
            self._wake_one()
            raise UpstreamConnectError(f"cannot connect to upstream {self.host}:{self.port}: {e.strerror or e}") from None
        except BaseException:
            self.open_count -= 1
            self._wake_one()
            raise
        self.progress += 1
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                if not self.nodelay_by_loop:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # bounds one read (and what the kernel holds for us) to ~2x this: with _HIGH_WATER
                # it is what an exchange can hold of an answer its client is slow to take
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            except OSError:
                pass
        self.busy.add(conn)
        return conn

    def release(self, c: UpstreamConnection) -> None:
        self.busy.discard(c)
        if c.reusable() and not self._closed:
            c.in_pool = True
            c.idle_since = self.loop.time()
            self.idle.append(c)
            self._wake_one()
        else:
            self._discard(c)

    def schedule(self, conn: UpstreamConnection, when: float) -> tuple:
        """Call ``conn._on_timer()`` at loop time ``when`` unless ``conn._timer`` no longer is the
        entry returned (the connection re-armed or cancelled: the entry is stale)."""
        entry = (when, next(self._seq), conn)
        heap = self._deadlines
        heapq.heappush(heap, entry)
        if len(heap) > self._compact_at:
            heap[:] = [e for e in heap if e[2]._timer is e or e is entry]
            heapq.heapify(heap)
            self._compact_at = 2 * len(heap) + 64
        if self._deadline_timer is None or when < self._deadline_at:
            self._wake_at(when)
        return entry

    def _wake_at(self, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = self.loop.call_at(when, self._deadlines_due)

    def _deadlines_due(self) -> None:
        self._deadline_timer = None
        heap = self._deadlines
        now = self.loop.time()
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            conn = entry[2]
            if conn._timer is entry:
                conn._timer = None
                try:
                    conn._on_timer()  # may schedule again (always later than now)
                except Exception as e:  # noqa: BLE001 - one connection's failure must not stop the others' timeouts
                    self.loop.call_exception_handler({"message": "upstream timeout handler failed",
                                                      "exception": e, "protocol": conn})
        while heap and heap[0][2]._timer is not heap[0]:
            heapq.heappop(heap)
        if heap:
            self._wake_at(heap[0][0])
        elif self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def stats(self) -> dict:
        """True now: connections open (busy + idle + connecting), idle, callers waiting for one."""
        return {"open": self.open_count, "busy": len(self.busy), "idle": len(self.idle),
                "waiting": len(self._waiters), "max": self.max_connections}

    def fail_busy(self, exc: Exception) -> int:
        """End every exchange in flight with ``exc`` (the shutdown grace ran out): each
        forwarder wakes and ends its answer as cut. Returns how many there were."""
        busy = list(self.busy)
        for c in busy:
            c._fail(exc)
        return len(busy)

    async def close(self) -> None:
        self._closed = True
        if self._deadline_timer is not None and not self.busy:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in self.idle:
            c.abort()
        self.idle = []

