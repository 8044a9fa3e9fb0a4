"""Fixtures for the proxy tests: a controllable upstream, the real proxy process, an HTTP client."""
from __future__ import annotations

import aiohttp
import pytest

from agent_procs import start_langgraph_dev
from proxy_harness import LGDEV_TOKEN_DELAY, FaultUpstream, ProxyProcess


@pytest.fixture
async def upstream():
    up = await FaultUpstream().start()
    try:
        yield up
    finally:
        await up.stop()


@pytest.fixture
def make_proxy(tmp_path):
    """make_proxy(upstream_url, overrides=None) → a started ProxyProcess (stopped at teardown)."""
    procs = []

    def make(upstream_url: str, overrides: dict | None = None, env: dict | None = None, start: bool = True):
        d = tmp_path / f"proxy{len(procs)}"
        d.mkdir()
        p = ProxyProcess(d, upstream_url, overrides, env)
        procs.append(p)
        return p.start() if start else p

    yield make
    for p in procs:
        p.kill()


@pytest.fixture
async def proxy(upstream, make_proxy):
    return make_proxy(upstream.url)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


@pytest.fixture(scope="module")
def lgdev(tmp_path_factory):
    """The real ``langgraph dev`` serving agent_app's graph (offline model, 50 ms a token)."""
    proc = start_langgraph_dev(tmp_path_factory.mktemp("lgdev"), token_delay=LGDEV_TOKEN_DELAY)
    try:
        yield proc
    finally:
        proc.stop()
