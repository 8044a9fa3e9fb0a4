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


def frame(event: str, data: Any) -> bytes:
    """One SSE event: ``event:`` line, a single ``data:`` line of JSON, a blank line."""
    name = event.replace("\r", "").replace("\n", "").encode()
    return b"event: " + name + SEP + b"data: " + dumpb(data) + SEP + SEP
