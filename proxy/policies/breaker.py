"""Circuit breaking with pybreaker, plus the one-trial-at-a-time half-open rule and the rule that
failures amid answers do not open it.

pybreaker lets every caller through while half-open; under 50 concurrent callers that is 50
trials against an upstream that just failed. The gate here admits exactly one trial; the others
get 503 at once, as while open.

pybreaker counts consecutive failures in the order they complete. Failures that began together
complete together: a burst of new streams overflows the upstream's accept queue, the requests it
took last wait longest, and a wave of them times out at once (first byte, or connects that ran
out of time to be made again: see ``proxy.upstream.UpstreamPool``); five in a row would open
the breaker while the upstream answers every other stream. So a failure of an attempt that got
no answer counts toward opening only if the upstream answered nothing while that attempt waited;
else it stays an upstream failure everywhere else (metrics, the access log, retries), and
``/status`` counts it as ``failures_amid_answers``. An upstream that stops answering still opens
the breaker: every attempt that begins after its last answer counts.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import pybreaker

from .. import errors as E
from ..exchange import until_end
from ..outcome import upstream_failed

log = logging.getLogger("proxy.breaker")
STATE_VALUE = {"closed": 0, "half-open": 1, "open": 2}


class _CountedFailure(Exception):
    """Raised inside ``calling()`` so pybreaker counts a failure that was not an exception
    (a 5xx status, a stream cut mid-way, a run error inside a 200)."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, metrics):
        self.metrics = metrics

    def state_change(self, cb, old_state, new_state):
        name = new_state.name
        self.metrics.circuit_state.labels(cb.name).set(STATE_VALUE[name])
        self.metrics.circuit_transitions.labels(cb.name, name).inc()
        log.warning("circuit breaker state change", extra={"fields": {
            "breaker": cb.name, "from": old_state.name if old_state else None, "to": name,
            "fail_counter": cb.fail_counter}})


class BreakerState:
    """One named circuit breaker: pybreaker state machine + half-open trial gate.

    Lives in the Runtime (per process), so a reload keeps its state; :meth:`update` applies new
    settings in place (an open breaker stays open until its new reset timeout).
    """

    def __init__(self, name: str, settings, metrics):
        self.name = name
        self.cb = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max, reset_timeout=settings.reset_timeout,
            success_threshold=settings.success_threshold, name=name,
            exclude=[asyncio.CancelledError, E.ClientFault], listeners=[_Listener(metrics)],
            throw_new_error_on_trip=False)
        self.update(settings)
        self.trial_in_flight = False
        # closed with no failure counted, as pybreaker last said (it changes only when it is given
        # a verdict, in record): a clean answer then has nothing to tell it, and every call passes
        self.clean = True
        self.answers = 0           # answers the upstream gave (clean answers, streams' first events)
        self.amid_answers = 0      # failures not counted because answers came while they waited
        self.on_stream = self.stream_started  # bound once: set on every exchange it guards
        metrics.circuit_state.labels(name).set(0)

    def update(self, settings) -> None:
        self.settings = settings
        cb = self.cb
        cb.fail_max = settings.fail_max
        cb.reset_timeout = settings.reset_timeout
        cb.success_threshold = settings.success_threshold
        self.failure_statuses = frozenset(settings.failure_statuses)
        self.count_run_errors = settings.count_run_errors

    @property
    def state(self) -> str:
        return self.cb.current_state

    def retry_after(self) -> float:
        opened = self.cb._state_storage.opened_at
        if opened is None:
            return self.settings.reset_timeout
        elapsed = (datetime.now(timezone.utc) - opened).total_seconds()
        return max(0.0, self.settings.reset_timeout - elapsed)

    def admit(self, probe: bool = False, probe_may_trial: bool = False) -> bool:
        """True if this call may go upstream; when True and the breaker is not closed, the caller
        holds the single trial and must call :meth:`release_trial`."""
        state = self.cb.current_state
        if state == "closed":
            return True
        if state == "open" and self.retry_after() > 0:
            return False
        if self.trial_in_flight or (probe and not probe_may_trial):
            return False
        self.trial_in_flight = True
        return True

    def record(self, failed: bool) -> None:
        """Let pybreaker count one verdict on the upstream."""
        cb = self.cb
        _record(cb, _CountedFailure() if failed else None)
        self.clean = cb.fail_counter == 0 and cb.current_state == "closed"

    def stream_started(self, ex) -> None:
        """A stream's first event: the upstream is answering, a success now (a long stream
        would otherwise say so only when it ends, minutes later)."""
        ex.on_stream_start = None
        self.answers += 1
        if not self.clean:
            self.record(False)

    def failed(self, ex, exc: BaseException | None) -> bool:
        return upstream_failed(ex, exc, self.failure_statuses, self.count_run_errors)

    def snapshot(self) -> dict:
        return {"state": self.state, "fail_counter": self.cb.fail_counter,
                "retry_after_seconds": round(self.retry_after(), 3) if self.state == "open" else 0,
                "trial_in_flight": self.trial_in_flight, "fail_max": self.settings.fail_max,
                "failures_amid_answers": self.amid_answers,
                "reset_timeout_seconds": self.settings.reset_timeout}


class Breaker:
    """Guards the upstream call with the route's breaker; :func:`proxy.outcome.upstream_failed`
    decides what counts as a failure (only what the upstream did: never a shed, an exhausted
    pool, a client that left or read too slowly). Streams count as a success at their first
    event, and again as a failure if the upstream breaks them later. A failure before any answer
    counts only if no other answer came while it waited (see the module's docstring)."""

    def __init__(self, next_handler, breakers: dict[str, BreakerState], *, metrics, probe_may_trial: bool):
        self.next = next_handler
        self.breakers = breakers
        self.shed = metrics.shed
        self.probe_may_trial = probe_may_trial

    def __call__(self, request, ex):
        br = self.breakers.get(ex.route.breaker)
        if br is None:
            return self.next(request, ex)
        if not br.clean and br.cb.current_state != "closed":
            if not br.admit(ex.probe is not None, self.probe_may_trial):
                self.shed.labels("breaker_open").inc()
                raise E.BreakerOpen(br.name, br.retry_after())
            ex.trial = True
        ex.on_stream_start = br.on_stream
        ex.answers_before = br.answers
        return until_end(self, request, ex)  # a stream is judged again when its relay ends

    def end(self, request, ex, exc) -> None:
        """Judge this attempt (``exc``: how it failed, if it raised) and give back the trial."""
        br = self.breakers[ex.route.breaker]
        self._judge(br, ex, exc)
        if ex.trial:
            ex.trial = False
            br.trial_in_flight = False

    @staticmethod
    def _judge(br: BreakerState, ex, exc) -> None:
        started = ex.on_stream_start is None  # the stream's success was already recorded
        ex.on_stream_start = None
        if br.failed(ex, exc):
            # a stream broken after its first event, the half-open trial, or nothing answered
            # while this attempt waited: the upstream is failing, not busy with a burst
            if started or ex.trial or br.answers == ex.answers_before:
                br.record(True)
            else:
                br.amid_answers += 1
        elif not started and exc is None and ex.error is None:
            # a clean answer; an exchange the client or the proxy ended says nothing of the upstream
            br.answers += 1
            if not br.clean:  # else pybreaker has nothing to update (most requests; ~5 µs less each)
                br.record(False)


def _record(cb: pybreaker.CircuitBreaker, exc: BaseException | None) -> None:
    """Let pybreaker count one outcome (a failure when ``exc`` is given) through ``calling()``."""
    try:
        with cb.calling():
            if exc is not None:
                raise exc
    except BaseException:  # noqa: BLE001 - the failure was recorded; the caller handles its own
        pass
