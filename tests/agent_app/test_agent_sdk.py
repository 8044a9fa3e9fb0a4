"""The official langgraph-sdk client against agent_app, directly and through the proxy."""

from __future__ import annotations

import uuid

import httpx
import pytest
from conftest import human, last_text
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError

PONG = "Reply with the single word PONG."


async def test_assistants_are_found_by_graph_and_by_uuid(client: LangGraphClient) -> None:
    found = await client.assistants.search(graph_id="agent")
    assert [a["graph_id"] for a in found] == ["agent"]
    by_id = await client.assistants.get(found[0]["assistant_id"])
    assert by_id["graph_id"] == "agent"
    # The LangGraph server's id for a graph's default assistant: uuid5 of its name.
    assert by_id["assistant_id"] == str(uuid.uuid5(uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), "agent"))


async def test_thread_wait_then_state(client: LangGraphClient) -> None:
    thread = await client.threads.create(metadata={"user": "t1"})
    assert thread["status"] == "idle" and thread["metadata"] == {"user": "t1"}
    result = await client.runs.wait(thread["thread_id"], "agent", input=human(PONG))
    assert last_text(result) == "PONG"

    state = await client.threads.get_state(thread["thread_id"])
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"]
    assert state["next"] == [] and state["checkpoint"]["thread_id"] == thread["thread_id"]
    fetched = await client.threads.get(thread["thread_id"])
    assert fetched["status"] == "idle"
    assert fetched["metadata"]["graph_id"] == "agent" and fetched["metadata"]["user"] == "t1"
    assert last_text(fetched["values"]) == "PONG"


async def test_conversation_continues_on_the_thread(client: LangGraphClient) -> None:
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "agent", input=human("first"))
    result = await client.runs.wait(thread["thread_id"], "agent", input=human("second"))
    assert [m["content"] for m in result["messages"]] == ["first", "You said: first", "second", "You said: second"]


async def test_stream_values_updates_and_messages_tuple(client: LangGraphClient) -> None:
    thread = await client.threads.create()
    parts = [
        part
        async for part in client.runs.stream(
            thread["thread_id"], "agent", input=human("What is 6 * 7?"), stream_mode=["values", "updates", "messages-tuple"]
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata"
    uuid.UUID(parts[0].data["run_id"])
    # Tool loop: model asks for the calculator, the tool answers, the model answers in tokens.
    updates = [next(iter(p.data)) for p in parts if p.event == "updates"]
    assert updates == ["model", "tools", "model"]
    tokens = [p.data[0]["content"] for p in parts if p.event == "messages" and p.data[0]["type"] == "AIMessageChunk" and p.data[0]["content"]]
    assert "".join(tokens) == "The answer is 42."
    assert len(tokens) == 4, "the answer streams token by token"
    final = [p.data for p in parts if p.event == "values"][-1]
    assert [m["type"] for m in final["messages"]] == ["human", "ai", "tool", "ai"]
    assert final["messages"][2]["content"] == "42" and last_text(final) == "The answer is 42."


async def test_stream_messages_mode_sends_partials(client: LangGraphClient) -> None:
    parts = [p async for p in client.runs.stream(None, "agent", input=human("SLOW 5"), stream_mode="messages")]
    events = [p.event for p in parts]
    assert events[:2] == ["metadata", "messages/metadata"]
    partials = [p.data[0]["content"] for p in parts if p.event == "messages/partial"]
    # Each partial carries the whole message so far.
    assert partials == ["1 ", "1 2 ", "1 2 3 ", "1 2 3 4 ", "1 2 3 4 5"]


async def test_stateless_wait_answers_pong(client: LangGraphClient) -> None:
    result = await client.runs.wait(None, "agent", input=human(PONG))
    assert last_text(result) == "PONG"


async def test_run_status_is_recorded(client: LangGraphClient) -> None:
    thread = await client.threads.create()
    run_ids = []
    async for part in client.runs.stream(thread["thread_id"], "agent", input=human("hello")):
        if part.event == "metadata":
            run_ids.append(part.data["run_id"])
    run = await client.runs.get(thread["thread_id"], run_ids[0])
    assert run["status"] == "success" and run["thread_id"] == thread["thread_id"]


async def test_recursion_limit_stops_a_runaway_tool_loop(client: LangGraphClient) -> None:
    thread = await client.threads.create()
    with pytest.raises(Exception, match="GraphRecursionError"):
        await client.runs.wait(thread["thread_id"], "agent", input=human("LOOP"))
    result = await client.runs.wait(thread["thread_id"], "agent", input=human("LOOP"), raise_error=False)
    assert result["__error__"]["error"] == "GraphRecursionError"
    assert "Recursion limit of 10 reached" in result["__error__"]["message"]
    assert (await client.threads.get(thread["thread_id"]))["status"] == "error"
    # A request may lower the limit; the loop then stops even sooner.
    parts = [
        p async for p in client.runs.stream(None, "agent", input=human("LOOP"), config={"recursion_limit": 3}, stream_mode="updates")
    ]
    assert [p.event for p in parts][-1] == "error"
    assert "Recursion limit of 3 reached" in parts[-1].data["message"]
    assert sum(p.event == "updates" for p in parts) <= 3


@pytest.mark.parametrize(("assistant", "text", "error"), [("failing", "hi", "FailingNodeError"), ("agent", "RAISE", "OfflineModelError")])
async def test_run_errors_come_inside_a_200(client: LangGraphClient, assistant: str, text: str, error: str) -> None:
    # The SDK turns {"__error__": ...} in a 200 into an exception unless told not to.
    with pytest.raises(Exception, match=error):
        await client.runs.wait(None, assistant, input=human(text))
    result = await client.runs.wait(None, assistant, input=human(text), raise_error=False)
    assert result["__error__"]["error"] == error
    parts = [p async for p in client.runs.stream(None, assistant, input=human(text))]
    assert parts[0].event == "metadata" and parts[-1].event == "error"
    assert parts[-1].data["error"] == error
    # The app still serves after a failed run.
    assert last_text(await client.runs.wait(None, "agent", input=human(PONG))) == "PONG"


async def test_sdk_errors_for_unknown_and_conflicting_things(client: LangGraphClient) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await client.threads.get(missing)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await client.runs.wait(missing, "agent", input=human("hi"))
    assert raised.value.response.status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await client.runs.wait(None, "no-such-graph", input=human("hi"))
    assert raised.value.response.status_code == 422
    thread = await client.threads.create()
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=thread["thread_id"])
    same = await client.threads.create(thread_id=thread["thread_id"], if_exists="do_nothing")
    assert same["thread_id"] == thread["thread_id"]
    # if_not_exists=create makes the thread on the fly.
    result = await client.runs.wait(missing, "agent", input=human(PONG), if_not_exists="create")
    assert last_text(result) == "PONG"
    assert (await client.threads.get(missing))["thread_id"] == missing
