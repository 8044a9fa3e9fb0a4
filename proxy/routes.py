"""Route templates → a route: its name (the only path-derived metric label) and its policy.

All templates compile into one alternation regex per method, in table order, so the first match
wins and matching costs one regex call whatever the table's size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from . import config as C
from .metrics import METHODS

# The LangGraph Server API (langgraph-api 0.16.7: every path and method of its /openapi.json, plus
# what it serves outside the spec), so a user with no `routes:` still gets bounded, meaningful
# labels. Order matters: specific before general. The wire behaviour behind each timeout class is
# in docs/langgraph-wire.md.
_RUN_STREAM = dict(run_kind="stream")
_RUN_WAIT = dict(run_kind="wait")
# the server commits 200 at once, then pads with "\n" every 5 s until the JSON result
_LONG_POLL = dict(timeout_class="long_poll")
# open for as long as the client listens (heartbeats every 5 s keep `idle` from firing)
_OPEN = dict(timeout_class="stream")
LANGGRAPH_ROUTES: tuple[C.RouteConfig, ...] = tuple(C.RouteConfig(**r) for r in (
    dict(name="root", path="/", methods=("GET",)),
    dict(name="ok", path="/ok", methods=("GET",)),
    dict(name="info", path="/info", methods=("GET",)),
    dict(name="docs", path="/docs"),
    dict(name="openapi", path="/openapi.json"),
    dict(name="upstream_metrics", path="/metrics"),
    dict(name="profile", path="/profile", methods=("GET",)),
    dict(name="assistants_search", path="/assistants/search", methods=("POST",)),
    dict(name="assistants_count", path="/assistants/count", methods=("POST",)),
    dict(name="assistant_graph", path="/assistants/{assistant_id}/graph"),
    dict(name="assistant_schemas", path="/assistants/{assistant_id}/schemas"),
    dict(name="assistant_subgraph", path="/assistants/{assistant_id}/subgraphs/{namespace}"),
    dict(name="assistant_subgraphs", path="/assistants/{assistant_id}/subgraphs"),
    dict(name="assistant_versions", path="/assistants/{assistant_id}/versions"),
    dict(name="assistant_latest", path="/assistants/{assistant_id}/latest"),
    dict(name="assistants", path="/assistants"),
    dict(name="assistant", path="/assistants/{assistant_id}"),
    dict(name="threads_search", path="/threads/search", methods=("POST",)),
    dict(name="threads_count", path="/threads/count", methods=("POST",)),
    dict(name="threads_prune", path="/threads/prune", methods=("POST",)),
    dict(name="threads", path="/threads"),
    dict(name="thread_copy", path="/threads/{thread_id}/copy", methods=("POST",)),
    dict(name="thread_storage", path="/threads/{thread_id}/storage", methods=("GET",)),
    dict(name="thread_state_checkpoint", path="/threads/{thread_id}/state/{checkpoint_id}"),
    dict(name="thread_state", path="/threads/{thread_id}/state"),
    dict(name="thread_history", path="/threads/{thread_id}/history"),
    dict(name="thread_commands", path="/threads/{thread_id}/commands", methods=("POST",)),
    # WebSocket (GET upgrade) and the SSE variant (POST) of the v3 event stream
    dict(name="thread_stream_events", path="/threads/{thread_id}/stream/events", **_OPEN),
    dict(name="thread_stream", path="/threads/{thread_id}/stream", methods=("GET",), **_OPEN),
    dict(name="thread_run_stream", path="/threads/{thread_id}/runs/stream", methods=("POST",), **_RUN_STREAM),
    dict(name="thread_run_wait", path="/threads/{thread_id}/runs/wait", methods=("POST",),
         **_RUN_WAIT, **_LONG_POLL),
    dict(name="thread_run_crons", path="/threads/{thread_id}/runs/crons", methods=("POST",)),
    dict(name="thread_runs", path="/threads/{thread_id}/runs"),
    dict(name="thread_run_join", path="/threads/{thread_id}/runs/{run_id}/join", methods=("GET",),
         **_RUN_WAIT, **_LONG_POLL),
    dict(name="thread_run_join_stream", path="/threads/{thread_id}/runs/{run_id}/stream", methods=("GET",), **_RUN_STREAM),
    # 202 at once, or with ?wait=true a padded wait like /join
    dict(name="thread_run_cancel", path="/threads/{thread_id}/runs/{run_id}/cancel", methods=("POST",), **_LONG_POLL),
    dict(name="thread_run", path="/threads/{thread_id}/runs/{run_id}"),
    dict(name="thread", path="/threads/{thread_id}"),
    dict(name="run_stream", path="/runs/stream", methods=("POST",), **_RUN_STREAM),
    dict(name="run_wait", path="/runs/wait", methods=("POST",), **_RUN_WAIT, **_LONG_POLL),
    # creates background runs and answers at once (no padding in 0.16.7): the request deadline fits
    dict(name="runs_batch", path="/runs/batch", methods=("POST",)),
    dict(name="runs_cancel", path="/runs/cancel", methods=("POST",)),
    dict(name="crons_search", path="/runs/crons/search", methods=("POST",)),
    dict(name="crons_count", path="/runs/crons/count", methods=("POST",)),
    dict(name="crons", path="/runs/crons"),
    dict(name="cron", path="/runs/crons/{cron_id}"),
    dict(name="run_join_stream", path="/runs/{run_id}/stream", methods=("GET",), **_RUN_STREAM),
    dict(name="runs", path="/runs", methods=("POST",)),
    dict(name="store_items_search", path="/store/items/search", methods=("POST",)),
    dict(name="store_items", path="/store/items"),
    dict(name="store_namespaces", path="/store/namespaces", methods=("POST",)),
    # streamable HTTP: a GET (or a POST answered with SSE) stays open for server messages
    dict(name="mcp", path="/mcp", **_OPEN),
    dict(name="agent_card", path="/.well-known/agent-card.json", methods=("GET",)),
    dict(name="a2a_agent_card", path="/a2a/{assistant_id}/.well-known/agent-card.json", methods=("GET",)),
    dict(name="a2a_agent_card_legacy", path="/a2a/{assistant_id}/.well-known/agent.json", methods=("GET",)),
    dict(name="a2a", path="/a2a/{assistant_id}"),
    # POST renders a graph's UI component; GET serves its static files
    dict(name="ui", path="/ui/{graph_id}"),
))
_BUILTIN_CLASS = {r.path: r.timeout_class for r in LANGGRAPH_ROUTES if r.timeout_class is not None}



@dataclass(frozen=True)
class Timeouts:
    """Effective timeouts of one route (route overrides merged over the global defaults)."""
    first_byte: float | None
    idle: float | None
    event_idle: float | None
    request: float | None
    stream: float | None


@dataclass(frozen=True)
class Route:
    """A matched route: name for labels plus the policy the request path applies."""
    name: str
    timeouts: Timeouts
    attempts: int
    breaker: str                 # name of the breaker guarding this route
    cancel_on_disconnect: bool
    run_kind: str | None         # "stream" / "wait": a LangGraph run endpoint
    template: str | None = None
    timeout_class: str = "request"   # request / long_poll / stream: see body_timeouts()
    preserve_host: bool = True   # upstream.preserve_host: the client's Host goes upstream

    def body_timeouts(self, sse: bool) -> dict | None:
        """The limits the forwarder arms once the answer's headers arrived, as keyword arguments
        of ``UpstreamConnection.set_stream_timeouts``; None keeps the request deadline (armed
        when the request was sent) over the whole answer.

        - an SSE answer, or class ``long_poll`` (a padded wait): ``stream`` caps the total,
          ``idle`` the gap between chunks (the padding is progress: the server is alive);
          ``event_idle`` only where there are events to see;
        - class ``stream``: the same without a total cap (open as long as the client listens).
        """
        t = self.timeouts
        if self.timeout_class == "stream":
            return dict(total=None, total_kind="stream", idle=t.idle, event_idle=t.event_idle if sse else None)
        if sse or self.timeout_class == "long_poll":
            return dict(total=t.stream, total_kind="stream", idle=t.idle, event_idle=t.event_idle if sse else None)
        return None


def _merge(glob: C.TimeoutsConfig, over: C.RouteTimeouts) -> Timeouts:
    def pick(k):
        v = getattr(over, k)
        return getattr(glob, k) if v is None else (v or None)
    return Timeouts(*(pick(k) for k in ("first_byte", "idle", "event_idle", "request", "stream")))


def _template_regex(path: str) -> str:
    out = []
    for seg in path.split("/")[1:]:
        out.append("[^/]+" if seg.startswith("{") else re.escape(seg))
    return "/" + "/".join(out)


class RouteTable:
    """First-match route lookup; ``match(method, path)`` always returns a Route (``other`` last)."""

    def __init__(self, cfg: C.Config):
        entries = list(cfg.routes)
        if cfg.default_routes:
            user_names = {r.name for r in entries}
            entries += [r for r in LANGGRAPH_ROUTES if r.name not in user_names]
        self.routes: list[Route] = []
        self._methods: list[tuple[str, ...] | None] = []
        for r in entries:
            self.routes.append(Route(
                name=r.name, timeouts=_merge(cfg.timeouts, r.timeouts),
                attempts=r.retries.attempts if r.retries.attempts is not None else cfg.retries.attempts,
                breaker=r.name if r.circuit_breaker is not None else "upstream",
                cancel_on_disconnect=r.cancel_on_disconnect, run_kind=r.run_kind, template=r.path,
                timeout_class=r.timeout_class or _BUILTIN_CLASS.get(r.path, "request"),
                preserve_host=cfg.upstream.preserve_host))
            self._methods.append(r.methods)
        self.templates = [r.path for r in entries]
        self.other = Route(name="other", timeouts=_merge(cfg.timeouts, C.RouteTimeouts()),
                           attempts=cfg.retries.attempts, breaker="upstream",
                           cancel_on_disconnect=False, run_kind=None,
                           preserve_host=cfg.upstream.preserve_host)
        self._by_method = {m: self._compile(m) for m in METHODS}
        self.names = [r.name for r in self.routes] + ["other"]

    def _compile(self, method: str) -> dict | None:
        """One method's matchers: its templates' regexes as one alternation (first match wins),
        split by the path's first segment so a request tries only the templates that could match
        it (each of ~57 in turn was the single largest cost of a small GET after the metrics:
        docs/benchmarks.md). Key: a literal first segment, with the templates that start with it
        or with a parameter, in table order; ``None``: those starting with a parameter (any other
        first segment); ``"/"`` (no segment holds one): all of them, for a target that does not
        start with ``/``. None when no template takes the method."""
        entries = [(i, tpl) for i, (tpl, methods) in enumerate(zip(self.templates, self._methods))
                   if methods is None or method in methods]
        if not entries:
            return None

        def rx(chosen):
            alts = [f"(?P<r{i}>{_template_regex(tpl)})" for i, tpl in chosen]
            return re.compile(r"(?:" + "|".join(alts) + r")/?\Z") if alts else None

        first = [(i, tpl, tpl.split("/")[1]) for i, tpl in entries]  # every template starts with "/" (config)
        literal = dict.fromkeys(seg for _, _, seg in first if not seg.startswith("{"))  # each once, in order
        out = {seg: rx([(i, tpl) for i, tpl, s in first if s == seg or s.startswith("{")]) for seg in literal}
        out[None] = rx([(i, tpl) for i, tpl, s in first if s.startswith("{")])
        out["/"] = rx(entries)
        return out

    def match(self, method: str, path: str) -> Route:
        by_first = self._by_method.get(method)
        if by_first is None:
            if method in self._by_method:
                return self.other
            by_first = self._compile(method)
            if by_first is None:
                return self.other
        if path[:1] == "/":
            end = path.find("/", 1)
            rx = by_first.get(path[1:end] if end > 0 else path[1:], by_first[None])
        else:
            rx = by_first["/"]
        m = rx.match(path) if rx is not None else None
        if m is None:
            return self.other
        return self.routes[int(m.lastgroup[1:])]

    def breaker_settings(self, cfg: C.Config) -> dict[str, C.BreakerConfig]:
        """Breaker name → its settings: the global one plus one per route that asks for its own."""
        out = {"upstream": cfg.circuit_breaker}
        for r in cfg.routes:
            if r.circuit_breaker is not None:
                o = r.circuit_breaker
                out[r.name] = replace(cfg.circuit_breaker, **{k: v for k, v in (
                    ("fail_max", o.fail_max), ("reset_timeout", o.reset_timeout),
                    ("success_threshold", o.success_threshold), ("failure_statuses", o.failure_statuses))
                    if v is not None})
        return out
