"""Threads: create, get, search, and their state and checkpoint history (from the checkpointer)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from agent_app.api.common import ASSISTANTS, RECORDS, json_response
from agent_app.ids import uuid7
from agent_app.serde import to_jsonable
from agent_app.validation import ApiError, choice, optional, read_object, uuid_str

THREAD_STATUSES = ("idle", "busy", "interrupted", "error")


async def create_thread(request: web.Request) -> web.Response:
    body = await read_object(request)
    thread_id = uuid_str(optional(body, "thread_id", str), "thread") if body.get("thread_id") else uuid7()
    metadata = optional(body, "metadata", dict, {})
    if_exists = choice(body, "if_exists", ("raise", "do_nothing"), "raise")
    if not await request.app[RECORDS].create_thread(thread_id, metadata) and if_exists == "raise":
        raise ApiError(409, f"Thread with ID {thread_id} already exists")
    return json_response(await thread_json(request, await existing_thread(request, thread_id)))


async def get_thread(request: web.Request) -> web.Response:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    return json_response(await thread_json(request, await existing_thread(request, thread_id)))


async def search_threads(request: web.Request) -> web.Response:
    body = await read_object(request)
    metadata = optional(body, "metadata", dict, {})
    status = optional(body, "status", str)
    if status is not None and status not in THREAD_STATUSES:
        raise ApiError(422, f'"{status}" is not one of {list(THREAD_STATUSES)} (field "status")')
    limit = optional(body, "limit", int, 10)
    offset = optional(body, "offset", int, 0)
    if limit < 1 or offset < 0:
        raise ApiError(422, '"limit" must be >= 1 and "offset" >= 0')
    found = await request.app[RECORDS].search_threads(status=status, metadata=metadata, limit=limit, offset=offset)
    return json_response([await thread_json(request, thread) for thread in found])


async def get_thread_state(request: web.Request) -> web.Response:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    thread = await existing_thread(request, thread_id)
    snapshot = await graph_of(request, thread).aget_state({"configurable": {"thread_id": thread_id}})
    return json_response(snapshot_json(snapshot))


async def get_thread_history(request: web.Request) -> web.Response:
    """``POST`` (body) or ``GET`` (query ``limit``): the thread's checkpoints, newest first."""
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    if request.method == "GET":
        raw = request.query.get("limit", "10")
        if not raw.isdigit():
            raise ApiError(422, '"limit" must be an integer')
        body: dict[str, Any] = {"limit": int(raw)}
    else:
        body = await read_object(request)
    limit = optional(body, "limit", int, 10)
    metadata = optional(body, "metadata", dict)
    # A config {"configurable": {"checkpoint_id": ...}}: the only form the server's code handles
    # (a bare string fails its schema, a bare checkpoint object its code).
    before = optional(body, "before", dict)
    if before is not None and not isinstance(before.get("configurable"), dict):
        raise ApiError(422, '"before" must be a config: {"configurable": {"checkpoint_id": ...}}')
    checkpoint = optional(body, "checkpoint", dict, {})
    thread = await existing_thread(request, thread_id)
    config = {"configurable": {**checkpoint, "thread_id": thread_id}}
    graph = graph_of(request, thread)
    history = [s async for s in graph.aget_state_history(config, filter=metadata, before=before, limit=limit)]
    return json_response([snapshot_json(s) for s in history])


async def existing_thread(request: web.Request, thread_id: str) -> dict[str, Any]:
    thread = await request.app[RECORDS].get_thread(thread_id)
    if thread is None:
        raise ApiError(404, f"Thread with ID {thread_id} not found")
    return thread


def graph_of(request: web.Request, thread: dict[str, Any]) -> CompiledStateGraph:
    assistants = request.app[ASSISTANTS]
    assistant = assistants.resolve(thread["metadata"].get("graph_id", "")) or next(iter(assistants))
    return assistant.graph


async def thread_json(request: web.Request, thread: dict[str, Any]) -> dict[str, Any]:
    """The server's thread object: the record plus current values and pending interrupts."""
    values = None
    interrupts: dict[str, Any] = {}
    if "graph_id" in thread["metadata"]:
        config = {"configurable": {"thread_id": thread["thread_id"]}}
        snapshot = await graph_of(request, thread).aget_state(config)
        if snapshot.created_at is not None:
            values = snapshot.values
            interrupts = {t.id: [interrupt_json(i) for i in t.interrupts] for t in snapshot.tasks if t.interrupts}
    return {
        "thread_id": thread["thread_id"],
        "created_at": thread["created_at"],
        "updated_at": thread["updated_at"],
        "state_updated_at": thread["updated_at"],
        "metadata": thread["metadata"],
        "status": thread["status"],
        "config": {"configurable": {}},
        "values": values,
        "interrupts": interrupts,
        "error": None,
    }


def interrupt_json(interrupt: Any) -> dict[str, Any]:
    # Thread and state objects show an interrupt as id and value only (no response_schema).
    return {"id": interrupt.id, "value": to_jsonable(interrupt.value)}


def snapshot_json(snapshot: StateSnapshot) -> dict[str, Any]:
    if snapshot.created_at is None:  # a thread without checkpoints yet
        return {
            "values": {},
            "next": [],
            "tasks": [],
            "metadata": None,
            "created_at": None,
            "checkpoint": None,
            "parent_checkpoint": None,
            "interrupts": [],
            "checkpoint_id": None,
            "parent_checkpoint_id": None,
        }
    checkpoint = _checkpoint_json(snapshot.config)
    parent = _checkpoint_json(snapshot.parent_config)
    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "tasks": [
            {
                "id": task.id,
                "name": task.name,
                "path": list(task.path),
                "error": repr(task.error) if task.error else None,
                "interrupts": [interrupt_json(i) for i in task.interrupts],
                "checkpoint": None,
                "state": None,
                "result": task.result,
            }
            for task in snapshot.tasks
        ],
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint,
        "parent_checkpoint": parent,
        "interrupts": [interrupt_json(i) for i in snapshot.interrupts],
        "checkpoint_id": checkpoint["checkpoint_id"] if checkpoint else None,
        "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
    }


def _checkpoint_json(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not config:
        return None
    configurable = config.get("configurable", {})
    return {
        "checkpoint_id": configurable.get("checkpoint_id"),
        "thread_id": configurable.get("thread_id"),
        "checkpoint_ns": configurable.get("checkpoint_ns", ""),
    }


ROUTES = [
    web.post("/threads", create_thread),
    web.post("/threads/search", search_threads),
    web.get("/threads/{thread_id}", get_thread),
    web.get("/threads/{thread_id}/state", get_thread_state),
    web.get("/threads/{thread_id}/history", get_thread_history),
    web.post("/threads/{thread_id}/history", get_thread_history),
]
