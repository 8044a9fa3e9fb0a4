"""The SDK calls of issue 21 against agent_app, directly and through the proxy (fast suite).

Background runs, joins, resumable streams, thread search and history, human-in-the-loop
interrupts, the store, and the token usage the offline model reports.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from conftest import human, last_text
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

PONG = "Reply with the single word PONG."


async def test_background_run_then_join_get_and_list(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    created = await client.runs.create(tid, "agent", input=human(PONG))
    assert created["status"] == "pending" and created["thread_id"] == tid
    assert created["kwargs"]["input"] == human(PONG) and created["kwargs"]["config"]["configurable"]["run_id"] == created["run_id"]
    assert last_text(await client.runs.join(tid, created["run_id"])) == "PONG"
    assert (await client.runs.get(tid, created["run_id"]))["status"] == "success"
    second = await client.runs.create(tid, "agent", input=human("RAISE"))
    failed = await client.runs.join(tid, second["run_id"])
    assert failed["__error__"]["error"] == "OfflineModelError"
    assert [r["run_id"] for r in await client.runs.list(tid)] == [second["run_id"], created["run_id"]]
    assert [r["run_id"] for r in await client.runs.list(tid, status="error")] == [second["run_id"]]
    assert [r["run_id"] for r in await client.runs.list(tid, limit=1, offset=1)] == [created["run_id"]]
    # A run nobody watches still keeps the thread's conversation.
    assert (await client.threads.get(tid))["status"] == "error"


async def test_join_stream_follows_a_running_background_run(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "agent", input=human("SLOW 40"), stream_mode="messages-tuple")
    parts = [p async for p in client.runs.join_stream(tid, run["run_id"])]
    tokens = [p.data[0]["content"] for p in parts if p.event == "messages"]
    assert tokens and tokens[-1] == "40", "joined mid-run, it streams until the run ends"
    assert all(p.id is None for p in parts), "only resumable runs number their events"
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"


async def test_a_dropped_resumable_stream_resumes_after_last_event_id(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    seen = []
    async for part in client.runs.stream(
        tid, "agent", input=human("SLOW 30"), stream_mode="messages-tuple", stream_resumable=True, on_disconnect="continue"
    ):
        seen.append(part)
        if len(seen) == 4:
            break  # the client goes away; the run goes on
    run_id = seen[0].data["run_id"]
    rest = [p async for p in client.runs.join_stream(tid, run_id, last_event_id=seen[-1].id)]
    tokens = [p.data[0]["content"] for p in seen + rest if p.event == "messages"]
    assert "".join(tokens) == " ".join(str(i) for i in range(1, 31)), "nothing lost, nothing twice"
    ids = [p.id for p in seen + rest]
    assert len(set(ids)) == len(ids) and all(ids)
    assert (await client.runs.get(tid, run_id))["status"] == "success"


async def test_threads_search_filters_by_metadata_and_status(client: LangGraphClient) -> None:
    tag = str(uuid.uuid4())
    done = await client.threads.create(metadata={"suite": tag, "n": 1})
    await client.runs.wait(done["thread_id"], "agent", input=human("hi"))
    paused = await client.threads.create(metadata={"suite": tag, "n": 2})
    await client.runs.wait(paused["thread_id"], "agent", input=human("BUY a boat"))
    found = await client.threads.search(metadata={"suite": tag})
    assert [t["thread_id"] for t in found] == [paused["thread_id"], done["thread_id"]], "newest update first"
    assert [t["metadata"]["n"] for t in await client.threads.search(metadata={"suite": tag}, status="interrupted")] == [2]
    assert [t["metadata"]["n"] for t in await client.threads.search(metadata={"suite": tag, "n": 1})] == [1]
    assert last_text(found[1]["values"]) == "You said: hi"
    with pytest.raises(UnprocessableEntityError):
        await client.threads.search(status="sleeping")  # type: ignore[arg-type]


async def test_history_lists_checkpoints_newest_first(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "agent", input=human("What is 3 * 3?"))
    history = await client.threads.get_history(tid, limit=10)
    assert [s["metadata"]["step"] for s in history] == [3, 2, 1, 0, -1]
    assert [s["next"] for s in history][:3] == [[], ["model"], ["tools"]]
    assert history[0]["values"] == (await client.threads.get_state(tid))["values"]
    older = await client.threads.get_history(tid, limit=2, before={"configurable": history[2]["checkpoint"]})  # type: ignore[arg-type]
    assert [s["checkpoint_id"] for s in older] == [s["checkpoint_id"] for s in history[3:5]]
    assert [s["metadata"]["step"] for s in await client.threads.get_history(tid, metadata={"source": "input"})] == [-1]


async def test_a_purchase_waits_for_a_human_and_resumes_with_a_command(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    paused = await client.runs.wait(tid, "agent", input=human("BUY a pizza"))
    (question,) = paused["__interrupt__"]
    assert question["value"]["question"] == "Approve this purchase?"
    assert question["value"]["tool_calls"][0]["args"] == {"item": "a pizza"}
    assert [m["type"] for m in paused["messages"]] == ["human", "ai"], "the tool has not run"
    thread = await client.threads.get(tid)
    assert thread["status"] == "interrupted" and list(thread["interrupts"].values())[0][0]["id"] == question["id"]
    assert [r["status"] for r in await client.runs.list(tid)] == ["success"]
    # Joining the finished run gives the same pending question.
    run_id = (await client.runs.list(tid))[0]["run_id"]
    assert (await client.runs.join(tid, run_id))["__interrupt__"][0]["value"] == question["value"]

    done = await client.runs.wait(tid, "agent", command={"resume": "yes"})
    assert [m["type"] for m in done["messages"]] == ["human", "ai", "tool", "ai"]
    assert last_text(done) == "Purchase: bought a pizza." and "__interrupt__" not in done
    assert (await client.threads.get(tid))["status"] == "idle"

    await client.runs.wait(tid, "agent", input=human("BUY a car"))
    declined = await client.runs.wait(tid, "agent", command={"resume": "no thanks"})
    assert last_text(declined) == "Purchase: not bought: the user declined (no thanks)."


async def test_interrupt_before_tools_then_continue_with_null_input(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    paused = await client.runs.wait(tid, "agent", input=human("What is 6 * 7?"), interrupt_before=["tools"])
    assert [m["type"] for m in paused["messages"]] == ["human", "ai"] and "__interrupt__" not in paused
    state = await client.threads.get_state(tid)
    assert state["next"] == ["tools"] and (await client.threads.get(tid))["status"] == "interrupted"
    assert last_text(await client.runs.wait(tid, "agent", input=None)) == "The answer is 42."
    paused = await client.runs.wait(tid, "agent", input=human("What is 1 + 1?"), interrupt_after="*")
    assert (await client.threads.get_state(tid))["next"] == ["tools"]
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await client.runs.wait(tid, "agent", input=None, interrupt_before="tools")  # type: ignore[arg-type]
    assert raised.value.response.status_code == 422


async def test_cancel_a_background_run(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "agent", input=human("SLOW 2000"))
    for _ in range(200):  # cancel once the run is under way: its input is checkpointed
        if (await client.threads.get_state(tid))["values"].get("messages"):
            break
        await asyncio.sleep(0.02)
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "running"
    await client.runs.cancel(tid, run["run_id"])
    joined = await client.runs.join(tid, run["run_id"])
    assert [m["content"] for m in joined["messages"]] == ["SLOW 2000"]
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    assert (await client.threads.get(tid))["status"] == "interrupted"
    # The thread takes the next run.
    assert last_text(await client.runs.wait(tid, "agent", input=human(PONG))) == "PONG"


async def test_store_put_get_search_namespaces_delete(client: LangGraphClient) -> None:
    user = str(uuid.uuid4())
    await client.store.put_item(["users", user], "prefs", {"lang": "fr"})
    await client.store.put_item(["users", user, "notes"], "n1", {"text": "tea", "lang": "fr"})
    got = await client.store.get_item(["users", user], "prefs")
    assert got is not None and got["value"] == {"lang": "fr"} and got["namespace"] == ["users", user]
    found = await client.store.search_items(["users", user], filter={"lang": "fr"})
    assert sorted(i["key"] for i in found["items"]) == ["n1", "prefs"]
    assert (await client.store.list_namespaces(prefix=["users", user]))["namespaces"] == [["users", user], ["users", user, "notes"]]
    await client.store.delete_item(["users", user], "prefs")
    assert await client.store.get_item(["users", user], "prefs") is None
    # No vector index: as on the server, a semantic query is ignored, the filter still applies.
    assert len((await client.store.search_items(["users", user], query="tea", filter={"text": "tea"}))["items"]) == 1


async def test_the_offline_model_reports_token_usage_once_per_call(client: LangGraphClient) -> None:
    parts = [
        p
        async for p in client.runs.stream(None, "agent", input=human("What is 6 * 7?"), stream_mode=["messages-tuple", "values"])
    ]
    chunks = [p.data[0] for p in parts if p.event == "messages" and p.data[0]["type"] == "AIMessageChunk"]
    with_usage = [c for c in chunks if c.get("usage_metadata")]
    # Two model calls (tool call, then answer): usage on the last chunk of each, nowhere else.
    assert [c["usage_metadata"] for c in with_usage] == [
        {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9},
        {"input_tokens": 6, "output_tokens": 4, "total_tokens": 10},
    ]
    assert [c.get("chunk_position") for c in with_usage] == ["last", "last"]
    assert all(c["response_metadata"]["model_name"] == "offline-deterministic" for c in with_usage)
    final = [p.data for p in parts if p.event == "values"][-1]
    whole = [m for m in final["messages"] if m["type"] == "ai"]
    assert [m["usage_metadata"]["output_tokens"] for m in whole] == [4, 4]


async def test_bad_run_and_join_requests(client: LangGraphClient, base_url: str) -> None:
    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await client.runs.wait(tid, "agent", command={"jump": "x"})  # type: ignore[typeddict-unknown-key]
    assert raised.value.response.status_code == 422
    # As on the server: joining an unknown run is a 200 that carries the error.
    missing = str(uuid.uuid4())
    assert (await client.runs.join(tid, missing))["__error__"]["message"] == "404: Run not found"
    parts = [p async for p in client.runs.join_stream(tid, missing)]
    assert [(p.event, p.data["message"]) for p in parts] == [("error", "404: Run not found")]
    with pytest.raises(NotFoundError):
        await client.runs.list(str(uuid.uuid4()))
    async with httpx.AsyncClient(base_url=base_url) as raw:
        answer = await raw.post(f"/threads/{tid}/history", json={"before": "not-a-config"})
        assert answer.status_code == 422 and "detail" in answer.json()
        answer = await raw.get("/store/items", params={"namespace": "a"})
        assert (answer.status_code, answer.json()) == (400, {"error": "Key is required"})
    # Still serving.
    assert last_text(await client.runs.wait(tid, "agent", input=human(PONG))) == "PONG"
