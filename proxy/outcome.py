"""Who failed? The one decision that the breaker, retries, telemetry, the access log and the
probes all ask, so "the proxy's own limits are not upstream failures" lives in one place.

Every exchange ends with one of three culprits (or none, when it succeeded):

- ``upstream``: connect refused or timed out, reset, protocol error, a first-byte/idle/total
  timeout, a failure status, optionally a LangGraph run error inside a 200. Only these feed
  breakers and retries.
- ``proxy``: it chose not to serve (shed by a limit, no pool slot within ``pool_timeout``, breaker
  open, shutdown grace over) or failed itself (a bug). 503 + ``Retry-After``, counted as sheds.
- ``client``: went away, too slow to send or to read, or sent a bad request.

The culprit is a class attribute of each error in :mod:`proxy.errors` (``who``); this module
turns an exchange plus the exception that ended it (if any) into the verdicts.
"""
from __future__ import annotations

import asyncio

from . import errors as E

UPSTREAM, PROXY, CLIENT = "upstream", "proxy", "client"

# RFC 9110 §9.2.2: repeating these cannot do more than doing them once.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def culprit(exc: BaseException | None) -> str | None:
    """Who ended an exchange that ended with ``exc`` (None: nobody failed)."""
    if exc is None:
        return None
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT  # the server cancels the handler when the client goes away
    return getattr(exc, "who", PROXY)


def ending(ex, exc: BaseException | None) -> tuple[int, str, str | None]:
    """(status the client got, outcome label, culprit) of an exchange; ``exc`` is the exception
    that left the layers (None when a response was returned; a failure after the headers is in
    ``ex.error`` then). The outcome label is ``ok``, ``client_disconnect`` or an error type."""
    if exc is not None:
        if isinstance(exc, (asyncio.CancelledError, E.ClientGone)):
            if isinstance(ex.error, E.ShuttingDown):  # the server's shutdown cancelled it, not the client
                return ex.status, ex.error.type, PROXY
            return (ex.status if ex.headers_sent else 499), "client_disconnect", CLIENT
        if ex.headers_sent:
            # cut after the headers (e.g. a slow reader): the client got the upstream's status
            return ex.status, getattr(exc, "type", "internal_error"), culprit(exc)
        status, etype = E.classify(exc)
        return status, etype, culprit(exc)
    err = ex.error
    if err is None:
        return ex.status, "ok", None
    return ex.status, err.type, err.who


def upstream_failed(ex, exc: BaseException | None, failure_statuses, count_run_errors: bool) -> bool:
    """Does this exchange count against the upstream (breakers, probes)? Never for the proxy's
    own limits or a client's doing, whatever status they produced."""
    if exc is not None:
        return culprit(exc) == UPSTREAM
    err = ex.error
    if err is not None:
        return err.who == UPSTREAM  # failed after the headers: a cut stream, a reset body
    return ex.status in failure_statuses or (count_run_errors and ex.run_outcome == "run_error")


def is_connect_failure(exc: BaseException) -> bool:
    """Nothing reached the upstream: it never saw the request."""
    return isinstance(exc, E.UpstreamConnectError) or (isinstance(exc, E.UpstreamTimeout) and exc.kind == "connect")


def retryable(ex, exc: BaseException, body_resendable: bool) -> bool:
    """May the request be sent again after ``exc``? Only upstream failures, and only when that
    cannot run anything twice: a connect failure (nothing was sent) for any method; a reset or
    protocol error for idempotent methods. A timeout is never retried: an LLM that is slow now
    will be slow again, and the retry would double the cost."""
    if culprit(exc) != UPSTREAM:
        return False
    if is_connect_failure(exc):
        return body_resendable or not ex.sent_any
    if isinstance(exc, E.UpstreamTimeout):
        return False
    return ex.method in IDEMPOTENT and body_resendable


def count_failure(metrics, route: str, err: BaseException | None) -> None:
    """Count one failed attempt by kind: timeouts (the client's slow reads included, as
    ``client_write``) in ``timeouts_total``, other upstream failures in ``upstream_errors_total``.
    Called for every failed attempt, the ones a retry later hid included."""
    kind = getattr(err, "kind", None)
    if kind is None:
        return
    if isinstance(err, (E.UpstreamTimeout, E.ClientSlow)):
        metrics.timeouts.labels(route, kind).inc()
    elif culprit(err) == UPSTREAM:
        metrics.upstream_errors.labels(route, kind).inc()
