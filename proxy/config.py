"""YAML config → validated, frozen dataclass tree.

The schema is the dataclasses below: each field's type says what the YAML may hold, and the loader
walks the document once, collecting *every* problem with its key path (``upstream.connect_timeout:
expected a duration like "2s", got "fast"``) before giving up. Unknown keys are errors, so a typo
never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import warnings
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union
from urllib.parse import urlsplit

import yaml


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

@dataclass(frozen=True)
class ServerConfig:
    """Listening sockets, client-side limits and the shutdown sequence."""
    listen: HostPort = HostPort("0.0.0.0:8080")
    admin_listen: HostPort = HostPort("0.0.0.0:9090")
    drain_delay: Duration = Duration(5)          # keep accepting after SIGTERM while endpoints update
    shutdown_grace: Duration = Duration(30)      # in-flight requests/streams may finish within this
    header_read_timeout: Duration = Duration(10)  # a client must send its whole request head within this
    body_read_timeout: Duration = Duration(60)   # small bodies (≤64 KiB): whole within this; larger: longest pause
    keepalive_timeout: Duration = Duration(75)   # idle client keep-alive connections are closed after this
    client_write_timeout: Duration = Duration(30)  # a client that reads nothing of its answer this long is cut
    max_connections: int = 10000                 # client connections beyond this are refused at accept
    max_line_bytes: Size = Size(8190)            # request line / URL longer → 414
    max_field_bytes: Size = Size(8190)           # one header longer → 431


@dataclass(frozen=True)
class UpstreamConfig:
    """The one upstream server (a LangGraph server) and the pool of connections to it."""
    url: HttpUrl = HttpUrl("http://127.0.0.1:2024")
    connect_timeout: Duration = Duration(2)
    # None: limits.max_concurrent_requests + POOL_HEADROOM, so an admitted request never waits
    max_connections: Optional[int] = None
    pool_timeout: Duration = Duration(0.5)       # longest wait for a free pooled connection, then 503 pool_exhausted
    keepalive_timeout: Duration = Duration(4)    # below uvicorn's 5 s, so a pooled connection is never reused as it closes


@dataclass(frozen=True)
class LoggingConfig:
    """Process log and the one-line-per-request access log."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition on the admin port."""
    prefix: str = "sidecar"
    exemplars: bool = True                        # request id as exemplar on the duration histogram (OpenMetrics)


@dataclass(frozen=True)
class TimeoutsConfig:
    """Timeouts for one route; ``null`` turns one off. Defaults fit LLM agents, not web pages."""
    first_byte: Optional[Duration] = Duration(120)  # until upstream response headers
    idle: Optional[Duration] = Duration(120)        # longest gap between two body chunks
    event_idle: Optional[Duration] = None           # SSE: longest gap between real events (heartbeats ignored)
    request: Optional[Duration] = Duration(300)     # total deadline for a non-streaming response
    stream: Optional[Duration] = Duration(3600)     # maximum total duration of an SSE stream
    deadline_header: Optional[str] = None           # e.g. X-Request-Deadline-Ms: remaining deadline sent upstream


@dataclass(frozen=True)
class RouteTimeouts:
    """Per-route overrides; a key left out keeps the global value."""
    first_byte: Optional[Duration] = None
    idle: Optional[Duration] = None
    event_idle: Optional[Duration] = None
    request: Optional[Duration] = None
    stream: Optional[Duration] = None


@dataclass(frozen=True)
class RetriesConfig:
    """Retries of failures that are safe to repeat (idempotent methods, or nothing sent yet)."""
    attempts: int = 2                 # total tries, first included; 1 disables retries
    backoff: Duration = Duration(0.05)  # base of the jittered exponential backoff
    max_backoff: Duration = Duration(1)
    budget: float = 0.2               # retries at most this fraction of requests (sliding 10 s window)
    min_per_second: float = 5.0       # retries always allowed at this rate, so low traffic still retries


@dataclass(frozen=True)
class RouteRetries:
    attempts: Optional[int] = None


@dataclass(frozen=True)
class BreakerConfig:
    """Circuit breaker (pybreaker) settings."""
    enabled: bool = True
    fail_max: int = 5
    reset_timeout: Duration = Duration(30)
    success_threshold: int = 1
    failure_statuses: tuple[int, ...] = (502, 503, 504)
    count_run_errors: bool = False     # LangGraph run errors inside a 200 count as failures
    open_makes_unready: bool = True    # /readyz answers 503 while any breaker is open
    half_open_probe_trial: bool = False  # a synthetic probe may take the single half-open trial


@dataclass(frozen=True)
class RouteBreaker:
    """A route with this block gets a breaker of its own, named after the route."""
    fail_max: Optional[int] = None
    reset_timeout: Optional[Duration] = None
    success_threshold: Optional[int] = None
    failure_statuses: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class LimitsConfig:
    """Load shedding and size limits."""
    max_concurrent_requests: int = 1000
    max_concurrent_streams: Optional[int] = None
    max_body_bytes: Size = Size(100 << 20)
    max_header_bytes: Size = Size(64 << 10)
    # a non-streaming answer with a Content-Length up to this is read whole, so its upstream
    # connection and concurrency slot are free before a slow client has read it (0: never)
    max_buffered_response_bytes: Size = Size(1 << 20)
    max_buffered_bytes: Size = Size(64 << 20)    # all such buffers in the process together


@dataclass(frozen=True)
class RouteConfig:
    """One entry of the ordered route table; first match wins."""
    name: str
    path: str
    methods: Optional[tuple[str, ...]] = None
    timeouts: RouteTimeouts = field(default_factory=RouteTimeouts)
    retries: RouteRetries = field(default_factory=RouteRetries)
    circuit_breaker: Optional[RouteBreaker] = None
    cancel_on_disconnect: bool = False
    run_kind: Optional[Literal["stream", "wait"]] = None  # LangGraph run endpoint: enables run outcome tracking


@dataclass(frozen=True)
class ProbeRequest:
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    path: str = "/ok"
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    body: Optional[str] = None


@dataclass(frozen=True)
class ProbeExpect:
    status: Optional[int] = 200
    body_regex: Optional[Regex] = None
    json_path: Optional[str] = None    # dotted path into the JSON answer, e.g. messages.-1.content
    equals: Any = None
    regex: Optional[Regex] = None      # applied to the value at json_path


@dataclass(frozen=True)
class ProbeConfig:
    """A synthetic request whose answer must match; feeds readiness."""
    name: str
    request: ProbeRequest = field(default_factory=ProbeRequest)
    expect: ProbeExpect = field(default_factory=ProbeExpect)
    interval: Duration = Duration(30)
    jitter: float = 0.1                # ± fraction of the interval
    timeout: Duration = Duration(20)
    failure_threshold: int = 3
    success_threshold: int = 1
    skip_if_recent_success: bool = True
    max_per_hour: Optional[int] = None
    max_body_bytes: Size = Size(1 << 20)


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

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path or '<root>'}: {msg}")

    def expand(self, path: str, s: str) -> str:
        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name not in self.env:
                self.fail(path, f"environment variable {name} is not set")
                return ""
            return self.env[name]
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
                self.fail(path, f"expected a list, got {_show(value)}")
                return ()
            return tuple(self.convert(f"{path}[{i}]", item_tp, v) for i, v in enumerate(value))
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(path, f"expected a mapping, got {_show(value)}")
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
                self.fail(path, f"expected {_SCALAR_EXPECT[tp]}, got {_show(value)}")
                return None
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f"expected true or false, got {_show(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, f"expected an integer, got {_show(value)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(path, f"expected a number, got {_show(value)}")
                return value
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(path, f"expected a string, got {_show(value)}")
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
            self.fail(path, f"expected a mapping, got {_show(value)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, v in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in fields:
                self.fail(sub, f"unknown key (expected one of: {', '.join(fields)})")
                continue
            kwargs[key] = self.convert(sub, hints[key], v)
        for name, f in fields.items():
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(f"{path}.{name}" if path else name, "is required")
                kwargs[name] = None
        return cls(**kwargs)


def _show(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _semantic_checks(cfg: Config, fail) -> None:
    """Rules that span keys: positive numbers, unique names, references that resolve."""
    def positive(path: str, v: Any, allow_zero: bool = False) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (v < 0 or (v == 0 and not allow_zero)):
            fail(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {v}")

    positive("server.shutdown_grace", cfg.server.shutdown_grace, allow_zero=True)
    positive("server.drain_delay", cfg.server.drain_delay, allow_zero=True)
    for key in ("max_connections",):
        positive(f"server.{key}", getattr(cfg.server, key))
    positive("upstream.connect_timeout", cfg.upstream.connect_timeout)
    positive("upstream.max_connections", cfg.upstream.max_connections)
    positive("upstream.pool_timeout", cfg.upstream.pool_timeout)
    positive("server.client_write_timeout", cfg.server.client_write_timeout)
    positive("upstream.keepalive_timeout", cfg.upstream.keepalive_timeout, allow_zero=True)
    positive("limits.max_concurrent_requests", cfg.limits.max_concurrent_requests)
    positive("limits.max_concurrent_streams", cfg.limits.max_concurrent_streams)
    positive("circuit_breaker.fail_max", cfg.circuit_breaker.fail_max)
    positive("circuit_breaker.success_threshold", cfg.circuit_breaker.success_threshold)
    positive("retries.attempts", cfg.retries.attempts)
    if isinstance(cfg.retries.budget, float) and not 0 <= cfg.retries.budget <= 1:
        fail("retries.budget", f"must be between 0 and 1, got {cfg.retries.budget}")
    for i, st in enumerate(cfg.circuit_breaker.failure_statuses):
        if isinstance(st, int) and not 100 <= st <= 599:
            fail(f"circuit_breaker.failure_statuses[{i}]", f"expected an HTTP status 100-599, got {st}")
    if not _NAME_RE.match(str(cfg.metrics.prefix)):
        fail("metrics.prefix", f"expected a metric name prefix like \"sidecar\", got {cfg.metrics.prefix!r}")
    if cfg.timeouts.deadline_header is not None and not re.match(r"^[A-Za-z0-9-]+$", str(cfg.timeouts.deadline_header)):
        fail("timeouts.deadline_header", f"expected a header name, got {cfg.timeouts.deadline_header!r}")
    seen: set[str] = set()
    for i, r in enumerate(cfg.routes):
        p = f"routes[{i}]"
        if r.name is not None and not _NAME_RE.match(str(r.name)):
            fail(f"{p}.name", f"expected a name of letters, digits and _, got {r.name!r}")
        if r.name == "other":
            fail(f"{p}.name", '"other" is reserved for unmatched paths')
        if r.name in seen:
            fail(f"{p}.name", f"duplicate route name {r.name!r}")
        seen.add(r.name)
        if isinstance(r.path, str) and not _valid_template(r.path):
            fail(f"{p}.path", f'expected a path template like "/threads/{{thread_id}}/runs", got {r.path!r}')
        for j, m in enumerate(r.methods or ()):
            if not isinstance(m, str) or not re.match(r"^[A-Z]+$", m):
                fail(f"{p}.methods[{j}]", f"expected an upper-case HTTP method, got {m!r}")
        if r.circuit_breaker is not None:
            positive(f"{p}.circuit_breaker.fail_max", r.circuit_breaker.fail_max)
        positive(f"{p}.retries.attempts", r.retries.attempts)
    names: set[str] = set()
    for i, pr in enumerate(cfg.probes):
        p = f"probes[{i}]"
        if pr.name is not None and not _NAME_RE.match(str(pr.name)):
            fail(f"{p}.name", f"expected a name of letters, digits and _, got {pr.name!r}")
        if pr.name in names:
            fail(f"{p}.name", f"duplicate probe name {pr.name!r}")
        names.add(pr.name)
        positive(f"{p}.interval", pr.interval)
        positive(f"{p}.timeout", pr.timeout)
        positive(f"{p}.failure_threshold", pr.failure_threshold)
        positive(f"{p}.success_threshold", pr.success_threshold)
        positive(f"{p}.max_per_hour", pr.max_per_hour)
        if isinstance(pr.jitter, float) and not 0 <= pr.jitter < 1:
            fail(f"{p}.jitter", f"must be between 0 and 1, got {pr.jitter}")
        if isinstance(pr.request.path, str) and not pr.request.path.startswith("/"):
            fail(f"{p}.request.path", f"expected a path starting with /, got {pr.request.path!r}")
        if pr.request.json is not None and pr.request.body is not None:
            fail(f"{p}.request", "give json or body, not both")
        if pr.expect.json_path is None and (pr.expect.equals is not None or pr.expect.regex is not None):
            fail(f"{p}.expect", "equals/regex need json_path")
    for i, name in enumerate(cfg.readiness.require_probes):
        if name not in names:
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


def parse(doc: Any, env: typing.Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raises :class:`ConfigError` listing every problem."""
    loader = _Loader(os.environ if env is None else env)
    cfg = loader.build("", Config, doc)
    if not loader.problems:
        _semantic_checks(cfg, loader.fail)
    if loader.problems:
        raise ConfigError(loader.problems)
    return cfg


def load(path: str, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse(doc, env)


def summary(cfg: Config) -> dict:
    """The config as plain data for /status, with probe headers and URL credentials redacted."""
    def scrub(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            out = {f.name: scrub(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            if isinstance(obj, ProbeRequest):
                out["headers"] = {k: "<redacted>" for k in obj.headers}
                out["json"] = "<redacted>" if obj.json is not None else None
                out["body"] = "<redacted>" if obj.body is not None else None
            return out
        if isinstance(obj, tuple):
            return [scrub(x) for x in obj]
        return obj
    out = scrub(cfg)
    u = urlsplit(cfg.upstream.url)
    if u.username or u.password:
        out["upstream"]["url"] = u._replace(netloc=f"<redacted>@{u.hostname}:{u.port or ''}").geturl()
    return out
