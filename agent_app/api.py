"""The HTTP API: the LangGraph Server subset the SDK uses, plus the hand-rolled /agent/* pair.

Requests, responses, SSE framing, headers and error shapes follow langgraph-api 0.16.7, so a
client (or the sidecar proxy) cannot tell this app from ``langgraph dev`` for these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import langgraph.version
from aiohttp import web

from agent_app import sse
from agent_app.assistants import Assistant, Assistants
from agent_app.ids import uuid7
from agent_app.runs import Run, RunManager, RunSpec, ThreadBusyError
from agent_app.serde import dumpb, to_jsonable
from agent_app.store import Store
from agent_app.validation import ApiError, choice, optional, read_object, required, stream_modes, uuid_str

log = logging.getLogger("agent_app.api")

ASSISTANTS: web.AppKey[Assistants] = web.AppKey("assistants", Assistants)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
RUNS: web.AppKey[RunManager] = web.AppKey("runs", RunManager)

# The real server writes a keep-alive every 5 s while a run is quiet.
HEARTBEAT_SECONDS = 5.0
_MULTITASK = ("reject", "interrupt", "rollback", "enqueue")
_NOT_FOUND = "Thread or assistant not found."

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumpb(data), status=status, content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON ``{"detail": ...}``; a bug is a bare 500, never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response({"detail": exc.detail}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own 404/405/413 would otherwise be text/plain.
        return json_response({"detail": exc.reason}, status=exc.status, headers=_allow_header(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"detail": "Internal Server Error"}, status=500)


def _allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


# --- meta -------------------------------------------------------------------------------------


async def ok(request: web.Request) -> web.Response:
    return json_response({"ok": True, "services": {}})


async def info(request: web.Request) -> web.Response:
    return json_response(
        {
            "version": "agent_app",
            "langgraph_py_version": langgraph.version.__version__,
            "flags": {"assistants": True, "crons": False, "langsmith": False},
            "host": {"kind": "self-hosted", "project_id": None, "revision_id": None},
        }
    )


# --- assistants -------------------------------------------------------------------------------


async def search_assistants(request: web.Request) -> web.Response:
    body = await read_object(request)
    graph_id = optional(body, "graph_id", str)
    name = optional(body, "name", str)
    metadata = optional(body, "metadata", dict, {})
    limit = optional(body, "limit", int, 10)
    offset = optional(body, "offset", int, 0)
    found = [
        a.to_json()
        for a in request.app[ASSISTANTS]
        if (graph_id is None or a.graph_id == graph_id)
        and (name is None or name in a.graph_id)
        and all(a.to_json()["metadata"].get(k) == v for k, v in metadata.items())
    ]
    return json_response(found[offset : offset + limit])


async def get_assistant(request: web.Request) -> web.Response:
    assistant_id = request.match_info["assistant_id"]
    assistant = request.app[ASSISTANTS].resolve(assistant_id)
    if assistant is None:
        uuid_str(assistant_id, "assistant")
        raise ApiError(404, "Not Found")
    return json_response(assistant.to_json())


def _assistant_for_run(request: web.Request, body: dict[str, Any]) -> Assistant:
    key = required(body, "assistant_id", str)
    assistant = request.app[ASSISTANTS].resolve(key)
    if assistant is None:
        graphs = ", ".join(request.app[ASSISTANTS].graph_ids())
        raise ApiError(
            422,
            f"Invalid assistant: '{key}'. Must be either:\n- A valid assistant UUID, or\n"
            f"- One of the registered graphs: {graphs}",
        )
    return assistant


# --- threads ----------------------------------------------------------------------------------


async def create_thread(request: web.Request) -> web.Response:
    body = await read_object(request)
    thread_id = uuid_str(optional(body, "thread_id", str), "thread") if body.get("thread_id") else uuid7()
    metadata = optional(body, "metadata", dict, {})
    if_exists = choice(body, "if_exists", ("raise", "do_nothing"), "raise")
    store = request.app[STORE]
    if not await store.create_thread(thread_id, metadata) and if_exists == "raise":
        raise ApiError(409, f"Thread with ID {thread_id} already exists")
    return json_response(await _thread_json(request, thread_id))


async def get_thread(request: web.Request) -> web.Response:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    return json_response(await _thread_json(request, thread_id))


async def get_thread_state(request: web.Request) -> web.Response:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    thread = await _existing_thread(request, thread_id)
    snapshot = await _graph_of(request, thread).aget_state({"configurable": {"thread_id": thread_id}})
    return json_response(_snapshot_json(snapshot))


async def _existing_thread(request: web.Request, thread_id: str) -> dict[str, Any]:
    thread = await request.app[STORE].get_thread(thread_id)
    if thread is None:
        raise ApiError(404, f"Thread with ID {thread_id} not found")
    return thread


def _graph_of(request: web.Request, thread: dict[str, Any]):
    assistants = request.app[ASSISTANTS]
    assistant = assistants.resolve(thread["metadata"].get("graph_id", "")) or next(iter(assistants))
    return assistant.graph


async def _thread_json(request: web.Request, thread_id: str) -> dict[str, Any]:
    thread = await _existing_thread(request, thread_id)
    values = None
    if "graph_id" in thread["metadata"]:
        snapshot = await _graph_of(request, thread).aget_state({"configurable": {"thread_id": thread_id}})
        values = snapshot.values if snapshot.created_at is not None else None
    return {
        "thread_id": thread["thread_id"],
        "created_at": thread["created_at"],
        "updated_at": thread["updated_at"],
        "state_updated_at": thread["updated_at"],
        "metadata": thread["metadata"],
        "status": thread["status"],
        "config": {},
        "values": values,
        "interrupts": {},
        "error": None,
    }


def _snapshot_json(snapshot: Any) -> dict[str, Any]:
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
                "interrupts": [to_jsonable(i) for i in task.interrupts],
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
        "interrupts": [to_jsonable(i) for i in snapshot.interrupts],
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


# --- runs -------------------------------------------------------------------------------------


async def _start_run(request: web.Request, *, stateless: bool) -> tuple[Run, str]:
    """Validate a run request, make sure its thread exists, and start it.

    Returns the run and its ``on_disconnect`` policy. This app defaults to ``cancel`` (the
    server defaults to ``continue``): an agent nobody listens to should stop spending tokens.
    """
    body = await read_object(request)
    assistant = _assistant_for_run(request, body)
    run_input = body.get("input")
    if run_input is not None and not isinstance(run_input, dict):
        # The server accepts any JSON here and fails the run; a 422 up front is kinder.
        raise ApiError(422, '"input" must be an object or null')
    config = optional(body, "config", dict, {})
    limit = config.get("recursion_limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ApiError(422, '"config.recursion_limit" must be a positive integer')
    metadata = optional(body, "metadata", dict, {})
    modes = stream_modes(body)
    on_disconnect = choice(body, "on_disconnect", ("cancel", "continue"), "cancel")
    strategy = choice(body, "multitask_strategy", _MULTITASK, "enqueue")
    if_not_exists = choice(body, "if_not_exists", ("create", "reject"), "reject")
    if body.get("command") is not None:
        raise ApiError(422, '"command" (resuming interrupts) is not supported by agent_app')

    store = request.app[STORE]
    if stateless:
        thread_id = uuid7()
    else:
        thread_id = uuid_str(request.match_info["thread_id"], "thread")
        thread = await store.get_thread(thread_id)
        if thread is None:
            if if_not_exists != "create":
                raise ApiError(404, _NOT_FOUND)
            await store.create_thread(thread_id, {})
            thread = {"metadata": {}, "status": "idle"}
        # Like the server: the thread remembers which graph it belongs to.
        thread_metadata = {
            **thread["metadata"],
            **metadata,
            "graph_id": assistant.graph_id,
            "assistant_id": assistant.assistant_id,
        }
        await store.update_thread(thread_id, status=thread["status"], metadata=thread_metadata)

    spec = RunSpec(
        assistant=assistant,
        thread_id=thread_id,
        input=run_input,
        config=config,
        metadata=metadata,
        stream_modes=modes,
        multitask_strategy=strategy,
        stateless=stateless,
    )
    try:
        run = await request.app[RUNS].start(spec)
    except ThreadBusyError:
        raise ApiError(
            409, "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
        ) from None
    return run, on_disconnect


def _run_headers(run: Run, *, stream: bool) -> dict[str, str]:
    if run.spec.stateless and stream:
        return {"Location": f"/runs/{run.run_id}/stream", "Content-Location": f"/runs/{run.run_id}"}
    base = f"/threads/{run.spec.thread_id}/runs/{run.run_id}"
    return {"Location": base + ("/stream" if stream else "/join"), "Content-Location": base}


async def _follow(run: Run, on_disconnect: str, write: Callable[[], Awaitable[None]]) -> None:
    """Run ``write`` (which relays the run to the client); on disconnect apply the policy."""
    try:
        await write()
    except (asyncio.CancelledError, ConnectionResetError):
        run.detach()
        if on_disconnect == "cancel" and run.task is not None and not run.task.done():
            log.info("client went away, cancelling run %s", run.run_id)
            run.task.cancel()
            # Let the run record "interrupted" before this handler is gone.
            with contextlib.suppress(BaseException):
                await asyncio.wait([run.task], timeout=5)
        raise


async def _stream_response(request: web.Request, run: Run, on_disconnect: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={**sse.HEADERS, **_run_headers(run, stream=True)})

    async def write() -> None:
        await response.prepare(request)
        while True:
            try:
                item = await run.next_event(HEARTBEAT_SECONDS)
            except StopAsyncIteration:
                break
            if item is None:
                await response.write(sse.HEARTBEAT)
            else:
                await response.write(sse.frame(*item))
        await response.write_eof()

    await _follow(run, on_disconnect, write)
    return response


async def _wait_response(request: web.Request, run: Run, on_disconnect: str) -> web.StreamResponse:
    response = web.StreamResponse(headers=_run_headers(run, stream=False))
    response.content_type = "application/json"

    async def write() -> None:
        # Headers go out at once and a newline every 5 s, as the server does, so idle timeouts
        # between client and server see a live connection during a long run.
        await response.prepare(request)
        assert run.task is not None
        while not run.task.done():
            done, _ = await asyncio.wait([run.task], timeout=HEARTBEAT_SECONDS)
            if not done:
                await response.write(b"\n")
        await response.write(dumpb(run.result if run.result is not None else {}))
        await response.write_eof()

    # The wait body never reads the event queue.
    run.detach()
    await _follow(run, on_disconnect, write)
    return response


async def thread_run_stream(request: web.Request) -> web.StreamResponse:
    run, on_disconnect = await _start_run(request, stateless=False)
    return await _stream_response(request, run, on_disconnect)


async def thread_run_wait(request: web.Request) -> web.StreamResponse:
    run, on_disconnect = await _start_run(request, stateless=False)
    return await _wait_response(request, run, on_disconnect)


async def run_stream(request: web.Request) -> web.StreamResponse:
    run, on_disconnect = await _start_run(request, stateless=True)
    return await _stream_response(request, run, on_disconnect)


async def run_wait(request: web.Request) -> web.StreamResponse:
    run, on_disconnect = await _start_run(request, stateless=True)
    return await _wait_response(request, run, on_disconnect)


async def get_run(request: web.Request) -> web.Response:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    run_id = uuid_str(request.match_info["run_id"], "run")
    run = await request.app[STORE].get_run(run_id)
    if run is None or run["thread_id"] != thread_id:
        raise ApiError(404, "Not Found")
    return json_response(run)


async def cancel_thread_run(request: web.Request) -> web.StreamResponse:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    run_id = uuid_str(request.match_info["run_id"], "run")
    record = await request.app[STORE].get_run(run_id)
    if record is None or record["thread_id"] != thread_id:
        raise ApiError(404, "No runs found to cancel.")
    manager = request.app[RUNS]
    manager.cancel(run_id)
    local = manager.get_local(run_id)
    if request.query.get("wait", "").lower() in ("1", "true", "yes") and local is not None and local.task is not None:
        await asyncio.wait([local.task], timeout=30)
        return json_response(local.result if local.result is not None else {}, headers=_run_headers(local, stream=False))
    return web.Response(status=202)


async def cancel_runs(request: web.Request) -> web.Response:
    body = await read_object(request)
    run_ids = required(body, "run_ids", list)
    thread_id = optional(body, "thread_id", str)
    if thread_id is not None:
        thread_id = uuid_str(thread_id, "thread")
    checked = [uuid_str(r, "run") if isinstance(r, str) else uuid_str("", "run") for r in run_ids]
    store = request.app[STORE]
    records = [await store.get_run(r) for r in checked]
    known = [r for r in records if r is not None and (thread_id is None or r["thread_id"] == thread_id)]
    if not known:
        raise ApiError(404, "No runs found to cancel.")
    for record in known:
        request.app[RUNS].cancel(record["run_id"])
    return web.Response(status=204)


# --- the hand-rolled pattern ------------------------------------------------------------------


async def _start_simple(request: web.Request) -> Run:
    body = await read_object(request)
    message = required(body, "message", str)
    raw_thread = optional(body, "thread_id", str)
    thread_id = uuid_str(raw_thread, "thread") if raw_thread else uuid7()
    assistant = request.app[ASSISTANTS].resolve("agent")
    assert assistant is not None
    store = request.app[STORE]
    await store.create_thread(thread_id, {})
    thread = await store.get_thread(thread_id)
    assert thread is not None
    metadata = {**thread["metadata"], "graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id}
    await store.update_thread(thread_id, status=thread["status"], metadata=metadata)
    spec = RunSpec(
        assistant=assistant,
        thread_id=thread_id,
        input={"messages": [{"role": "user", "content": message}]},
        stream_modes=["messages-tuple"],
    )
    return await request.app[RUNS].start(spec)


def _final_text(result: Any) -> str:
    messages = result.get("messages", []) if isinstance(result, dict) else []
    return messages[-1].text if messages else ""


async def agent_invoke(request: web.Request) -> web.StreamResponse:
    """``{"message", "thread_id"?}`` → ``{"thread_id", "run_id", "output"}``; a failed run is a 500 JSON."""
    run = await _start_simple(request)
    run.detach()
    assert run.task is not None
    try:
        await asyncio.shield(run.task)
    except asyncio.CancelledError:
        run.task.cancel()
        raise
    if isinstance(run.result, dict) and "__error__" in run.result:
        return json_response({"detail": run.result["__error__"], "thread_id": run.spec.thread_id, "run_id": run.run_id}, 500)
    return json_response({"thread_id": run.spec.thread_id, "run_id": run.run_id, "output": _final_text(run.result)})


async def agent_stream(request: web.Request) -> web.StreamResponse:
    """SSE: ``metadata``, then ``token`` events ``{"content"}``, then ``done`` or ``error``."""
    run = await _start_simple(request)
    response = web.StreamResponse(headers={**sse.HEADERS, **_run_headers(run, stream=True)})

    async def write() -> None:
        await response.prepare(request)
        failed = False
        async for event, data in run.events():
            if event == "metadata":
                await response.write(sse.frame("metadata", {**data, "thread_id": run.spec.thread_id}))
            elif event == "messages":
                message, meta = data
                if meta.get("langgraph_node") == "model" and message.text:
                    await response.write(sse.frame("token", {"content": message.text}))
            elif event == "error":
                failed = True
                await response.write(sse.frame("error", data))
        if not failed:
            done = {"thread_id": run.spec.thread_id, "run_id": run.run_id, "output": _final_text(run.result)}
            await response.write(sse.frame("done", done))
        await response.write_eof()

    await _follow(run, "cancel", write)
    return response


def add_routes(app: web.Application) -> None:
    app.add_routes(
        [
            web.get("/ok", ok),
            web.get("/info", info),
            web.post("/assistants/search", search_assistants),
            web.get("/assistants/{assistant_id}", get_assistant),
            web.post("/threads", create_thread),
            web.get("/threads/{thread_id}", get_thread),
            web.get("/threads/{thread_id}/state", get_thread_state),
            web.post("/threads/{thread_id}/runs/stream", thread_run_stream),
            web.post("/threads/{thread_id}/runs/wait", thread_run_wait),
            web.get("/threads/{thread_id}/runs/{run_id}", get_run),
            web.post("/threads/{thread_id}/runs/{run_id}/cancel", cancel_thread_run),
            web.post("/runs/stream", run_stream),
            web.post("/runs/wait", run_wait),
            web.post("/runs/cancel", cancel_runs),
            web.post("/agent/invoke", agent_invoke),
            web.post("/agent/stream", agent_stream),
        ]
    )
