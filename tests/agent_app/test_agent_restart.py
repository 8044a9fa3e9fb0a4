"""A restart of the agent_app process loses no conversation: state lives in the SQLite file."""

from __future__ import annotations

from pathlib import Path

from agent_procs import start_agent
from conftest import human, last_text
from langgraph_sdk import get_client


async def test_conversation_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "state" / "agent.sqlite"
    first = start_agent(tmp_path, db=db, name="first")
    try:
        client = get_client(url=first.url, api_key=None)
        thread = await client.threads.create(metadata={"owner": "restart-test"})
        result = await client.runs.wait(thread["thread_id"], "agent", input=human("What is 12 * 12?"))
        assert last_text(result) == "The answer is 144."
        await client.aclose()
    finally:
        first.stop()
    assert first.popen.returncode == 0, first.log_text()
    assert db.exists()

    second = start_agent(tmp_path, db=db, name="second")
    try:
        client = get_client(url=second.url, api_key=None)
        fetched = await client.threads.get(thread["thread_id"])
        assert fetched["metadata"]["owner"] == "restart-test"
        result = await client.runs.wait(thread["thread_id"], "agent", input=human("and now?"))
        contents = [m["content"] for m in result["messages"]]
        assert contents[0] == "What is 12 * 12?" and contents[3] == "The answer is 144."
        assert contents[-1] == "You said: and now?"
        state = await client.threads.get_state(thread["thread_id"])
        assert len(state["values"]["messages"]) == 6
        await client.aclose()
    finally:
        second.stop()
