#!/usr/bin/env python3
"""The floor without aiohttp's server: what a replacement of the sidecar's server side could reach.

bench/floor_proxy.py measures the thinnest relay on the sidecar's stack: aiohttp's low-level server,
uvloop and proxy/upstream.py. This file keeps uvloop and proxy/upstream.py and replaces only
aiohttp's server side with an ``asyncio.Protocol`` driven by httptools (llhttp), the parser the
upstream side already uses: one protocol object per client connection, one task per request, the
answer written as chunked HTTP/1.1 with the transport's own flow control. It relays exactly what
the floor relays (the request line, no body; the answer's head minus hop-by-hop, the body chunk by
chunk, never buffered), so the difference between the columns ``floor`` and ``floor-raw`` is the
cost of aiohttp's server side, measured; the issue's constraint ("stay on aiohttp unless a
measurement shows a specific part of it is the wall") asks for exactly this figure.

It is a measuring instrument, not a server: no request-head limits, no timeouts on the client side,
no request bodies, no pipelining beyond one request at a time, no Expect, no upgrades.

usage: floor_raw.py [--port 18087] [--upstream http://127.0.0.1:18080]
"""
from __future__ import annotations

import asyncio

import httptools

from floor_common import DROP, UpstreamPool, begin, main

REASON = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error", 502: b"Bad Gateway",
          503: b"Service Unavailable", 504: b"Gateway Timeout"}


class RawConnection(asyncio.Protocol):
    """One client connection: httptools parses, one task relays each request's answer."""

    __slots__ = ("pool", "transport", "parser", "url", "task", "paused", "drain_waiter", "closed")

    def __init__(self, pool: UpstreamPool):
        self.pool = pool
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.task = None
        self.paused = False
        self.drain_waiter = None
        self.closed = False

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    # -- httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        url, self.url = self.url, b""
        self.transport.pause_reading()   # one request at a time
        self.task = asyncio.get_running_loop().create_task(self.relay(method, url, keep))

    # -- the relay
    async def drain(self) -> None:
        if self.paused and not self.closed:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter

    async def relay(self, method: bytes, url: bytes, keep: bool) -> None:
        pool, t = self.pool, self.transport
        try:
            await self._relay(pool, t, method, url, keep)
        except Exception:   # an upstream failure: the answer (or its body) is cut, and looks cut
            t.close()
            return
        self.task = None
        if not keep:
            t.close()
        elif not self.closed:
            t.resume_reading()

    async def _relay(self, pool: UpstreamPool, t, method: bytes, url: bytes, keep: bool) -> None:
        conn = await pool.acquire()
        try:
            begin(pool, conn, method, url)
            status, raw = await conn.headers()
            out = [b"HTTP/1.1 %d %s\r\n" % (status, REASON.get(status, b"Unknown"))]
            out += [b"%s: %s\r\n" % (k, v) for k, v in raw if k.lower() not in DROP]
            out.append(b"Transfer-Encoding: chunked\r\n\r\n" if keep else
                       b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            t.write(b"".join(out))
            while (chunk := await conn.next_chunk()) is not None:
                if self.closed:
                    break
                t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await self.drain()
            else:
                t.write(b"0\r\n\r\n")
        finally:
            pool.release(conn)


if __name__ == "__main__":
    main(lambda pool: lambda: RawConnection(pool), 18087)
