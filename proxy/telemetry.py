"""Counts and times every request, and writes its one access-log line.

Runs inside the error layer, so it sees the exception that will become the error response and
labels it with the same status. Every label comes from a bounded set (see :mod:`proxy.metrics`).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
import time

from . import errors as E
from .headers import log_escape
from .langgraph import run_ref
from .exchange import until_end
from .outcome import count_failure, ending
from .tracing import RunInfo

log = logging.getLogger("proxy.errors")

_STREAM_OUTCOME = {"idle": "idle_timeout", "event_idle": "event_idle_timeout", "stream": "stream_timeout"}


class AccessLog:
    """One JSON (or text) line per request on stdout, written without the logging module.

    Lines are built with f-strings from values that are safe by construction (route names from
    config, sanitized request ids, numbers); only the method may come raw from a client and is
    JSON-escaped when unusual. Never a body, a header value or a query string.

    Lines wait in a list until :meth:`emit`, called after each batch of :class:`RecordQueue`
    (the ends recorded in one loop iteration) and after a record made at once: one write for the
    batch (at most ``PENDING`` lines wait; more are written at once). The image runs with
    ``PYTHONUNBUFFERED=1``, so every ``write`` on stdout is a system call, which one per request
    made under load (docs/benchmarks.md). A stream that buffers (stdout without
    ``PYTHONUNBUFFERED``) is flushed every second and at exit.
    """

    PENDING = 128

    def __init__(self, fmt: str = "json", stream=None):
        self.fmt = fmt
        self.out = stream or sys.stdout
        self._flusher = None
        self._lines: list[str] = []

    def start(self, loop) -> None:
        self._flusher = loop.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.flush()

    def emit(self) -> None:
        """Write the lines waiting, in one write."""
        lines, self._lines = self._lines, []
        if lines:
            try:
                self.out.write("".join(lines))
            except (OSError, ValueError):
                pass

    def flush(self) -> None:
        self.emit()
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass

    def write(self, ex, status: int, duration: float, outcome: str, who: str | None, probe: str | None,
              llm=None, at: float | None = None) -> None:
        method = ex.method if ex.method.isalpha() and len(ex.method) < 16 else json.dumps(ex.method)[1:-1]
        route = ex.route.name if ex.route is not None else "other"
        up = f"{ex.upstream_time:.6f}" if ex.upstream_time else "null"
        ttfb = f"{ex.ttfb:.6f}" if ex.ttfb is not None else "null"
        ended = "null" if who is None else f'"{who}"'
        if self.fmt == "json":
            line = (f'{{"time":{at or time.time():.3f},"type":"access","request_id":"{log_escape(ex.request_id)}",'
                    f'"method":"{method}","route":"{route}","status":{status},"duration":{duration:.6f},'
                    f'"upstream_duration":{up},"ttfb":{ttfb},"request_bytes":{ex.req_bytes},'
                    f'"response_bytes":{ex.resp_bytes},"outcome":"{outcome}",'
                    f'"ended_by":{ended},"attempts":{ex.attempts}'
                    + (f',"events":{ex.events}' if ex.is_stream else "")
                    + (f',"run":"{ex.run_outcome}"' if ex.run_outcome else "")
                    + (f',"trace_id":"{ex.trace.trace_id}"' if ex.trace is not None else "")
                    + (f',"input_tokens":{llm.input_tokens},"output_tokens":{llm.output_tokens}'
                       + (f',"ttft":{llm.ttft:.6f}' if llm.ttft is not None else "") if llm is not None and llm.calls else "")
                    + (f',"probe":"{probe}"' if probe else "") + "}\n")
        else:
            line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(at))} {log_escape(ex.request_id, quote=True)} {method} {route} {status} "
                    f"{duration * 1000:.1f}ms up={up} bytes={ex.req_bytes}/{ex.resp_bytes} {outcome} ended_by={who or '-'}\n")
        lines = self._lines
        lines.append(line)
        if len(lines) >= self.PENDING:
            self.emit()


class RecordQueue:
    """The bookkeeping of ended exchanges (metrics, access log, LLM usage, span), done a few at a
    time after the I/O that is waiting, not in the callback that ended them.

    Streams opened in one burst end in one burst: hundreds of last chunks arrive in one loop
    iteration, and each stream's end costs ~50 µs of counting and logging. Done inline, that is
    one iteration of tens of milliseconds, and every other stream's event read in it waits
    behind it (docs/benchmarks.md, "Stream ends"). Here each iteration records ``BATCH``, or an
    eighth of what waits when that is more: a burst is spread over the next iterations, and under
    a load that ends more exchanges per iteration than ``BATCH`` the queue settles at about eight
    iterations' worth instead of growing to its bound.

    Nothing is lost from what readers see: every reader of the records (``/metrics``, ``/status``,
    the shutdown) calls :meth:`flush` first, and each record carries the verdict, the duration and
    the time taken when its exchange ended, not when it is written. Bound: at most ``LIMIT``
    records wait (each holds one ended exchange); past that an end is recorded at once (its log
    line then comes before those of the ends still waiting, with its own time).
    """

    BATCH = 16
    LIMIT = 4096

    def __init__(self, loop, after=None):
        self.loop = loop
        self.after = after  # called after each batch (the access log's one write for it)
        self._q = collections.deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._q)

    def add(self, fn, *args) -> None:
        if len(self._q) >= self.LIMIT:
            _run_one(fn, args)
            return
        self._q.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        q = self._q
        self._drain(min(max(self.BATCH, len(q) >> 3), len(q)))
        if q:
            self.loop.call_soon(self._run)
        else:
            self._scheduled = False

    def _drain(self, n: int) -> None:
        q = self._q
        for _ in range(n):
            _run_one(*q.popleft())
        if self.after is not None:
            self.after()

    def flush(self) -> None:
        """Record everything waiting, now (a reader is about to look)."""
        self._drain(len(self._q))


def _run_one(fn, args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - one bad record must not stop the others
        log.exception("recording the end of an exchange failed")


class Telemetry:
    """Request metrics and the access log. The outcome (status, label, who ended the exchange)
    comes from :func:`proxy.outcome.ending`, the one classifier."""

    def __init__(self, next_handler, *, metrics, access_log: AccessLog | None, exemplars: bool = False,
                 on_success=None, on_probe=None, exporter=None, records: RecordQueue | None = None):
        self.next = next_handler
        self.m = metrics
        self.access_log = access_log
        self.exemplars = exemplars
        self.on_success = on_success  # passive health for probes: route name → last success time
        self.on_probe = on_probe      # a probe's exchange ended: tell the probe runner how
        self.exporter = exporter      # proxy.tracing.SpanExporter: one span per request (and run)
        self.records = records        # where a user request's end waits to be recorded (None: at once)

    def __call__(self, request, ex):
        self.m.route_children(ex.route.name)[0].inc()
        return until_end(self, request, ex)

    def end(self, request, ex, exc: BaseException | None) -> None:
        """The exchange is over (``exc``: what ended it, if it raised): count it and log it."""
        route = ex.route.name
        children = self.m.route_children(route)
        children[0].dec()
        duration = time.monotonic() - ex.start
        verdict = status, _, who = ending(ex, exc)
        if ex.probe is None and self.on_success is not None and who is None and status < 500:
            self.on_success(route)  # passive probe health, now: the probe runner reads it unflushed
        # now, not when recorded: it gives back the LLM parser's reserved bytes and times the tokens
        llm = ex.llm.finish() if ex.llm is not None else None
        if self.records is None or ex.probe is not None:  # a probe's runner waits on its report
            self._record(ex, route, exc, verdict, children, duration, llm, None)
            if self.access_log is not None:
                self.access_log.emit()
        else:
            self.records.add(self._record, ex, route, exc, verdict, children, duration, llm, time.time())

    def _record(self, ex, route, exc, verdict, children, duration, llm, at) -> None:
        m = self.m
        _, ttfb_h, overhead_h, req_bytes, resp_bytes = children
        status, outcome, who = verdict
        err = exc if exc is not None and not isinstance(exc, asyncio.CancelledError) else ex.error
        if ex.probe is None:
            m.request_done(route, ex.method, status, duration,
                           {"request_id": ex.request_id} if self.exemplars else None)
            if ex.ttfb is not None:
                ttfb_h.observe(ex.ttfb)
                if ex.upstream_time:
                    overhead_h.observe(max(0.0, duration - ex.upstream_time))
            if ex.req_bytes:
                req_bytes.inc(ex.req_bytes)
            if ex.resp_bytes:
                resp_bytes.inc(ex.resp_bytes)
        elif self.on_probe is not None:
            self.on_probe(ex, status, outcome, who)
        count_failure(m, route, err)
        if ex.is_stream:
            if outcome == "ok":
                s_out = "completed"
            elif outcome in ("client_disconnect", "client_slow", "shutdown"):
                s_out = outcome
            elif isinstance(err, E.UpstreamTimeout):
                s_out = _STREAM_OUTCOME.get(err.kind, "upstream_error")
            else:
                s_out = "upstream_error" if who == "upstream" else outcome
            m.stream_done(route, s_out, duration, ex.events, ex.first_event)
        if ex.route.run_kind is not None and ex.headers_sent and 200 <= status < 300:
            run = ex.run_outcome
            if run is None:
                run = "client_disconnect" if who == "client" else (
                    "upstream_error" if who == "upstream" else "success" if who is None else outcome)
                ex.run_outcome = run
            m.child(m.runs, route, run).inc()
        if self.access_log is not None:
            self.access_log.write(ex, status, duration, outcome, who, ex.probe, llm, at)
        if self.exporter is not None and ex.trace is not None:
            ref = run_ref(ex.content_location) if ex.route.run_kind is not None else None
            self.exporter.export_request(
                ex.trace, method=ex.method, route=route, path=ex.path.partition("?")[0], status=status,
                outcome=outcome, request_id=ex.request_id, start=ex.start, end=ex.start + duration, llm=llm,
                route_template=ex.route.template,
                run=RunInfo(run_id=ref[1], thread_id=ref[0], outcome=ex.run_outcome) if ref else None)
