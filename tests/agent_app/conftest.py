"""Fixtures: real agent_app (and proxy) processes on 127.0.0.1, and SDK clients for them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from agent_procs import Proc, proxy_available, start_agent, start_proxy

# Fast enough for a quick suite, slow enough that a stream has many chunks to interrupt.
TOKEN_DELAY = 0.01


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One agent_app process shared by a module's tests (each test uses its own threads)."""
    proc = start_agent(tmp_path_factory.mktemp("agent"), token_delay=TOKEN_DELAY)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def proxy(agent: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    if not proxy_available():
        pytest.skip("proxy/__main__.py does not exist yet")
    proc = start_proxy(tmp_path_factory.mktemp("proxy"), agent.url)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=["direct", "proxied"])
def base_url(request: pytest.FixtureRequest, agent: Proc) -> str:
    """The agent's URL, either directly or through the sidecar proxy: the same test body runs on both."""
    if request.param == "direct":
        return agent.url
    return request.getfixturevalue("proxy").url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[LangGraphClient]:
    sdk = get_client(url=base_url, api_key=None)
    try:
        yield sdk
    finally:
        await sdk.aclose()


def human(text: str) -> dict[str, list[dict[str, str]]]:
    return {"messages": [{"role": "user", "content": text}]}


def last_text(values: dict) -> str:
    return values["messages"][-1]["content"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
