"""LLM usage read off the LangGraph wire: tokens, time to first token, cost, each LLM call once.

An agent run may call several models, and what it streams says so. :class:`LLMUsage` inspects one
exchange as its bytes pass: it is the :class:`~proxy.sse.SSEScanner`'s *sink* for SSE answers
(it asks for the data of ``messages*``, ``values`` and ``updates`` events only, at most
``llm.max_event_bytes`` of each, and never holds the stream), and it is fed the body of a
``runs/wait`` answer within the same bound. :class:`LLMTelemetry` is the process-wide half: model
label bounds, the price table, the capture budget and the Prometheus series.

Where usage is on the wire (langgraph-api 0.16):

- ``messages`` (stream mode ``messages-tuple``): ``[AIMessageChunk, metadata]`` per token; the
  *last* chunk of a call carries ``usage_metadata`` and ``response_metadata.model_name`` (some
  providers split usage over chunks, e.g. input on the first, output on the last: chunk usage of
  one message id is summed, as LangChain merges chunks). The metadata has ``ls_model_name``.
- ``messages/partial`` / ``messages/complete`` (stream mode ``messages``): the message so far,
  merged: its usage is the whole (replaces, never adds).
- ``values``: the whole state, *including every earlier turn of the thread*; ``updates``: what
  each node returned; the ``runs/wait`` answer: the final state, like the last ``values``.

Counting each call once, whatever the modes: usage is kept per message id (LangChain gives a
streamed call the same ``lc_run--…`` id in its chunks and in the state). A whole message's usage
replaces the chunk sum of its id. Which whole messages belong to *this* run:

- ``updates`` are node outputs, hence this run's;
- ``values``: the first ``values`` event of a run is its input applied to the thread (history +
  new input, before any node ran), so messages whose ids are in it are not this run's. Only ids
  of messages that carry usage matter, so a first snapshot without the usage marker is not parsed;
- a ``runs/wait`` answer (and ``values`` when the first snapshot could not be read) has no such
  snapshot: the run's input anchors it. The new messages are those after the last message that
  matches the input's last message (by id if the client gave one, else by role and content;
  add_messages appends the input after the history, and nodes append after it). With no usable
  input (``input: null``, a ``command`` resume, a body too big to keep) the answer is counted as
  unparsed rather than guessed: counting history would bill every earlier turn again.

Metrics are incremented as usage appears (deltas per message id), through a process-wide LRU of
counted ids (``SEEN_IDS``), so a second exchange that sees the same call (a thread stream joined
beside the run's own stream, a replay after ``Last-Event-ID``) adds nothing.

Cost per event (bench/llm_micro.py): an event whose name is not inspected costs one
``str.startswith`` in the scanner. An inspected event is kept by reference (no copy) and searched
for the ``"usage_metadata":{`` marker before any JSON is parsed: ``messages`` events are parsed
only until the first token is timed, then only the one per call that carries usage; ``updates``
only when they carry usage; ``values`` events are found redundant once ``updates`` or ``messages``
events were seen (they add nothing those did not say) and are then not inspected at all; in a
values-only stream a snapshot is searched from its end for the last usage marker and parsed only
when that marker moved (a new AI message with usage is appended after all earlier ones).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional


from .metrics import TABLE as METRICS_TABLE, Children, declare
from .sse import event_data, find_in, rfind_in

try:  # faster when present (it comes with langgraph); the stdlib parser otherwise
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

# ---- config (mounted as `llm:` in proxy.config.Config) ----


@dataclass(frozen=True)
class ModelPrice:
    """Price per million tokens, in the currency you write them in (the metric has no unit label)."""
    input: float
    output: float
    cache_read: Optional[float] = None   # per million cached input tokens read; null: the input price
    cache_write: Optional[float] = None  # per million input tokens written to the cache; null: the input price


@dataclass(frozen=True)
class LLMConfig:
    """LLM usage telemetry: which model names become labels, prices, and the inspection bounds."""
    enabled: bool = True
    models: tuple[str, ...] = ()          # model label allow-list; empty: the first max_models names seen
    max_models: int = 20                  # distinct model labels when no allow-list; the rest are "other"
    prices: dict[str, ModelPrice] = field(default_factory=dict)  # model name → price; priced models are labelled
    max_event_bytes: config.Size = 256 << 10   # copy of one inspected event or wait answer; bigger: unparsed
    max_buffered_bytes: config.Size = 32 << 20  # all such copies in the process together

    def validate(self, path: str, fail) -> None:
        """Cross-key rules, reported like proxy.config's (``fail(key_path, message)``)."""
        if isinstance(self.max_models, int) and self.max_models < 0:
            fail(f"{path}.max_models", f"must be >= 0, got {self.max_models}")
        if isinstance(self.max_event_bytes, int) and self.max_event_bytes <= 0:
            fail(f"{path}.max_event_bytes", f"must be > 0, got {self.max_event_bytes}")
        if (isinstance(self.max_event_bytes, int) and isinstance(self.max_buffered_bytes, int)
                and self.max_buffered_bytes < self.max_event_bytes):
            fail(f"{path}.max_buffered_bytes", f"must be >= max_event_bytes ({self.max_event_bytes}), "
                                               f"got {self.max_buffered_bytes}")
        for i, m in enumerate(self.models):
            if isinstance(m, str) and (not m or m in _RESERVED or len(m) > MAX_MODEL_LEN):
                fail(f"{path}.models[{i}]", f"expected a model name (1-{MAX_MODEL_LEN} characters, not "
                                            f"{' or '.join(sorted(_RESERVED))}), got {m!r}")
        for name, p in self.prices.items():
            if name in _RESERVED or len(name) > MAX_MODEL_LEN:
                fail(f"{path}.prices.{name}", f"expected a model name of at most {MAX_MODEL_LEN} characters, "
                                              f"not {' or '.join(sorted(_RESERVED))}")
            for k in ("input", "output", "cache_read", "cache_write"):
                v = getattr(p, k, None) if p is not None else None
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                    fail(f"{path}.prices.{name}.{k}", f"must be >= 0, got {v}")


# ---- metrics: entries in proxy.metrics.TABLE's format (name suffix, kind, help, labels, kwargs) ----

TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")
# the llm_* entries of proxy.metrics.TABLE (declared there, with every other metric)
TABLE = tuple(e for e in METRICS_TABLE if e[0].startswith("llm_"))


class LLMMetrics:
    """The TABLE's metrics on a registry, with the attribute names :class:`proxy.metrics.Metrics`
    gives table entries (``llm_tokens``, ``llm_time_to_first_token_seconds``, ...). Once the lines
    are in ``metrics.TABLE`` the ``Metrics`` object itself can be passed to :class:`LLMTelemetry`."""

    def __init__(self, registry, prefix: str = "sidecar"):
        declare(self, TABLE, registry, prefix)


# ---- process-wide half ----

SEEN_IDS = 16384        # counted message ids remembered per process (~2 MB), oldest forgotten first
MAX_CALLS = 4096        # LLM calls tracked per exchange; more are counted as unparsed
MAX_MODEL_LEN = 64
MAX_LABEL_CACHE = 4096  # raw model names remembered with their label
_RESERVED = frozenset({"other", "unknown"})
_AI = frozenset({"ai", "AIMessageChunk"})
# usage present, in compact JSON (orjson, as langgraph-api writes) or with json.dumps' default spacing
_MARK = b'"usage_metadata":{'
_MARK_SPACED = b'"usage_metadata": {'
_NAMES = {"messages": 1, "values": 2, "updates": 3, "messages/partial": 4, "messages/complete": 4,
          "messages/metadata": 5}
_ROLE = {"user": "human", "human": "human", "assistant": "ai", "ai": "ai", "system": "system",
         "developer": "system", "tool": "tool", "function": "function"}
_ZERO = (0, 0, 0, 0)


class LLMTelemetry:
    """Records LLM usage into Prometheus, each LLM call once per process; makes :class:`LLMUsage`.

    ``metrics`` has the attributes of :class:`LLMMetrics`. Model labels: a name in ``models`` or
    ``prices`` is its own label; without an allow-list the first ``max_models`` names seen are too;
    everything else is ``other`` (``unknown`` when the stream names no model). Issued labels stay
    for the process's life (a reload only adds). The capture budget (``max_buffered_bytes``) bounds
    what all exchanges may copy at once; an event that finds it spent is counted as unparsed.
    """

    def __init__(self, cfg: LLMConfig, metrics, clock=time.monotonic):
        self.m = metrics
        self.clock = clock
        self._counted: OrderedDict = OrderedDict()  # message id → (input, output, cache_read, cache_write) counted
        self._labels: dict[str, str] = {}
        self._free = 0                               # labels issued without an allow-list
        self._budget_used = 0
        self._child = Children()                     # llm_tokens, added to at every event of a stream
        self.configure(cfg)

    def configure(self, cfg: LLMConfig) -> None:
        """Apply a (reloaded) config; labels already issued keep their series."""
        self.cfg = cfg
        self._allowed = frozenset(cfg.models) | frozenset(cfg.prices)
        self._prices = dict(cfg.prices)
        self._labels = {k: v for k, v in self._labels.items() if v != "other"}

    def exchange(self, route: str, start: float, request_body: bytes | None = None,
                 exemplar: dict | None = None) -> "LLMUsage | None":
        """A new per-exchange inspector, or None when ``llm.enabled`` is false."""
        if not self.cfg.enabled:
            return None
        return LLMUsage(self, route, start, request_body=request_body, exemplar=exemplar,
                        max_event_bytes=self.cfg.max_event_bytes, clock=self.clock)

    # -- labels
    def model_label(self, raw: str | None) -> str:
        if not raw:
            return "unknown"
        label = self._labels.get(raw)
        if label is not None:
            return label
        if raw in self._allowed:
            label = raw
        elif (not self.cfg.models and self._free < self.cfg.max_models and len(raw) <= MAX_MODEL_LEN
              and raw not in _RESERVED and raw.isprintable()):
            label = raw
            self._free += 1
        else:
            label = "other"
        if len(self._labels) < MAX_LABEL_CACHE or label != "other":
            self._labels[raw] = label
        return label

    # -- the capture budget
    def reserve(self, n: int) -> bool:
        if self._budget_used + n > self.cfg.max_buffered_bytes:
            return False
        self._budget_used += n
        return True

    def release(self, n: int) -> None:
        self._budget_used -= n

    # -- recording
    def account(self, key, model: str | None, total: tuple, route: str) -> float:
        """Count what ``total`` (a call's usage so far) adds to what was counted for ``key``; returns
        the cost added. ``key`` is the message id (or a fresh object for a message without one)."""
        prev = self._counted.get(key)
        m = self.m
        label = self.model_label(model)
        if prev is None:
            prev = _ZERO
            m.llm_calls.labels(label, route).inc()
        else:
            self._counted.move_to_end(key)
        delta = tuple(t - p if t > p else 0 for t, p in zip(total, prev))
        if not any(delta):
            if key not in self._counted:
                self._remember(key, total)
            return 0.0
        self._remember(key, tuple(max(t, p) for t, p in zip(total, prev)))
        for typ, d in zip(TOKEN_TYPES, delta):
            if d:
                self._child(m.llm_tokens, typ, label, route).inc(d)
        price = self._prices.get(model) if model else None
        if price is None:
            return 0.0
        cost = cost_of(price, delta)
        if cost > 0:
            m.llm_cost.labels(label, route).inc(cost)
        return cost

    def _remember(self, key, total: tuple) -> None:
        self._counted[key] = total
        if len(self._counted) > SEEN_IDS:
            self._counted.popitem(last=False)

    def first_token(self, route: str, seconds: float, exemplar: dict | None) -> None:
        self.m.llm_time_to_first_token_seconds.labels(route).observe(seconds, exemplar)

    def per_token(self, route: str, seconds: float, exemplar: dict | None) -> None:
        self.m.llm_time_per_output_token_seconds.labels(route).observe(seconds, exemplar)

    def unparsed(self, route: str) -> None:
        self.m.llm_events_unparsed.labels(route).inc()


def cost_of(price: ModelPrice, usage: tuple) -> float:
    """Cost of (input, output, cache_read, cache_write) tokens; input includes the cache tokens."""
    inp, out, cr, cw = usage
    fresh = max(0, inp - cr - cw)
    cr_price = price.input if price.cache_read is None else price.cache_read
    cw_price = price.input if price.cache_write is None else price.cache_write
    return (fresh * price.input + cr * cr_price + cw * cw_price + out * price.output) / 1e6


# ---- per-exchange half ----


@dataclass
class LLMSummary:
    """What one exchange saw: the usage of the calls in it (for the access log and spans)."""
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    models: tuple[str, ...] = ()       # raw model names, in order of first use (at most 8)
    providers: tuple[str, ...] = ()    # ls_provider of messages-tuple metadata, when seen
    ttft: float | None = None          # seconds from request start to the first token
    time_per_output_token: float | None = None
    cost: float = 0.0                  # what this exchange added to sidecar_llm_cost_total
    unparsed: int = 0


class _Call:
    __slots__ = ("model", "chunk", "whole", "added")

    def __init__(self):
        self.model = None
        self.chunk = _ZERO     # sum of chunk usage
        self.whole = None      # usage of the whole message, once seen
        self.added = _ZERO     # what this exchange has handed to the telemetry so far


class LLMUsage:
    """Usage of one exchange. Contract: never raises, never holds more than ``max_event_bytes``
    (plus, for a wait answer, the same bound); anything it cannot read is counted as unparsed.

    For an SSE answer pass it as ``SSEScanner(sink=usage)``: the scanner calls :meth:`wants` and
    :meth:`event` (:meth:`feed_event` takes an event's ``data`` directly, without a scanner). For a
    ``runs/wait`` answer call :meth:`feed_body` per chunk and
    :meth:`end_body` (or :meth:`feed_wait_body` with a whole body). Call :meth:`finish` once at the
    end of the exchange (it releases the budget and records the time per output token); it
    returns the :class:`LLMSummary`. ``request_body`` (the run request's JSON, when it was kept)
    anchors wait answers, see the module docstring.
    """

    prefixes = ("messages", "values", "updates")  # the scanner offers only these names to wants()

    __slots__ = ("tel", "route", "start", "clock", "exemplar", "max", "_request", "_anchor", "_calls",
                 "_values_seen", "_baseline", "_reserved", "_body", "_body_len", "ttft", "_unparsed",
                 "_redundant", "_last_mark", "_mark",
                 "_models", "_providers", "_cost", "_finished", "_unattributed", "_hints")

    def __init__(self, telemetry: LLMTelemetry | None = None, route: str = "other", start: float | None = None,
                 *, request_body: bytes | None = None, exemplar: dict | None = None,
                 max_event_bytes: int = 256 << 10, clock=time.monotonic):
        self.tel = telemetry
        self.route = route
        self.clock = clock
        self.start = clock() if start is None else start
        self.exemplar = exemplar
        self.max = max_event_bytes
        self._request = request_body
        self._anchor = False          # False: not computed yet; None: no usable anchor
        self._calls: dict = {}
        self._values_seen = False
        self._baseline = None         # ids (with usage) in the run's first values snapshot
        self._reserved = 0
        self._body = None
        self._body_len = 0
        self.ttft = None
        self._unparsed = 0
        self._models: list[str] = []
        self._providers: list[str] = []
        self._cost = 0.0
        self._finished = False
        self._unattributed = False
        self._hints: dict = {}        # message id → model name from messages/metadata
        self._redundant = False       # updates or messages events seen: later values add nothing
        self._last_mark = -1          # offset of the last usage marker in the last values snapshot
        self._mark = None             # the usage marker in this server's JSON spacing, once known

    # ---------------------------------------------------------------- SSE sink
    def wants(self, name: str) -> int:
        """Bytes of this event's data to copy (0: not wanted). Called by the scanner per event."""
        kind = _NAMES.get(name)
        if kind is None:
            kind = _NAMES.get(name.partition("|")[0])  # "values|subgraph:id" is a subgraph's values event
            if kind is None:
                return 0
        if self._finished or (kind == 2 and self._redundant and self._values_seen):
            return 0
        tel = self.tel
        if tel is not None:  # tel.reserve(), inlined: this runs once per inspected event
            if tel._budget_used + self.max > tel.cfg.max_buffered_bytes:
                self._lost("values" if kind == 2 else name)
                return 0
            tel._budget_used += self.max
            self._reserved += self.max
        return self.max

    def event(self, name: str, parts: list | None) -> None:
        """The scanner's call: one whole event as :class:`~proxy.sse.SSEScanner` kept it (pieces
        of its lines; None: it was over the bound)."""
        if self._reserved:
            self.tel._budget_used -= self.max
            self._reserved -= self.max
        self._dispatch(name, parts)

    def feed_event(self, name: str, data: bytes | None) -> None:
        """One whole event given by its ``data`` (for a caller without a scanner; None: too big)."""
        if data is not None and len(data) > self.max:
            data = None
        self._dispatch(name, None if data is None else [(b"data: " + data, 0, len(data) + 6, True)])

    def _dispatch(self, name: str, parts: list | None) -> None:
        kind = _NAMES.get(name) or _NAMES.get(name.partition("|")[0])
        if parts is None:
            self._lost("values" if kind == 2 else name)
            return
        try:
            if self._mark is None:
                self._mark = _marker_for(parts)
            if kind == 1:
                self._tuple(parts)
            elif kind == 2:
                self._values(parts)
            elif kind == 3:
                self._updates(parts)
            elif kind == 4:
                self._partial(parts)
            elif kind == 5:
                self._metadata(parts)
        except Exception:  # noqa: BLE001 - any shape we did not expect: forwarded untouched, counted
            self._count_unparsed()

    def _lost(self, base: str) -> None:
        if base == "values" and not self._values_seen:
            self._values_seen = True  # the first snapshot is gone: later ones fall back to the input anchor
        self._count_unparsed()

    # ---------------------------------------------------------------- wait answers
    def feed_body(self, chunk: bytes) -> None:
        """A chunk of a (non-SSE) run answer; kept (by reference) up to the bound."""
        if self._finished:
            return
        if self._body is None:
            if self.tel is not None:
                if not self.tel.reserve(self.max):
                    self._body = ()
                    return
                self._reserved += self.max
            self._body = []
        if self._body == ():
            return
        self._body_len += len(chunk)
        if self._body_len > self.max:
            self._body = ()
        else:
            self._body.append(chunk)

    def end_body(self) -> None:
        """The answer is complete: read its usage."""
        body = self._body
        self._body = None
        if self._reserved:
            self.tel.release(self._reserved)
            self._reserved = 0
        if body is None:
            return
        if body == ():
            self._count_unparsed()
            return
        self.feed_wait_body(b"".join(body))

    def feed_wait_body(self, body: bytes) -> None:
        """A whole ``runs/wait`` answer (the final state, or ``{"__error__": ...}``)."""
        if len(body) > self.max:
            self._count_unparsed()
            return
        try:
            if _MARK not in body and _MARK_SPACED not in body:
                return
            state = _loads(body)
            if not isinstance(state, dict):
                raise ValueError("not a state")
            self._count_new(state)
        except Exception:  # noqa: BLE001
            self._count_unparsed()

    # ---------------------------------------------------------------- the end
    def finish(self) -> LLMSummary:
        """Release what is held, record the time per output token; idempotent."""
        if not self._finished:
            self._finished = True
            if self._reserved:
                self.tel.release(self._reserved)
                self._reserved = 0
            self._body = None
            s = self.summary()
            if s.time_per_output_token is not None and self.tel is not None:
                self.tel.per_token(self.route, s.time_per_output_token, self.exemplar)
            return s
        return self.summary()

    def summary(self) -> LLMSummary:
        inp = out = cr = cw = 0
        for c in self._calls.values():
            u = c.whole or c.chunk
            inp += u[0]
            out += u[1]
            cr += u[2]
            cw += u[3]
        tpot = None
        if self.ttft is not None and out > 0:
            tpot = max(0.0, self.clock() - self.start - self.ttft) / out
        return LLMSummary(len(self._calls), inp, out, cr, cw, tuple(self._models), tuple(self._providers),
                          self.ttft, tpot, self._cost, self._unparsed)

    # ---------------------------------------------------------------- event kinds
    def _tuple(self, parts: list) -> None:
        self._redundant = True
        if self.ttft is not None and not find_in(parts, self._mark):
            return  # the common token chunk once the first token is timed: no parse
        msg, meta = _loads(event_data(parts))[:2]
        self._first_token(msg)
        usage = msg.get("usage_metadata")
        if usage and msg.get("type") in _AI:
            model = _model_name(msg)
            if isinstance(meta, dict):
                model = model or meta.get("ls_model_name")
                prov = meta.get("ls_provider")
                if isinstance(prov, str) and prov not in self._providers and len(self._providers) < 8:
                    self._providers.append(prov)
            self._add(msg.get("id"), model, usage, chunk=msg.get("type") == "AIMessageChunk")

    def _partial(self, parts: list) -> None:
        self._redundant = True
        if self.ttft is not None and not find_in(parts, self._mark):
            return
        for msg in _loads(event_data(parts)):
            self._first_token(msg)
            if msg.get("usage_metadata") and msg.get("type") in _AI:
                self._add(msg.get("id"), _model_name(msg), msg["usage_metadata"], chunk=False)

    def _metadata(self, parts: list) -> None:
        # {message id: {"metadata": {... "ls_model_name": ...}}}: names the model before usage comes
        for mid, v in _loads(event_data(parts)).items():
            name = v.get("metadata", {}).get("ls_model_name") if isinstance(v, dict) else None
            if isinstance(name, str) and name and len(self._hints) < MAX_CALLS:
                self._hints[mid] = name

    def _values(self, parts: list) -> None:
        # Messages are appended: a new AI message with usage moves the last usage marker to the
        # right. Finding it from the end costs the bytes after the last such message, not the
        # whole snapshot; the snapshot is parsed only when that offset moved.
        last = rfind_in(parts, self._mark)
        if not self._values_seen:
            # the run's first snapshot: its input applied to the thread, before any node ran
            self._values_seen = True
            self._last_mark = last
            if last < 0:
                self._baseline = frozenset()
            else:
                self._baseline = frozenset(m.get("id") for m in _messages(_loads(event_data(parts)))
                                           if m.get("usage_metadata"))
            return
        moved = last != self._last_mark
        self._last_mark = last
        if last >= 0 and moved:
            state = _loads(event_data(parts))
            if not isinstance(state, dict):
                raise ValueError("not a state")
            self._count_new(state)

    def _updates(self, parts: list) -> None:
        self._redundant = True
        if not find_in(parts, self._mark):
            return
        upd = _loads(event_data(parts))
        base = self._baseline or ()
        for node, out in upd.items():
            if node.startswith("__") or not isinstance(out, dict):  # __interrupt__, a node that returned None
                continue
            for m in _messages(out, singles=True):
                if m.get("usage_metadata") and m.get("type") in _AI and m.get("id") not in base:
                    self._add(m.get("id"), _model_name(m), m["usage_metadata"], chunk=False)

    def _count_new(self, state: dict) -> None:
        """Count the AI messages of a whole state (values event, wait answer) that this run made."""
        if self._baseline is not None:
            new = [m for m in _messages(state) if m.get("id") not in self._baseline]
        else:
            new = self._after_anchor(state)
            if new is None:
                if not self._unattributed:  # once per exchange, not per snapshot
                    self._unattributed = True
                    self._count_unparsed()
                return
        for m in new:
            if m.get("usage_metadata") and m.get("type") in _AI:
                self._add(m.get("id"), _model_name(m), m["usage_metadata"], chunk=False)

    def _after_anchor(self, state: dict) -> list | None:
        anchor = self._input_anchor()
        if anchor is None:
            return None
        key, mid, typ, content = anchor
        msgs = state.get(key)
        if not isinstance(msgs, list):
            return None
        for i in range(len(msgs) - 1, -1, -1):
            m = msgs[i]
            if not isinstance(m, dict):
                continue
            if (m.get("id") == mid) if mid is not None else (m.get("type") == typ and m.get("content") == content):
                return [x for x in msgs[i + 1:] if isinstance(x, dict)]
        return None

    def _input_anchor(self):
        """(state key, id, type, content) of the run input's last message, or None."""
        if self._anchor is not False:
            return self._anchor
        self._anchor = None
        try:
            req = _loads(self._request) if self._request else None
            inp = req.get("input") if isinstance(req, dict) else None
            if isinstance(inp, dict):
                for key, v in inp.items():
                    if isinstance(v, list) and v:
                        last = _norm_input(v[-1])
                    elif isinstance(v, (str, dict)) and key == "messages":
                        last = _norm_input(v)
                    else:
                        continue
                    if last is not None:
                        self._anchor = (key, *last)
        except Exception:  # noqa: BLE001 - no anchor: the answer is counted as unparsed
            self._anchor = None
        return self._anchor

    # ---------------------------------------------------------------- bookkeeping
    def _first_token(self, msg) -> None:
        if self.ttft is not None or not isinstance(msg, dict) or msg.get("type") not in _AI:
            return
        if msg.get("content") or msg.get("tool_call_chunks") or msg.get("tool_calls"):
            self.ttft = max(0.0, self.clock() - self.start)
            if self.tel is not None:
                self.tel.first_token(self.route, self.ttft, self.exemplar)

    def _add(self, mid, model, usage: dict, chunk: bool) -> None:
        vals = _usage_tuple(usage)
        key = mid if isinstance(mid, str) and mid else object()  # no id: its own call, not deduplicated
        model = model or self._hints.get(key)
        c = self._calls.get(key)
        if c is None:
            if len(self._calls) >= MAX_CALLS:
                self._count_unparsed()
                return
            c = self._calls[key] = _Call()
        if model and isinstance(model, str):
            if c.model is None:
                c.model = model
            if model not in self._models and len(self._models) < 8:
                self._models.append(model)
        if chunk:
            c.chunk = tuple(a + b for a, b in zip(c.chunk, vals))
        else:
            c.whole = vals
        total = c.whole or c.chunk
        if self.tel is not None and total != c.added:
            c.added = total
            self._cost += self.tel.account(key, c.model, total, self.route)

    def _count_unparsed(self) -> None:
        self._unparsed += 1
        if self.tel is not None:
            self.tel.unparsed(self.route)


def _marker_for(parts: list) -> bytes:
    """The usage marker in the spacing this server uses, from the first key of an event's JSON
    (a key cannot hold an unescaped quote, so the first ``":`` ends it)."""
    data = event_data(parts[:1])[:256]
    sep = data.find(b'":')
    return _MARK_SPACED if sep >= 0 and data[sep + 2:sep + 3] == b" " else _MARK


def _usage_tuple(u: dict) -> tuple:
    """(input, output, cache_read, cache_write) of a usage_metadata dict; missing fields are 0."""
    if not isinstance(u, dict):
        raise ValueError("usage_metadata is not an object")
    details = u.get("input_token_details") or {}
    out = (u.get("input_tokens", 0), u.get("output_tokens", 0),
           details.get("cache_read", 0) or 0, details.get("cache_creation", 0) or 0)
    for v in out:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"bad token count {v!r}")
    return out


def _model_name(msg: dict) -> str | None:
    rm = msg.get("response_metadata")
    if isinstance(rm, dict):
        for k in ("model_name", "model", "model_id"):  # OpenAI/Anthropic, Ollama, Bedrock
            v = rm.get(k)
            if isinstance(v, str) and v:
                return v
    return None


def _messages(state: Any, singles: bool = False):
    """Message dicts in a state or node update: items of its top-level lists (and, for updates,
    a single message a node returned)."""
    if not isinstance(state, dict):
        return
    for v in state.values():
        if isinstance(v, list):
            for m in v:
                if isinstance(m, dict):
                    yield m
        elif singles and isinstance(v, dict) and "type" in v and "content" in v:
            yield v


def _norm_input(m) -> tuple | None:
    """(id, type, content) of an input message in any form add_messages accepts."""
    if isinstance(m, str):
        return None, "human", m
    if isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[0], str):
        return None, _ROLE.get(m[0], m[0]), m[1]
    if isinstance(m, dict):
        typ = m.get("type") or m.get("role")
        mid = m.get("id")
        return (mid if isinstance(mid, str) and mid else None), _ROLE.get(typ, typ), m.get("content")
    return None


# Last, so either module can be imported first: proxy.config imports this module for its schema,
# and config.Size in the annotations above are only resolved when a config is loaded.
from . import config  # noqa: E402,F401
