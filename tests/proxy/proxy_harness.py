"""Test harness: the real proxy as a subprocess, and a fault-injecting upstream we control.

The upstream is a real aiohttp server on a real loopback socket, running in the test's event loop
so a test can both drive it and see what reached it. The proxy is ``python -m proxy`` started
exactly as a user starts it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent_procs import REPO as ROOT, free_port  # noqa: F401 - one copy for every test folder

WS_HEADERS = web.AppKey("ws_headers", list)
WS_CLOSED = web.AppKey("ws_closed", list)


LGDEV_TOKEN_DELAY = 0.05  # seconds per token of the offline model under the lgdev fixture: "SLOW n" takes n × this


def human(text: str) -> dict:
    """A run input of one user message."""
    return {"messages": [{"role": "user", "content": text}]}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class ProxyProcess:
    """``python -m proxy`` on ephemeral loopback ports; ``url``/``admin`` once started."""

    def __init__(self, tmp: Path, upstream_url: str, overrides: dict | None = None, env: dict | None = None):
        self.tmp = tmp
        self.cfg = deep_merge({
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "drain_delay": "0s",
                       "shutdown_grace": "10s"},
            "upstream": {"url": upstream_url, "connect_timeout": "1s"},
            "logging": {"level": "info"},
        }, overrides or {})
        self.config_path = tmp / "proxy.yaml"
        self.ready_file = tmp / "proxy.ready"
        self.stdout_path = tmp / "proxy.stdout"
        self.stderr_path = tmp / "proxy.stderr"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port = self.admin_port = 0

    def write_config(self, cfg: dict | None = None) -> None:
        self.config_path.write_text(yaml.safe_dump(cfg or self.cfg))

    def start(self, timeout: float = 15) -> "ProxyProcess":
        self.write_config()
        if self.ready_file.exists():
            self.ready_file.unlink()
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "--config", str(self.config_path), "--ready-file", str(self.ready_file)],
                cwd=ROOT, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"proxy did not start: {self.stderr()}")
            time.sleep(0.02)
        self.port, self.admin_port = map(int, self.ready_file.read_text().split())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def access_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.startswith("{")]

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stderr().splitlines() if line.startswith("{")]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def num_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(5)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


async def scrape(admin_url: str, session: aiohttp.ClientSession | None = None) -> dict:
    """Parse /metrics into {(name, frozenset(labels.items())): value} (samples, not families)."""
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(admin_url + "/metrics") as r:
            text = await r.text()
    finally:
        if own:
            await session.close()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def wait_metric(admin_url: str, name: str, at_least: float = 1, timeout: float = 6.0, **labels) -> dict:
    """Scrape until ``metric(name, **labels) >= at_least`` (or the timeout); returns the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(admin_url)
        if metric(samples, name, **labels) >= at_least or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


async def read_cut(resp: aiohttp.ClientResponse) -> bytes:
    """What arrived of an answer the proxy cut (an SSE stream gets its last ``event: error``
    first), asserting that it looks cut: no final chunk, so no client can take it for whole."""
    data = b""
    try:
        async for chunk in resp.content.iter_any():
            data += chunk
    except aiohttp.ClientPayloadError:
        return data
    raise AssertionError(f"a cut answer ended cleanly: {data[-300:]!r}")


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    want = set((k, str(v)) for k, v in labels.items())
    for (n, lbls), v in samples.items():
        if n == name and want <= lbls:
            total += v
    return total


class FaultUpstream:
    """A real HTTP server whose every path is a behaviour a test can ask for.

    It records what reached it (``seen``: method, path, headers, body size) and when a streaming
    handler noticed its client was gone (``disconnects``).
    """

    def __init__(self):
        self.seen: list[dict] = []
        self.disconnects: list[str] = []
        self.status_queue: list[int] = []
        self.runner = None
        self.port = 0
        self.in_flight = 0
        self.cancels: list[str] = []
        self.probe_answer = "PONG"     # what /probe answers (the test switches it)
        self.probe_status = 200
        self.probe_delay = 0.0
        self.probe_calls: list[dict] = []
        self._blobs: dict[int, bytes] = {}
        self.tls = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self, port: int = 0, ssl_context=None) -> "FaultUpstream":
        app = web.Application(client_max_size=1 << 31)
        app[WS_HEADERS], app[WS_CLOSED] = [], []
        self.app = app
        app.router.add_get("/threads/{tid}/stream/events", ws_echo_handler)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        self.tls = ssl_context is not None
        site = web.TCPSite(self.runner, "127.0.0.1", port, backlog=4096,  # bursts of 1000 connects
                           ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        name = request.path.strip("/").split("/")[0] or "root"
        self.in_flight += 1
        try:
            handler = getattr(self, "h_" + name.replace("-", "_"), self.h_default)
            return await handler(request)
        finally:
            self.in_flight -= 1

    def _record(self, request, body_len: int = 0) -> None:
        self.seen.append({"method": request.method, "path": request.raw_path,
                          "headers": dict(request.headers), "raw_headers": list(request.raw_headers),
                          "body_len": body_len})

    # ---- behaviours ----
    async def h_default(self, request):
        body = await request.read()
        self._record(request, len(body))
        return web.json_response({"path": request.raw_path, "method": request.method, "body_len": len(body)},
                                 headers={"X-Upstream": "fault"})

    async def h_status(self, request):
        self._record(request)
        code = int(request.match_info["tail"].split("/")[1])
        return web.json_response({"status": code}, status=code)

    async def h_flaky(self, request):
        """Answers with the next code from ``status_queue`` (200 when empty)."""
        self._record(request)
        code = self.status_queue.pop(0) if self.status_queue else 200
        return web.json_response({"status": code}, status=code)

    async def h_echo(self, request):
        """Streams the request body back as it arrives (chunked), with a running digest header-less."""
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.content_length is not None:
            resp.content_length = request.content_length
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def h_sink(self, request):
        """Reads the body, answers its size and sha256."""
        import hashlib
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
        self._record(request, n)
        return web.json_response({"size": n, "sha256": h.hexdigest()})

    async def h_bytes(self, request):
        """GET /bytes/N: N pseudo-random bytes (seeded by N), streamed in 64 KiB chunks."""
        import random
        n = int(request.match_info["tail"].split("/")[1])
        self._record(request)
        rnd = random.Random(n)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(request)
        left = n
        while left:
            k = min(65536, left)
            await resp.write(rnd.randbytes(k))
            left -= k
        await resp.write_eof()
        return resp

    async def h_blob(self, request):
        """GET /blob/N: N bytes from a cache (cheap to serve many times at once)."""
        n = int(request.match_info["tail"].split("/")[1])
        body = self._blobs.get(n)
        if body is None:
            body = self._blobs[n] = b"b" * n
        return web.Response(body=body, content_type="application/octet-stream")

    async def h_runs(self, request):
        """LangGraph-shaped runs with known LLM usage: /runs/stream answers messages-tuple token
        chunks (usage on the last chunk) and a values event; /runs/wait the final state."""
        body = await request.read()
        self._record(request, len(body))
        self.seen[-1]["raw_headers"] = list(request.raw_headers)
        usage = {"input_tokens": 120, "output_tokens": 3, "total_tokens": 123}
        mid = f"lc_run--{len(self.seen)}"  # a new LLM call per request (the proxy counts an id once)
        ai = {"type": "ai", "id": mid, "content": "the answer", "usage_metadata": usage,
              "response_metadata": {"model_name": "fake-large"}}
        human = {"type": "human", "id": "h-1", "content": "q"}
        if request.path.endswith("/wait"):
            return web.json_response({"messages": [human, ai]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Content-Location": "/runs/r-1"})
        await resp.prepare(request)
        await resp.write(b'event: metadata\r\ndata: {"run_id": "r-1"}\r\n\r\n')
        await resp.write(("event: values\r\ndata: " + json.dumps({"messages": [human]}) + "\r\n\r\n").encode())
        if request.query.get("bad"):  # broken JSON, then a huge event: both must pass untouched
            await resp.write(b'event: messages\r\ndata: [{"type": "AIMessageChunk", "usage_metadata": {\r\n\r\n')
            pad = "p" * int(request.query["bad"])
            await resp.write(("event: updates\r\ndata: " + json.dumps({"agent": {"pad": pad, "usage_metadata": {}}})
                              + "\r\n\r\n").encode())
        for i, word in enumerate(["the", " answer", ""]):
            chunk = {"type": "AIMessageChunk", "id": mid, "content": word}
            if i == 2:
                chunk.update(usage_metadata=usage, response_metadata={"model_name": "fake-large"})
            await asyncio.sleep(0.02)
            await resp.write(("event: messages\r\ndata: " + json.dumps([chunk, {"langgraph_node": "agent"}])
                              + "\r\n\r\n").encode())
        await resp.write(("event: values\r\ndata: " + json.dumps({"messages": [human, ai]}) + "\r\n\r\n").encode())
        await resp.write_eof()
        return resp

    async def h_sse(self, request):
        """SSE: ?events=N&interval=S&heartbeat=S&hb_only_after=K&error=1&ctype=...&size=B"""
        q = request.query
        self._record(request)
        n = int(q.get("events", 3))
        interval = float(q.get("interval", 0.05))
        heartbeat = float(q.get("heartbeat", 0))
        stall_after = int(q.get("stall_after", -1))
        size = int(q.get("size", 0))
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "Content-Location": q.get("location", "/threads/00000000-0000-0000-0000-000000000001/runs/00000000-0000-0000-0000-000000000002"),
            "Location": "/threads/t/runs/r/stream"})
        await resp.prepare(request)
        try:
            await resp.write(b'event: metadata\r\ndata: {"run_id": "r"}\r\n\r\n')
            for i in range(n):
                if i == stall_after:
                    # heartbeats only, forever (bounded by the test's own timeouts)
                    for _ in range(int(60 / max(heartbeat, 0.01))):
                        await asyncio.sleep(heartbeat or 0.05)
                        await resp.write(b": heartbeat\r\n\r\n")
                    break
                await asyncio.sleep(interval)
                payload = json.dumps({"i": i, "t": time.time(), "pad": "x" * size})
                await resp.write(f"event: values\r\ndata: {payload}\r\n\r\n".encode())
            if q.get("error"):
                await resp.write(b'event: error\r\ndata: {"error": "RuntimeError", "message": "boom"}\r\n\r\n')
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects.append(request.path_qs)
            raise
        return resp

    async def h_hang(self, request):
        """Never answers (until cancelled)."""
        self._record(request)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.disconnects.append(request.path_qs)
            raise
        return web.Response()

    async def h_delay(self, request):
        """/delay/S: answer after S seconds."""
        self._record(request)
        await asyncio.sleep(float(request.match_info["tail"].split("/")[1]))
        return web.json_response({"delayed": True})

    async def h_silence(self, request):
        """Headers at once, then one chunk, then silence."""
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": request.query.get("ctype", "application/json")})
        await resp.prepare(request)
        sse = resp.content_type == "text/event-stream"
        await resp.write(b'event: metadata\r\ndata: {"run_id": "r"}\r\n\r\nevent: values\r\ndata: {"par' if sse
                         else b'{"partial": ')
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.disconnects.append(request.path_qs)
            raise
        return resp

    async def h_trickle(self, request):
        """?chunks=N&interval=S: a slow but live body (never idle longer than interval)."""
        self._record(request)
        n = int(request.query.get("chunks", 10))
        interval = float(request.query.get("interval", 0.1))
        resp = web.StreamResponse(headers={"Content-Type": request.query.get("ctype", "text/event-stream")})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(interval)
        await resp.write_eof()
        return resp

    async def h_reset(self, request):
        """Headers and part of a length-delimited body, then the connection is reset."""
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": request.query.get("ctype", "application/json")})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        await asyncio.sleep(0.05)
        request.transport.abort()
        return resp

    async def h_probe(self, request):
        """A LangGraph-/runs/wait-like answer the test controls (text, status, delay)."""
        body = await request.read()
        self.probe_calls.append({"headers": dict(request.headers), "body": body})
        if self.probe_delay:
            await asyncio.sleep(self.probe_delay)
        return web.json_response({"messages": [{"type": "human", "content": "Reply with the single word PONG."},
                                               {"type": "ai", "content": self.probe_answer}]},
                                 status=self.probe_status)

    async def h_probe_stream(self, request):
        """The same answer as an SSE run stream."""
        await request.read()
        self.probe_calls.append({"headers": dict(request.headers)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: metadata\r\ndata: {"run_id": "r"}\r\n\r\n')
        await asyncio.sleep(0.05)
        await resp.write(("event: values\r\ndata: " + json.dumps(
            {"messages": [{"type": "ai", "content": self.probe_answer}]}) + "\r\n\r\n").encode())
        await resp.write_eof()
        return resp

    async def h_drop(self, request):
        """Reads the request, then closes the connection without answering."""
        await request.read()
        self._record(request)
        request.transport.abort()
        await asyncio.sleep(0.01)
        return web.Response()

    async def h_wait(self, request):
        """LangGraph /runs/wait shape: newlines while waiting, then JSON (maybe an __error__)."""
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Content-Location": "/threads/t/runs/r"})
        await resp.prepare(request)
        await resp.write(b"\n")
        await asyncio.sleep(0.05)
        if request.query.get("error"):
            await resp.write(b'{"__error__": {"error": "RuntimeError", "message": "boom"}}')
        else:
            await resp.write(b'{"messages": [{"content": "PONG", "type": "ai"}]}')
        await resp.write_eof()
        return resp

    async def h_threads(self, request):
        """LangGraph-shaped: .../cancel → 202 (recorded), .../stream → SSE, else JSON."""
        if not request.path.endswith("/stream") and request.path.endswith("/cancel"):
            self._record(request)
        if request.path.endswith("/cancel"):
            self.cancels.append(request.path_qs)
            return web.Response(status=202)
        if request.path.endswith("/stream"):
            return await self.h_sse(request)
        return await self.h_default(request)


async def ws_echo_handler(request):
    """Upstream WebSocket: echoes, answers "close-me" by closing with 4001, records headers."""
    ws = web.WebSocketResponse(protocols=("v1.langgraph",))
    await ws.prepare(request)
    request.app[WS_HEADERS].append(dict(request.headers))
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            if msg.data == "close-me":
                await ws.close(code=4001, message=b"bye")
                break
            await ws.send_str("echo:" + msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    request.app[WS_CLOSED].append(ws.close_code)
    return ws
