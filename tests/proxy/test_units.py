"""Fast in-process tests of the pure parts: the classifier, the SSE scanner, the route table, the
retry budget, the buffer budget. Time is injected where it matters; nothing here opens a socket."""
from __future__ import annotations

import asyncio
import itertools
import re

import prometheus_client as P
import pytest
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.openmetrics import exposition as om_exposition

from proxy import config as C
from proxy import errors as E
from proxy import metrics as M
from proxy.exchange import Exchange
from proxy.forward import BufferBudget
from proxy.outcome import IDEMPOTENT, culprit, ending, retryable, upstream_failed
from proxy.policies.retry import RetryBudget
from proxy.routes import LANGGRAPH_ROUTES, RouteTable, _template_regex
from proxy.sse import SSEScanner, event_data


def ex_(method="GET", status=200, headers_sent=False, error=None, run_outcome=None, sent_any=True):
    ex = Exchange("rid", method, "/x", 0.0)
    ex.status, ex.headers_sent, ex.error, ex.run_outcome, ex.sent_any = status, headers_sent, error, run_outcome, sent_any
    return ex


# ---------------------------------------------------------------- who failed?
PROXY_OWN = [E.Shed("concurrency", "m"), E.PoolExhausted("m"), E.BreakerOpen("upstream", 3), E.ShuttingDown(),
             RuntimeError("a bug")]
CLIENT_OWN = [E.ClientGone(), E.ClientTimeout(), E.ClientSlow("client_write", "m"), E.BodyTooLarge(),
              E.BadRequest(), E.HeadersTooLarge(), E.VersionNotSupported(), asyncio.CancelledError()]
UPSTREAM_OWN = [E.UpstreamConnectError(), E.UpstreamReset(), E.UpstreamProtocolError(), E.UpstreamTimeout("idle"),
                E.UpstreamTimeout("connect")]


@pytest.mark.parametrize("exc", PROXY_OWN + CLIENT_OWN)
def test_the_proxys_and_the_clients_doing_is_never_an_upstream_failure(exc):
    assert culprit(exc) in ("proxy", "client")
    assert not upstream_failed(ex_(status=503), exc, frozenset({502, 503, 504}), True)
    assert not retryable(ex_(), exc, body_resendable=True)


@pytest.mark.parametrize("exc", UPSTREAM_OWN)
def test_upstream_failures_feed_the_breaker(exc):
    assert culprit(exc) == "upstream"
    assert upstream_failed(ex_(), exc, frozenset(), False)


def test_statuses_and_run_errors_count_only_as_configured():
    assert upstream_failed(ex_(status=502), None, frozenset({502}), False)
    assert not upstream_failed(ex_(status=500), None, frozenset({502}), False)
    assert upstream_failed(ex_(run_outcome="run_error"), None, frozenset(), True)
    assert not upstream_failed(ex_(run_outcome="run_error"), None, frozenset(), False)
    # a stream the upstream broke after its headers; a stream a slow client got cut from
    assert upstream_failed(ex_(headers_sent=True, error=E.UpstreamReset()), None, frozenset(), False)
    assert not upstream_failed(ex_(headers_sent=True, error=E.ClientSlow("client_write", "m")), None, frozenset(), False)


def test_retry_only_what_cannot_run_twice():
    assert retryable(ex_("POST"), E.UpstreamConnectError(), body_resendable=True)    # nothing was sent
    assert retryable(ex_("POST", sent_any=False), E.UpstreamTimeout("connect"), body_resendable=False)
    assert not retryable(ex_("POST"), E.UpstreamConnectError(), body_resendable=False)  # a streamed body is gone
    assert not retryable(ex_("POST"), E.UpstreamReset(), body_resendable=True)       # it may have run
    assert retryable(ex_("GET"), E.UpstreamReset(), body_resendable=True)
    assert not retryable(ex_("GET"), E.UpstreamTimeout("first_byte"), body_resendable=True)  # slow now, slow again
    assert IDEMPOTENT >= {"GET", "HEAD", "PUT", "DELETE"} and "POST" not in IDEMPOTENT


def test_ending_names_status_outcome_and_who():
    assert ending(ex_(), None) == (200, "ok", None)
    assert ending(ex_(), E.PoolExhausted("m")) == (503, "pool_exhausted", "proxy")
    assert ending(ex_(), asyncio.CancelledError()) == (499, "client_disconnect", "client")
    assert ending(ex_(headers_sent=True), asyncio.CancelledError()) == (200, "client_disconnect", "client")
    # cut after the headers: the client got the upstream's status, the label says who cut it
    assert ending(ex_(headers_sent=True), E.ClientSlow("client_write", "m")) == (200, "client_slow", "client")
    assert ending(ex_(headers_sent=True, error=E.ShuttingDown()), None) == (200, "shutdown", "proxy")
    assert ending(ex_(headers_sent=True, error=E.UpstreamTimeout("idle")), None) == (200, "upstream_timeout", "upstream")
    assert ending(ex_(), RuntimeError("bug")) == (500, "internal_error", "proxy")


# ---------------------------------------------------------------- SSE scanner
STREAM = (b"event: metadata\r\ndata: {\"run_id\": \"r\"}\r\n\r\n"
          b": heartbeat\r\n\r\n"
          b"event: values\ndata: {\"a\": 1}\ndata: {\"b\": 2}\n\n"
          b"data: unnamed\r\n\r\n"
          b"event: error\r\ndata: {\"error\": \"boom\"}\r\n\r\n")


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_sse_scanner_counts_the_same_events_wherever_the_stream_is_split(cut):
    s = SSEScanner()
    s.feed(STREAM[:cut])
    s.feed(STREAM[cut:])
    assert (s.events, s.last_event, s.error_seen, s.mid_event) == (4, "error", True, False)


def test_sse_scanner_byte_by_byte_and_mid_event():
    s = SSEScanner()
    for i in range(len(STREAM) - 3):
        s.feed(STREAM[i:i + 1])
    assert s.events == 3 and s.mid_event and not s.error_seen


class _Recorder:
    """A scanner sink that keeps every call: which names it was asked about, what it was given."""
    prefixes = ("messages", "values", "error", "")

    def __init__(self, limit):
        self.limit, self.calls = limit, []

    def wants(self, name):
        self.calls.append(("wants", name))
        return self.limit

    def event(self, name, parts):
        self.calls.append(("event", name, None if parts is None else event_data(parts)))


ONE_EVENT_CHUNKS = [
    b'data: {"i": 1}\n\n',                                   # unnamed
    b'event: messages\ndata: [{"content": "tok"}, {}]\n\n',  # LangGraph's shape
    b'event: values\ndata: {"text": "event: values\\ndata: x"}\n\n',
    b'event:\ndata: empty name\n\n',
    b'event: ' + b'v' * 80 + b'\ndata: a name longer than the kept line start\n\n',
    b'event: error\ndata: {"error": "boom"}\n\n',
    b'event: values\ndata: ' + b'x' * 100 + b'\n\n',        # over the sink's bound
    b'event: updates\ndata: {}\n\n',
    b'event: values\ndata: {}\nid: 7\n\n',                   # two lines after the name: the walk
    b': heartbeat\n\n',
    b'event: values\r\ndata: {}\r\n\r\n',
]


@pytest.mark.parametrize("limit", [0, 64, 4096])
def test_sse_scanner_whole_event_chunks_count_and_offer_as_the_line_walk_does(limit):
    # each chunk is one event (the shortcut where it applies); the references walk its lines,
    # the same chunk and byte by byte (split lines count a byte more per piece against the bound)
    whole, walked, split = _Recorder(limit), _Recorder(limit), _Recorder(limit)
    a, b, c = SSEScanner(whole), SSEScanner(walked), SSEScanner(split)
    for chunk in ONE_EVENT_CHUNKS:
        a.feed(chunk)
        b._walk(chunk, len(chunk))
        for i in range(len(chunk)):
            c.feed(chunk[i:i + 1])
        for ref in (b, c):
            assert (a.events, a.last_event, a.error_seen, a.mid_event) == (ref.events, ref.last_event, ref.error_seen, ref.mid_event)
    assert whole.calls == walked.calls
    assert [x[:2] for x in whole.calls] == [x[:2] for x in split.calls]
    assert a.events == 10 and a.error_seen and not a.mid_event
    if limit == 64:
        assert ("event", "values", None) in whole.calls  # the 100-byte data line went over the bound
        assert ("wants", "v" * 57) in whole.calls        # the name as far as a line is kept (64 bytes)


def test_sse_scanner_never_holds_a_huge_line():
    s = SSEScanner()
    s.feed(b"event: values\ndata: ")
    for _ in range(300):
        s.feed(b"x" * 10_000)  # a 3 MB data line
        assert len(s._line) <= 64
    s.feed(b"\n\n")
    assert s.events == 1 and s.last_event == "values"


# ---------------------------------------------------------------- routes
def table(**over) -> RouteTable:
    return RouteTable(C.parse(over, env={}))


def test_route_table_first_match_methods_and_other():
    t = table(routes=[{"name": "mine", "path": "/threads/{thread_id}/runs/stream", "methods": ["POST"]}])
    assert t.match("POST", "/threads/abc/runs/stream").name == "mine"
    assert t.match("POST", "/threads/abc/runs/stream/").name == "mine"
    assert t.match("GET", "/threads/abc/runs/stream").name != "mine"
    assert t.match("POST", "/threads/abc/runs/wait").name == "thread_run_wait"
    assert t.match("GET", "/nope/at/all").name == "other"
    assert t.match("BREW", "/ok").name == "other"  # GET only: an unknown method matches no method list
    assert t.names[-1] == "other" and len(set(t.names)) == len(t.names)
    assert table(default_routes=False).match("GET", "/threads").name == "other"


def test_route_lookup_by_first_segment_finds_what_one_regex_over_every_template_finds():
    """The table splits its templates by the path's first segment; the first match must stay the
    one a single alternation over every template, in table order, finds (user routes first, some
    starting with a parameter, the root, trailing slashes, odd targets)."""
    t = table(routes=[{"name": "by_tenant", "path": "/{tenant}/threads/{thread_id}", "methods": ["GET"]},
                      {"name": "root", "path": "/"},
                      {"name": "mine", "path": "/threads/{thread_id}/runs/stream", "methods": ["POST"]},
                      {"name": "any_ok", "path": "/{x}/ok"}])
    segs = ["threads", "runs", "assistants", "store", "ok", "info", "t1", "", "search", "wait", "stream",
            "history", "state", "a.b", "%2F"]
    paths = {"/", "//", "*", "", "threads", "/threads//runs", "//threads"}
    for n in (1, 2, 3):
        for combo in itertools.product(segs, repeat=n):
            p = "/" + "/".join(combo)
            paths.update((p, p + "/"))
    tested = 0
    for method in M.METHODS + ("BREW",):
        alts = [f"(?P<r{i}>{_template_regex(tpl)})" for i, (tpl, ms) in enumerate(zip(t.templates, t._methods))
                if ms is None or method in ms]
        one = re.compile(r"(?:" + "|".join(alts) + r")/?\Z") if alts else None
        for p in paths:
            m = one.match(p) if one is not None else None
            want = t.routes[int(m.lastgroup[1:])].name if m else "other"
            assert t.match(method, p).name == want, (method, p)
            tested += want != "other"
    assert tested > 1000  # the paths reach many routes, not just "other"
    assert t.match("GET", "/acme/threads/t1").name == "by_tenant"
    assert t.match("POST", "/threads/t1/runs/stream").name == "mine"
    assert t.match("GET", "/").name == "root" and t.match("GET", "/info/ok").name == "any_ok"


def test_built_in_routes_are_unique_and_overridable_by_name():
    names = [r.name for r in LANGGRAPH_ROUTES]
    assert len(names) == len(set(names))
    t = table(routes=[{"name": "threads", "path": "/my/threads", "timeouts": {"request": "1s"}}])
    assert t.match("GET", "/my/threads").timeouts.request == 1
    assert t.match("GET", "/threads").name == "other"  # the built-in of that name is replaced


def test_route_timeouts_merge_over_the_defaults():
    t = table(timeouts={"request": "10s", "idle": "5s"},
              routes=[{"name": "r", "path": "/r", "timeouts": {"idle": "1s", "stream": None}}])
    tm = t.match("GET", "/r").timeouts
    assert (tm.request, tm.idle) == (10, 1)


# ---------------------------------------------------------------- budgets
def test_retry_budget_floor_ratio_and_window():
    now = [1000.0]
    b = RetryBudget(ratio=0.1, min_per_second=0.3, clock=lambda: now[0])  # floor: 3 per 10 s window
    assert [b.try_spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(100):
        b.request()
    assert sum(b.try_spend() for _ in range(20)) == 7  # 10% of 100 requests = 10 retries in the window
    now[0] += 11  # the window moved on
    assert b.try_spend()


def test_buffer_budget_is_a_hard_bound():
    b = BufferBudget(100)
    assert b.take(60) and not b.take(41) and b.take(40)
    b.give(60)
    assert b.used == 40 and b.take(60) and not b.take(1)


class _Deadline:
    """Stands for an UpstreamConnection in the pool's deadline heap: ``_timer`` and ``_on_timer``."""

    def __init__(self, fired: list):
        self._timer = None
        self.fired = fired

    def _on_timer(self):
        self.fired.append(self)


async def test_pool_deadlines_fire_once_in_order_and_the_heap_stays_bounded():
    from proxy.upstream import UpstreamPool
    pool = UpstreamPool("http://127.0.0.1:9", connect_timeout=1, max_connections=4, keepalive_timeout=0)
    loop = asyncio.get_running_loop()
    fired: list = []
    conns = [_Deadline(fired) for _ in range(10)]
    # each connection re-arms 500 times (a long stream's timers): every entry but its last is stale
    for _ in range(500):
        for c in conns:
            c._timer = pool.schedule(c, loop.time() + 60)
    assert len(pool._deadlines) <= 2 * 10 + 64 + 1
    # the earliest deadlines fire, in order, once each; a cancelled one never does
    a, b, gone = conns[:3]
    b._timer = pool.schedule(b, loop.time() + 0.10)
    a._timer = pool.schedule(a, loop.time() + 0.05)
    gone._timer = pool.schedule(gone, loop.time() + 0.02)
    gone._timer = None  # what UpstreamConnection._cancel_timer does
    t0 = loop.time()
    await asyncio.sleep(0.2)
    assert fired == [a, b]
    assert a._timer is None and b._timer is None
    # the loop timer now waits for the next live deadline (60 s away), not for a stale one
    assert pool._deadline_at - t0 > 50
    await pool.close()


# ---------------------------------------------------------------- ended exchanges' bookkeeping
async def test_the_record_queue_records_a_batch_per_loop_turn_and_everything_on_flush(caplog):
    from proxy.telemetry import RecordQueue
    q = RecordQueue(asyncio.get_running_loop())
    done = []

    def bad():
        raise RuntimeError("a bug in one record")

    for i in range(40):
        q.add(done.append, i)
    q.add(bad)
    q.add(done.append, 40)
    assert done == [] and len(q) == 42          # nothing in the callback that ended them
    await asyncio.sleep(0)
    assert done == list(range(RecordQueue.BATCH))  # one batch per loop turn, in order
    q.flush()                                    # a reader (/metrics, /status, shutdown) is about to look
    assert done == list(range(41)) and len(q) == 0  # the failing record did not stop the ones after it
    assert "recording the end of an exchange failed" in caplog.text
    await asyncio.sleep(0)                       # the scheduled turn finds nothing left: no error
    q.add(done.append, 41)
    for _ in range(3):
        await asyncio.sleep(0)
    assert done[-1] == 41 and len(q) == 0


async def test_the_record_queue_is_bounded_past_it_records_at_once():
    from proxy.telemetry import RecordQueue
    q = RecordQueue(asyncio.get_running_loop())
    q.LIMIT = 3
    done = []
    for i in range(5):
        q.add(done.append, i)
    assert len(q) == 3 and done == [3, 4]       # the 4th and 5th found the queue full
    q.flush()
    assert sorted(done) == [0, 1, 2, 3, 4]


async def test_the_record_queue_drains_a_backlog_by_an_eighth_per_turn():
    from proxy.telemetry import RecordQueue
    q = RecordQueue(asyncio.get_running_loop())
    done = []
    for i in range(800):
        q.add(done.append, i)
    await asyncio.sleep(0)
    assert len(done) == 100 and len(q) == 700   # a load faster than BATCH a turn does not pile up
    await asyncio.sleep(0)
    assert len(done) == 100 + 87
    for _ in range(60):
        await asyncio.sleep(0)
    assert done == list(range(800)) and len(q) == 0


def test_uvloop_sets_tcp_nodelay_on_accepted_and_connected_sockets_so_the_proxy_does_not():
    """The proxy (server.Connection, UpstreamPool.connect) skips setting TCP_NODELAY when the
    loop already did (upstream.loop_sets_nodelay): this checks that uvloop still does, on both
    sides, with no one setting it; and that the default asyncio loop is not taken for one."""
    import socket

    import uvloop

    from proxy.upstream import loop_sets_nodelay

    async def main():
        loop = asyncio.get_running_loop()
        assert loop_sets_nodelay(loop)
        accepted = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                accepted.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        srv = await loop.create_server(Server, "127.0.0.1", 0)
        try:
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", srv.sockets[0].getsockname()[1])
            connected = tr.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert (await asyncio.wait_for(accepted, 5), connected) == (1, 1)
            tr.close()
        finally:
            srv.close()
            await srv.wait_closed()

    uvloop.run(main())
    plain = asyncio.new_event_loop()
    try:
        assert not loop_sets_nodelay(plain)
    finally:
        plain.close()


# ---------------------------------------------------------------- metric kinds
def test_the_metric_kinds_export_what_prometheus_clients_own_kinds_export():
    """proxy.metrics' lock-free kinds against prometheus-client's, fed the same updates: the same
    text and OpenMetrics exposition (names, labels, bucket order and counts, sums, exemplars),
    with every kind of edge the proxy can feed them (NaN, +Inf, an exact bound, set_function)."""
    P.disable_created_metrics()
    try:
        outs = []
        for kinds in ((P.Counter, P.Gauge, P.Histogram), (M.Counter, M.Gauge, M.Histogram)):
            counter, gauge, histogram = kinds
            reg = CollectorRegistry()
            c = counter("t_requests", "Requests.", ("route", "code"), registry=reg)
            c1 = counter("t_plain", "Unlabelled.", registry=reg)
            g = gauge("t_in_flight", "In flight.", ("route",), registry=reg)
            g1 = gauge("t_fn", "From a function.", registry=reg)
            h = histogram("t_duration_seconds", "Durations.", ("route",), registry=reg,
                          buckets=M.OVERHEAD_BUCKETS)
            h1 = histogram("t_plain_seconds", "Unlabelled durations.", registry=reg, buckets=M.LATENCY_BUCKETS)
            series = (lambda m: m) if counter is P.Counter else (lambda m: m.series)
            c.labels("a", 200).inc()
            c.labels("a", "200").inc(2.5)
            c.labels("b", 503)
            series(c1).inc(3)
            g.labels("a").inc(4)
            g.labels("a").dec()
            g.labels("b").set(7)
            g.labels("c").inc()
            g.remove("c")
            series(g1).set_function(lambda: 12)
            for v, exemplar in ((0.0001, None), (0.00011, {"request_id": "r1"}), (0.3, {"trace_id": "t" * 32}),
                                (7.0, None), (float("inf"), None), (0.0005, {"request_id": "r2"}),
                                (0.0004, {"request_id": "r3"})):
                h.labels("a").observe(v, exemplar)
            h.labels("b")
            series(h1).observe(0.02)
            series(h1).observe(float("nan"))
            with pytest.raises(ValueError):
                c.labels("a", 200).inc(-1)
            outs.append((exposition.generate_latest(reg).decode(), om_exposition.generate_latest(reg).decode()))
        text_p, om_p = outs[0]
        text_m, om_m = outs[1]
        assert text_m == text_p
        # OpenMetrics carries the exemplars, each with the time it was observed: compare without it
        no_time = re.compile(r"(# \{[^}]*\} \S+) \d+\.\d+")
        assert no_time.sub(r"\1", om_m) == no_time.sub(r"\1", om_p)
        assert 'request_id="r3"' in om_m and 'trace_id="' in om_m
    finally:
        P.enable_created_metrics()
