"""Pure header functions: what goes upstream, what comes back to the client.

Works on raw ``(bytes, bytes)`` pairs as aiohttp and httptools give them, so the hot path never
builds a dict or decodes a header it only copies.
"""
from __future__ import annotations

import os
import re
from itertools import count

# RFC 9110 §7.6.1 hop-by-hop fields, plus the framing fields the proxy rewrites itself.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
# Rewritten by the proxy on the way up; the client's values never pass as they are.
_UP_REWRITTEN = frozenset({b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                           b"x-forwarded-host", b"x-request-id", b"expect"})
_DOWN_REWRITTEN = frozenset({b"content-length", b"x-request-id", b"date", b"server"})
_STRIP_UP = HOP_BY_HOP | _UP_REWRITTEN
DOWN_STRIP = HOP_BY_HOP | _DOWN_REWRITTEN  # response headers the client never gets from upstream

_REQUEST_ID_OK = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
_ID_PREFIX = os.urandom(6).hex()
_id_counter = count(1)


def new_request_id() -> str:
    """Unique per process (random prefix) and cheap (a counter): no urandom call per request."""
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


def request_id_from(raw_headers) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one (no log injection)."""
    for k, v in raw_headers:
        if len(k) == 12 and k.lower() == b"x-request-id":
            if _REQUEST_ID_OK.match(v):
                return v.decode("ascii")
            break
    return new_request_id()


def connection_tokens(raw_headers) -> frozenset[bytes]:
    """Header names listed in Connection: (hop-by-hop by declaration)."""
    names: set[bytes] = set()
    for k, v in raw_headers:
        if k.lower() == b"connection":
            names.update(t.strip().lower() for t in v.split(b","))
    names.discard(b"")
    return frozenset(names)


def upstream_head(method: str, target: str, raw_headers, *, host: bytes, request_id: str,
                  client_ip: str | None, proto: str, body_framing: bytes | None,
                  extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Serialize the request head sent upstream.

    ``body_framing`` is ``b"Content-Length: N"``, ``b"Transfer-Encoding: chunked"`` or None (no body).
    """
    xff = None
    orig_host = None
    parts = [method.encode("ascii"), b" ", target.encode("utf-8", "surrogateescape"),
             b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    conn_listed = None
    for k, v in raw_headers:
        kl = k.lower()
        if kl in _STRIP_UP:
            if kl == b"x-forwarded-for":
                xff = v if xff is None else xff + b", " + v
            elif kl == b"host":
                orig_host = v
            elif kl == b"connection":
                conn_listed = True
            continue
        parts += (k, b": ", v, b"\r\n")
    if conn_listed:
        # rare: drop the fields the client declared hop-by-hop (rebuild without them)
        dropped = connection_tokens(raw_headers)
        if dropped - {b"close", b"keep-alive"}:
            dropped |= {b"connection"}
            return upstream_head(method, target, [(k, v) for k, v in raw_headers if k.lower() not in dropped],
                                 host=host, request_id=request_id, client_ip=client_ip, proto=proto,
                                 body_framing=body_framing, extra=extra)
    if client_ip:
        cip = client_ip.encode("ascii")
        xff = cip if xff is None else xff + b", " + cip
    if xff is not None:
        parts += (b"X-Forwarded-For: ", xff, b"\r\n")
    parts += (b"X-Forwarded-Proto: ", proto.encode("ascii"), b"\r\n")
    if orig_host is not None:
        parts += (b"X-Forwarded-Host: ", orig_host, b"\r\n")
    parts += (b"X-Request-ID: ", request_id.encode("ascii"), b"\r\n")
    if extra:
        for k, v in extra:
            parts += (k, b": ", v, b"\r\n")
    if body_framing is not None:
        parts += (body_framing, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
