"""Incremental, bounded Server-Sent Events scanner.

It sees the bytes as they pass and never holds an event: per line it keeps at most the first
``_KEEP`` bytes (enough for ``event: <name>``), so a 3 MB ``data:`` line costs a few ``find`` calls
and no copy. It tells the forwarder how many real events went by (comments such as LangGraph's
``: heartbeat`` are not events) and the name of the last one (a run that failed ends in ``error``).

Optionally a *sink* may ask for the data of some events (the LLM usage inspector wants
``messages*``, ``values`` and ``updates``). The scanner asks ``sink.wants(name)`` once, at the
``event:`` line, which answers how many bytes of that event it may copy (0: none); the copy stops
at that bound (the event is then reported with ``data=None``), so even a wanted 3 MB event costs
at most the bound. At the blank line ending the event it calls ``sink.event(name, data)`` with the
event's ``data`` per the SSE rules (lines joined by ``\\n``, one leading space dropped). Fields
before the ``event:`` line are not copied (LangGraph always writes ``event:`` first). The sink must
not raise. Without a sink nothing changes and nothing is copied.
"""
from __future__ import annotations

_KEEP = 64


class SSEScanner:
    """Feed chunks in order; read ``events``, ``last_event`` and ``error_seen`` at any time."""

    __slots__ = ("events", "last_event", "error_seen", "_line", "_line_len", "_has_field",
                 "_event_name", "_cr", "_sink", "_cap", "_cap_left")

    def __init__(self, sink=None) -> None:
        self.events = 0              # real events completed so far
        self.last_event = None       # name of the last completed event ("message" if unnamed)
        self.error_seen = False      # an `event: error` went by
        self._line = b""             # the start of the current (unfinished) line, bounded
        self._line_len = 0           # its full length so far
        self._has_field = False      # the event being built has a non-comment field
        self._event_name = None
        self._cr = False             # previous chunk ended in \r (a CRLF may be split)
        self._sink = sink
        self._cap = None             # parts of the wanted event's lines (each line ends in \n)
        self._cap_left = 0           # bytes the sink still lets us copy; < 0: over its bound

    @property
    def mid_event(self) -> bool:
        """True when the bytes so far end inside an event (a line or an event not terminated)."""
        return self._line_len > 0 or self._has_field or self._cr

    def feed(self, chunk: bytes) -> int:
        """Scan a chunk; returns the number of events it completed."""
        before = self.events
        pos = 0
        n = len(chunk)
        if self._cr and n and chunk[0] == 10:  # the \n of a CRLF split across chunks
            pos = 1
        self._cr = False
        while pos < n:
            nl = chunk.find(b"\n", pos)
            cr = chunk.find(b"\r", pos, nl if nl >= 0 else n)
            end = cr if cr >= 0 else nl
            if end < 0:
                # unfinished line: remember only its start
                if self._line_len < _KEEP:
                    self._line += chunk[pos:pos + _KEEP - self._line_len]
                self._line_len += n - pos
                if self._cap is not None:
                    self._copy(chunk, pos, n, False)
                break
            if self._line_len:
                if self._line_len < _KEEP:
                    self._line += chunk[pos:min(end, pos + _KEEP - self._line_len)]
                self._line_len += end - pos
                line = self._line
            else:
                line = chunk[pos:min(end, pos + _KEEP)]
                self._line_len = end - pos
            if self._cap is not None and self._line_len:
                self._copy(chunk, pos, end, True)
            self._end_line(line)
            if end == cr:
                if cr + 1 == n:
                    self._cr = True
                    pos = n
                else:
                    pos = cr + 2 if chunk[cr + 1] == 10 else cr + 1
            else:
                pos = nl + 1
        return self.events - before

    def _copy(self, chunk: bytes, start: int, end: int, line_done: bool) -> None:
        """Copy part of a wanted event's line, within the sink's bound."""
        size = end - start + line_done
        self._cap_left -= size
        if self._cap_left < 0:
            self._cap = ()  # over the bound: keep scanning, copy nothing more, report data=None
        elif size:
            self._cap.append(chunk[start:end] + b"\n" if line_done else chunk[start:end])

    def _end_line(self, line: bytes) -> None:
        length = self._line_len
        self._line = b""
        self._line_len = 0
        if length == 0:
            if self._has_field:
                self.events += 1
                name = self._event_name or "message"
                self.last_event = name
                if name == "error":
                    self.error_seen = True
                if self._cap is not None:
                    cap = self._cap
                    self._cap = None
                    self._sink.event(name, _data(cap) if self._cap_left >= 0 else None)
            self._has_field = False
            self._event_name = None
            return
        if line[:1] == b":":
            return  # a comment (heartbeat): keeps the connection alive, is not progress
        self._has_field = True
        if line.startswith(b"event:"):
            self._event_name = line[6:].strip().decode("utf-8", "replace")
            if self._sink is not None and self._cap is None:
                limit = self._sink.wants(self._event_name)
                if limit > 0:
                    self._cap = []
                    self._cap_left = limit


def _data(parts: list) -> bytes:
    """The ``data`` of an event from its copied lines (each ending in ``\\n``)."""
    raw = b"".join(parts)
    if raw.startswith(b"data:") and raw.count(b"\n") == 1:  # the usual case: one data line only
        return raw[6:-1] if raw[5:6] == b" " else raw[5:-1]
    out = []
    for ln in raw.split(b"\n"):
        if ln.startswith(b"data:"):
            out.append(ln[6:] if ln[5:6] == b" " else ln[5:])
        elif ln == b"data":
            out.append(b"")
    return b"\n".join(out)
