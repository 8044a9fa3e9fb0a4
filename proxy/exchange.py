"""Per-request state that the layers share (one small object, no dict)."""
from __future__ import annotations


class Exchange:
    """What the layers learn about one request as it passes.

    Outer layers create it; inner layers fill it in (route, upstream timings, outcome); the
    telemetry layer reads it once at the end. ``probe`` names the synthetic probe that made the
    request, if any, so probes are counted apart from user traffic.
    """

    __slots__ = ("request_id", "method", "path", "route", "start", "upstream_start", "upstream_time",
                 "ttfb", "status", "error", "req_bytes", "resp_bytes", "headers_sent",
                 "is_stream", "events", "first_event", "run_outcome", "content_location",
                 "probe", "attempts", "sent_any", "deadline", "client_ip", "body", "buffered",
                 "answer", "on_stream_start", "trace", "llm", "run_intent")

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
