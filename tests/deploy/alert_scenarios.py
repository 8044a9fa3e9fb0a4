"""promtool rule tests whose input series are real scrapes of the real proxy.

A scenario starts ``python -m proxy`` in front of a :class:`FaultUpstream`, drives it through
healthy ticks and then failure ticks, and scrapes ``/metrics`` once per tick (after a ``/readyz``
call, as the kubelet makes). Tick k becomes minute k of the promtool test: the series are exactly
what the proxy exported at each scrape; a series the proxy did not export is ``_`` (missing), and
one that disappears, or a scrape that fails, becomes ``stale`` as in a real Prometheus, which also
writes ``up`` (1, or 0 when the scrape failed). Only the metrics the rules read are kept.

Unix-time gauges (``*_timestamp_seconds``) are mapped from the real clock onto the test clock
(piecewise linear between scrapes), so "seconds since" rules see test minutes, not real
milliseconds.
"""
from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deployutil import DEPLOY, metric_names
from proxy_harness import FaultUpstream, ProxyProcess, deep_merge, metric, scrape

RULES = DEPLOY / "prometheus" / "alerts.yaml"
STEP_S = 60                       # one tick = one scrape interval of the test clock
TARGET = {"namespace": "langgraph", "job": "langgraph-sidecar", "pod": "agent-0", "instance": "10.1.2.3:9090"}
PROBE = {"name": "agent_pong", "interval": "200ms", "jitter": 0, "timeout": "1s", "failure_threshold": 1,
         "skip_if_recent_success": False,
         "request": {"method": "POST", "path": "/probe", "json": {"input": "PONG?"}},
         "expect": {"status": 200, "body_regex": "PONG"}}
BASE = {"probes": [PROBE], "readiness": {"require_probes": ["agent_pong"]}}


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def read_metrics() -> set[str]:
    """Sample names the rules select (recorded series excluded): what the scrape is cut down to."""
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    names = set()
    for g in rule_groups():
        for r in g["rules"]:
            names |= metric_names(r["expr"])
    return names - recorded - {"up"}


class Ctx:
    """What a scenario's drive functions get: the proxy, the upstream, a client session."""

    def __init__(self, proxy: ProxyProcess, upstream: FaultUpstream, session: aiohttp.ClientSession):
        self.proxy, self.upstream, self.session = proxy, upstream, session
        self.background: list[asyncio.Task] = []
        self.state: dict = {}

    async def call(self, method: str, path: str, **kw) -> int:
        try:
            async with self.session.request(method, self.proxy.url + path, **kw) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return 0

    def spawn(self, coro) -> None:
        self.background.append(asyncio.ensure_future(coro))

    async def healthy_traffic(self) -> None:
        """One tick of normal use: a plain call, a run that waits, a run that streams."""
        statuses = await asyncio.gather(
            self.call("GET", "/ok"),
            self.call("POST", "/threads/00000000-0000-0000-0000-00000000000a/runs/wait", json={"input": {}}),
            self.call("POST", "/threads/00000000-0000-0000-0000-00000000000a/runs/stream?events=2&interval=0.005",
                      json={"input": {}}))
        assert statuses == [200, 200, 200], statuses


Drive = Callable[[Ctx, int], Awaitable[None]]


async def _healthy(ctx: Ctx, tick: int) -> None:
    await ctx.healthy_traffic()


@dataclass
class Scenario:
    """A failure the proxy is driven through, and the alerts it must raise.

    ``fires``: alert name → (labels the firing alert must carry, minutes after the failure is first
    visible by which it must be firing). Every other alert must stay silent during the healthy ticks.
    ``onset``: the tick whose scrape first shows the failure, read from the recording; by default the
    first failure tick. Failures whose first sign comes after a real-time delay (a slow answer) use
    it, so the test does not depend on how many ticks this machine runs per second.
    """
    name: str
    failure: Drive
    fires: dict[str, tuple[dict, int]]
    overrides: dict = field(default_factory=dict)
    healthy_ticks: int = 10
    failure_ticks: int = 20
    slow: bool = False      # over ~7 s of real time: the slow group (.ci/run and ci-checks run it)
    onset: Callable[["Recording"], int] | None = None

    def onset_tick(self, rec: "Recording") -> int:
        return self.healthy_ticks if self.onset is None else self.onset(rec)


@dataclass
class Recording:
    scrapes: list[dict | None]              # per tick: {(name, labels): value}, None = scrape failed
    real_times: list[float]                 # unix time of each scrape

    def to_sim(self, t: float) -> float:
        """A real unix time → seconds on the test clock (tick k is k * STEP_S)."""
        rt = self.real_times
        if len(rt) == 1:
            return t - rt[0]
        i = min(max(bisect.bisect_right(rt, t) - 1, 0), len(rt) - 2)
        return (i + (t - rt[i]) / (rt[i + 1] - rt[i])) * STEP_S

    def series(self) -> dict[str, list]:
        """promtool series → per-tick values (float, None for missing, "stale")."""
        keys = sorted({k for s in self.scrapes if s for k in s})
        out: dict[str, list] = {}
        for name, labels in keys:
            vals, present = [], False
            for i, s in enumerate(self.scrapes):
                v = s.get((name, labels)) if s is not None else None
                if v is None:
                    vals.append("stale" if present else None)
                    present = False
                    continue
                if name.endswith("_timestamp_seconds") and v > 0:
                    v = self.to_sim(v)
                vals.append(v)
                present = True
            out[series_name(name, dict(labels) | TARGET)] = vals
        out[series_name("up", TARGET)] = [0.0 if s is None else 1.0 for s in self.scrapes]
        return out


def series_name(name: str, labels: dict) -> str:
    esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
    return name + "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def encode(values: list) -> str:
    """Per-tick values → promtool notation, runs of an integer progression as ``a+bxn``."""
    out, i = [], 0
    while i < len(values):
        v = values[i]
        if v is None:
            j = i
            while j < len(values) and values[j] is None:
                j += 1
            out.append(f"_x{j - i}" if j - i > 1 else "_")
            i = j
            continue
        if v == "stale":
            out.append("stale")
            i += 1
            continue
        j = i + 1
        if float(v).is_integer() and j < len(values) and isinstance(values[j], float) and values[j].is_integer():
            d = values[j] - v
            while j + 1 < len(values) and isinstance(values[j + 1], float) and values[j + 1] - values[j] == d:
                j += 1
            n = j - i
            out.append(f"{_num(v)}{'+' if d >= 0 else '-'}{_num(abs(d))}x{n}" if n > 1 else f"{_num(v)} {_num(values[j])}")
            i = j + 1
        else:
            out.append(_num(v))
            i += 1
    return " ".join(out)


async def _scrape_filtered(session: aiohttp.ClientSession, admin: str, keep: set[str]) -> dict | None:
    try:
        async with session.get(admin + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
            await r.read()
        async with session.get(admin + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in keep:
                out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


async def record(sc: Scenario, tmp: Path, healthy_only: bool = False) -> Recording:
    keep = read_metrics()
    up = await FaultUpstream().start()
    proxy = ProxyProcess(tmp, up.url, deep_merge(BASE, sc.overrides)).start()
    rec = Recording([], [])
    try:
        async with aiohttp.ClientSession() as session:
            ctx = Ctx(proxy, up, session)
            # the first tick is taken once the probe has passed, as a pod is scraped once running
            await _wait(lambda s: metric(s, "sidecar_probe_success", probe="agent_pong") == 1, proxy, "probe passing")
            ticks = sc.healthy_ticks + (0 if healthy_only else sc.failure_ticks)
            for k in range(ticks):
                drive = _healthy if healthy_only or k < sc.healthy_ticks else sc.failure
                await drive(ctx, k - sc.healthy_ticks)
                rec.scrapes.append(await _scrape_filtered(session, proxy.admin, keep))
                rec.real_times.append(time.time())
            for t in ctx.background:
                t.cancel()
            await asyncio.gather(*ctx.background, return_exceptions=True)
    finally:
        proxy.kill()
        await up.stop()
    return rec


async def _wait(pred, proxy: ProxyProcess, what: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = await scrape(proxy.admin)
        if pred(s):
            return s
        assert time.monotonic() < deadline, f"never saw {what}; proxy log: {proxy.stderr()[-2000:]}"
        await asyncio.sleep(0.05)


def promtool_tests(sc: Scenario, rec: Recording) -> dict:
    """The promtool test file: silent before the failure, each expected alert firing in time."""
    inputs = [{"series": k, "values": encode(v)} for k, v in rec.series().items()]
    alerts = alert_rules()
    before = f"{sc.healthy_ticks - 1}m"
    onset = sc.onset_tick(rec)
    tests = []
    for name, (labels, within) in sc.fires.items():
        assert name in alerts, name
        assert onset - 1 + within < len(rec.scrapes), \
            f"{name}: the failure showed at tick {onset}; {within} more ticks exceed the {len(rec.scrapes)} recorded"
        keys = sorted({"alertname", "alertstate", "severity"} | set(labels))
        want = {"alertname": name, "alertstate": "firing", "severity": alerts[name]["labels"]["severity"]} | labels
        tests.append({
            "interval": f"{STEP_S}s",
            "input_series": inputs,
            "alert_rule_test": [{"eval_time": before, "alertname": name, "exp_alerts": []}],
            "promql_expr_test": [{
                "expr": f'group by ({", ".join(keys)}) (ALERTS{{alertname="{name}", alertstate="firing"}})',
                "eval_time": f"{onset - 1 + within}m",
                "exp_samples": [{"labels": series_name("", want), "value": 1}],
            }],
        })
    return {"rule_files": [str(RULES)], "evaluation_interval": "30s", "tests": tests}


def healthy_tests(rec: Recording) -> dict:
    """Every alert silent at every 5 minutes of a healthy recording (and no ALERTS series at all)."""
    inputs = [{"series": k, "values": encode(v)} for k, v in rec.series().items()]
    times = [f"{m}m" for m in range(0, len(rec.scrapes), 5)] + [f"{len(rec.scrapes) - 1}m"]
    return {"rule_files": [str(RULES)], "evaluation_interval": "30s", "tests": [{
        "interval": f"{STEP_S}s",
        "input_series": inputs,
        "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": []} for t in times for a in alert_rules()],
        "promql_expr_test": [{"expr": "ALERTS", "eval_time": t, "exp_samples": []} for t in times],
    }]}


# ---------------------------------------------------------------- the scenarios

THREAD = "/threads/00000000-0000-0000-0000-00000000000b"


async def bad_reload(ctx: Ctx, tick: int) -> None:
    if tick == 0:
        good = ctx.proxy.config_path.read_text()
        # as a ConfigMap update does: the file changes, the proxy's watcher reloads it
        ctx.proxy.config_path.write_text(good + "\nlimits: {max_concurrent_requests: -1}\n")
        await _wait(lambda s: metric(s, "sidecar_config_reloads_total", result="failure") >= 1, ctx.proxy,
                    "the failed reload counted")
    await ctx.healthy_traffic()


async def breaker_open(ctx: Ctx, tick: int) -> None:
    # 502s trip the shared "upstream" breaker (fail_max 5); then it answers 503 at once
    await asyncio.gather(*(ctx.call("GET", "/status/502") for _ in range(6)))
    await asyncio.gather(*(ctx.call("GET", "/ok") for _ in range(3)))


async def five_xx(ctx: Ctx, tick: int) -> None:
    await ctx.healthy_traffic()
    statuses = await asyncio.gather(*(ctx.call("GET", "/status/500") for _ in range(3)))
    assert statuses == [500] * 3


async def first_byte_timeouts(ctx: Ctx, tick: int) -> None:
    await ctx.healthy_traffic()
    statuses = await asyncio.gather(*(ctx.call("POST", "/hang", data=b"x") for _ in range(2)))
    assert statuses == [504, 504], statuses


async def upstream_resets(ctx: Ctx, tick: int) -> None:
    await ctx.healthy_traffic()
    statuses = await asyncio.gather(*(ctx.call("POST", "/drop", data=b"x") for _ in range(2)))
    assert statuses == [502, 502], statuses


async def probe_failing(ctx: Ctx, tick: int) -> None:
    ctx.upstream.probe_status = 500
    before = len(ctx.upstream.probe_calls)
    await ctx.healthy_traffic()
    deadline = time.monotonic() + 5
    while len(ctx.upstream.probe_calls) == before:   # one real probe run per tick
        assert time.monotonic() < deadline, "probe stopped running"
        await asyncio.sleep(0.02)


async def streams_cut(ctx: Ctx, tick: int) -> None:
    await ctx.healthy_traffic()
    # events stop after the first; heartbeats keep the connection alive, so event_idle cuts it
    await asyncio.gather(*(ctx.call("POST", f"{THREAD}/runs/stream?events=5&interval=0.01&stall_after=1&heartbeat=0.05",
                                    json={}) for _ in range(2)))


async def run_errors(ctx: Ctx, tick: int) -> None:
    await ctx.healthy_traffic()
    await asyncio.gather(*(ctx.call("POST", f"{THREAD}/runs/stream?events=1&interval=0.005&error=1", json={})
                           for _ in range(2)))


async def saturated(ctx: Ctx, tick: int) -> None:
    if tick == 0:   # hold every slot of the 4-request limit with answers that never come
        for _ in range(4):
            ctx.spawn(ctx.call("POST", "/hang", data=b"x"))
        await _wait(lambda s: metric(s, "sidecar_in_flight_requests") >= 4, ctx.proxy, "4 requests in flight")
    statuses = await asyncio.gather(*(ctx.call("GET", "/ok") for _ in range(3)))
    assert statuses == [503] * 3, statuses


async def slow_first_byte(ctx: Ctx, tick: int) -> None:
    # over the 2.5s SLO threshold; launched without waiting so ticks keep their pace and
    # answers complete a few ticks later (as slow answers do: see first_slow_answer)
    for _ in range(3):
        ctx.spawn(ctx.call("GET", "/delay/2.7"))
    await ctx.healthy_traffic()
    await asyncio.sleep(0.3)


def first_slow_answer(rec: Recording) -> int:
    """The first tick whose scrape counts an upstream first byte over the 2.5 s SLO threshold."""
    for k, s in enumerate(rec.scrapes):
        if not s:
            continue
        total = sum(v for (n, _), v in s.items() if n == "sidecar_upstream_time_to_first_byte_seconds_count")
        fast = sum(v for (n, lab), v in s.items()
                   if n == "sidecar_upstream_time_to_first_byte_seconds_bucket" and ("le", "2.5") in lab)
        if total > fast:
            return k
    raise AssertionError("no answer over 2.5 s was ever scraped")


async def proxy_gone(ctx: Ctx, tick: int) -> None:
    if tick == 0:
        ctx.proxy.kill()


BURN = {"SidecarErrorBudgetBurnFast": ({"job": TARGET["job"], "namespace": TARGET["namespace"]}, 5),
        "SidecarErrorBudgetBurnSlow": ({"job": TARGET["job"], "namespace": TARGET["namespace"]}, 18)}
POD = {"pod": TARGET["pod"]}

SCENARIOS = [
    Scenario("bad_reload", bad_reload, {"SidecarConfigReloadFailed": (POD, 2)}, failure_ticks=5),
    Scenario("breaker_open", breaker_open,
             {"SidecarCircuitBreakerOpen": (POD | {"breaker": "upstream"}, 3), **BURN,
              "SidecarNotReady": (POD, 17)},
             overrides={"retries": {"attempts": 1}}),
    Scenario("five_xx_burst", five_xx, BURN),
    Scenario("first_byte_timeouts", first_byte_timeouts,
             {"SidecarUpstreamTimeouts": (POD | {"kind": "first_byte"}, 8), **BURN},
             # the tight timeout on /hang only: healthy traffic keeps the defaults, so a slow moment
             # of a loaded machine never turns a healthy tick into a timeout
             overrides={"routes": [{"name": "hang", "path": "/hang", "timeouts": {"first_byte": "150ms"}}],
                        "retries": {"attempts": 1}}, slow=True),
    Scenario("upstream_resets", upstream_resets,
             {"SidecarUpstreamErrors": (POD | {"kind": "reset"}, 8), **BURN},
             overrides={"retries": {"attempts": 1}}),
    Scenario("probe_failing", probe_failing,
             {"SidecarProbeFailing": (POD | {"probe": "agent_pong"}, 7), "SidecarProbeStale": (POD | {"probe": "agent_pong"}, 37),
              "SidecarNotReady": (POD, 17)},
             failure_ticks=40, slow=True),
    Scenario("streams_cut_by_event_idle", streams_cut,
             {"SidecarStreamsCutByTimeouts": (POD, 8), "SidecarUpstreamTimeouts": (POD | {"kind": "event_idle"}, 8)},
             overrides={"routes": [{"name": "cut_stream", "path": f"{THREAD}/runs/stream", "run_kind": "stream",
                                    "timeouts": {"event_idle": "150ms"}}]}, slow=True),
    Scenario("run_errors", run_errors, {"SidecarRunErrors": (POD, 8)}),
    Scenario("saturated_and_shedding", saturated,
             {"SidecarSaturation": (POD | {"resource": "concurrent_requests"}, 7), "SidecarShedding": (POD, 7), **BURN},
             overrides={"limits": {"max_concurrent_requests": 4}, "timeouts": {"first_byte": "5m"}}, slow=True),
    Scenario("slow_first_byte", slow_first_byte,
             # counted from the first slow answer scraped (2.7 s of real time: 3 to 9 ticks in);
             # probes every 5 s, so the ratio is the traffic's (3 slow of 6 a tick), not the machine's
             {"SidecarLatencyBudgetBurnFast": ({"job": TARGET["job"], "namespace": TARGET["namespace"]}, 9),
              "SidecarLatencyBudgetBurnSlow": ({"job": TARGET["job"], "namespace": TARGET["namespace"]}, 22)},
             overrides={"probes": [PROBE | {"interval": "5s"}]},
             failure_ticks=34, slow=True, onset=first_slow_answer),
    Scenario("proxy_gone", proxy_gone,
             {"SidecarScrapeFailing": (POD, 7), "SidecarMetricsAbsent": ({}, 12)}, failure_ticks=15),
]
HEALTHY = Scenario("healthy", _healthy, {}, healthy_ticks=45, failure_ticks=0)


def covered_alerts() -> set[str]:
    return {a for sc in SCENARIOS for a in sc.fires}
