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

import argparse
import asyncio
import os
import sys

import uvloop
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy import gcpolicy  # noqa: E402
from proxy.upstream import UpstreamPool  # noqa: E402

DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


async def main(port: int, upstream: str) -> None:
    pool = UpstreamPool(upstream, connect_timeout=10, max_connections=100_000, keepalive_timeout=4)
    pool.start()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
            request.method.encode(), request.raw_path.encode(), pool.host_header)
        conn = await pool.acquire()
        try:
            conn.begin(head, first_byte=None, total=None, total_kind="request", idle=None,
                       head_only=request.method == "HEAD")
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

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=4096)
    gcpolicy.setup()  # the proxy's own GC policy: this floor is the best the stack does
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18086)
    ap.add_argument("--upstream", default="http://127.0.0.1:18080")
    a = ap.parse_args()
    uvloop.run(main(a.port, a.upstream))
