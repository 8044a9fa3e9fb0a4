"""The same SDK calls against agent_app and the real ``langgraph dev`` give the same results."""

from __future__ import annotations

import asyncio
import re
import uuid
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


# --- the calls of issue 21: background runs, search, history, interrupts, resumable streams, store ---

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[0-9:.]+(\+00:00|Z)?$")
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")  # interrupt ids hash the server's task path


def scrub(value: Any) -> Any:
    """``value`` with ids and timestamps replaced by placeholders: what must then be equal."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v) for v in value)
    if isinstance(value, str):
        if _TIMESTAMP.match(value):
            return "<time>"
        if _HEX_ID.match(value):
            return "<hex-id>"
        return _UUID.sub("<id>", value)
    return value


def run_view(run: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run record both servers define the same way (kwargs hold server internals)."""
    kwargs = run["kwargs"]
    return scrub(
        {
            "status": run["status"],
            "metadata": run["metadata"],
            "multitask_strategy": run["multitask_strategy"],
            "kwargs": {k: kwargs.get(k) for k in ("input", "command", "stream_mode", "interrupt_before", "interrupt_after", "resumable")},
            "kwargs.config.metadata": kwargs["config"]["metadata"].get("graph_id"),
        }
    )


def thread_view(thread: dict[str, Any]) -> dict[str, Any]:
    values = thread["values"] or {}
    return scrub(
        {
            "status": thread["status"],
            "metadata": thread["metadata"],
            "messages": shape(values.get("messages", [])),
            "interrupts": [[i["value"] for i in found] for found in thread["interrupts"].values()],
            "keys": sorted(thread),
        }
    )


def state_view(state: dict[str, Any]) -> dict[str, Any]:
    return scrub(
        {
            "messages": shape(state["values"].get("messages", [])),
            "next": state["next"],
            "step": (state["metadata"] or {}).get("step"),
            "source": (state["metadata"] or {}).get("source"),
            "tasks": [(t["name"], t["interrupts"]) for t in state["tasks"]],
            "interrupts": state["interrupts"],
            "keys": sorted(state),
        }
    )


def result_view(result: dict[str, Any]) -> dict[str, Any]:
    """A /wait or /join body: the messages, and the interrupt payloads if the run paused."""
    return scrub({"messages": shape(result.get("messages", [])), "__interrupt__": result.get("__interrupt__")})


async def test_background_run_join_get_and_list_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        thread = await client.threads.create(metadata={"user": "u1"})
        tid = thread["thread_id"]
        created = await client.runs.create(tid, "agent", input=human("Reply with the single word PONG."), metadata={"m": 1})
        joined = await client.runs.join(tid, created["run_id"])
        fetched = await client.runs.get(tid, created["run_id"])
        second = await client.runs.create(tid, "agent", input=human("What is 6 * 7?"), multitask_strategy="enqueue")
        await client.runs.join(tid, second["run_id"])
        listed = await client.runs.list(tid)
        return {
            "created": run_view(created),
            "joined": result_view(joined),
            "fetched": run_view(fetched),
            "listed": [run_view(r) for r in listed],
            "newest_first": [r["run_id"] for r in listed] == [second["run_id"], created["run_id"]],
            "by_status": len(await client.runs.list(tid, status="success")),
            "paged": len(await client.runs.list(tid, limit=1, offset=1)),
            "thread": thread_view(await client.threads.get(tid)),
        }

    result = same(await on_both(servers, scenario))
    assert result["created"]["status"] == "pending" and result["fetched"]["status"] == "success"
    assert result["joined"]["messages"][-1][1] == "PONG" and result["newest_first"]


async def test_threads_search_by_metadata_and_status_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tag = str(uuid.uuid4())  # only this scenario's threads
        idle = await client.threads.create(metadata={"suite": tag, "kind": "answered"})
        await client.runs.wait(idle["thread_id"], "agent", input=human("hi"))
        paused = await client.threads.create(metadata={"suite": tag, "kind": "buying"})
        await client.runs.wait(paused["thread_id"], "agent", input=human("BUY a lamp"))
        await client.threads.create(metadata={"suite": tag, "kind": "fresh"})

        async def kinds(**filters):
            return [t["metadata"]["kind"] for t in await client.threads.search(**filters)]

        return {
            "all": await kinds(metadata={"suite": tag}),
            "interrupted": await kinds(metadata={"suite": tag}, status="interrupted"),
            "idle": await kinds(metadata={"suite": tag}, status="idle"),
            "one_kind": [thread_view(t) for t in await client.threads.search(metadata={"suite": tag, "kind": "buying"})],
            "paged": await kinds(metadata={"suite": tag}, limit=1, offset=1),
        }

    result = same(await on_both(servers, scenario))
    assert result["all"] == ["fresh", "buying", "answered"] and result["interrupted"] == ["buying"]


async def test_thread_history_matches(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        await client.runs.wait(tid, "agent", input=human("Reply with the single word PONG."))
        await client.runs.wait(tid, "agent", input=human("What is 2 + 2?"))
        history = await client.threads.get_history(tid, limit=20)
        before = await client.threads.get_history(tid, limit=2, before={"configurable": history[1]["checkpoint"]})
        inputs = await client.threads.get_history(tid, metadata={"source": "input"})
        return {
            "history": [state_view(s) for s in history],
            "before": [state_view(s) for s in before],
            "before_ids": [s["checkpoint_id"] for s in before] == [s["checkpoint_id"] for s in history[2:4]],
            "inputs": [state_view(s) for s in inputs],
            "chained": all(a["parent_checkpoint_id"] == b["checkpoint_id"] for a, b in zip(history, history[1:], strict=False)),
        }

    result = same(await on_both(servers, scenario))
    assert result["before_ids"] and result["chained"] and len(result["inputs"]) == 2


async def test_interrupt_in_a_node_and_resume_with_command_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        paused = await client.runs.wait(tid, "agent", input=human("BUY a pizza"))
        thread = thread_view(await client.threads.get(tid))
        state = state_view(await client.threads.get_state(tid))
        runs = [r["status"] for r in await client.runs.list(tid)]
        approved = await client.runs.wait(tid, "agent", command={"resume": "yes"})
        after = thread_view(await client.threads.get(tid))
        # Declined this time, watched as a stream of updates.
        await client.runs.wait(tid, "agent", input=human("BUY a car"))
        parts = [p async for p in client.runs.stream(tid, "agent", command={"resume": "no"}, stream_mode="updates")]
        return {
            "paused": result_view(paused),
            "thread": thread,
            "state": state,
            "runs": runs,
            "approved": result_view(approved),
            "after": after,
            "declined": [(p.event, scrub(p.data) if p.event == "metadata" else list(p.data)) for p in parts],
            "final": result_view((await client.threads.get_state(tid))["values"]),
            # Without a thread the run still pauses and says why; there is just nothing to resume.
            "stateless": result_view(await client.runs.wait(None, "agent", input=human("BUY a hat"))),
        }

    result = same(await on_both(servers, scenario))
    assert result["thread"]["status"] == "interrupted" and result["state"]["next"] == ["approve"]
    assert result["runs"] == ["success"] and result["after"]["status"] == "idle"
    assert result["approved"]["messages"][-1][1] == "Purchase: bought a pizza."
    assert result["final"]["messages"][-1][1] == "Purchase: not bought: the user declined (no)."


async def test_interrupt_before_and_after_resumed_with_null_input_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        out = {"before": result_view(await client.runs.wait(tid, "agent", input=human("What is 6 * 7?"), interrupt_before=["tools"]))}
        out["before_thread"] = thread_view(await client.threads.get(tid))
        out["before_state"] = state_view(await client.threads.get_state(tid))
        out["resumed"] = result_view(await client.runs.wait(tid, "agent", input=None))
        out["after"] = result_view(await client.runs.wait(tid, "agent", input=human("What is 1 + 1?"), interrupt_after=["model"]))
        out["after_state"] = state_view(await client.threads.get_state(tid))
        parts = [p async for p in client.runs.stream(tid, "agent", input=None, stream_mode="updates")]
        out["resumed_stream"] = [list(p.data) for p in parts if p.event == "updates"]
        out["thread"] = thread_view(await client.threads.get(tid))
        return out

    result = same(await on_both(servers, scenario))
    assert result["before_thread"]["status"] == "interrupted" and result["before_state"]["next"] == ["tools"]
    assert result["resumed"]["messages"][-1][1] == "The answer is 42."
    assert result["resumed_stream"] == [["tools"], ["model"]] and result["thread"]["status"] == "idle"


async def test_resumable_stream_replays_after_last_event_id_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(
            tid, "agent", input=human("What is 6 * 7?"), stream_mode=["updates", "values"], stream_resumable=True
        )
        everything = [p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id="0")]
        rest = [p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id=everything[1].id)]
        only_updates = [
            p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id="0", stream_mode="updates")
        ]
        # A stream started with stream_resumable numbers its events as it sends them.
        streamed = [p async for p in client.runs.stream(tid, "agent", input=human("hi"), stream_resumable=True)]

        def view(parts):
            return [(p.event, list(p.data) if p.event == "updates" else None) for p in parts]

        return {
            "everything": view(everything),
            "rest": view(rest),
            "rest_ids": [p.id for p in rest] == [p.id for p in everything[2:]],
            "only_updates": view(only_updates),
            "ids": all(p.id for p in everything) and all(p.id for p in streamed),
            "increasing": [p.id for p in everything] == sorted((p.id for p in everything), key=lambda i: tuple(map(int, i.split("-")))),
            "streamed": view(streamed),
        }

    result = same(await on_both(servers, scenario))
    assert result["rest_ids"] and result["ids"] and result["increasing"]
    assert [e for e, _ in result["everything"]][:2] == ["metadata", "values"]


async def test_join_stream_of_a_finished_run_is_empty_on_both(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "agent", input=human("hi"))
        await client.runs.join(tid, run["run_id"])
        return [p.event async for p in client.runs.join_stream(tid, run["run_id"])]

    assert same(await on_both(servers, scenario)) == []


async def test_cancel_a_background_run_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "agent", input=human("SLOW 3000"))
        for _ in range(100):  # cancel once the run is under way: its input is checkpointed
            if (await client.threads.get_state(tid))["values"].get("messages"):
                break
            await asyncio.sleep(0.05)
        await client.runs.cancel(tid, run["run_id"])
        joined = await client.runs.join(tid, run["run_id"])
        for _ in range(100):  # the real server updates the thread a moment after the run
            thread = await client.threads.get(tid)
            if thread["status"] != "busy":
                break
            await asyncio.sleep(0.1)
        return {
            "joined": result_view(joined),
            "run": (await client.runs.get(tid, run["run_id"]))["status"],
            "thread": thread["status"],
            "interrupted_runs": len(await client.runs.list(tid, status="interrupted")),
        }

    result = same(await on_both(servers, scenario))
    assert result["run"] == "interrupted" and result["interrupted_runs"] == 1


async def test_store_items_match(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        user = str(uuid.uuid4())  # only this scenario's items
        await client.store.put_item(["users", user], "prefs", {"lang": "fr", "tier": "pro"})
        await client.store.put_item(["users", user, "notes"], "n1", {"text": "likes tea", "tier": "pro"})
        await client.store.put_item(["users", user], "prefs", {"lang": "de", "tier": "pro"})  # overwrite

        def item(found):
            return scrub({k: v for k, v in found.items() if k not in ("created_at", "updated_at")}) if found else found

        got = await client.store.get_item(["users", user], "prefs")
        found = await client.store.search_items(["users", user], filter={"tier": "pro"}, limit=10)
        namespaces = await client.store.list_namespaces(prefix=["users", user])
        queried = await client.store.search_items(["users", user], query="tea")  # no vector index: ignored
        await client.store.delete_item(["users", user], "prefs")
        return {
            "got": item(got),
            "found": sorted((item(i) for i in found["items"]), key=lambda i: i["key"]),
            "namespaces": scrub(namespaces),
            "queried": sorted(i["key"] for i in queried["items"]),
            "deleted": await client.store.get_item(["users", user], "prefs"),
            "missing": await client.store.get_item(["users", user], "nope"),
        }

    result = same(await on_both(servers, scenario))
    assert result["got"]["value"] == {"lang": "de", "tier": "pro"} and result["deleted"] is None


async def test_joining_an_unknown_run_matches(servers: dict[str, Proc]) -> None:
    async def scenario(client):
        tid = (await client.threads.create())["thread_id"]
        missing = str(uuid.uuid4())
        return {
            "join": await client.runs.join(tid, missing),
            "join_stream": [(p.event, p.data) async for p in client.runs.join_stream(tid, missing)],
        }

    result = same(await on_both(servers, scenario))
    assert result["join"]["__error__"]["message"] == "404: Run not found"
