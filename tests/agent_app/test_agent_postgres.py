"""Two agent_app replicas on one PostgreSQL database share threads (DATABASE_URI must be set)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from agent_procs import start_agent
from conftest import human, last_text
from langgraph_sdk import get_client

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DATABASE_URI = os.environ.get("DATABASE_URI", "")


@pytest.fixture
def database_uri() -> str:
    if not DATABASE_URI:
        pytest.skip("DATABASE_URI is not set (e.g. postgresql://postgres@127.0.0.1:5432/agent_test)")
    return DATABASE_URI


async def test_two_replicas_share_a_thread(tmp_path: Path, database_uri: str) -> None:
    env = {"DATABASE_URI": database_uri}
    # Started one after the other only to keep the logs readable; setup is lock-protected.
    one = start_agent(tmp_path, env=env, name="replica1")
    try:
        two = start_agent(tmp_path, env=env, name="replica2")
    except BaseException:
        one.stop()
        raise
    a = get_client(url=one.url, api_key=None)
    b = get_client(url=two.url, api_key=None)
    try:
        case = str(uuid.uuid4())  # the database outlives this test: find only this test's threads
        thread = await a.threads.create(metadata={"replica": "one", "case": case})
        first = await a.runs.wait(thread["thread_id"], "agent", input=human("What is 7 * 8?"))
        assert last_text(first) == "The answer is 56."

        # The other replica sees the thread, its state, and the run record.
        seen = await b.threads.get(thread["thread_id"])
        assert seen["metadata"]["replica"] == "one" and last_text(seen["values"]) == "The answer is 56."
        state = await b.threads.get_state(thread["thread_id"])
        assert len(state["values"]["messages"]) == 4

        # ...and continues the conversation where the first left it.
        parts = [p async for p in b.runs.stream(thread["thread_id"], "agent", input=human("Reply with the single word PONG."))]
        run_id = parts[0].data["run_id"]
        assert last_text(parts[-1].data) == "PONG"
        assert (await a.runs.get(thread["thread_id"], run_id))["status"] == "success"
        back = await a.threads.get_state(thread["thread_id"])
        assert [m["content"] for m in back["values"]["messages"]][-2:] == ["Reply with the single word PONG.", "PONG"]

        # A purchase paused on one replica is found, and approved, on the other.
        await a.runs.wait(thread["thread_id"], "agent", input=human("BUY a kite"))
        paused = await b.threads.search(metadata={"case": case}, status="interrupted")
        assert [t["thread_id"] for t in paused] == [thread["thread_id"]]
        assert last_text(await b.runs.wait(thread["thread_id"], "agent", command={"resume": "yes"})) == "Purchase: bought a kite."
        assert len(await a.runs.list(thread["thread_id"])) == 4
        assert len(await a.threads.get_history(thread["thread_id"], limit=100)) == len(await b.threads.get_history(thread["thread_id"], limit=100))
        # A finished run joined from the replica that did not run it: the thread's values.
        run = await a.runs.create(thread["thread_id"], "agent", input=human("hi"))
        await a.runs.join(thread["thread_id"], run["run_id"])
        assert last_text(await b.runs.join(thread["thread_id"], run["run_id"])) == "You said: hi"

        # One store for both.
        await a.store.put_item(["replicas"], "k", {"from": "one"})
        assert (await b.store.get_item(["replicas"], "k"))["value"] == {"from": "one"}
    finally:
        await a.aclose()
        await b.aclose()
        two.stop()
        one.stop()
    assert "persistence: postgres" in one.log_text()
