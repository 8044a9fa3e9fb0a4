"""Pure header functions: what goes upstream, what comes back to the client.

Works on raw ``(bytes, bytes)`` pairs as aiohttp and httptools give them, so the hot path never
builds a dict or decodes a header it only copies.
"""
from __future__ import annotations

import json
import os
import re
from itertools import count

from .metrics import EXEMPLAR_MAX

# RFC 9110 §7.6.1 hop-by-hop fields, plus the framing fields the proxy rewrites itself.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
# Rewritten by the proxy on the way up; the client's values never pass as they are.
_UP_REWRITTEN = frozenset({b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                           b"x-forwarded-host", b"x-request-id", b"expect"})
# Server passes through (the client talks to the agent server; the sidecar is not an origin)
_DOWN_REWRITTEN = frozenset({b"content-length", b"x-request-id", b"date"})
_STRIP_UP = HOP_BY_HOP | _UP_REWRITTEN
DOWN_STRIP = HOP_BY_HOP | _DOWN_REWRITTEN  # response headers the client never gets from upstream
URL_HEADERS = frozenset({b"location", b"content-location"})  # rewritten by client_url()

# A client's id is kept when it is printable ASCII and short enough to be an exemplar label:
# OpenMetrics caps an exemplar's label set (names and values), "request_id" takes 10 of them.
REQUEST_ID_MAX = EXEMPLAR_MAX - len("request_id")
_REQUEST_ID_OK = re.compile(rb"^[\x20-\x7e]{1,%d}$" % REQUEST_ID_MAX)
_LOG_PLAIN = re.compile(r"^[A-Za-z0-9._:@/+=-]*$")
_ID_PREFIX = os.urandom(6).hex()
_id_counter = count(1)


def new_request_id() -> str:
    """Unique per process (random prefix) and cheap (a counter): no urandom call per request."""
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


def request_id_from(raw_headers) -> str:
    """The client's X-Request-ID when it is printable ASCII of at most ``REQUEST_ID_MAX``
    characters (spaces and quotes included: log writers escape it with :func:`log_escape`),
    else a new one. The upstream stores the id with its runs, so a usable one is never replaced."""
    for k, v in raw_headers:
        if len(k) == 12 and k.lower() == b"x-request-id":
            if _REQUEST_ID_OK.match(v):
                return v.decode("ascii")
            break
    return new_request_id()


def log_escape(value: str, quote: bool = False) -> str:
    """``value`` safe inside a log line: unchanged when it holds only token characters (the
    common case costs one regex match), else JSON-escaped (quotes, backslashes). ``quote=False``
    gives the inside of a JSON string; ``quote=True`` (text logs, fields split by spaces) puts an
    unusual value in double quotes so it stays one field."""
    if _LOG_PLAIN.match(value):
        return value
    s = json.dumps(value)
    return s if quote else s[1:-1]


# The usual Connection values: on the way up they name nothing to drop but hop-by-hop fields
# (upstream_head rebuilds only for other tokens), so they need no token parsing
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})


def connection_tokens(raw_headers) -> frozenset[bytes]:
    """Header names listed in Connection: (hop-by-hop by declaration)."""
    names: set[bytes] = set()
    for k, v in raw_headers:
        if k.lower() == b"connection":
            names.update(t.strip().lower() for t in v.split(b","))
    names.discard(b"")
    return frozenset(names)


def upstream_target(upstream, target: str) -> str:
    """The request target sent upstream: ``upstream.url``'s path, then the client's target.

    ``upstream`` is anything with ``base_path`` (the pool); user traffic, probes and run cancels
    all go through here, so a sidecar in front of ``http://svc/prefix`` sends them all there."""
    base = upstream.base_path
    return base + target if base and target.startswith("/") else target


def client_host(raw_headers) -> bytes | None:
    """The client's Host header as sent (None for an HTTP/1.0 client without one)."""
    for k, v in raw_headers:
        if len(k) == 4 and k.lower() == b"host":
            return v
    return None


def upstream_strip(extra_names=()) -> frozenset[bytes]:
    """The client headers never passed up as they are: hop-by-hop, the ones the proxy rewrites,
    and ``extra_names`` (lower-case) the proxy sets itself (trace context, deadline header)."""
    return _STRIP_UP | frozenset(extra_names)


def upstream_head(method: str, target: str, raw_headers, *, upstream, preserve_host: bool, request_id: str,
                  client_ip: str | None, proto: str, body_framing: bytes | None,
                  extra: list[tuple[bytes, bytes]] | None = None, strip: frozenset[bytes] = _STRIP_UP) -> bytes:
    """Serialize the request head sent upstream.

    ``upstream`` gives the base path and its own ``host_header``; with ``preserve_host`` the
    client's Host goes up instead (as nginx ``proxy_set_header Host $host``), so the URLs the
    server builds from it name the address the client used. ``body_framing`` is
    ``b"Content-Length: N"``, ``b"Transfer-Encoding: chunked"`` or None (no body). ``extra``
    headers are added; ``strip`` (see :func:`upstream_strip`) must name them, so they replace
    any client header of the same name.
    """
    xff = None
    orig_host = client_host(raw_headers)
    host = orig_host if preserve_host and orig_host else upstream.host_header
    parts = [method.encode("ascii"), b" ", upstream_target(upstream, target).encode("utf-8", "surrogateescape"),
             b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    conn_listed = None
    for k, v in raw_headers:
        kl = k.lower()
        if kl in strip:
            if kl == b"x-forwarded-for":
                xff = v if xff is None else xff + b", " + v
            elif kl == b"connection" and v.lower() not in _PLAIN_CONNECTION:
                conn_listed = True
            continue
        parts += (k, b": ", v, b"\r\n")
    if conn_listed:
        # rare: drop the fields the client declared hop-by-hop (rebuild without them)
        dropped = connection_tokens(raw_headers)
        if dropped - _PLAIN_CONNECTION:
            dropped |= {b"connection"}
            return upstream_head(method, target, [(k, v) for k, v in raw_headers if k.lower() not in dropped],
                                 upstream=upstream, preserve_host=preserve_host, request_id=request_id,
                                 client_ip=client_ip, proto=proto, body_framing=body_framing, extra=extra,
                                 strip=strip)
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


def _strip_prefix(value: bytes, prefix: bytes) -> bytes | None:
    """``value`` without ``prefix`` when the prefix ends at a path boundary, else None."""
    n = len(prefix)
    if value[:n].lower() != prefix.lower() or (len(value) > n and value[n:n + 1] not in b"/?#"):
        return None
    rest = value[n:]
    return rest if rest[:1] == b"/" else b"/" + rest


def client_url(value: bytes, *, upstream, sent_host: bytes | None) -> bytes:
    """A ``Location``/``Content-Location`` value as the client must see it (nginx's
    ``proxy_redirect default``): an absolute URL naming the upstream's origin (its own address,
    or the client's Host that was sent up in its place) becomes a path on the client's origin,
    and ``upstream.url``'s base path is taken off, since the sidecar adds it again on the way
    up. Any other URL (another site) passes unchanged."""
    rest = None
    if value[:1] == b"/" and value[:2] != b"//":
        rest = value
    else:
        scheme = upstream.scheme.encode("ascii") + b"://"
        for host in (upstream.host_header, sent_host):
            if host and (rest := _strip_prefix(value, scheme + host)) is not None:
                break
        if rest is None:
            return value
    base = upstream.base_path.encode("utf-8", "surrogateescape")
    if base:
        stripped = _strip_prefix(rest, base)
        if stripped is not None:
            rest = stripped
    return rest
