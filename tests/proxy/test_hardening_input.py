"""Hostile and broken client input on the traffic port, sent as raw bytes over real sockets.

Every case asserts the status, the JSON error body (``{"error": {"type", "message",
"request_id"}}`` — parser-level rejections are answered by proxy/accept.py in the same shape),
that nothing (or exactly the right thing) reached the upstream, and that the proxy still serves
the next request.
"""
from __future__ import annotations

import asyncio
import hashlib
import json

import httptools
import pytest


class Resp:
    def __init__(self):
        self.status = 0
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.version = ""

    def json(self) -> dict:
        return json.loads(self.body)


class _Collector:
    def __init__(self, parser_holder):
        self.responses: list[Resp] = []
        self.cur = None
        self.holder = parser_holder

    def on_message_begin(self):
        self.cur = Resp()

    def on_header(self, k, v):
        self.cur.raw_headers.append((k, v))
        self.cur.headers[k.decode("latin-1").lower()] = v.decode("latin-1")

    def on_headers_complete(self):
        p = self.holder[0]
        self.cur.status = p.get_status_code()
        self.cur.version = p.get_http_version()

    def on_body(self, b):
        self.cur.body += b

    def on_message_complete(self):
        self.responses.append(self.cur)


async def raw(port: int, data: bytes | list[bytes], *, want: int = 1, timeout: float = 5.0,
              pause: float = 0.0, check_close: bool = True) -> tuple[list[Resp], bool]:
    """Send ``data`` (pieces ``pause`` apart), read until ``want`` responses or EOF.

    Returns (responses, closed): closed is True when the proxy closed the connection. Interim
    1xx responses are included. Raises on a hang (no EOF and too few responses in ``timeout``).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    holder = [None]
    col = _Collector(holder)
    parser = httptools.HttpResponseParser(col)
    holder[0] = parser
    closed = False
    try:
        for piece in ([data] if isinstance(data, bytes) else data):
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(timeout):
            while len([r for r in col.responses if r.status >= 200]) < want:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                parser.feed_data(chunk)
                if col.responses and col.responses[-1].status < 200:
                    parser = httptools.HttpResponseParser(col)  # a 1xx is a message of its own
                    holder[0] = parser
        if not closed and check_close:
            try:
                async with asyncio.timeout(0.3):
                    closed = await reader.read(1) == b""
            except TimeoutError:
                pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
    return col.responses, closed


def assert_error(r: Resp, status: int, etype: str) -> dict:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == etype, err
    assert err["message"] and err["request_id"] == r.headers["x-request-id"]
    return err


async def serves(proxy, upstream) -> None:
    rs, _ = await raw(proxy.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n", check_close=False)
    assert rs[-1].status == 200 and rs[-1].json()["path"] == "/after"
    assert upstream.seen[-1]["path"] == "/after"


def H(line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


# (id, raw request, status, error type): each must be refused before the upstream sees anything
REFUSED = [
    # request smuggling: conflicting or ambiguous framing (llhttp, strict mode)
    ("cl_and_te", H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: 13", b"Transfer-Encoding: chunked",
                    body=b"0\r\n\r\nSMUGGLED"), 400, "bad_request"),
    ("te_and_cl", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked", b"Content-Length: 3",
                    body=b"0\r\n\r\n"), 400, "bad_request"),
    ("two_content_lengths", H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: 5", b"Content-Length: 6",
                              body=b"hello!"), 400, "bad_request"),
    ("content_length_list", H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: 5, 5", body=b"hello"),
     400, "bad_request"),
    ("content_length_sign", H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: +5", body=b"hello"),
     400, "bad_request"),
    ("content_length_negative", H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: -1"), 400, "bad_request"),
    ("te_not_chunked_last", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked, gzip",
                              body=b"0\r\n\r\n"), 400, "bad_request"),
    ("te_unknown", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
     400, "bad_request"),
    ("space_before_colon", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding : chunked",
                             body=b"0\r\n\r\n"), 400, "bad_request"),
    ("obs_fold", H(b"GET /x HTTP/1.1", b"Host: x", b"X-A: b", b" folded"), 400, "bad_request"),
    ("obs_fold_te", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding:", b" chunked",
                      body=b"0\r\n\r\n"), 400, "bad_request"),
    ("chunk_size_not_hex", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                             body=b"zz\r\nhello\r\n0\r\n\r\n"), 400, "bad_request"),
    ("chunk_size_negative", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                              body=b"-5\r\nhello\r\n0\r\n\r\n"), 400, "bad_request"),
    ("chunk_size_overflow", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                              body=b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"), 400, "bad_request"),
    ("chunk_bare_lf", H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked",
                        body=b"5\nhello\n0\n\n"), 400, "bad_request"),
    ("bare_lf_head", b"GET /x HTTP/1.1\nHost: x\n\n", 400, "bad_request"),
    ("two_hosts", H(b"GET /x HTTP/1.1", b"Host: a", b"Host: b"), 400, "bad_request"),
    # request targets that name another host (or none): never proxied
    ("absolute_form", H(b"GET http://evil.example/x HTTP/1.1", b"Host: evil.example"), 400, "bad_request"),
    ("absolute_form_same_host", H(b"GET http://127.0.0.1/x HTTP/1.1", b"Host: 127.0.0.1"), 400, "bad_request"),
    ("absolute_form_post", H(b"POST https://evil.example/sink HTTP/1.1", b"Host: x", b"Content-Length: 2",
                             body=b"hi"), 400, "bad_request"),
    ("authority_form_connect", H(b"CONNECT evil.example:443 HTTP/1.1", b"Host: evil.example:443"),
     400, "bad_request"),
    ("asterisk_not_options", H(b"GET * HTTP/1.1", b"Host: x"), 400, "bad_request"),
    ("relative_target", H(b"GET x/y HTTP/1.1", b"Host: x"), 400, "bad_request"),
    ("userinfo_target", H(b"GET @evil.example/x HTTP/1.1", b"Host: x"), 400, "bad_request"),
    # NUL, CR and bytes that are not allowed where they are
    ("nul_in_path", H(b"GET /a\x00b HTTP/1.1", b"Host: x"), 400, "bad_request"),
    ("nul_in_header_value", H(b"GET /x HTTP/1.1", b"Host: x", b"X-A: a\x00b"), 400, "bad_request"),
    ("cr_in_header_value", H(b"GET /x HTTP/1.1", b"Host: x", b"X-A: a\rInjected: 1"), 400, "bad_request"),
    ("nul_in_header_name", H(b"GET /x HTTP/1.1", b"Host: x", b"X-\x00A: a"), 400, "bad_request"),
    ("invalid_utf8_in_path", H(b"GET /a\xff\xfe HTTP/1.1", b"Host: x"), 400, "bad_request"),
    ("space_in_header_name", H(b"GET /x HTTP/1.1", b"Host: x", b"X A: b"), 400, "bad_request"),
    ("bad_method_token", H(b"G(T /x HTTP/1.1", b"Host: x"), 400, "bad_request"),
    # HTTP versions the proxy does not speak on this port
    ("http_0_9", b"GET /x\r\n\r\n", 505, "http_version_not_supported"),
    ("http_2_0_text", H(b"GET /x HTTP/2.0", b"Host: x"), 505, "http_version_not_supported"),
    # oversized heads
    ("url_over_max_line", H(b"GET /" + b"a" * 9000 + b" HTTP/1.1", b"Host: x"), 414, "uri_too_long"),
    ("header_over_max_field", H(b"GET /x HTTP/1.1", b"Host: x", b"X-Big: " + b"a" * 9000), 431,
     "header_field_too_large"),
    ("header_name_over_max_field", H(b"GET /x HTTP/1.1", b"Host: x", b"X-" + b"a" * 9000 + b": 1"), 431,
     "header_field_too_large"),
    ("headers_over_max_header_bytes", H(b"GET /x HTTP/1.1", b"Host: x",
                                        *[b"X-H%d: %s" % (i, b"v" * 4000) for i in range(20)]), 431,
     "headers_too_large"),
    ("too_many_header_lines", H(b"GET /x HTTP/1.1", b"Host: x", *[b"X-N%d: 1" % i for i in range(200)]), 431,
     "headers_too_large"),
]


@pytest.fixture
async def hproxy(upstream, make_proxy):
    return make_proxy(upstream.url, {"server": {"max_line_bytes": 8190, "max_field_bytes": 8190},
                                     "limits": {"max_header_bytes": "64KiB", "max_body_bytes": "1MiB"}})


async def test_refused_inputs_never_reach_the_upstream(hproxy, upstream):
    """One proxy for the whole table (startup dominates); each case on its own connection."""
    failures = []
    for name, data, status, etype in REFUSED:
        before = len(upstream.seen)
        rs, closed = await raw(hproxy.port, data)
        try:
            assert rs, "no response at all"
            assert_error(rs[0], status, etype)
            # the framing of what follows a malformed head is unknown: the connection closes
            # (only the limits layer's 431 answers a well-formed request and may keep it)
            assert closed or name == "headers_over_max_header_bytes", "connection not closed"
            assert len(upstream.seen) == before, f"reached the upstream: {upstream.seen[before:]}"
        except AssertionError as e:
            failures.append(f"{name}: {e}")
        await serves(hproxy, upstream)
    assert not failures, "\n".join(failures)
    err = hproxy.stderr()
    assert "Traceback" not in err
    rejected = [x for x in hproxy.log_lines() if x.get("message") == "rejected malformed request"]
    assert rejected and all(x["level"] == "info" for x in rejected)


async def test_smuggled_request_inside_a_body_stays_a_body(hproxy, upstream):
    """A body that looks like a second request reaches the upstream as one body of the declared
    length, re-framed by the proxy (never the client's framing passed through)."""
    inner = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    for data in (H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: %d" % len(inner), body=inner),
                 H(b"POST /sink HTTP/1.1", b"Host: x", b"Transfer-Encoding: chunked", body=chunked),
                 H(b"POST /sink HTTP/1.0", b"Transfer-Encoding: chunked", body=chunked)):
        before = len(upstream.seen)
        rs, _ = await raw(hproxy.port, data)
        assert rs[0].status == 200
        assert rs[0].json() == {"size": len(inner), "sha256": hashlib.sha256(inner).hexdigest()}
        assert [s["path"] for s in upstream.seen[before:]] == ["/sink"]
        assert not any(s["path"] == "/admin" for s in upstream.seen)
    await serves(hproxy, upstream)


async def test_host_and_forwarding_headers_cannot_redirect_the_proxy(hproxy, upstream):
    rs, _ = await raw(hproxy.port, H(b"GET //evil.example/x HTTP/1.1", b"Host: evil.example:1",
                                     b"X-Forwarded-Host: evil2.example", b"Forwarded: host=evil3.example"))
    assert rs[0].status == 200
    seen = upstream.seen[-1]
    assert seen["path"] == "//evil.example/x"  # origin-form path, sent to the configured upstream
    # upstream.preserve_host (default): the client's Host is passed on, so URLs the server builds
    # name the address the client used; the connection still goes only to the configured upstream
    assert seen["headers"]["Host"] == "evil.example:1"
    assert "evil.example:1" in seen["headers"]["X-Forwarded-Host"]


async def test_options_asterisk_is_forwarded(hproxy, upstream):
    rs, _ = await raw(hproxy.port, H(b"OPTIONS * HTTP/1.1", b"Host: x"))
    assert rs[0].status in (200, 404)   # whatever the upstream says; FaultUpstream's router says 404
    assert rs[0].headers.get("x-request-id")
    await serves(hproxy, upstream)


async def test_non_ascii_header_values_and_encoded_paths_pass_byte_exact(hproxy, upstream):
    rs, _ = await raw(hproxy.port, H(b"GET /a%FF%00b/%E2%82%AC?q=%ff HTTP/1.1", b"Host: x",
                                     b"X-Latin: caf\xe9 \xff\xfe"))
    assert rs[0].status == 200
    seen = upstream.seen[-1]
    assert seen["path"] == "/a%FF%00b/%E2%82%AC?q=%ff"
    assert (b"X-Latin", b"caf\xe9 \xff\xfe") in seen["raw_headers"]
    await serves(hproxy, upstream)


async def test_http_1_0_client(hproxy, upstream):
    rs, closed = await raw(hproxy.port, b"GET /ten HTTP/1.0\r\n\r\n")
    assert rs[0].status == 200 and rs[0].version == "1.0" and rs[0].json()["path"] == "/ten"
    assert closed  # HTTP/1.0 without keep-alive: the proxy closes after the answer
    assert upstream.seen[-1]["headers"]["Host"] == f"127.0.0.1:{upstream.port}"  # upstream gets a Host
    rs, _ = await raw(hproxy.port, H(b"POST /sink HTTP/1.0", b"Content-Length: 5", body=b"hello"))
    assert rs[0].json()["size"] == 5
    await serves(hproxy, upstream)


async def test_pipelined_requests_answer_in_order(hproxy, upstream):
    reqs = b"".join([H(b"GET /p1 HTTP/1.1", b"Host: x"),
                     H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: 3", body=b"abc"),
                     H(b"GET /delay/0.2 HTTP/1.1", b"Host: x"),
                     H(b"GET /p4 HTTP/1.1", b"Host: x", b"Connection: close")])
    rs, closed = await raw(hproxy.port, reqs, want=4)
    assert [r.status for r in rs] == [200] * 4
    assert rs[0].json()["path"] == "/p1"
    assert rs[1].json()["size"] == 3
    assert rs[2].json() == {"delayed": True}
    assert rs[3].json()["path"] == "/p4"
    assert len({r.headers["x-request-id"] for r in rs}) == 4
    assert closed
    # a malformed request in a pipeline: 400 and close. aiohttp's parser drops the whole read the
    # bad head arrived in, so a good request in the same read may get only the 400 (clean, and
    # it never reached the upstream either); sent apart, the good one is answered first.
    for pieces, want in (([H(b"GET /q1 HTTP/1.1", b"Host: x") + b"GET /q2 HTTP/1.1\r\nBad Header: 1\r\n\r\n"], 1),
                         ([H(b"GET /q1 HTTP/1.1", b"Host: x"), b"GET /q2 HTTP/1.1\r\nBad Header: 1\r\n\r\n"], 2)):
        before = len(upstream.seen)
        rs, closed = await raw(hproxy.port, pieces, want=want, pause=0.2)
        assert_error(rs[-1], 400, "bad_request")
        assert [r.status for r in rs] == [200] * (want - 1) + [400]
        assert closed
        assert [s["path"] for s in upstream.seen[before:]] == ["/q1"] * (want - 1)
    await serves(hproxy, upstream)


async def test_expect_100_continue(hproxy, upstream):
    body = b"0123456789" * 100
    head = H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: %d" % len(body), b"Expect: 100-continue")
    reader, writer = await asyncio.open_connection("127.0.0.1", hproxy.port)
    try:
        writer.write(head)
        async with asyncio.timeout(3):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        async with asyncio.timeout(3):
            resp_head = await reader.readuntil(b"\r\n\r\n")
            n = int(resp_head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            resp = json.loads(await reader.readexactly(n))
    finally:
        writer.close()
    assert resp_head.startswith(b"HTTP/1.1 200")
    assert resp == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert b"expect" not in b"".join(k.lower() for k, _ in upstream.seen[-1]["raw_headers"])
    # too large: 413 at once, no 100 Continue, the upstream sees nothing
    before = len(upstream.seen)
    rs, _ = await raw(hproxy.port, H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: 5000000",
                                     b"Expect: 100-continue"))
    assert [r.status for r in rs] == [413]
    assert_error(rs[0], 413, "body_too_large")
    assert len(upstream.seen) == before
    await serves(hproxy, upstream)


async def test_traffic_port_never_serves_admin_paths(hproxy, upstream, session):
    for path in ("/metrics", "/healthz", "/readyz", "/livez"):
        async with session.get(hproxy.url + path) as r:
            assert r.status == 200
            assert r.headers["X-Upstream"] == "fault"
            assert (await r.json())["path"] == path
    assert [s["path"] for s in upstream.seen[-4:]] == ["/metrics", "/healthz", "/readyz", "/livez"]
    # FaultUpstream answers /status/<code>; the proxy's own /status must never answer here
    async with session.get(hproxy.url + "/status/203") as r:
        assert r.status == 203 and "upstream_pool" not in await r.text()
    assert upstream.seen[-1]["path"] == "/status/203"


async def test_admin_port_serves_only_admin_paths(hproxy, upstream, session):
    n = len(upstream.seen)
    for path in ("/", "/threads", "/runs/wait", "/metrics/x", "/assistants/search", "/status/x"):
        async with session.get(hproxy.admin + path) as r:
            assert r.status == 404, path
    async with session.post(hproxy.admin + "/runs/wait", json={}) as r:
        assert r.status in (404, 405)
    async with session.post(hproxy.admin + "/metrics", data=b"x") as r:
        assert r.status == 405
    assert len(upstream.seen) == n  # nothing on the admin port reaches the upstream
    for path in ("/metrics", "/status", "/healthz", "/readyz"):
        async with session.get(hproxy.admin + path) as r:
            assert r.status == 200


async def test_expect_100_continue_from_a_client_that_half_closes(hproxy, upstream):
    """Found by test_hardening_fuzz: the head (with Expect) and the whole body, then SHUT_WR."""
    import socket as _s
    reader, writer = await asyncio.open_connection("127.0.0.1", hproxy.port)
    writer.write(H(b"POST /sink HTTP/1.1", b"Host: x", b"Content-Length: 3", b"Expect: 100-continue", body=b"abc"))
    await writer.drain()
    writer.transport.get_extra_info("socket").shutdown(_s.SHUT_WR)
    async with asyncio.timeout(3):
        data = await reader.read()
    writer.close()
    await asyncio.sleep(0.2)
    await serves(hproxy, upstream)
    assert "Traceback" not in hproxy.stderr() and "unexpected error while proxying" not in hproxy.stderr()
    del data  # whether a half-closed client gets its answer is up to aiohttp; it must not be a crash


async def test_no_100_continue_for_http_1_0(hproxy, upstream):
    rs, _ = await raw(hproxy.port, H(b"POST /sink HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 3",
                                     body=b"abc"))
    assert rs[-1].json()["size"] == 3
    assert [r.status for r in rs] == [200]


async def test_admin_port_parse_errors_are_quiet(hproxy, upstream):
    rs, closed = await raw(hproxy.admin_port, H(b"GET /" + b"a" * 9000 + b" HTTP/1.1", b"Host: x"))
    assert rs and rs[0].status == 414 and closed
    await asyncio.sleep(0.1)
    assert "Traceback" not in hproxy.stderr()


async def test_a_header_line_arriving_in_pieces_is_bounded_before_it_ends(hproxy, upstream):
    """The parser keeps a header line whole until its end, so the server bounds a line still
    arriving: 431 once it is past what any allowed line can be, without waiting for its end."""
    # 20 KiB of one line, no line end: past any allowed line (a name and a value of 8190 bytes
    # each) at the last piece, so nothing is sent after the answer (that would be a reset)
    pieces = [b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"a" * 4096] * 5
    rs, closed = await raw(hproxy.port, pieces, pause=0.05)
    assert_error(rs[0], 431, "header_field_too_large")
    assert closed
    # a request line arriving in pieces: 414 as soon as it is too long
    rs, closed = await raw(hproxy.port, [b"GET /"] + [b"a" * 4096] * 2, pause=0.05)
    assert_error(rs[0], 414, "uri_too_long")
    assert closed
    await serves(hproxy, upstream)
    rejected = [x for x in hproxy.log_lines() if x.get("message") == "rejected malformed request"]
    assert [x["status"] for x in rejected][-2:] == [431, 414]


async def test_a_pipelined_request_whose_body_comes_later(hproxy, upstream):
    """Reading pauses while a pipelined request waits its turn; it must resume when its turn
    comes, or the rest of its body would never be read."""
    pieces = [H(b"GET /delay/0.2 HTTP/1.1", b"Host: x") + H(b"POST /sink HTTP/1.1", b"Host: x",
                                                            b"Content-Length: 5", body=b"he"),
              b"llo"]
    rs, _ = await raw(hproxy.port, pieces, want=2, pause=0.5, check_close=False)
    assert [r.status for r in rs] == [200, 200]
    assert rs[0].json() == {"delayed": True}
    assert rs[1].json()["size"] == 5
    await serves(hproxy, upstream)
