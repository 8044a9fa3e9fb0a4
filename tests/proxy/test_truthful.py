"""Failures told truthfully: a cut answer looks cut, an invalid status is a 502, a shutdown that
cuts a stream says so. Each case: what the client received byte by byte, the metric labels, the
access-log outcome and who ended the exchange, and no traceback in the proxy's log.
"""
from __future__ import annotations

import asyncio
import json
import signal

import pytest

from proxy_harness import metric, scrape, wait_metric
from test_hardening_upstream import RawUpstream, _abort_with_rst

BODY = b"x" * 100_000
SSE_HALF = (b"event: values\r\ndata: {\"i\": 0}\r\n\r\nevent: values\r\ndata: {\"i\": 1}\r\n\r\n"
            b"event: values\r\ndata: {\"i\": 2}\r\n\r\nevent: values\r\ndata: {\"i\": 3, \"half")


class TruthUpstream(RawUpstream):
    """Bodies framed by connection close, ended by a reset or a clean FIN; invalid status codes."""

    async def answer(self, method, path, body, w):
        kind = path.strip("/").split("?")[0]
        if kind == "eof_reset":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
            await w.drain()
            await asyncio.sleep(0.05)
            _abort_with_rst(w)
            return False
        if kind == "eof_fin":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
            await w.drain()
            return False
        if kind == "eof_sse_reset":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + SSE_HALF)
            await w.drain()
            await asyncio.sleep(0.05)
            _abort_with_rst(w)
            return False
        if kind.startswith("status_"):
            w.write(b"HTTP/1.1 " + kind[7:].encode() + b" Odd\r\nContent-Length: 2\r\n\r\nok")
            return True
        return await super().answer(method, path, body, w)


@pytest.fixture
async def truth_upstream():
    up = await TruthUpstream().start()
    try:
        yield up
    finally:
        await up.stop()


OVERRIDES = {"circuit_breaker": {"enabled": False}, "retries": {"attempts": 1},
             "timeouts": {"first_byte": "2s", "idle": "2s"}}


async def raw_get(port: int, path: str, timeout: float = 5) -> tuple[bytes, str]:
    """Everything the proxy sent for one request, and how the connection ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    how = "fin"
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
    except ConnectionResetError:
        how = "reset"
    except TimeoutError:
        how = "hang"
    writer.close()
    return data, how


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """(payload, saw the final zero-size chunk)."""
    out, pos = b"", 0
    while True:
        nl = body.find(b"\r\n", pos)
        if nl < 0:
            return out, False
        size = int(body[pos:nl], 16)
        if size == 0:
            return out, body[nl + 2:nl + 4] == b"\r\n"
        out += body[nl + 2:nl + 2 + size]
        if len(body) < nl + 2 + size + 2:
            return out, False
        pos = nl + 2 + size + 2


def access(p, outcome: str) -> list[dict]:
    return [ln for ln in p.access_lines() if ln["outcome"] == outcome]


async def test_close_framed_body_cut_by_a_reset_never_looks_complete(truth_upstream, make_proxy):
    p = make_proxy(truth_upstream.url, OVERRIDES)
    data, how = await raw_get(p.port, "/eof_reset")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    payload, final = dechunk(body)
    assert not final and len(payload) <= len(BODY)  # no terminating chunk: visibly cut
    samples = await wait_metric(p.admin, "sidecar_upstream_errors_total", 1, kind="reset")
    assert metric(samples, "sidecar_upstream_errors_total", kind="reset") == 1
    lines = await _lines(p, "upstream_reset")
    assert lines[0]["ended_by"] == "upstream" and lines[0]["status"] == 200
    assert "Traceback" not in p.stderr()


async def test_close_framed_body_ended_by_a_clean_fin_is_complete(truth_upstream, make_proxy):
    p = make_proxy(truth_upstream.url, OVERRIDES)
    data, how = await raw_get(p.port, "/eof_fin")
    _, _, body = data.partition(b"\r\n\r\n")
    payload, final = dechunk(body)
    assert final and payload == BODY
    assert (await _lines(p, "ok"))[0]["ended_by"] is None


async def test_close_framed_sse_cut_by_a_reset_ends_with_an_error_event(truth_upstream, make_proxy):
    p = make_proxy(truth_upstream.url, OVERRIDES)
    data, how = await raw_get(p.port, "/eof_sse_reset")
    _, _, body = data.partition(b"\r\n\r\n")
    payload, final = dechunk(body)
    events = payload.replace(b"\r\n", b"\n").split(b"\n\n")
    last = [e for e in events if e.strip()][-1]
    assert last.startswith(b"event: error\ndata: ")
    err = json.loads(last.split(b"data: ", 1)[1])
    assert err["error"] == "upstream_reset" and err["request_id"]
    assert b'"half' in payload  # the half event was passed on, then ended before the error event
    samples = await wait_metric(p.admin, "sidecar_streams_total", 1, outcome="upstream_error")
    assert metric(samples, "sidecar_streams_total", outcome="completed") == 0
    assert (await _lines(p, "upstream_reset"))[0]["ended_by"] == "upstream"
    assert "Traceback" not in p.stderr()


@pytest.mark.parametrize("status", ["099", "000", "102", "600", "999"])
async def test_invalid_status_codes_are_a_502(truth_upstream, make_proxy, status):
    p = make_proxy(truth_upstream.url, OVERRIDES)
    data, how = await asyncio.wait_for(raw_get(p.port, f"/status_{status}"), 4)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), head
    err = json.loads(body)["error"]
    assert err["type"] == "upstream_protocol_error"
    assert f"invalid status code {status}" in err["message"] or "malformed response" in err["message"], err
    samples = await scrape(p.admin)
    assert metric(samples, "sidecar_upstream_errors_total", kind="protocol") == 1
    assert (await _lines(p, "upstream_protocol_error"))[0]["ended_by"] == "upstream"
    assert "Traceback" not in p.stderr()


async def test_streams_cut_by_the_shutdown_grace_say_so(upstream, make_proxy):
    p = make_proxy(upstream.url, {"server": {"drain_delay": "0s", "shutdown_grace": "1s"}})
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(b"GET /sse?events=100&interval=0.2 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    await reader.readuntil(b"event: metadata")
    p.signal(signal.SIGTERM)
    data = b""
    async with asyncio.timeout(8):
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    writer.close()
    text = data.replace(b"\r\n", b"\n")
    assert b"event: error\n" in text and b'"error": "shutdown"' in text
    assert await asyncio.to_thread(p.proc.wait, 10) == 0
    line = (await _lines(p, "shutdown"))[0]
    assert line["ended_by"] == "proxy" and line["status"] == 200


async def _lines(p, outcome: str) -> list[dict]:
    for _ in range(40):  # the access log is flushed every second
        got = access(p, outcome)
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access line with outcome {outcome}: {p.stdout()[-2000:]}")
