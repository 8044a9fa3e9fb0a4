#!/usr/bin/env python3
"""The floor of the sidecar's stack: the thinnest relay on exactly what the proxy stands on.

aiohttp's low-level server (as proxy/accept.py uses it), uvloop, and the proxy's own upstream pool
and connection (proxy/upstream.py: httptools, one timer per connection, the bounded read queue).
No layer, no metric, no log, no policy, no header rewriting beyond the hop-by-hop minimum: each
answer's head is copied and its body relayed chunk by chunk, as the proxy does for a stream.

What this process costs per stream (memory, CPU, event delay) is what any proxy on this stack
costs before it does anything; the ``streams`` scenario of bench/run.py runs it as the column
``floor`` beside nginx and the sidecar, so a target the floor itself misses is shown to be out of
reach of the stack, not of the sidecar's features; bench/floor_raw.py (column ``floor-raw``) is the
same relay without aiohttp's server side, which tells which part of the stack is the wall.

usage: floor_proxy.py [--port 18086] [--upstream http://127.0.0.1:18080]
"""
from __future__ import annotations

from aiohttp import web

from floor_common import DROP, begin, main


def make_factory(pool):
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        conn = await pool.acquire()
        try:
            begin(pool, conn, request.method.encode(), request.raw_path.encode())
            status, raw = await conn.headers()
            resp = web.StreamResponse(status=status, headers=[
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() not in DROP])
            await resp.prepare(request)
            while (chunk := await conn.next_chunk()) is not None:
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            pool.release(conn)

    return web.Server(handle, access_log=None)


if __name__ == "__main__":
    main(make_factory, 18086)
