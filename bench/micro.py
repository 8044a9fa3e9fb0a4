#!/usr/bin/env python3
"""Micro-costs behind the profile's top entries (one core, uvloop): what one call costs, in us.
usage: .venv/bin/python bench/micro.py"""
import asyncio
import gc
import socket
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
    tr.close()
    srv.close()
    g0 = gc.get_threshold()
    out["gc threshold (gen0, gen1, gen2)"] = str(g0)
    return out


if __name__ == "__main__":
    res = uvloop.run(main())
    w = max(len(k) for k in res)
    for k, v in res.items():
        print(("%-" + str(w) + "s  %s") % (k, ("%.2f us" % v) if isinstance(v, float) else v))
