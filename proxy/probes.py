"""Synthetic LLM probes: a real request through the agent whose answer must match.

Each probe runs on its own schedule (first run at start-up, then every ``interval`` ± jitter)
through the same upstream path as user traffic: the same connection pool, the route's circuit
breaker (never taking the single half-open trial unless configured), the same timeout machinery
and SSE scanner. Results feed readiness with hysteresis (``failure_threshold`` consecutive
failures to fail, ``success_threshold`` passes to recover) and never liveness.

Cost control: when real traffic on the probed route succeeded within the interval, the probe is
skipped and counted as passed (passive health); ``max_per_hour`` caps synthetic calls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import asyncio
import collections
import json
import logging
import os
import random
import re
import time
from urllib.parse import urlsplit

import aiohttp

from . import errors as E
from .sse import SSEScanner

if TYPE_CHECKING:  # the Runtime builds this module's objects; no import cycle at run time
    from .app import Runtime

log = logging.getLogger("proxy.probes")


class ProbeState:
    """What readiness and /status know about one probe."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.passing: bool | None = None       # None until the first verdict
        self.ok_streak = 0
        self.fail_streak = 0
        self.last_error: str | None = None
        self.last_success: float | None = None  # unix time
        self.last_run: float | None = None
        self.results: collections.deque = collections.deque(maxlen=10)
        self.calls: collections.deque = collections.deque()  # monotonic times of synthetic calls (budget)
        self.runs = 0
        self.ever_passed = False                # until then the schedule retries fast (see ProbeRunner._loop)

    def record(self, passed: bool, error: str | None) -> None:
        cfg = self.cfg
        if passed:
            self.ok_streak += 1
            self.fail_streak = 0
            self.last_success = time.time()
            self.ever_passed = True
            if self.passing is not True and self.ok_streak >= cfg.success_threshold:
                self.passing = True
            if self.passing:
                self.last_error = None          # history stays in `recent`; no stale error next to "passing"
        else:
            self.fail_streak += 1
            self.ok_streak = 0
            self.last_error = error
            if self.passing is not False and self.fail_streak >= cfg.failure_threshold:
                self.passing = False

    @property
    def state(self) -> str:
        return {True: "passing", False: "failing", None: "pending"}[self.passing]

    def snapshot(self) -> dict:
        return {"state": self.state, "passing": self.passing, "consecutive_failures": self.fail_streak,
                "consecutive_successes": self.ok_streak, "last_error": self.last_error,
                "last_success": self.last_success, "last_run": self.last_run, "runs": self.runs,
                "recent": list(self.results)}


def json_path_get(doc, path: str):
    """``messages.-1.content`` → doc["messages"][-1]["content"]; KeyError/IndexError if absent."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict):
            cur = cur[part]
        else:
            raise KeyError(part)
    return cur


class ProbeRunner:
    """Runs every configured probe in the background; see the module docstring."""

    def __init__(self, rt: "Runtime", clock=time.monotonic, sleep=asyncio.sleep):
        self.rt = rt
        self.clock = clock
        self.sleep = sleep
        self.states: dict[str, ProbeState] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self._client: aiohttp.ClientSession | None = None
        self._sync_states()

    def _sync_states(self) -> None:
        new = {}
        for p in self.rt.cfg.probes:
            st = self.states.get(p.name)
            if st is None:
                st = ProbeState(p)
            st.cfg = p
            new[p.name] = st
        self.states = new

    def start(self) -> None:
        for name, st in self.states.items():
            if name not in self.tasks:
                self.tasks[name] = self.rt.loop.create_task(self._loop(st))

    def reconfigure(self) -> None:
        """After a reload: stop removed probes, start new ones, keep the state of kept ones."""
        self._sync_states()
        for name in list(self.tasks):
            self.tasks.pop(name).cancel()
        self.start()

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.close()

    # ---- readiness and status ----
    def readiness_checks(self) -> list[dict]:
        out = []
        for name in self.rt.cfg.readiness.require_probes:
            st = self.states.get(name)
            if st is None:
                continue
            out.append({"name": f"probe:{name}", "ok": st.passing is True,
                        "state": st.state,
                        "last_error": st.last_error, "last_success": st.last_success,
                        "consecutive_failures": st.fail_streak})
        return out

    def status(self) -> dict:
        return {name: st.snapshot() for name, st in self.states.items()}

    # ---- the schedule ----
    # Until a probe has passed once (the upstream may still be starting), it is retried after
    # 0.5 s, 1 s, 2 s, ... at most STARTUP_RETRY_MAX (or the interval, if shorter), so a pod turns
    # ready seconds after its agent does, not an interval later. Every retry is a real call,
    # counted against max_per_hour; once the budget is spent, or while the route's breaker is
    # open (the call would be refused anyway), the normal interval applies. While the upstream
    # does not even accept TCP connections, no request is sent at all: a starting agent must not
    # cost LLM calls nor count as breaker failures (which would open the breaker, and an open
    # breaker refuses the probe: the pod would stay unready until user traffic closed it).
    STARTUP_RETRY_FIRST = 0.5
    STARTUP_RETRY_MAX = 10.0

    def next_delay(self, st: ProbeState, result: str, startup_attempt: int) -> float:
        """Seconds until the next run after ``result``; ``startup_attempt`` counts fast retries."""
        cfg = st.cfg
        if not st.ever_passed and result != "skipped_budget" and not self._breaker_open(cfg):
            return min(cfg.interval, self.STARTUP_RETRY_MAX, self.STARTUP_RETRY_FIRST * 2 ** startup_attempt)
        return cfg.interval * (1 + random.uniform(-cfg.jitter, cfg.jitter))

    def _breaker_open(self, cfg) -> bool:
        br = self.rt.breakers.get(self._route(cfg).breaker)
        return br is not None and br.state == "open"

    async def upstream_accepts(self) -> bool:
        """A bare TCP connect to the upstream: no request, no LLM call, no breaker verdict."""
        up = self.rt.cfg.upstream
        u = urlsplit(up.url)
        try:
            async with asyncio.timeout(up.connect_timeout):
                _, writer = await asyncio.open_connection(u.hostname, u.port or (443 if u.scheme == "https" else 80))
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _loop(self, st: ProbeState) -> None:
        m = self.rt.metrics
        m.probe_success.labels(st.cfg.name).set(1 if st.passing else 0)
        attempt = 0
        while True:
            cfg = st.cfg
            if not st.ever_passed and not await self.upstream_accepts():
                st.last_run = time.time()
                st.last_error = "the upstream does not accept connections yet (no probe sent)"
                await self.sleep(min(cfg.interval, self.STARTUP_RETRY_MAX, self.STARTUP_RETRY_FIRST * 2 ** attempt))
                attempt += 1
                continue
            result = "crashed"
            try:
                result = await self.run_once(st)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a probe bug must not kill the schedule
                log.exception("probe crashed", extra={"fields": {"probe": cfg.name}})
            delay = self.next_delay(st, result, attempt)
            attempt = 0 if st.ever_passed else attempt + 1
            await self.sleep(delay)

    def _route(self, cfg):
        return self.rt.pipeline.table.match(cfg.request.method, cfg.request.path.split("?")[0])

    async def run_once(self, st: ProbeState) -> str:
        """One scheduled probe: skip (passive/budget) or call; returns the result label."""
        cfg = st.cfg
        m = self.rt.metrics
        name = cfg.name
        route = self._route(cfg)
        now = self.clock()
        st.last_run = time.time()
        if cfg.skip_if_recent_success:
            last = self.rt.last_success.get(route.name)
            if last is not None and self.rt.loop.time() - last < cfg.interval:
                m.probe_runs.labels(name, "skipped_passive").inc()
                self._verdict(st, True, None, "skipped_passive")
                return "skipped_passive"
        if cfg.max_per_hour is not None:
            while st.calls and st.calls[0] <= now - 3600:
                st.calls.popleft()
            if len(st.calls) >= cfg.max_per_hour:
                m.probe_runs.labels(name, "skipped_budget").inc()
                st.results.append({"time": time.time(), "result": "skipped_budget"})
                return "skipped_budget"
        st.calls.append(now)
        st.runs += 1
        t0 = self.rt.loop.time()
        try:
            async with asyncio.timeout(cfg.timeout):
                ok, error, first_event, result = await self._call(cfg, route)
        except TimeoutError:
            ok, error, first_event, result = False, f"probe timed out after {cfg.timeout:g}s", None, "timeout"
        duration = self.rt.loop.time() - t0
        if ok is None:
            # shed by the proxy's own capacity: no verdict on the upstream, and no budget spent
            st.calls.pop()
            st.runs -= 1
            m.probe_runs.labels(name, result).inc()
            st.results.append({"time": time.time(), "result": result, "error": error})
            return result
        m.probe_duration_seconds.labels(name).observe(duration)
        if first_event is not None:
            m.probe_time_to_first_event_seconds.labels(name).observe(first_event)
        m.probe_runs.labels(name, result).inc()
        self._verdict(st, ok, error, result, duration)
        if not ok:
            # before the first pass the upstream is usually still starting: not worth a warning
            (log.warning if st.ever_passed else log.info)(
                "probe failed" if st.ever_passed else "probe not passing yet (retrying soon)",
                extra={"fields": {"probe": name, "result": result, "error": error,
                                  "consecutive_failures": st.fail_streak}})
        return result

    def _verdict(self, st: ProbeState, ok: bool, error: str | None, result: str, duration: float | None = None) -> None:
        m = self.rt.metrics
        was = st.passing
        st.record(ok, error)
        st.results.append({"time": time.time(), "result": result, "error": error,
                           "duration_seconds": round(duration, 4) if duration is not None else None})
        m.probe_success.labels(st.cfg.name).set(1 if st.passing else 0)
        if ok:
            m.probe_last_success_timestamp_seconds.labels(st.cfg.name).set(st.last_success)
        if was is not st.passing and st.passing is not None:
            log.info("probe state change", extra={"fields": {"probe": st.cfg.name,
                                                             "state": "passing" if st.passing else "failing"}})

    # ---- one synthetic request ----
    def _session(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _call(self, cfg, route):
        """(ok, error, time to first event, result) of one real request through the proxy's
        own traffic port, so it takes every layer user traffic takes (limits, retries, the
        route's breaker, timeouts, telemetry) by construction. The request id is random and
        registered for this call only: that is how the pipeline knows the exchange is a probe
        (``ex.probe``: counted apart, never taking the half-open trial unless configured), and
        how telemetry hands back who ended it."""
        rq = cfg.request
        body = json.dumps(rq.json).encode() if rq.json is not None else (rq.body or "").encode()
        rid = f"probe-{cfg.name}-{os.urandom(8).hex()}"
        loop = self.rt.loop
        pending = PendingProbe(cfg.name, loop.create_future())
        headers = {"Accept": "text/event-stream, application/json"}
        headers.update(rq.headers)
        if rq.json is not None and not any(k.lower() == "content-type" for k in rq.headers):
            headers["Content-Type"] = "application/json"
        headers["X-Sidecar-Probe"] = cfg.name
        headers["X-Request-ID"] = rid
        host, port = self.rt.traffic_address
        url = f"http://{host}:{port}{rq.path}"
        self.rt.pending_probes[rid] = pending
        start = loop.time()
        status, buf, scanner, first_event, cut = 0, bytearray(), None, None, None
        try:
            async with self._session().request(rq.method, url, data=body if body or rq.method in ("POST", "PUT", "PATCH") else None,
                                               headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if resp.content_type == "text/event-stream":
                    scanner = SSEScanner()
                limit = cfg.max_body_bytes
                async for chunk in resp.content.iter_any():
                    if scanner is not None and scanner.feed(chunk) and first_event is None:
                        first_event = loop.time() - start
                    if len(buf) < limit:
                        buf += chunk[: limit - len(buf)]
        except (aiohttp.ClientError, OSError) as e:
            cut = e  # the answer was cut (the exchange's verdict below says by whom)
        except BaseException:
            self.rt.pending_probes.pop(rid, None)
            raise
        try:
            _, outcome, who, ex = await asyncio.wait_for(asyncio.shield(pending.future), 5)
        except TimeoutError:
            self.rt.pending_probes.pop(rid, None)
            return False, f"probe request failed: {cut or 'no verdict from the pipeline'}", first_event, "failed"
        if who == "proxy" and ex.error is None and outcome != "circuit_open":
            # shed by the proxy's own capacity (or its shutdown): says nothing of the upstream
            return None, f"{outcome}: {_message(buf)}", first_event, "skipped_capacity"
        if who == "upstream" or (who == "proxy" and outcome == "circuit_open"):
            err = ex.error
            result = "timeout" if isinstance(err, E.UpstreamTimeout) or outcome == "upstream_timeout" else "failed"
            text = str(err) if err is not None else _message(buf)
            return False, f"{outcome}: {text}", first_event, result
        if cut is not None or who is not None:
            return False, f"{outcome}: the answer was cut ({cut or who})", first_event, "failed"
        ok, error = self._check(cfg, status, bytes(buf), scanner)
        return ok, error, first_event, "passed" if ok else "failed"

    @staticmethod
    def _check(cfg, status: int, body: bytes, scanner) -> tuple[bool, str | None]:
        ex = cfg.expect
        if ex.status is not None and status != ex.status:
            return False, f"expected status {ex.status}, got {status}"
        text = body.decode("utf-8", "replace")
        if scanner is not None and scanner.error_seen:
            return False, "the run stream ended with an error event"
        if ex.body_regex is not None and not re.search(ex.body_regex, text):
            return False, f"answer did not match body_regex {ex.body_regex!r}"
        if ex.json_path is not None:
            try:
                doc = json.loads(_last_sse_data(text) if scanner is not None else text)
                value = json_path_get(doc, ex.json_path)
            except (ValueError, KeyError, IndexError, TypeError):
                return False, f"answer has no value at json_path {ex.json_path!r}"
            if ex.equals is not None and value != ex.equals:
                return False, f"value at {ex.json_path!r} is not the expected one"
            if ex.regex is not None and not re.search(ex.regex, str(value)):
                return False, f"value at {ex.json_path!r} did not match {ex.regex!r}"
        return True, None


class PendingProbe:
    """A probe's request in flight: its name (marks the exchange) and the verdict telemetry sets."""

    __slots__ = ("probe_name", "future")

    def __init__(self, probe_name: str, future: asyncio.Future):
        self.probe_name = probe_name
        self.future = future


def _message(body: bytes) -> str:
    """The message of the proxy's own JSON error body, else the start of the answer."""
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _last_sse_data(text: str) -> str:
    data = None
    for block in re.split(r"\r?\n\r?\n", text):
        lines = [ln[5:].lstrip() for ln in re.split(r"\r?\n", block) if ln.startswith("data:")]
        if lines:
            data = "\n".join(lines)
    if data is None:
        raise ValueError("no SSE data")
    return data
