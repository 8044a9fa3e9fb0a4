"""What the sidecar knows about LangGraph runs: failures inside a 200, and abandoned runs.

A LangGraph run that fails still answers 200: its stream ends with ``event: error`` and
``/runs/wait`` returns ``{"__error__": {...}}``. A run ended by a multitask ``interrupt`` shows
nothing at all (its stream just stops), and a join on a run that already ended replays nothing:
only the run's status tells. The tracker classifies runs from what passes (the SSE scanner's last
event, the first bytes of a wait body) without buffering anything, and confirms a clean end of a
run on a thread with one ``GET`` of the run. The canceller stops a run whose client left, since
the server keeps running it by default, unless the client asked to keep it. The wire facts all
this relies on are in docs/langgraph-wire.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from urllib.parse import parse_qsl

from .headers import upstream_head

log = logging.getLogger("proxy.langgraph")

_ERROR_HEAD = b'{"__error__"'
_STATEFUL = re.compile(r"^(?:.*?)/threads/([^/?#]+)/runs/([^/?#]+)")
_STATELESS = re.compile(r"^(?:.*?)/runs/([^/?#]+)")
# a run's status (GET /threads/{thread_id}/runs/{run_id}) → the run outcome counted
_STATUS_OUTCOME = {"success": "success", "error": "run_error", "timeout": "run_error",
                   "interrupted": "interrupted"}
_CHECK_MAX_BYTES = 256 * 1024  # a run record (kwargs included) is read whole; larger: outcome unknown


class RunTracker:
    """Sets ``ex.run_outcome`` for run endpoints: ``success``, ``run_error``, ``interrupted``,
    ``unknown`` (the run's status could not be read) or ``cancelled``.

    ``stream_end``/``wait_body`` see the answer; ``confirm`` (awaited by the forwarder after it
    released the exchange's connection) replaces a provisional ``success`` with the run's status.
    """

    def __init__(self, pool=None, timeout: float = 5.0):
        self.pool = pool
        self.timeout = timeout

    @staticmethod
    def body_head(chunk: bytes) -> bytes | None:
        """The first meaningful bytes of a wait body (the server pads with newlines while it waits)."""
        s = chunk.lstrip()
        return s[:32] if s else None

    @staticmethod
    def wait_body(ex, head: bytes) -> None:
        if ex.status != 200:
            return
        head = head.lstrip()
        if head.startswith(_ERROR_HEAD) or head.replace(b" ", b"").startswith(_ERROR_HEAD):
            ex.run_outcome = "run_error"
            log.warning("run failed inside a 200", extra={"fields": {"request_id": ex.request_id,
                                                                     "route": ex.route.name}})
        else:
            ex.run_outcome = "success"

    @staticmethod
    def stream_end(ex, scanner) -> None:
        if ex.status != 200 or ex.error is not None:
            return
        if scanner.error_seen:
            ex.run_outcome = "run_error"
            log.warning("run stream ended with an error event", extra={"fields": {
                "request_id": ex.request_id, "route": ex.route.name}})
        else:
            ex.run_outcome = "success"

    async def confirm(self, ex) -> None:
        """A run that looked successful: ask the server how it really ended.

        Only runs the client started or joined on its own thread are asked about: a stateless
        run's thread is temporary (deleted when the run ends; a stateless stream does not even
        name it), and a multitask interrupt needs a thread shared with another run anyway."""
        if ex.run_outcome != "success" or self.pool is None or not ex.path.startswith("/threads/"):
            return
        ref = run_ref(ex.content_location)
        if ref is None or ref[0] is None:
            return
        thread_id, run_id = ref
        try:
            status, body = await upstream_call(self.pool, "GET", f"/threads/{thread_id}/runs/{run_id}",
                                               request_id=ex.request_id, timeout=self.timeout,
                                               max_bytes=_CHECK_MAX_BYTES)
            run_status = json.loads(body).get("status") if status == 200 else None
        except Exception as e:  # noqa: BLE001 - an unreadable status is counted as unknown, never raised
            log.warning("could not read the run's status", extra={"fields": {
                "request_id": ex.request_id, "run_id": run_id, "error": str(e) or type(e).__name__}})
            run_status = None
        outcome = _STATUS_OUTCOME.get(run_status, "unknown")
        if outcome != "success":
            log.warning("run did not end in success", extra={"fields": {
                "request_id": ex.request_id, "route": ex.route.name, "run_id": run_id,
                "status": run_status}})
        ex.run_outcome = outcome


def run_ref(content_location: str | None) -> tuple[str | None, str] | None:
    """(thread_id or None, run_id) from a run's Content-Location header."""
    if not content_location:
        return None
    m = _STATEFUL.match(content_location)
    if m:
        return m.group(1), m.group(2)
    m = _STATELESS.match(content_location)
    if m and m.group(1) not in ("stream", "wait", "batch", "cancel", "crons"):
        return None, m.group(1)
    return None


async def upstream_call(pool, method: str, path: str, *, request_id: str, timeout: float,
                        max_bytes: int = 64 * 1024,
                        reason: bytes = b"run-check") -> tuple[int, bytes]:
    """One small request of the sidecar's own (a cancel, a status check), built like user
    traffic (:func:`proxy.headers.upstream_head`: base path, headers) on a pooled connection."""
    head = upstream_head(method, path, [(b"X-Sidecar-Reason", reason)], upstream=pool,
                         preserve_host=False, request_id=request_id, client_ip=None, proto="http",
                         body_framing=b"Content-Length: 0" if method == "POST" else None)
    conn = None
    try:
        async with asyncio.timeout(timeout):
            conn = await pool.acquire()
            conn.begin(head, first_byte=timeout, total=None, total_kind="request", idle=timeout,
                       head_only=False)
            status, _ = await conn.headers()
            parts, size = [], 0
            while (chunk := await conn.next_chunk()) is not None:
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"answer larger than {max_bytes} bytes")
                parts.append(chunk)
            return status, b"".join(parts)
    finally:
        if conn is not None:
            pool.release(conn)


# ---- the client's own disconnect choice ----

_IN_STRING = re.compile(rb'["\\]')
_STRUCT = re.compile(rb'["{}\[\]:,]')
_KEYS = {b"on_disconnect", b"stream_resumable"}
_SHORT = 64  # top-level strings longer than this are neither a key we want nor its value


class DisconnectIntent:
    """The run request's own choice on disconnect: the top-level ``on_disconnect`` and
    ``stream_resumable`` of its JSON body, read as the body streams by.

    ``feed(chunk)`` takes the body in any chunking; state is a few integers and at most
    ``_SHORT`` bytes, so a 100 MB body costs no memory, and the scan jumps from one JSON
    structural character (or string end) to the next at C speed. Strings are skipped without
    being decoded, so a message mentioning ``"on_disconnect"`` is never mistaken for the field.
    """

    __slots__ = ("depth", "in_str", "esc", "buf", "expect_key", "key", "literal", "values", "broken")

    def __init__(self):
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.buf: bytearray | None = None   # the current top-level string, while short enough
        self.expect_key = False
        self.key: bytes | None = None       # the top-level key whose value comes next
        self.literal = bytearray()          # a top-level true/false/null/number being read
        self.values: dict[bytes, object] = {}
        self.broken = False                  # not a JSON object: no choice can be read

    @classmethod
    def from_body(cls, body: bytes) -> "DisconnectIntent":
        it = cls()
        it.feed(body)
        return it

    def feed(self, chunk: bytes) -> None:
        if self.broken:
            return
        i, n = 0, len(chunk)
        while i < n:
            if self.in_str:
                if self.esc:
                    self.esc = False
                    self._collect(chunk[i:i + 1])
                    i += 1
                    continue
                m = _IN_STRING.search(chunk, i)
                if m is None:
                    self._collect(chunk[i:])
                    return
                j = m.start()
                self._collect(chunk[i:j + 1] if chunk[j] == 0x5C else chunk[i:j])
                if chunk[j] == 0x5C:  # backslash: the next byte is escaped, whichever chunk it is in
                    self.esc = True
                else:
                    self.in_str = False
                    self._string_done()
                i = j + 1
                continue
            m = _STRUCT.search(chunk, i)
            j = n if m is None else m.start()
            if self.depth == 1 and self.key is not None and len(self.literal) <= _SHORT:
                self.literal += chunk[i:j].strip()
            if m is None:
                return
            c = chunk[j]
            if c == 0x22:  # "
                self.in_str = True
                self.buf = bytearray() if self.depth == 1 else None
            elif c in b"{[":
                if self.depth == 0 and c != 0x7B:
                    self.broken = True
                    return
                if self.depth == 1:
                    self.key = None  # a compound value: not one we read
                self.depth += 1
                if self.depth == 1:
                    self.expect_key = True
            elif c in b"}]":
                if self.depth == 1:
                    self._literal_done()
                self.depth -= 1
                if self.depth < 0:
                    self.broken = True
                    return
            elif self.depth == 1:
                if c == 0x3A:  # :
                    self.expect_key = False
                elif c == 0x2C:  # ,
                    self._literal_done()
                    self.expect_key = True
            i = j + 1

    def _collect(self, part: bytes) -> None:
        buf = self.buf
        if buf is not None:
            if len(buf) + len(part) > _SHORT:
                self.buf = None
            else:
                buf += part

    def _string_done(self) -> None:
        if self.depth != 1:
            return
        raw, self.buf = self.buf, None
        text = None
        if raw is not None:
            try:
                text = json.loads(b'"' + bytes(raw) + b'"')
            except ValueError:
                text = None
        if self.expect_key:
            self.key = text.encode() if text is not None and text.encode() in _KEYS else None
            self.literal = bytearray()
        elif self.key is not None:
            self.values[self.key] = text
            self.key = None

    def _literal_done(self) -> None:
        if self.key is not None and self.literal:
            lit = bytes(self.literal)
            self.values[self.key] = {b"true": True, b"false": False, b"null": None}.get(lit, lit)
        self.key = None
        self.literal = bytearray()

    @property
    def on_disconnect(self):
        return None if self.broken else self.values.get(b"on_disconnect")

    @property
    def stream_resumable(self):
        return None if self.broken else self.values.get(b"stream_resumable")

    def keeps_run(self) -> bool:
        """Did the client ask the run to outlive its connection? ``on_disconnect: "continue"``
        says so; without ``on_disconnect``, ``stream_resumable: true`` does (it means to rejoin).
        An explicit ``"cancel"`` wins over resumability."""
        od = self.on_disconnect
        if od is not None:
            return od != "cancel"
        return self.stream_resumable is True


def _client_keeps_run(ex) -> bool | None:
    """True/False: the client's choice for this exchange; None: it cannot be known."""
    if ex.method == "GET":
        # a join: the run belongs to whoever started it; the joiner's only say is the
        # cancel_on_disconnect query flag (the server honours it itself), false by default
        q = ex.path.partition("?")[2]
        flag = dict(parse_qsl(q)).get("cancel_on_disconnect", "false").lower()
        return flag not in ("true", "yes", "1")
    intent = getattr(ex, "run_intent", None)
    if intent is None and ex.body is not None:
        intent = DisconnectIntent.from_body(ex.body)
    if intent is None or intent.broken:
        return None
    return intent.keeps_run()


class RunCanceller:
    """Cancels an abandoned run upstream, in the background, counted by result.

    Results (``sidecar_run_cancels_total{result}``): ``cancelled``, ``not_found``, ``failed``,
    ``no_run_id``; and, without any request sent: ``kept`` (the client asked the run to go on,
    or its choice could not be read) and ``stateless`` (a ``/runs/stream`` run: the server
    offers no cancel a proxy can use, see docs/langgraph-wire.md).
    """

    def __init__(self, pool, metrics, timeout: float = 5.0):
        self.pool = pool
        self.metrics = metrics
        self.timeout = timeout
        self.tasks: set[asyncio.Task] = set()

    def cancel_later(self, ex) -> None:
        keeps = _client_keeps_run(ex)
        if keeps is not False:
            self.metrics.run_cancels.labels(ex.route.name, "kept").inc()
            log.info("client left; run kept running as the client asked" if keeps else
                     "client left; run kept running (the client's choice could not be read)",
                     extra={"fields": {"request_id": ex.request_id, "route": ex.route.name}})
            return
        ref = run_ref(ex.content_location)
        if ref is None:
            self.metrics.run_cancels.labels(ex.route.name, "no_run_id").inc()
            return
        if ref[0] is None:
            self.metrics.run_cancels.labels(ex.route.name, "stateless").inc()
            return
        t = asyncio.get_running_loop().create_task(self._cancel(ex.route.name, ex.request_id, *ref))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _cancel(self, route: str, request_id: str, thread_id: str, run_id: str) -> None:
        result = "failed"
        try:
            status, _ = await upstream_call(self.pool, "POST",
                                            f"/threads/{thread_id}/runs/{run_id}/cancel?action=interrupt",
                                            request_id=request_id, timeout=self.timeout,
                                            reason=b"client-disconnected")
            result = "cancelled" if status < 300 else ("not_found" if status == 404 else "failed")
        except Exception as e:  # noqa: BLE001 - a failed cancel is counted and logged, never raised
            log.warning("could not cancel abandoned run", extra={"fields": {
                "run_id": run_id, "thread_id": thread_id, "error": str(e) or type(e).__name__}})
        self.metrics.run_cancels.labels(route, result).inc()
        log.info("cancelled abandoned run" if result == "cancelled" else "cancel of abandoned run did not succeed",
                 extra={"fields": {"run_id": run_id, "thread_id": thread_id, "result": result,
                                   "request_id": request_id}})
