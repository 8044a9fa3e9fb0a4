"""RunManager in-process: cancellation at any moment ends the run's stream and records it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

from agent_app.assistants import Assistant
from agent_app.graph import build_graph
from agent_app.model import OfflineChatModel
from agent_app.runs import RunManager, RunSpec, ThreadBusyError
from agent_app.records import SqliteRecords


@pytest.fixture
async def manager(tmp_path: Path):
    async with aiosqlite.connect(tmp_path / "runs.sqlite") as conn:
        store = SqliteRecords(conn)
        await store.setup()
        await store.create_thread("t1", {})
        yield RunManager(store), store


def spec(text: str, **kwargs) -> RunSpec:
    graph = build_graph(OfflineChatModel(token_delay=0.01))
    return RunSpec(Assistant("agent", graph, graph), "t1", {"messages": [("user", text)]}, stateless=True, **kwargs)


@pytest.mark.parametrize("after", [0, 1, 3], ids=["before-start", "after-metadata", "mid-stream"])
async def test_cancel_at_any_point_ends_the_stream_and_records_interrupted(manager, after: int) -> None:
    runs, store = manager
    run, _ = await runs.start(spec("SLOW 1000", stream_modes=["messages-tuple"]))
    sub = run.subscribe()
    seen = []
    if after:
        async for event in sub.events():
            seen.append(event[0])
            if len(seen) >= after:
                break
    assert runs.cancel(run.run_id)
    rest = [event async for event in sub.events()]  # must end, not hang
    assert "error" not in [e for e, _ in rest]
    await asyncio.sleep(0.05)
    assert (await store.get_run(run.run_id))["status"] == "interrupted"
    assert not runs.cancel(run.run_id), "a finished run cannot be cancelled again"


async def test_runs_on_one_thread_queue_and_reject_when_asked(manager) -> None:
    runs, store = manager
    first, _ = await runs.start(spec("SLOW 20"))
    second, _ = await runs.start(spec("SLOW 2"))
    with pytest.raises(ThreadBusyError):
        await runs.start(spec("hi", multitask_strategy="reject"))
    await asyncio.gather(first.task, second.task)
    assert (await store.get_run(first.run_id))["status"] == "success"
    assert (await store.get_run(second.run_id))["status"] == "success"
    assert first.result["messages"][-1].content.endswith("20")


async def test_a_resumable_run_replays_after_an_event_id_and_a_plain_one_does_not(manager) -> None:
    runs, _ = manager
    run, _ = await runs.start(spec("SLOW 5", stream_modes=["messages-tuple"], resumable=True))
    live = run.subscribe()
    seen = []
    while (item := await live.next_event(5)) is not None:
        seen.append(item)
        if len(seen) == 3:
            break
    assert all(event_id for _, _, event_id in seen)
    # Joined after the third event: the rest once, even after the run has ended.
    await run.task
    rest = [item async for item in _drain(run.subscribe(last_event_id=seen[2][2]))]
    everything = [item async for item in _drain(run.subscribe(last_event_id="0"))]
    assert everything[:3] == seen and everything[3:] == rest and rest
    assert [e for e, _, _ in everything][0] == "metadata"
    filtered = [item async for item in _drain(run.subscribe(last_event_id="0", modes=["values"]))]
    assert filtered == [], "the join filter drops modes the joiner did not ask for"

    plain, _ = await runs.start(spec("SLOW 2"))
    sub = plain.subscribe()
    await plain.task
    assert all(event_id is None for _, _, event_id in [i async for i in _drain(sub)])
    assert [i async for i in _drain(plain.subscribe(last_event_id="0"))] == [], "nothing kept to replay"


async def _drain(sub):
    while True:
        try:
            item = await sub.next_event(5)
        except StopAsyncIteration:
            return
        assert item is not None
        yield item


def test_event_ids_sort_like_the_server_and_tolerate_garbage() -> None:
    from agent_app.runs import parse_event_id

    assert parse_event_id("1795737801891-2") > parse_event_id("1795737801891-1") > parse_event_id("0")
    assert parse_event_id("junk") < parse_event_id("0")


async def test_a_watcher_that_falls_too_far_behind_is_cut_with_an_error(manager) -> None:
    runs, store = manager
    run, _ = await runs.start(spec("SLOW 20", stream_modes=["messages-tuple"]))
    slow = run.subscribe(max_queued=3)
    await run.task  # never read while the run produced its events
    items = [item async for item in _drain(slow)]
    assert [e for e, _, _ in items] == ["metadata", "messages", "messages", "error"]
    assert items[-1][1]["error"] == "WatcherTooSlow"
    assert (await store.get_run(run.run_id))["status"] == "success", "the run itself went on"
