"""Per-request state that the layers share (one small object, no dict)."""
from __future__ import annotations

import logging

log = logging.getLogger("proxy.errors")


class Exchange:
    """What the layers learn about one request as it passes.

    Outer layers create it; inner layers fill it in (route, upstream timings, outcome); the
    telemetry layer reads it once at the end. ``probe`` names the synthetic probe that made the
    request, if any, so probes are counted apart from user traffic.

    A streamed answer's body is relayed after the layer chain has returned: the forwarder leaves
    it in ``tail`` (a coroutine that the runtime awaits), so no layer keeps a coroutine frame for
    the life of a stream. A layer with work for the exchange's end hands itself to
    :meth:`at_end`; its ``end(request, ex, exc)`` runs once, when the exchange ends.
    """

    __slots__ = ("request_id", "method", "path", "route", "start", "upstream_start", "upstream_time",
                 "ttfb", "status", "error", "req_bytes", "resp_bytes", "headers_sent",
                 "is_stream", "events", "first_event", "run_outcome", "content_location",
                 "probe", "attempts", "sent_any", "deadline", "client_ip", "body", "buffered",
                 "answer", "on_stream_start", "trace", "llm", "run_intent", "tail", "ends", "holds_stream",
                 "trial", "answers_before")

    def __init__(self, request_id: str, method: str, path: str, start: float, probe: str | None = None):
        self.request_id = request_id
        self.method = method
        self.path = path
        self.route = None
        self.start = start
        self.upstream_start = 0.0
        self.upstream_time = 0.0       # seconds spent waiting on the upstream (headers + body)
        self.ttfb = None
        self.status = 0
        self.error = None              # what ended the answer after its headers (who: error.who)
        self.req_bytes = 0
        self.resp_bytes = 0
        self.headers_sent = False
        self.is_stream = False
        self.events = 0
        self.first_event = None
        self.run_outcome = None
        self.content_location = None
        self.probe = probe
        self.attempts = 1              # times the upstream was sent this request (retries.attempts bounds it)
        self.sent_any = False          # any request byte reached the upstream (retry safety)
        self.deadline = None
        self.client_ip = None
        self.body = None               # a small request body, kept so a retry can resend it
        self.buffered = 0              # bytes of a whole answer held (BufferBudget) until delivered
        self.answer = None             # that answer's chunks (a deque), written out by the deliver layer
        self.on_stream_start = None    # called once at a stream's first event (the breaker's success)
        self.trace = None              # proxy.tracing.TraceContext (W3C trace context), when tracing is on
        self.llm = None                # proxy.llm.LLMUsage of a LangGraph run exchange, when llm is on
        self.run_intent = None         # langgraph.DisconnectIntent of a streamed run request body
        self.tail = None               # a streamed answer's relay, run after the chain returned
        self.ends = None               # layers whose end() waits for that tail, innermost first
        self.holds_stream = False      # the limits layer counted this exchange as a stream
        self.trial = False             # the breaker's single half-open trial is this exchange's
        self.answers_before = 0        # the breaker's answer count when it admitted this attempt

    def at_end(self, layer, request) -> None:
        """``layer.end(request, ex, None)`` now if the answer is complete, else when the stream's
        tail ends (with what ended it). A layer calls this on its success path only; when the
        next handler raised, it calls its own ``end`` with that exception at once."""
        if self.tail is None:
            layer.end(request, self, None)
        elif self.ends is None:
            self.ends = [layer]
        else:
            self.ends.append(layer)

    def end(self, request, exc: BaseException | None) -> None:
        """The stream's tail is over (``exc``: the exception that ended it, else None): run the
        waiting ends, innermost layer first, each even if one before it failed."""
        ends, self.ends = self.ends, None
        for layer in ends or ():
            try:
                layer.end(request, self, exc)
            except Exception:  # noqa: BLE001 - a bug in one layer must not leak another's counts
                log.exception("a layer failed at the end of an exchange",
                              extra={"fields": {"request_id": self.request_id}})


async def until_end(layer, request, ex: Exchange):
    """Await ``layer.next``; then ``layer.end(request, ex, exc)`` runs once: at once with the
    exception if the next handler raised, else through :meth:`Exchange.at_end` (now for a
    complete answer, when the relay ends for a stream). A layer with end-of-exchange work is a
    plain ``def`` that does its work before the next handler and returns this."""
    try:
        resp = await layer.next(request, ex)
    except BaseException as e:
        layer.end(request, ex, e)
        raise
    ex.at_end(layer, request)
    return resp

