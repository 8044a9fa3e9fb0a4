"""WebSocket upgrades pass through both ways, with close propagation, idle timeout and metrics."""
from __future__ import annotations

import asyncio

import aiohttp

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
