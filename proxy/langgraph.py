"""What the sidecar knows about LangGraph runs: failures inside a 200, and abandoned runs.

A LangGraph run that fails still answers 200: its stream ends with ``event: error`` and
``/runs/wait`` returns ``{"__error__": {...}}``. The tracker classifies runs from what passes
(the SSE scanner's last event, the first bytes of a wait body) without buffering anything.
The canceller stops a run whose client left, since the server keeps running it by default.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re

log = logging.getLogger("proxy.langgraph")

_ERROR_HEAD = b'{"__error__"'
_STATEFUL = re.compile(r"^(?:.*?)/threads/([^/?#]+)/runs/([^/?#]+)")
_STATELESS = re.compile(r"^(?:.*?)/runs/([^/?#]+)")


class RunTracker:
    """Sets ``ex.run_outcome`` for run endpoints: ``success``, ``run_error`` or ``cancelled``."""

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


class RunCanceller:
    """Cancels an abandoned run upstream, in the background, counted by result."""

    def __init__(self, pool, metrics, timeout: float = 5.0):
        self.pool = pool
        self.metrics = metrics
        self.timeout = timeout
        self.tasks: set[asyncio.Task] = set()

    def cancel_later(self, ex) -> None:
        ref = run_ref(ex.content_location)
        if ref is None:
            self.metrics.run_cancels.labels(ex.route.name, "no_run_id").inc()
            return
        t = asyncio.get_running_loop().create_task(self._cancel(ex.route.name, ex.request_id, *ref))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _cancel(self, route: str, request_id: str, thread_id: str | None, run_id: str) -> None:
        if thread_id is not None:
            path, body = f"/threads/{thread_id}/runs/{run_id}/cancel?action=interrupt", b""
        else:
            path, body = "/runs/cancel", json.dumps({"run_ids": [run_id], "action": "interrupt"}).encode()
        head = (f"POST {self.pool.base_path}{path} HTTP/1.1\r\nHost: ".encode() + self.pool.host_header
                + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-ID: %s\r\n"
                  b"X-Sidecar-Reason: client-disconnected\r\n\r\n" % (len(body), request_id.encode()))
        result = "failed"
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self.pool.acquire()
                conn.begin(head + body, first_byte=self.timeout, total=None, total_kind="request",
                           idle=self.timeout, head_only=False)
                status, _ = await conn.headers()
                while await conn.next_chunk() is not None:
                    pass
                result = "cancelled" if status < 300 else ("not_found" if status == 404 else "failed")
        except Exception as e:  # noqa: BLE001 - a failed cancel is counted and logged, never raised
            log.warning("could not cancel abandoned run", extra={"fields": {
                "run_id": run_id, "thread_id": thread_id, "error": str(e) or type(e).__name__}})
        finally:
            if conn is not None:
                self.pool.release(conn)
        self.metrics.run_cancels.labels(route, result).inc()
        log.info("cancelled abandoned run" if result == "cancelled" else "cancel of abandoned run did not succeed",
                 extra={"fields": {"run_id": run_id, "thread_id": thread_id, "result": result,
                                   "request_id": request_id}})
