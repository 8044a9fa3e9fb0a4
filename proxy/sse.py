"""Incremental, bounded Server-Sent Events scanner.

It sees the bytes as they pass and never holds an event: per line it keeps at most the first
``_KEEP`` bytes (enough for ``event: <name>``), so a 3 MB ``data:`` line costs a few ``find`` calls
and no copy. It tells the forwarder how many real events went by (comments such as LangGraph's
``: heartbeat`` are not events) and the name of the last one (a run that failed ends in ``error``).
"""
from __future__ import annotations

_KEEP = 64


class SSEScanner:
    """Feed chunks in order; read ``events``, ``last_event`` and ``error_seen`` at any time."""

    __slots__ = ("events", "last_event", "error_seen", "_line", "_line_len", "_has_field",
                 "_event_name", "_cr")

    def __init__(self) -> None:
        self.events = 0              # real events completed so far
        self.last_event = None       # name of the last completed event ("message" if unnamed)
        self.error_seen = False      # an `event: error` went by
        self._line = b""             # the start of the current (unfinished) line, bounded
        self._line_len = 0           # its full length so far
        self._has_field = False      # the event being built has a non-comment field
        self._event_name = None
        self._cr = False             # previous chunk ended in \r (a CRLF may be split)

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
                break
            if self._line_len:
                if self._line_len < _KEEP:
                    self._line += chunk[pos:min(end, pos + _KEEP - self._line_len)]
                self._line_len += end - pos
                line = self._line
            else:
                line = chunk[pos:min(end, pos + _KEEP)]
                self._line_len = end - pos
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
            self._has_field = False
            self._event_name = None
            return
        if line[:1] == b":":
            return  # a comment (heartbeat): keeps the connection alive, is not progress
        self._has_field = True
        if line.startswith(b"event:"):
            self._event_name = line[6:].strip().decode("utf-8", "replace")
