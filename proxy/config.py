"""YAML config → validated, frozen dataclass tree.

The schema is the dataclasses below: each field's type says what the YAML may hold, and the loader
walks the document once, collecting *every* problem with its key path (``upstream.connect_timeout:
expected a duration like "2s", got "fast"``) before giving up. Unknown keys are errors, so a typo
never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import warnings
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union
from urllib.parse import urlsplit

import yaml

from .llm import LLMConfig
from .tracing import TracingConfig


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` is a list of ``"key.path: message"``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


# ---- scalar kinds (marker types: the loader converts YAML values into plain floats/ints/strs) ----

class Duration(float):
    """Seconds, written as ``250ms``, ``30s``, ``5m``, ``1h`` (a bare number means seconds)."""


class Size(int):
    """Bytes, written as ``512``, ``64KiB``, ``10MiB``, ``1GiB`` (or kB/MB/GB, powers of ten)."""


class HostPort(str):
    """``host:port`` to listen on; ``[::1]:8080`` for IPv6; port 0 picks a free one."""


class HttpUrl(str):
    """An absolute ``http://`` or ``https://`` URL with a host."""


class Regex(str):
    """A Python regular expression, compiled at load to prove it is valid."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
               "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parse_hostport(value: Any) -> tuple[str, int]:
    s = str(value)
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError
    return host, int(port)


# ---- the schema ----
# Each field's rules live next to it, as metadata (see ``knob``): the loader, the range checks and
# the reload's "needs a restart" list all read them from here.

def knob(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
         restart: bool = False, gt: float | None = None, ge: float | None = None,
         le: float | None = None, lt: float | None = None, literal: bool = False) -> Any:
    """A schema field with its rules as metadata.

    ``restart``: the running process keeps the old value until a restart (a reload says so).
    ``gt``/``ge``/``le``/``lt``: bounds, checked for every key path even when other keys have type
    errors (``null`` is allowed where the type is Optional). ``literal``: no ``${VAR}`` here, because
    the value is shown in metrics labels or names (a secret must never become one).
    """
    meta = {k: v for k, v in (("restart", restart), ("gt", gt), ("ge", ge), ("le", le), ("lt", lt),
                              ("literal", literal)) if v is not None and v is not False}
    return field(default=default, default_factory=default_factory, metadata=meta)


@dataclass(frozen=True)
class ServerConfig:
    """Listening sockets, client-side limits and the shutdown sequence."""
    listen: HostPort = knob(HostPort("0.0.0.0:8080"), restart=True)
    admin_listen: HostPort = knob(HostPort("0.0.0.0:9090"), restart=True)
    drain_delay: Duration = knob(Duration(5), ge=0)          # keep accepting after the drain starts while endpoints update
    shutdown_grace: Duration = knob(Duration(30), ge=0)      # in-flight requests/streams may finish within this
    header_read_timeout: Duration = knob(Duration(10), gt=0, restart=True)  # a client must send its whole request head within this
    body_read_timeout: Duration = knob(Duration(60), gt=0)   # small bodies (≤64 KiB): whole within this; larger: longest pause
    keepalive_timeout: Duration = knob(Duration(75), gt=0, restart=True)  # idle client keep-alive connections are closed after this
    client_write_timeout: Duration = knob(Duration(30), gt=0)  # a client that reads nothing of its answer this long is cut
    max_connections: int = knob(10000, ge=1, restart=True)  # client connections beyond this are refused at accept
    gc_full_interval: Duration = knob(Duration(600), gt=0)  # full garbage collection at most this often (proxy/gcpolicy.py)
    max_line_bytes: Size = knob(Size(8190), ge=64, restart=True)   # request line / URL longer → 414
    max_field_bytes: Size = knob(Size(8190), ge=64, restart=True)  # one header longer → 431


@dataclass(frozen=True)
class UpstreamConfig:
    """The one upstream server (a LangGraph server) and the pool of connections to it."""
    url: HttpUrl = HttpUrl("http://127.0.0.1:2024")
    connect_timeout: Duration = knob(Duration(2), gt=0)
    # None: limits.max_concurrent_requests + POOL_HEADROOM, so an admitted request never waits
    max_connections: Optional[int] = knob(None, ge=1)
    pool_timeout: Duration = knob(Duration(0.5), gt=0)       # longest wait for a free pooled connection, then 503 pool_exhausted
    keepalive_timeout: Duration = knob(Duration(4), ge=0)    # below uvicorn's 5 s, so a pooled connection is never reused as it closes
    # send the client's Host upstream (nginx `proxy_set_header Host $host`): the URLs the server builds
    # (redirects, A2A cards) then name the sidecar's address; false sends the upstream's own host
    preserve_host: bool = True


@dataclass(frozen=True)
class LoggingConfig:
    """Process log and the one-line-per-request access log."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition on the admin port."""
    prefix: str = knob("sidecar", restart=True, literal=True)
    exemplars: bool = True                        # request id as exemplar on the duration histogram (OpenMetrics)


@dataclass(frozen=True)
class TimeoutsConfig:
    """Timeouts for one route; ``null`` turns one off. Defaults fit LLM agents, not web pages."""
    first_byte: Optional[Duration] = knob(Duration(120), gt=0)  # until upstream response headers
    idle: Optional[Duration] = knob(Duration(120), gt=0)        # longest gap between two body chunks
    event_idle: Optional[Duration] = knob(None, gt=0)           # SSE: longest gap between real events (heartbeats ignored)
    request: Optional[Duration] = knob(Duration(300), gt=0)     # total deadline for a non-streaming response
    stream: Optional[Duration] = knob(Duration(3600), gt=0)     # maximum total duration of an SSE stream
    deadline_header: Optional[str] = None           # e.g. X-Request-Deadline-Ms: remaining deadline sent upstream


@dataclass(frozen=True)
class RouteTimeouts:
    """Per-route overrides; a key left out keeps the global value."""
    first_byte: Optional[Duration] = knob(None, gt=0)
    idle: Optional[Duration] = knob(None, gt=0)
    event_idle: Optional[Duration] = knob(None, gt=0)
    request: Optional[Duration] = knob(None, gt=0)
    stream: Optional[Duration] = knob(None, gt=0)


@dataclass(frozen=True)
class RetriesConfig:
    """Retries of failures that are safe to repeat (idempotent methods, or nothing sent yet)."""
    attempts: int = knob(2, ge=1)                 # total tries, first included; 1 disables retries
    backoff: Duration = knob(Duration(0.05), ge=0)  # base of the jittered exponential backoff
    max_backoff: Duration = knob(Duration(1), ge=0)
    budget: float = knob(0.2, ge=0, le=1)         # retries at most this fraction of requests (sliding 10 s window)
    min_per_second: float = knob(5.0, ge=0)       # retries always allowed at this rate, so low traffic still retries


@dataclass(frozen=True)
class RouteRetries:
    attempts: Optional[int] = knob(None, ge=1)


@dataclass(frozen=True)
class BreakerConfig:
    """Circuit breaker (pybreaker) settings."""
    enabled: bool = True
    fail_max: int = knob(5, ge=1)
    reset_timeout: Duration = knob(Duration(30), gt=0)
    success_threshold: int = knob(1, ge=1)
    failure_statuses: tuple[int, ...] = (502, 503, 504)
    count_run_errors: bool = False     # LangGraph run errors inside a 200 count as failures
    open_makes_unready: bool = True    # /readyz answers 503 while any breaker is open
    half_open_probe_trial: bool = False  # a synthetic probe may take the single half-open trial


@dataclass(frozen=True)
class RouteBreaker:
    """A route with this block gets a breaker of its own, named after the route."""
    fail_max: Optional[int] = knob(None, ge=1)
    reset_timeout: Optional[Duration] = knob(None, gt=0)
    success_threshold: Optional[int] = knob(None, ge=1)
    failure_statuses: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class LimitsConfig:
    """Load shedding and size limits."""
    max_concurrent_requests: int = knob(1000, ge=1)
    max_concurrent_streams: Optional[int] = knob(None, ge=1)
    max_body_bytes: Size = knob(Size(100 << 20), gt=0)
    max_header_bytes: Size = knob(Size(64 << 10), ge=64)
    # a non-streaming answer with a Content-Length up to this is read whole, so its upstream
    # connection and concurrency slot are free before a slow client has read it (0: never)
    max_buffered_response_bytes: Size = knob(Size(1 << 20), ge=0)
    max_buffered_bytes: Size = knob(Size(64 << 20), ge=0)    # all such buffers in the process together


@dataclass(frozen=True)
class RouteConfig:
    """One entry of the ordered route table; first match wins."""
    name: str = knob(literal=True)    # a metrics label: never from ${VAR}
    path: str = knob()
    methods: Optional[tuple[str, ...]] = None
    timeouts: RouteTimeouts = field(default_factory=RouteTimeouts)
    retries: RouteRetries = field(default_factory=RouteRetries)
    circuit_breaker: Optional[RouteBreaker] = None
    cancel_on_disconnect: bool = False
    run_kind: Optional[Literal["stream", "wait"]] = None  # LangGraph run endpoint: enables run outcome tracking
    # what bounds the answer after its headers: request (timeouts.request covers the whole answer;
    # SSE answers still switch to the stream limits), long_poll (a body the server pads while it
    # waits: idle between chunks, stream as the cap), stream (open indefinitely: idle/event_idle
    # only, no total cap). null: the built-in route with the same path decides, else request
    timeout_class: Optional[Literal["request", "long_poll", "stream"]] = None


@dataclass(frozen=True)
class ProbeRequest:
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    path: str = "/ok"                  # its query string is treated as a secret (redacted everywhere)
    headers: dict[str, str] = field(default_factory=dict)  # values are secrets, but for _PLAIN_HEADERS
    json: Any = None
    body: Optional[str] = None


@dataclass(frozen=True)
class ProbeExpect:
    status: Optional[int] = knob(200, ge=100, le=599)
    body_regex: Optional[Regex] = None
    json_path: Optional[str] = None    # dotted path into the JSON answer, e.g. messages.-1.content
    equals: Any = None
    regex: Optional[Regex] = None      # applied to the value at json_path


@dataclass(frozen=True)
class ProbeConfig:
    """A synthetic request whose answer must match; feeds readiness."""
    name: str = knob(literal=True)     # a metrics label: never from ${VAR}
    request: ProbeRequest = field(default_factory=ProbeRequest)
    expect: ProbeExpect = field(default_factory=ProbeExpect)
    interval: Duration = knob(Duration(30), ge=0.1)  # below 100 ms a probe is load, not a health check
    jitter: float = knob(0.1, ge=0, lt=1)           # ± fraction of the interval
    timeout: Duration = knob(Duration(20), gt=0)
    failure_threshold: int = knob(3, ge=1)
    success_threshold: int = knob(1, ge=1)
    skip_if_recent_success: bool = True
    max_per_hour: Optional[int] = knob(None, ge=1)
    max_body_bytes: Size = knob(Size(1 << 20), gt=0)


@dataclass(frozen=True)
class ReadinessConfig:
    require_probes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole proxy config. Build with :func:`load` / :func:`parse`."""
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    routes: tuple[RouteConfig, ...] = ()
    default_routes: bool = True         # append the built-in LangGraph Server API route table
    circuit_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retries: RetriesConfig = field(default_factory=RetriesConfig)
    probes: tuple[ProbeConfig, ...] = ()
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)               # token usage, TTFT, cost (proxy/llm.py)
    tracing: TracingConfig = field(default_factory=TracingConfig)   # W3C trace context, OTLP (proxy/tracing.py)
    # not a YAML key: every string that must never be shown (see :func:`redact`), filled by the loader
    secrets: frozenset = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})


# ---- the loader ----

_SCALAR_EXPECT = {
    Duration: 'a duration like "2s", "250ms" or "5m"',
    Size: 'a size like "10MiB" or "64KiB"',
    HostPort: 'an address like "0.0.0.0:8080"',
    HttpUrl: 'an http(s) URL like "http://127.0.0.1:2024"',
    Regex: "a valid regular expression",
}


class _Loader:
    def __init__(self, env: typing.Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []
        self.secrets: set[str] = set()   # every value that came from ${VAR}

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path or '<root>'}: {msg}")

    def show(self, value: Any) -> str:
        """A value for an error message: secrets redacted *before* it is shortened."""
        s = redact(repr(value), self.secrets)
        return s if len(s) <= 60 else s[:57] + "..."

    def expand(self, path: str, s: str) -> str:
        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name not in self.env:
                self.fail(path, f"environment variable {name} is not set")
                return ""
            value = self.env[name]
            if len(value) >= SECRET_MIN_LEN:
                self.secrets.add(value)
            return value
        return _ENV_RE.sub(sub, s)

    def convert(self, path: str, tp: Any, value: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if value is None:
                return None
            return self.convert(path, args[0], value)
        if tp is Any:
            return self.expand_any(path, value)
        if isinstance(value, str) and tp is not str:
            value = self.expand(path, value)
        if origin is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                self.fail(path, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
            return value
        if origin is tuple:
            (item_tp, _) = typing.get_args(tp)
            if not isinstance(value, list):
                self.fail(path, f"expected a list, got {self.show(value)}")
                return ()
            return tuple(self.convert(f"{path}[{i}]", item_tp, v) for i, v in enumerate(value))
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(path, f"expected a mapping, got {self.show(value)}")
                return {}
            return {str(k): self.convert(f"{path}.{k}", typing.get_args(tp)[1], v) for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            return self.build(path, tp, value)
        if tp in _SCALAR_EXPECT:
            try:
                if tp is Duration:
                    return Duration(parse_duration(value))
                if tp is Size:
                    return Size(parse_size(value))
                if tp is HostPort:
                    parse_hostport(value)
                    return HostPort(value)
                if tp is HttpUrl:
                    u = urlsplit(str(value))
                    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
                        raise ValueError
                    u.port  # raises ValueError on a bad port
                    return HttpUrl(str(value).rstrip("/"))
                if tp is Regex:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # e.g. FutureWarning "possible nested set": valid
                        re.compile(str(value))
                    return Regex(value)
            except (ValueError, re.error):
                self.fail(path, f"expected {_SCALAR_EXPECT[tp]}, got {self.show(value)}")
                return None
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f"expected true or false, got {self.show(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, f"expected an integer, got {self.show(value)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(path, f"expected a number, got {self.show(value)}")
                return value
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(path, f"expected a string, got {self.show(value)}")
                return value
            return self.expand(path, value)
        raise TypeError(f"schema type {tp!r} at {path} has no converter")  # a bug in this module

    def expand_any(self, path: str, value: Any) -> Any:
        if isinstance(value, str):
            return self.expand(path, value)
        if isinstance(value, list):
            return [self.expand_any(f"{path}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand_any(f"{path}.{k}", v) for k, v in value.items()}
        return value

    def build(self, path: str, cls: type, value: Any) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {self.show(value)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        kwargs = {}
        for key, v in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in fields:
                self.fail(sub, f"unknown key (expected one of: {', '.join(fields)})")
                continue
            if fields[key].metadata.get("literal") and isinstance(v, str) and _ENV_RE.search(v):
                self.fail(sub, "${VAR} is not allowed here: this value is shown in metrics and logs")
                v = _ENV_RE.sub("", v)
            kwargs[key] = self.convert(sub, hints[key], v)
        for name, f in fields.items():
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(f"{path}.{name}" if path else name, "is required")
                kwargs[name] = None
        return cls(**kwargs)


def _walk(obj: Any, path: str = ""):
    """(key path, field, value) for every field of the config tree; tolerates parts that failed to load."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        v = getattr(obj, f.name)
        sub = f"{path}.{f.name}" if path else f.name
        yield sub, f, v
        if isinstance(v, tuple):
            for i, item in enumerate(v):
                yield from _walk(item, f"{sub}[{i}]")
        else:
            yield from _walk(v, sub)


_BOUNDS = (("gt", lambda v, b: v > b, "> {}"), ("ge", lambda v, b: v >= b, ">= {}"),
           ("lt", lambda v, b: v < b, "< {}"), ("le", lambda v, b: v <= b, "<= {}"))


def _bounds_checks(cfg: Config, fail) -> None:
    """Every field's bounds from its metadata (``knob``); values of the wrong type are skipped, their
    type error is already reported."""
    for path, f, v in _walk(cfg):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if any(key in f.metadata and not ok(v, f.metadata[key]) for key, ok, _ in _BOUNDS):
            rule = " and ".join(fmt.format(f"{f.metadata[key]:g}") for key, _, fmt in _BOUNDS if key in f.metadata)
            fail(path, f"must be {rule}, got {v:g}")


def restart_changes(old: Config, new: Config) -> list[str]:
    """Key paths of ``restart`` fields whose value differs: a reload cannot apply them."""
    changed = []
    olds = {p: v for p, f, v in _walk(old) if f.metadata.get("restart")}
    for p, f, v in _walk(new):
        if f.metadata.get("restart") and p in olds and olds[p] != v:
            changed.append(p)
    return changed


def _is_local(host: str | None) -> bool:
    return host in ("localhost", "0.0.0.0", "::", "::1") or (host or "").startswith("127.")


def _semantic_checks(cfg: Config, fail) -> None:
    """Rules that span keys: bounds, unique names, references that resolve, ports that collide.

    Runs even when some keys failed to load (their value is then None or of the wrong type), so a
    range error is reported next to a type error elsewhere; every check looks at types first."""
    if not isinstance(cfg, Config):
        return
    if isinstance(cfg.llm, LLMConfig):
        cfg.llm.validate("llm", fail)
    if isinstance(cfg.tracing, TracingConfig):
        cfg.tracing.validate("tracing", fail)
    _bounds_checks(cfg, fail)
    s, up = cfg.server, cfg.upstream
    if isinstance(s, ServerConfig) and isinstance(s.listen, str) and isinstance(s.admin_listen, str):
        listen, admin = parse_hostport(s.listen), parse_hostport(s.admin_listen)
        if listen[1] and listen[1] == admin[1] and (listen[0] == admin[0] or _is_local(listen[0]) or _is_local(admin[0])):
            fail("server.admin_listen", f"same port as server.listen ({s.listen}): the two servers cannot share it")
        if isinstance(up, UpstreamConfig) and isinstance(up.url, str):
            u = urlsplit(up.url)
            uport = u.port or (443 if u.scheme == "https" else 80)
            for key, (host, port) in (("listen", listen), ("admin_listen", admin)):
                if port == uport and _is_local(u.hostname) and (_is_local(host) or host == u.hostname):
                    fail(f"server.{key}", f"same address as upstream.url ({up.url.split('@')[-1]}): "
                                          "the proxy would forward to itself")
    br = cfg.circuit_breaker
    if isinstance(br, BreakerConfig) and isinstance(br.failure_statuses, tuple):
        for i, st in enumerate(br.failure_statuses):
            if isinstance(st, int) and not 100 <= st <= 599:
                fail(f"circuit_breaker.failure_statuses[{i}]", f"expected an HTTP status 100-599, got {st}")
    if isinstance(cfg.metrics, MetricsConfig) and isinstance(cfg.metrics.prefix, str) and not _NAME_RE.match(cfg.metrics.prefix):
        fail("metrics.prefix", f"expected a metric name prefix like \"sidecar\", got {cfg.metrics.prefix!r}")
    t = cfg.timeouts
    if isinstance(t, TimeoutsConfig) and isinstance(t.deadline_header, str) and not re.match(r"^[A-Za-z0-9-]+$", t.deadline_header):
        fail("timeouts.deadline_header", f"expected a header name, got {t.deadline_header!r}")
    seen: set[str] = set()
    for i, r in enumerate(cfg.routes if isinstance(cfg.routes, tuple) else ()):
        if not isinstance(r, RouteConfig):
            continue
        p = f"routes[{i}]"
        if isinstance(r.name, str):
            if not _NAME_RE.match(r.name):
                fail(f"{p}.name", f"expected a name of letters, digits and _, got {r.name!r}")
            if r.name == "other":
                fail(f"{p}.name", '"other" is reserved for unmatched paths')
            if r.name in seen:
                fail(f"{p}.name", f"duplicate route name {r.name!r}")
            seen.add(r.name)
        if isinstance(r.path, str) and not _valid_template(r.path):
            fail(f"{p}.path", f'expected a path template like "/threads/{{thread_id}}/runs", got {r.path!r}')
        for j, m in enumerate(r.methods if isinstance(r.methods, tuple) else ()):
            if not isinstance(m, str) or not re.match(r"^[A-Z]+$", m):
                fail(f"{p}.methods[{j}]", f"expected an upper-case HTTP method, got {m!r}")
    names: set[str] = set()
    for i, pr in enumerate(cfg.probes if isinstance(cfg.probes, tuple) else ()):
        if not isinstance(pr, ProbeConfig):
            continue
        p = f"probes[{i}]"
        if isinstance(pr.name, str):
            if not _NAME_RE.match(pr.name):
                fail(f"{p}.name", f"expected a name of letters, digits and _, got {pr.name!r}")
            if pr.name in names:
                fail(f"{p}.name", f"duplicate probe name {pr.name!r}")
            names.add(pr.name)
        rq, ex = pr.request, pr.expect
        if isinstance(rq, ProbeRequest):
            if isinstance(rq.path, str) and not rq.path.startswith("/"):
                fail(f"{p}.request.path", f"expected a path starting with /, got {rq.path!r}")
            if rq.json is not None and rq.body is not None:
                fail(f"{p}.request", "give json or body, not both")
        if isinstance(ex, ProbeExpect) and ex.json_path is None and (ex.equals is not None or ex.regex is not None):
            fail(f"{p}.expect", "equals/regex need json_path")
    rd = cfg.readiness
    for i, name in enumerate(rd.require_probes if isinstance(rd, ReadinessConfig) and isinstance(rd.require_probes, tuple) else ()):
        if isinstance(name, str) and name not in names:
            fail(f"readiness.require_probes[{i}]", f"no probe named {name!r} (probes: {', '.join(sorted(map(str, names))) or 'none'})")


POOL_HEADROOM = 16  # pooled connections beyond the request limit: probes and run cancels use the pool too


def pool_size(cfg: Config) -> int:
    """The upstream pool's size: ``upstream.max_connections`` or the coherent default."""
    n = cfg.upstream.max_connections
    return n if n is not None else cfg.limits.max_concurrent_requests + POOL_HEADROOM


def capacity_warnings(cfg: Config) -> list[str]:
    """Settings that are valid one by one but contradict each other (``--check`` prints them)."""
    out = []
    lim, pool = cfg.limits, pool_size(cfg)
    if pool < lim.max_concurrent_requests:
        out.append(f"upstream.max_connections ({pool}) < limits.max_concurrent_requests "
                   f"({lim.max_concurrent_requests}): admitted requests beyond {pool} wait up to "
                   f"upstream.pool_timeout for a connection, then get 503 pool_exhausted")
    if lim.max_concurrent_streams is not None and lim.max_concurrent_streams >= pool:
        out.append(f"limits.max_concurrent_streams ({lim.max_concurrent_streams}) >= upstream.max_connections "
                   f"({pool}): streams can hold every upstream connection (each holds one for its whole life)")
    if lim.max_concurrent_streams is not None and lim.max_concurrent_streams > lim.max_concurrent_requests:
        out.append(f"limits.max_concurrent_streams ({lim.max_concurrent_streams}) > limits.max_concurrent_requests "
                   f"({lim.max_concurrent_requests}): the request limit binds first")
    if cfg.server.max_connections < lim.max_concurrent_requests:
        out.append(f"server.max_connections ({cfg.server.max_connections}) < limits.max_concurrent_requests "
                   f"({lim.max_concurrent_requests}): client connections are refused before the request limit is reached")
    if cfg.upstream.pool_timeout >= cfg.upstream.connect_timeout:
        out.append(f"upstream.pool_timeout ({cfg.upstream.pool_timeout:g}s) >= upstream.connect_timeout "
                   f"({cfg.upstream.connect_timeout:g}s): a request may wait for a pool slot longer than for a connect")
    if lim.max_buffered_response_bytes > lim.max_buffered_bytes:
        out.append("limits.max_buffered_response_bytes > limits.max_buffered_bytes: no answer can be buffered whole")
    return out


def _valid_template(path: str) -> bool:
    if not path.startswith("/"):
        return False
    for seg in path.split("/")[1:]:
        if seg.startswith("{"):
            if not re.match(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$", seg):
                return False
        elif "{" in seg or "}" in seg:
            return False
    return True


def parse(doc: Any, env: typing.Mapping[str, str] | None = None, *, early: list[str] | None = None) -> Config:
    """Validate a parsed YAML document; raises :class:`ConfigError` listing every problem.

    ``early``: problems found before (duplicate keys), reported together with the rest.
    """
    loader = _Loader(os.environ if env is None else env)
    cfg = loader.build("", Config, doc)
    _semantic_checks(cfg, loader.fail)
    secrets = frozenset(loader.secrets | (_structural_secrets(cfg) if isinstance(cfg, Config) else set()))
    problems = (early or []) + loader.problems
    if problems:
        raise ConfigError([redact(p, secrets) for p in problems])
    return dataclasses.replace(cfg, secrets=secrets)


def _duplicate_keys(node: Any, path: str = "") -> list[str]:
    """Every mapping key given twice, by key path (PyYAML silently keeps the last one)."""
    out = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if key is not None and key in first:
                out.append(f"{sub}: duplicate key (line {k.start_mark.line + 1}, first at line {first[key]}); "
                           "remove one, YAML would silently keep the last")
            elif key is not None:
                first[key] = k.start_mark.line + 1
            out += _duplicate_keys(v, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, f"{path}[{i}]")
    return out


def load(path: str, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file."""
    try:
        with open(path, encoding="utf-8") as f:
            loader = yaml.SafeLoader(f.read())
        try:
            node = loader.get_single_node()
            doc = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse(doc, env, early=_duplicate_keys(node))


# ---- secrets: never in a log line, /status, --check output or an error message ----

SECRET_MIN_LEN = 6   # shorter ${VAR} values (a port, a flag) are no secrets, and redacting them would garble every line
REDACTED = "<redacted>"
# probe header values are secrets, except these, which only describe the request
_PLAIN_HEADERS = frozenset({"content-type", "accept", "accept-encoding", "user-agent", "content-length"})


def _structural_secrets(cfg: Config) -> set[str]:
    """Secrets by position, whether or not they came from ${VAR}: URL userinfo, probe path query
    strings and probe header values."""
    out: set[str] = set()
    if isinstance(cfg.upstream, UpstreamConfig) and isinstance(cfg.upstream.url, str):
        u = urlsplit(cfg.upstream.url)
        userinfo = u.netloc.rpartition("@")[0]
        out.update(x for x in (userinfo, u.password, u.username) if x)
    for pr in cfg.probes if isinstance(cfg.probes, tuple) else ():
        rq = getattr(pr, "request", None)
        if not isinstance(rq, ProbeRequest):
            continue
        if isinstance(rq.path, str) and "?" in rq.path:
            query = rq.path.split("?", 1)[1]
            out.add(query)
            out.update(v for part in query.split("&") for v in part.split("=", 1)[1:] if v)
        if isinstance(rq.headers, dict):
            out.update(v for k, v in rq.headers.items()
                       if isinstance(v, str) and v and k.lower() not in _PLAIN_HEADERS)
    return {x for x in out if len(x) >= SECRET_MIN_LEN}


def redact(text: str, secrets: typing.Iterable[str]) -> str:
    """``text`` with every secret replaced, also in its JSON-escaped and repr-escaped spellings."""
    for s in sorted(secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
        for spelled in (json.dumps(s)[1:-1], repr(s)[1:-1]):
            if spelled != s and spelled in text:
                text = text.replace(spelled, REDACTED)
    return text


def summary(cfg: Config) -> dict:
    """The config as plain data for /status: probe headers, bodies and query strings, URL
    credentials and every other secret redacted."""
    def scrub(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            out = {f.name: scrub(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
            if isinstance(obj, ProbeRequest):
                out["path"] = obj.path.split("?", 1)[0] + (f"?{REDACTED}" if "?" in obj.path else "")
                out["headers"] = {k: v if k.lower() in _PLAIN_HEADERS else REDACTED for k, v in obj.headers.items()}
                out["json"] = REDACTED if obj.json is not None else None
                out["body"] = REDACTED if obj.body is not None else None
            return out
        if isinstance(obj, tuple):
            return [scrub(x) for x in obj]
        if isinstance(obj, str):
            return redact(obj, cfg.secrets)
        return obj
    out = scrub(cfg)
    u = urlsplit(cfg.upstream.url)
    if u.username or u.password:
        out["upstream"]["url"] = u._replace(netloc=f"{REDACTED}@{u.netloc.rpartition('@')[2]}").geturl()
    return out


class BindError(Exception):
    """A listen address from the config cannot be bound (in use, not local, no permission)."""

    def __init__(self, key: str, address: str, reason: str):
        self.key, self.address, self.reason = key, address, reason
        super().__init__(f"{key} {address}: cannot listen: {reason}")
