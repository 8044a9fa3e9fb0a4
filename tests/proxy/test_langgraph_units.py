"""The LangGraph-facing pieces that need no server: URL mapping, the client's disconnect choice
read from a streamed body, the timeout class of each built-in route."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from proxy import config as C
from proxy.headers import client_url, log_escape, request_id_from, upstream_head
from proxy.langgraph import _SHORT, DisconnectIntent, _client_keeps_run
from proxy.routes import RouteTable

UP = SimpleNamespace(scheme="http", host_header=b"127.0.0.1:2024", base_path="/base")


@pytest.mark.parametrize("value, sent_host, expected", [
    (b"http://127.0.0.1:2024/base/threads", None, b"/threads"),          # the upstream's own origin
    (b"http://agents.example/base/threads?x=1", b"agents.example", b"/threads?x=1"),  # the Host sent up
    (b"HTTP://AGENTS.example/base", b"agents.example", b"/"),            # origin compare ignores case
    (b"/base/threads/1/runs/2", None, b"/threads/1/runs/2"),             # a path under the mount
    (b"/threads/1/runs/2", None, b"/threads/1/runs/2"),                  # MOUNT_PREFIX omits it: as is
    (b"/basement/x", None, b"/basement/x"),                              # not a path boundary
    (b"http://127.0.0.1:2024/x", None, b"/x"),                           # outside the base path
    (b"http://127.0.0.1:20245/base/x", None, b"http://127.0.0.1:20245/base/x"),  # another port
    (b"https://127.0.0.1:2024/base/x", None, b"https://127.0.0.1:2024/base/x"),  # another scheme
    (b"https://login.example/cb", b"agents.example", b"https://login.example/cb"),  # another site
    (b"//127.0.0.1:2024/base/x", None, b"//127.0.0.1:2024/base/x"),      # scheme-relative: left alone
])
def test_client_url_maps_upstream_urls_to_the_clients_origin(value, sent_host, expected):
    assert client_url(value, upstream=UP, sent_host=sent_host) == expected


def test_one_builder_applies_base_path_and_host_choice():
    raw = [(b"Host", b"agents.example"), (b"X-A", b"1")]
    kw = dict(upstream=UP, request_id="r1", client_ip="10.0.0.1", proto="http", body_framing=None)
    kept = upstream_head("GET", "/threads?x=1", raw, preserve_host=True, **kw)
    assert kept.startswith(b"GET /base/threads?x=1 HTTP/1.1\r\nHost: agents.example\r\n")
    assert b"X-Forwarded-Host: agents.example\r\n" in kept
    own = upstream_head("GET", "/threads", raw, preserve_host=False, **kw)
    assert own.startswith(b"GET /base/threads HTTP/1.1\r\nHost: 127.0.0.1:2024\r\n")
    # an HTTP/1.0 client without Host: the upstream's own name
    assert b"\r\nHost: 127.0.0.1:2024\r\n" in upstream_head("GET", "/", [], preserve_host=True, **kw)
    assert upstream_head("OPTIONS", "*", [], preserve_host=True, **kw).startswith(b"OPTIONS * HTTP/1.1")


def test_request_ids_kept_when_printable_and_bounded():
    assert request_id_from([(b"X-Request-ID", b'a b "c" \\')]) == 'a b "c" \\'
    assert request_id_from([(b"x-request-id", b"z" * 118)]) == "z" * 118
    for bad in (b"z" * 119, b"a\tb", b"caf\xc3\xa9", b"a\x7fb"):
        assert request_id_from([(b"X-Request-ID", bad)]) != bad.decode("latin-1")
    assert log_escape("plain-id_1.2:3") == "plain-id_1.2:3"
    assert json.loads('"' + log_escape('a "b" \\') + '"') == 'a "b" \\'
    assert log_escape("a b", quote=True) == '"a b"' and log_escape("ab", quote=True) == "ab"


# ---- the client's choice, from a body read in arbitrary chunks ----

def _scan(body: bytes, cuts: list[int]) -> DisconnectIntent:
    it, last = DisconnectIntent(), 0
    for c in sorted(set(x % (len(body) + 1) for x in cuts)) + [len(body)]:
        it.feed(body[last:c])
        last = c
    return it


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=20), kids, max_size=4),
                     max_leaves=20)
_keys = st.sampled_from(["on_disconnect", "stream_resumable", "input", "on_disconnect ", "x"])


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(_keys, _json | st.sampled_from(["cancel", "continue"]), max_size=5),
       nested=_json, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
       ascii_only=st.booleans())
def test_intent_scan_matches_json_loads(doc, nested, cuts, ascii_only):
    doc = dict(doc, input={"messages": [nested, '"on_disconnect": "continue"'], "on_disconnect": "continue"})
    body = json.dumps(doc, ensure_ascii=ascii_only).encode()
    it = _scan(body, cuts)
    assert not it.broken
    for got, want in ((it.on_disconnect, doc.get("on_disconnect")), (it.stream_resumable, doc.get("stream_resumable"))):
        if isinstance(want, str) and len(json.dumps(want, ensure_ascii=ascii_only).encode()) - 2 > _SHORT:
            assert got is None  # longer than any choice (cancel/continue): never kept, never read as one
        elif want is None or isinstance(want, (str, bool)):
            assert got == want and type(got) is type(want)
        else:  # a number, list or object (the server answers 422): never read as a choice
            assert not isinstance(got, (str, bool))


@pytest.mark.parametrize("body, keeps", [
    (b'{"on_disconnect": "continue"}', True),
    (b'{"stream_resumable": true}', True),
    (b'{"stream_resumable": true, "on_disconnect": "cancel"}', False),  # an explicit cancel wins
    (b'{"stream_resumable": false}', False),
    (b'{"input": {"on_disconnect": "continue"}}', False),  # nested: not the run's field
    (b"{}", False),
    (b"[1]", None),        # not an object: the choice cannot be read, the run is left alone
])
def test_client_choice_decides_the_cancel(body, keeps):
    ex = SimpleNamespace(method="POST", path="/threads/t/runs/stream", body=body, run_intent=None)
    assert _client_keeps_run(ex) is keeps
    big = _scan(body, [1, 2, 3, 5, 8, 13])
    ex2 = SimpleNamespace(method="POST", path="/x", body=None, run_intent=big)
    assert _client_keeps_run(ex2) is keeps


def test_joins_keep_the_run_unless_the_joiner_asked_to_cancel():
    mk = lambda q: SimpleNamespace(method="GET", path="/threads/t/runs/r/stream" + q, body=None)  # noqa: E731
    assert _client_keeps_run(mk("")) is True
    assert _client_keeps_run(mk("?cancel_on_disconnect=false")) is True
    assert _client_keeps_run(mk("?cancel_on_disconnect=true")) is False


# ---- timeout classes ----

def test_builtin_timeout_classes_and_what_they_arm():
    t = RouteTable(C.parse({"timeouts": {"request": "10s", "stream": "1h", "idle": "30s", "event_idle": "2m"}}))
    cls = {(m, p): t.match(m, p) for m, p in [
        ("POST", "/runs/wait"), ("POST", "/threads/a/runs/wait"), ("GET", "/threads/a/runs/b/join"),
        ("POST", "/threads/a/runs/b/cancel"), ("GET", "/threads/a/stream"), ("GET", "/threads/a/stream/events"),
        ("POST", "/mcp/"), ("POST", "/runs/stream"), ("POST", "/runs/batch"), ("GET", "/threads/a")]}
    assert {k[1]: r.timeout_class for k, r in cls.items()} == {
        "/runs/wait": "long_poll", "/threads/a/runs/wait": "long_poll", "/threads/a/runs/b/join": "long_poll",
        "/threads/a/runs/b/cancel": "long_poll", "/threads/a/stream": "stream", "/threads/a/stream/events": "stream",
        "/mcp/": "stream", "/runs/stream": "request", "/runs/batch": "request", "/threads/a": "request"}
    wait = cls[("POST", "/runs/wait")]
    # a padded wait: no request cap after the headers, idle on the padding, no event idle (no events)
    assert wait.body_timeouts(sse=False) == dict(total=3600, total_kind="stream", idle=30, event_idle=None)
    thread_stream = cls[("GET", "/threads/a/stream")]
    assert thread_stream.body_timeouts(sse=True) == dict(total=None, total_kind="stream", idle=30, event_idle=120)
    run_stream = cls[("POST", "/runs/stream")]
    assert run_stream.body_timeouts(sse=True) == dict(total=3600, total_kind="stream", idle=30, event_idle=120)
    assert run_stream.body_timeouts(sse=False) is None  # a JSON error answer: the request deadline


def test_user_route_inherits_the_class_of_the_builtin_path_unless_it_says():
    t = RouteTable(C.parse({"routes": [
        {"name": "my_wait", "path": "/threads/{thread_id}/runs/wait", "methods": ["POST"]},
        {"name": "my_join", "path": "/threads/{thread_id}/runs/{run_id}/join", "timeout_class": "request"},
        {"name": "slow_thing", "path": "/slow", "timeout_class": "stream"}]}))
    assert t.match("POST", "/threads/a/runs/wait").timeout_class == "long_poll"
    assert t.match("GET", "/threads/a/runs/b/join").timeout_class == "request"
    assert t.match("GET", "/slow").timeout_class == "stream"
    with pytest.raises(C.ConfigError) as e:
        C.parse({"routes": [{"name": "x", "path": "/x", "timeout_class": "forever"}]})
    assert "routes[0].timeout_class" in str(e.value)
