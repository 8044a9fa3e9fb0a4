"""WebSocket upgrades pass through both ways, with close propagation, idle timeout and metrics."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy_harness import WS_CLOSED, WS_HEADERS, metric, scrape


async def test_websocket_round_trip_and_client_close(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    async with session.ws_connect(p.url + "/threads/t1/stream/events", protocols=("v1.langgraph",),
                                  headers={"X-Request-ID": "ws-1"}) as ws:
        assert ws.protocol == "v1.langgraph"
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive()).data == b"\x03\x02\x01"
    await asyncio.sleep(0.2)
    assert upstream.app[WS_CLOSED] == [1000]  # the client's close reached the upstream
    h = upstream.app[WS_HEADERS][0]
    assert h["X-Request-ID"] == "ws-1" and h["X-Forwarded-For"] == "127.0.0.1"
    s = await scrape(p.admin)
    assert metric(s, "sidecar_websocket_messages_total", direction="client_to_upstream") == 2
    assert metric(s, "sidecar_websocket_messages_total", direction="upstream_to_client") == 2
    assert metric(s, "sidecar_requests_total", route="thread_stream_events", code="101") == 1
    assert metric(s, "sidecar_in_flight_streams") == 0
    async with session.get(p.url + "/next") as r:
        assert r.status == 200


async def test_upstream_close_reaches_client_with_its_code(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    async with session.ws_connect(p.url + "/threads/t1/stream/events") as ws:
        await ws.send_str("close-me")
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001 or msg.data == 4001


async def test_idle_websocket_is_closed(upstream, make_proxy, session):
    p = make_proxy(upstream.url, {"timeouts": {"idle": "300ms"}})
    async with session.ws_connect(p.url + "/threads/t1/stream/events", autoping=False) as ws:
        msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
    await asyncio.sleep(0.2)
    s = await scrape(p.admin)
    assert metric(s, "sidecar_timeouts_total", kind="idle") == 1


async def test_refused_upgrade_passes_the_status(upstream, make_proxy, session):
    p = make_proxy(upstream.url)
    try:
        await session.ws_connect(p.url + "/no-websocket-here")
        raise AssertionError("the upgrade should have been refused")
    except aiohttp.WSServerHandshakeError as e:
        assert e.status in (200, 400, 404, 405, 502)
    async with session.get(p.url + "/next") as r:
        assert r.status == 200


async def _silent_closer(mode: str):
    """A raw upstream that reads the upgrade request and closes (FIN) or resets (RST) unanswered."""
    import socket
    import struct

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if mode == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("mode", ["close", "reset"])
async def test_upgrade_closed_unanswered_is_502_upstream_reset(make_proxy, session, mode):
    server = await _silent_closer(mode)
    port = server.sockets[0].getsockname()[1]
    try:
        p = make_proxy(f"http://127.0.0.1:{port}", {"retries": {"attempts": 1}})
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await session.ws_connect(p.url + "/threads/t1/stream/events", headers={"X-Request-ID": "ws-reset"})
        assert e.value.status == 502
        async with session.get(p.url + "/threads/t1/stream/events", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Request-ID": "ws-reset-2"}) as r:
            assert r.status == 502
            err = (await r.json())["error"]
        assert err["type"] == "upstream_reset" and err["request_id"] == "ws-reset-2"
        s = await scrape(p.admin)
        assert metric(s, "sidecar_upstream_errors_total", route="thread_stream_events", kind="reset") == 2
        assert metric(s, "sidecar_requests_total", route="thread_stream_events", code="502") == 2
        await asyncio.sleep(0.2)
        assert "Traceback" not in p.stderr()
        # one process-log line at most per failed upgrade, none of them an ERROR
        lines = [x for x in p.log_lines() if x.get("request_id") in ("ws-reset", "ws-reset-2")]
        assert len(lines) <= 2 and all(x.get("level") != "ERROR" for x in lines)
        access = [x for x in p.access_lines() if x.get("request_id") == "ws-reset-2"]
        assert len(access) == 1 and access[0]["outcome"] == "upstream_reset"
    finally:
        server.close()
        await server.wait_closed()


async def test_upgrade_after_a_request_on_the_same_connection(upstream, make_proxy):
    """The traffic server (proxy/server.py) hands a connection to aiohttp's at its upgrade: one
    that has already served a plain request on keep-alive keeps working, the upgrade included."""
    import base64
    import os
    p = make_proxy(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(n)
            key = base64.b64encode(os.urandom(16))
            writer.write(b"GET /threads/t1/stream/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            mask = os.urandom(4)
            payload = b"hello"
            writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            frame = await reader.readexactly(2)
            assert frame[0] == 0x81
            assert await reader.readexactly(frame[1] & 0x7F) == b"echo:hello"
    finally:
        writer.close()
    s = await scrape(p.admin)
    assert metric(s, "sidecar_requests_total", route="other", code="200") >= 1
