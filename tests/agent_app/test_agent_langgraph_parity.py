"""The same SDK calls against agent_app and the real ``langgraph dev`` give the same results."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agent_procs import Proc, proxy_available, start_agent, start_langgraph_dev, start_proxy
from conftest import human
from langgraph_sdk import get_client

pytestmark = [pytest.mark.slow, pytest.mark.langgraph]

# Short enough for quick scenarios, long enough that SLOW 2000 (~4 s) is still running when cancelled.
TOKEN_DELAY = 0.002


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    agent = start_agent(tmp_path_factory.mktemp("agent"), token_delay=TOKEN_DELAY)
    try:
        real = start_langgraph_dev(tmp_path_factory.mktemp("langgraph"), token_delay=TOKEN_DELAY)
    except BaseException:
        agent.stop()
        raise
    procs = {"agent_app": agent, "langgraph": real}
    try:
        if proxy_available():
            # the sidecar must be transparent: the same calls through it give the same results
            procs["agent_app_via_proxy"] = start_proxy(tmp_path_factory.mktemp("proxy_a"), agent.url)
            procs["langgraph_via_proxy"] = start_proxy(tmp_path_factory.mktemp("proxy_l"), real.url)
        yield procs
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


def same(results: dict[str, Any]) -> Any:
    """The one result every server (and every server behind the proxy) gave; fails if any differs."""
    first = results["agent_app"]
    for name, value in results.items():
        assert value == first, f"{name} differs from agent_app: {value!r} != {first!r}"
    return first


def shape(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must agree between servers: message ids and run ids legitimately differ."""
    return [
        (m["type"], m["content"], [(c["name"], c["args"]) for c in m.get("tool_calls") or []], m.get("name"))
        for m in messages
    ]


async def on_both(servers: dict[str, Proc], scenario) -> dict[str, Any]:
    results = {}
    for name, proc in servers.items():
        client = get_client(url=proc.url, api_key=None)
        try:
            results[name] = await scenario(client)
        finally:
            await client.aclose()
    return results


async def test_assistants_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        found = await client.assistants.search(graph_id="agent")
        return [(a["assistant_id"], a["graph_id"], a["name"]) for a in found]

    results = await on_both(servers, scenario)
    assert same(results) != []


async def test_stream_event_sequence_and_final_values_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        thread = await client.threads.create()
        events = []
        async for part in client.runs.stream(
            thread["thread_id"],
            "agent",
            input=human("What is 6 * 7?"),
            stream_mode=["values", "updates", "messages-tuple"],
        ):
            if part.event == "messages":
                events.append((part.event, part.data[0]["type"], part.data[0]["content"], part.data[1]["langgraph_node"]))
            elif part.event == "updates":
                events.append((part.event, tuple(part.data)))
            else:
                events.append((part.event,))
        state = await client.threads.get_state(thread["thread_id"])
        fetched = await client.threads.get(thread["thread_id"])
        return {
            "events": events,
            "state": shape(state["values"]["messages"]),
            "next": state["next"],
            "thread_status": fetched["status"],
            "graph_id": fetched["metadata"]["graph_id"],
        }

    results = await on_both(servers, scenario)
    assert same(results)
    assert results["agent_app"]["state"][-1][1] == "The answer is 42."


async def test_wait_and_continue_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        thread = await client.threads.create()
        first = await client.runs.wait(thread["thread_id"], "agent", input=human("Reply with the single word PONG."))
        second = await client.runs.wait(thread["thread_id"], "agent", input=human("thanks"))
        stateless = await client.runs.wait(None, "agent", input=human("What is 2 ** 10?"))
        return [shape(first["messages"]), shape(second["messages"]), shape(stateless["messages"])]

    results = await on_both(servers, scenario)
    assert same(results)


async def test_messages_mode_event_names_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        parts = [p async for p in client.runs.stream(None, "agent", input=human("SLOW 3"), stream_mode="messages")]
        return [(p.event, p.data[0]["content"] if p.event == "messages/partial" else None) for p in parts]

    results = await on_both(servers, scenario)
    assert same(results)


@pytest.mark.parametrize(("assistant", "text"), [("failing", "hi"), ("agent", "RAISE"), ("agent", "LOOP")])
async def test_run_errors_match(servers: dict[str, Proc], assistant: str, text: str) -> None:
    async def scenario(client):
        thread = await client.threads.create()
        waited = await client.runs.wait(thread["thread_id"], assistant, input=human(text), raise_error=False)
        parts = [p async for p in client.runs.stream(None, assistant, input=human(text))]
        return {
            "wait": waited,
            "stream": [p.event for p in parts][:1] + [p.event for p in parts][-1:],
            "last": parts[-1].data,
            "thread_status": (await client.threads.get(thread["thread_id"]))["status"],
        }

    results = await on_both(servers, scenario)
    assert same(results)
    assert results["agent_app"]["stream"] == ["metadata", "error"]


async def test_cancel_interrupts_on_both(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        thread = await client.threads.create()
        run = None
        async for part in client.runs.stream(
            thread["thread_id"], "agent", input=human("SLOW 2000"), stream_mode="messages-tuple", on_disconnect="continue"
        ):
            if part.event == "metadata":
                run = part.data["run_id"]
            if part.event == "messages":
                await client.runs.cancel(thread["thread_id"], run)
                break
        # The real server updates the thread a moment after the run: poll until both settle.
        for _ in range(100):
            status = (await client.runs.get(thread["thread_id"], run))["status"]
            thread_status = (await client.threads.get(thread["thread_id"]))["status"]
            if status != "running" and thread_status != "busy":
                break
            await asyncio.sleep(0.1)
        return {"run": status, "thread": thread_status}

    results = await on_both(servers, scenario)
    assert same(results) == {"run": "interrupted", "thread": "interrupted"}
