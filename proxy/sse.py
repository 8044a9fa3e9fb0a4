"""Incremental, bounded Server-Sent Events scanner.

It sees the bytes as they pass and never holds an event: per line it keeps at most the first
``_KEEP`` bytes (enough for ``event: <name>``), so a 3 MB ``data:`` line costs a few ``find`` calls
and no copy. It tells the forwarder how many real events went by (comments such as LangGraph's
``: heartbeat`` are not events) and the name of the last one (a run that failed ends in ``error``).

Optionally a *sink* may ask for the data of some events (the LLM usage inspector wants
``messages*``, ``values`` and ``updates``). When the sink has a ``prefixes`` tuple, only names that
start with one of them are offered. The scanner asks ``sink.wants(name)`` once, at the ``event:``
line, which answers how many bytes of that event it may keep (0: none). Keeping is by reference,
not by copy: the scanner notes ``(chunk, start, end, line_done)`` for each piece of the event's
lines after the ``event:`` line, so the held memory is the bound plus at most the two chunks the
event starts and ends in. Past the bound it keeps nothing more and reports ``parts=None``. At the
blank line ending the event it calls ``sink.event(name, parts)``; :func:`find_in`, :func:`rfind_in`
and :func:`event_data` read the parts without copying, or build the event's ``data`` per the SSE
rules. Fields before the ``event:`` line are not kept (LangGraph always writes ``event:``
first). The sink must not raise. Without a sink nothing changes and nothing is kept.
"""
from __future__ import annotations

_KEEP = 64


class SSEScanner:
    """Feed chunks in order; read ``events``, ``last_event`` and ``error_seen`` at any time."""

    __slots__ = ("events", "last_event", "error_seen", "_line", "_line_len", "_has_field",
                 "_event_name", "_cr", "_sink", "_prefixes", "_cap", "_cap_left")

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
        self._prefixes = getattr(sink, "prefixes", None) or ("",)
        self._cap = None             # (chunk, start, end, line_done) pieces of the wanted event's lines
        self._cap_left = 0           # bytes the sink still lets us keep; < 0: the wanted event went over

    @property
    def mid_event(self) -> bool:
        """True when the bytes so far end inside an event (a line or an event not terminated)."""
        return self._line_len > 0 or self._has_field or self._cr

    def feed(self, chunk: bytes) -> int:
        """Scan a chunk; returns the number of events it completed."""
        n = len(chunk)
        if n > 1 and chunk[-1] == 10 == chunk[-2] and not (self._line_len or self._has_field or self._cr):
            # the usual chunk: one whole event as LangGraph writes it, at an event boundary
            # (an optional ``event:`` line, one ``data:`` line, the blank line): no line walk.
            # Written for CPython 3.11's costs: ``b"\r" in chunk`` raises and clears a TypeError
            # before it searches (~10x ``13 in chunk``, a plain memchr), and a slice compare is
            # cheaper than ``startswith``, which parses its arguments from a format string
            d = chunk.find(b"\n") + 1 if chunk[:6] == b"event:" else 0
            if chunk.find(b"\n", d) == n - 2 and chunk[d:d + 5] == b"data:" and 13 not in chunk:
                return self._one_event(chunk, d, n)
        return self._walk(chunk, n)

    def _walk(self, chunk: bytes, n: int) -> int:
        """``feed`` line by line: any chunk, split anywhere."""
        before = self.events
        pos = 0
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
                    self._keep(chunk, pos, n, False)
                break
            if self._line_len:
                if self._line_len < _KEEP:
                    self._line += chunk[pos:min(end, pos + _KEEP - self._line_len)]
                self._line_len += end - pos
                line = self._line
            else:
                line = chunk[pos:min(end, pos + _KEEP)]
                self._line_len = end - pos
            if self._cap is not None and self._line_len:  # _keep, inlined: once per line of a wanted event
                self._cap_left -= end - pos + 1
                if self._cap_left < 0:
                    self._cap = None  # over the bound: drop what was kept; the event end reports None
                else:
                    self._cap.append((chunk, pos, end, True))
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

    def _one_event(self, chunk: bytes, d: int, n: int) -> int:
        """``feed`` of a chunk that is exactly one event: its ``data:`` line at ``d``, preceded by
        its ``event:`` line when ``d`` > 0. Counts and offers it to the sink as the line walk does."""
        if not d:
            self._counted(None)
            return 1
        given = _name(chunk[:min(d - 1, _KEEP)])  # the event line as far as the line walk keeps it
        name = self._counted(given)
        limit = self._wants(given)
        if limit > 0:  # the data line and its newline within the bound, or the event is lost
            self._sink.event(name, [(chunk, d, n - 2, True)] if n - 1 - d <= limit else None)
        return 1

    def _counted(self, given: str | None) -> str:
        """One more event, named by its ``event:`` field ``given`` (None or empty: "message")."""
        self.events += 1
        name = self.last_event = given or "message"
        if name == "error":
            self.error_seen = True
        return name

    def _wants(self, given: str) -> int:
        """Bytes of the event named ``given`` the sink may keep (0: none, or no sink)."""
        return self._sink.wants(given) if self._sink is not None and given.startswith(self._prefixes) else 0

    def _keep(self, chunk: bytes, start: int, end: int, line_done: bool) -> None:
        """Note a piece of a wanted event's line (a reference, no copy), within the sink's bound."""
        self._cap_left -= end - start + 1
        if self._cap_left < 0:
            self._cap = None  # over the bound: drop what was kept; the event end reports None
        else:
            self._cap.append((chunk, start, end, line_done))

    def _end_line(self, line: bytes) -> None:
        length = self._line_len
        self._line = b""
        self._line_len = 0
        if length == 0:
            if self._has_field:
                name = self._counted(self._event_name)
                if self._cap is not None:
                    cap = self._cap
                    self._cap = None
                    self._sink.event(name, cap)
                elif self._cap_left < 0:  # a wanted event that went over the sink's bound
                    self._cap_left = 0
                    self._sink.event(name, None)
            self._has_field = False
            self._event_name = None
            return
        if line[:1] == b":":
            return  # a comment (heartbeat): keeps the connection alive, is not progress
        self._has_field = True
        if line.startswith(b"event:"):
            self._event_name = _name(line)
            if self._cap is None and self._cap_left >= 0:
                limit = self._wants(self._event_name)
                if limit > 0:
                    self._cap = []
                    self._cap_left = limit


def _name(line: bytes) -> str:
    """The event name of an ``event:`` line (its kept start)."""
    return line[6:].strip().decode("utf-8", "replace")


def find_in(parts: list, needle: bytes) -> bool:
    """Does ``needle`` occur in the kept event (no copy unless the event spans chunks)?"""
    if len(parts) == 1:
        c, s, e, _ = parts[0]
        return c.find(needle, s, e) >= 0
    return needle in _join(parts)


def rfind_in(parts: list, needle: bytes) -> int:
    """Offset of the last ``needle`` in the kept event, or -1 (searched from the end)."""
    if len(parts) == 1:
        c, s, e, _ = parts[0]
        i = c.rfind(needle, s, e)
        return i - s if i >= 0 else -1
    return _join(parts).rfind(needle)


def event_data(parts: list) -> bytes:
    """The event's ``data``: its ``data:`` lines joined by ``\\n``, one leading space dropped."""
    if len(parts) == 1:
        c, s, e, _ = parts[0]
        if c.startswith(b"data:", s):  # the usual case: one data line in one chunk
            return c[s + 6:e] if c[s + 5:s + 6] == b" " else c[s + 5:e]
    out = []
    for ln in _join(parts).split(b"\n"):
        if ln.startswith(b"data:"):
            out.append(ln[6:] if ln[5:6] == b" " else ln[5:])
        elif ln == b"data":
            out.append(b"")
    return b"\n".join(out)


def _join(parts: list) -> bytes:
    return b"".join(c[s:e] + b"\n" if done else c[s:e] for c, s, e, done in parts)
