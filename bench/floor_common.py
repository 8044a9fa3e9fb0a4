"""What the two floor relays (floor_proxy.py, floor_raw.py) share, so they differ only in the
server side they measure: the upstream pool and its settings, the request head sent up, the
hop-by-hop headers dropped, the GC policy and the command line.

No import of aiohttp's server here: floor_raw.py must not load it (its idle RSS is a measurement).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

import uvloop

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy import gcpolicy  # noqa: E402
from proxy.upstream import UpstreamConnection, UpstreamPool  # noqa: E402

# hop-by-hop and framing headers of the upstream's answer: each relay frames the body itself
DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


def begin(pool: UpstreamPool, conn: UpstreamConnection, method: bytes, target: bytes) -> None:
    """Send the request line and Host upstream (no body, no timeouts: the floor has no feature)."""
    conn.begin(b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (method, target, pool.host_header),
               first_byte=None, total=None, total_kind="request", idle=None, head_only=method == b"HEAD")


async def _serve(make_factory, port: int, upstream: str) -> None:
    pool = UpstreamPool(upstream, connect_timeout=10, max_connections=100_000, keepalive_timeout=4)
    pool.start()
    await asyncio.get_running_loop().create_server(make_factory(pool), "127.0.0.1", port, backlog=4096)
    gcpolicy.setup()  # the proxy's own GC policy: a floor is the best the stack does
    await asyncio.Event().wait()


def main(make_factory, default_port: int) -> None:
    """``make_factory(pool)`` returns the protocol factory of the relay's server side."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=default_port)
    ap.add_argument("--upstream", default="http://127.0.0.1:18080")
    a = ap.parse_args()
    uvloop.run(_serve(make_factory, a.port, a.upstream))
