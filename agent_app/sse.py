"""Server-sent event framing byte-for-byte like the LangGraph server (CRLF line endings)."""

from __future__ import annotations

from typing import Any

from agent_app.serde import dumpb

SEP = b"\r\n"
HEARTBEAT = b": heartbeat" + SEP + SEP
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    # Tells nginx-style proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}


def frame(event: str, data: Any, event_id: str | None = None) -> bytes:
    """One SSE event: ``event:`` line, a single ``data:`` line of JSON, ``id:`` if any, a blank line."""
    name = event.replace("\r", "").replace("\n", "").encode()
    head = b"event: " + name + SEP + b"data: " + dumpb(data) + SEP
    if event_id is not None:
        # Only resumable runs number their events, as on the server (the id follows the data).
        head += b"id: " + event_id.encode() + SEP
    return head + SEP
