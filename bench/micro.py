#!/usr/bin/env python3
"""Micro-costs behind the profile's top entries (one core, uvloop): what one call costs, in us.
usage: .venv/bin/python bench/micro.py"""
import asyncio
import gc
import os
import socket
import sys
import time
import timeit

import httptools
import pybreaker
import uvloop
from prometheus_client import CollectorRegistry, Counter, Histogram

N = 100_000


def us(stmt, n=N, **g):
    t = min(timeit.repeat(stmt, number=n, repeat=3, globals=g))
    return 1e6 * t / n


async def main():
    loop = asyncio.get_running_loop()
    out = {}
    srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    out["transport.get_extra_info('peername')"] = us("tr.get_extra_info('peername')", tr=tr)
    out["loop.call_at(t, cb) + handle.cancel()"] = us("loop.call_at(t, f).cancel()", loop=loop, t=loop.time() + 100, f=lambda: None)
    out["loop.create_future()"] = us("loop.create_future()", loop=loop)

    class P:
        def on_header(self, a, b): pass
        def on_headers_complete(self): pass
        def on_body(self, b): pass
        def on_message_complete(self): pass
    out["httptools.HttpResponseParser(proto)"] = us("HP(p)", HP=httptools.HttpResponseParser, p=P())
    reg = CollectorRegistry()
    c = Counter("c", "c", ["route"], registry=reg).labels("other")
    h = Histogram("h", "h", ["route"], registry=reg, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)).labels("other")
    out["prometheus Counter.inc()"] = us("c.inc()", c=c)
    out["prometheus Histogram.observe(x) (17 buckets)"] = us("h.observe(0.003)", h=h)
    out["prometheus Histogram.observe(x, exemplar)"] = us("h.observe(0.003, {'request_id': 'abc'})", h=h)
    out["plain int += 1 (attribute)"] = us("o.n += 1", o=type("O", (), {"n": 0})())
    cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, exclude=[asyncio.CancelledError])
    out["pybreaker: with cb.calling(): pass (closed)"] = us("with cb.calling(): pass", cb=cb, n=50_000)
    out["pybreaker: cb.current_state"] = us("cb.current_state", cb=cb)

    async def leaf(x):
        return x

    async def layer(x):
        return await leaf(x)

    def run_chain():
        co = layer(1)
        try:
            co.send(None)
        except StopIteration:
            pass
    out["one extra `await` coroutine layer"] = us("f()", f=run_chain) - us("f()", f=lambda: leaf(1).close())
    depth = await chain_cost(loop)
    out["the layer chain: 8 async layers around 2 suspensions, per request"] = depth[8] - depth[0]
    out["answer head: aiohttp StreamResponse + prepare() (4 headers, null transport)"] = await head_cost(loop)
    tr.close()
    srv.close()
    g0 = gc.get_threshold()
    out["gc threshold (gen0, gen1, gen2)"] = str(g0)
    return out


async def chain_cost(loop, n=30_000) -> dict:
    """us per request of a task that awaits through ``d`` pass-through coroutine layers (each
    ``try: await next`` as the sidecar's async layers are) down to a handler that waits on two
    futures (the upstream's head and body), against the same handler with no layer: what folding
    the sidecar's async layers (errors, deliver, retry, three ``until_end``, the forwarder's
    ``_respond``, ``Runtime.handle``) into one function could save."""
    class Layer:
        def __init__(self, nxt):
            self.next = nxt

        async def __call__(self, r):
            try:
                return await self.next(r)
            except BaseException:
                raise

    async def handler(r):
        for _ in range(2):
            f = loop.create_future()
            loop.call_soon(f.set_result, r)
            await f
        return r

    out = {}
    for d in (0, 8, 0, 8):  # twice each, interleaved: the second figure of each is kept
        h = handler
        for _ in range(d):
            h = Layer(h)
        t = time.perf_counter()
        for _ in range(n // 100):
            await asyncio.gather(*[loop.create_task(h(1)) for _ in range(100)])
        out[d] = 1e6 * (time.perf_counter() - t) / n
    return out


async def head_cost(loop, n=20_000) -> float:
    """us for one streamed answer's head as the sidecar writes it: aiohttp's response object and
    its ``prepare()`` on the traffic server's own Request (serialised; the write is a no-op)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from aiohttp import web
    from proxy.server import Connection, Request, TrafficServer

    class NullTransport:
        def write(self, b):
            pass

        def writelines(self, bs):
            pass

        def is_closing(self):
            return False

        def get_extra_info(self, k, d=None):
            return ("127.0.0.1", 1)

    srv = TrafficServer(None, loop=loop, max_connections=1, head_timeout=5, keepalive_timeout=5, max_line=8190,
                        max_field=8190, upgrades=type("U", (), {"_connections": ()})())
    conn = Connection(srv)
    conn.transport = NullTransport()
    hdrs = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"),
            ("X-Request-ID", "5282c66858950000000002")]
    best = None
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            await web.StreamResponse(status=200, headers=hdrs).prepare(Request(conn, "GET", "/sse", (1, 1), [], True, None, None))
        with_head = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            Request(conn, "GET", "/sse", (1, 1), [], True, None, None)
        d = 1e6 * (with_head - (time.perf_counter() - t)) / n
        best = d if best is None else min(best, d)
    return best


if __name__ == "__main__":
    res = uvloop.run(main())
    w = max(len(k) for k in res)
    for k, v in res.items():
        print(("%-" + str(w) + "s  %s") % (k, ("%.2f us" % v) if isinstance(v, float) else v))
