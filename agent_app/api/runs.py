"""Runs: start (streamed, waited for, or in the background), list, get, join, join the stream, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent_app import sse
from agent_app.api.common import HEARTBEAT_SECONDS, RECORDS, RUNS, json_response
from agent_app.api.meta import assistant_for_run
from agent_app.api.threads import existing_thread, graph_of, interrupt_json
from agent_app.ids import uuid7
from agent_app.runs import Run, RunSpec, Subscription, ThreadBusyError
from agent_app.serde import dumpb
from agent_app.validation import ApiError, choice, optional, read_object, required, stream_modes, uuid_str

log = logging.getLogger("agent_app.api")

_MULTITASK = ("reject", "interrupt", "rollback", "enqueue")
_COMMAND_KEYS = {"resume", "update", "goto"}
_NOT_FOUND = "Thread or assistant not found."
_TRUE = ("1", "true", "yes")


def _node_list(body: dict[str, Any], name: str) -> list[str] | str | None:
    value = optional(body, name, (str, list))
    if isinstance(value, str) and value != "*":
        raise ApiError(422, f'"{name}" must be "*" or a list of node names')
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ApiError(422, f'"{name}" must be "*" or a list of node names')
    return value


def _command(body: dict[str, Any]) -> dict[str, Any] | None:
    command = optional(body, "command", dict)
    if command is not None and (not command or set(command) - _COMMAND_KEYS):
        raise ApiError(422, f'"command" takes only {sorted(_COMMAND_KEYS)}')
    return command


async def _start_run(request: web.Request, *, stateless: bool, watch: bool) -> tuple[Run, dict[str, Any], Subscription | None, str]:
    """Validate a run request, make sure its thread exists, and start it.

    Returns the run, its record, a subscription to its events when ``watch`` (taken before
    the run's task first runs, so not even ``metadata`` is missed), and its ``on_disconnect``
    policy. This app defaults to ``cancel`` (the server: ``continue``): an agent nobody
    listens to should stop spending tokens.
    """
    body = await read_object(request)
    assistant = assistant_for_run(request, body)
    run_input = body.get("input")
    if run_input is not None and not isinstance(run_input, dict):
        # The server accepts any JSON here and fails the run; a 422 up front is kinder.
        raise ApiError(422, '"input" must be an object or null')
    config = optional(body, "config", dict, {})
    limit = config.get("recursion_limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ApiError(422, '"config.recursion_limit" must be a positive integer')
    metadata = optional(body, "metadata", dict, {})
    spec = RunSpec(
        assistant=assistant,
        thread_id="",
        input=run_input,
        config=config,
        stream_modes=stream_modes(body),
        multitask_strategy=choice(body, "multitask_strategy", _MULTITASK, "enqueue"),
        stateless=stateless,
        command=_command(body),
        interrupt_before=_node_list(body, "interrupt_before"),
        interrupt_after=_node_list(body, "interrupt_after"),
        resumable=optional(body, "stream_resumable", bool, False),
    )
    on_disconnect = choice(body, "on_disconnect", ("cancel", "continue"), "cancel")
    if_not_exists = choice(body, "if_not_exists", ("create", "reject"), "reject")

    records = request.app[RECORDS]
    # As the server: a run's metadata is the assistant's, then the thread's, then the request's.
    run_metadata = {**assistant.to_json()["metadata"]}
    if stateless:
        spec.thread_id = uuid7()
    else:
        spec.thread_id = uuid_str(request.match_info["thread_id"], "thread")
        thread = await records.get_thread(spec.thread_id)
        if thread is None:
            if if_not_exists != "create":
                raise ApiError(404, _NOT_FOUND)
            await records.create_thread(spec.thread_id, {})
            thread = {"metadata": {}, "status": "idle"}
        # Like the server: the thread remembers which graph it belongs to.
        thread_metadata = {**thread["metadata"], "graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id}
        await records.update_thread(spec.thread_id, status=thread["status"], metadata=thread_metadata)
        run_metadata.update(thread_metadata)
    spec.metadata = {**run_metadata, **config.get("metadata", {}), **metadata, "assistant_id": assistant.assistant_id}

    manager = request.app[RUNS]
    try:
        run, record = await manager.start(spec)
    except ThreadBusyError:
        raise ApiError(
            409, "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
        ) from None
    # No await between start() and here: the run's task has not run yet.
    sub = run.subscribe() if watch else None
    return run, record, sub, on_disconnect


def run_headers(run: Run, *, stream: bool) -> dict[str, str]:
    if run.spec.stateless and stream:
        return {"Location": f"/runs/{run.run_id}/stream", "Content-Location": f"/runs/{run.run_id}"}
    base = f"/threads/{run.spec.thread_id}/runs/{run.run_id}"
    return {"Location": base + ("/stream" if stream else "/join"), "Content-Location": base}


async def follow(run: Run | None, sub: Subscription | None, on_disconnect: str, write: Callable[[], Awaitable[None]]) -> None:
    """Run ``write`` (which relays the run to the client); on disconnect apply the policy."""
    try:
        await write()
    except (asyncio.CancelledError, ConnectionResetError):
        if sub is not None:
            sub.close()
        if run is not None and on_disconnect == "cancel" and run.task is not None and not run.task.done():
            log.info("client went away, cancelling run %s", run.run_id)
            run.task.cancel()
            # Let the run record "interrupted" before this handler is gone.
            with contextlib.suppress(BaseException):
                await asyncio.wait([run.task], timeout=5)
        raise
    finally:
        if sub is not None:
            sub.close()


async def _stream_response(
    request: web.Request, run: Run | None, sub: Subscription | None, on_disconnect: str, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**sse.HEADERS, **headers})

    async def write() -> None:
        await response.prepare(request)
        while sub is not None:
            try:
                item = await sub.next_event(HEARTBEAT_SECONDS)
            except StopAsyncIteration:
                break
            if item is None:
                await response.write(sse.HEARTBEAT)
            else:
                await response.write(sse.frame(*item))
        await response.write_eof()

    await follow(run, sub, on_disconnect, write)
    return response


async def _json_when_done(
    request: web.Request, run: Run | None, on_disconnect: str, headers: dict[str, str], fallback: Callable[[], Awaitable[Any]]
) -> web.StreamResponse:
    """Answer with the run's result once it is done; ``fallback`` when it isn't running here."""
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/json"

    async def write() -> None:
        # Headers go out at once and a newline every 5 s, as the server does, so idle timeouts
        # between client and server see a live connection during a long run.
        await response.prepare(request)
        if run is not None and run.task is not None:
            while not run.task.done():
                done, _ = await asyncio.wait([run.task], timeout=HEARTBEAT_SECONDS)
                if not done:
                    await response.write(b"\n")
            result = run.result if run.result is not None else await fallback()
        else:
            result = await fallback()
        await response.write(dumpb(result))
        await response.write_eof()

    await follow(run, None, on_disconnect, write)
    return response


async def _empty() -> dict[str, Any]:
    return {}


async def create_run(request: web.Request) -> web.Response:
    """A background run: answers its record at once (status ``pending``); nobody has to watch."""
    run, record, _, _ = await _start_run(request, stateless=False, watch=False)
    return json_response(record, headers={"Content-Location": run_headers(run, stream=False)["Content-Location"]})


async def thread_run_stream(request: web.Request) -> web.StreamResponse:
    run, _, sub, on_disconnect = await _start_run(request, stateless=False, watch=True)
    return await _stream_response(request, run, sub, on_disconnect, run_headers(run, stream=True))


async def thread_run_wait(request: web.Request) -> web.StreamResponse:
    run, _, _, on_disconnect = await _start_run(request, stateless=False, watch=False)
    return await _json_when_done(request, run, on_disconnect, run_headers(run, stream=False), _empty)


async def run_stream(request: web.Request) -> web.StreamResponse:
    run, _, sub, on_disconnect = await _start_run(request, stateless=True, watch=True)
    return await _stream_response(request, run, sub, on_disconnect, run_headers(run, stream=True))


async def run_wait(request: web.Request) -> web.StreamResponse:
    run, _, _, on_disconnect = await _start_run(request, stateless=True, watch=False)
    return await _json_when_done(request, run, on_disconnect, run_headers(run, stream=False), _empty)


async def list_runs(request: web.Request) -> web.Response:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    limit, offset = _int_query(request, "limit", 10), _int_query(request, "offset", 0)
    await existing_thread(request, thread_id)
    runs = await request.app[RECORDS].list_runs(thread_id, status=request.query.get("status"), limit=limit, offset=offset)
    return json_response(runs)


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ApiError(422, f'"{name}" must be a non-negative integer')
    return int(raw)


async def _run_record(request: web.Request, not_found: str = "Not Found") -> dict[str, Any]:
    record = await _find_run(request)
    if record is None:
        raise ApiError(404, not_found)
    return record


async def _find_run(request: web.Request) -> dict[str, Any] | None:
    thread_id = uuid_str(request.match_info["thread_id"], "thread")
    run_id = uuid_str(request.match_info["run_id"], "run")
    record = await request.app[RECORDS].get_run(run_id)
    return record if record is not None and record["thread_id"] == thread_id else None


# Joining an unknown run is a 200 carrying the error, as on the server (the SDK sees it in the body).
_RUN_NOT_FOUND = {"error": "HTTPException", "message": "404: Run not found"}


async def get_run(request: web.Request) -> web.Response:
    return json_response(await _run_record(request))


async def join_run(request: web.Request) -> web.StreamResponse:
    """The run's result once it is done; for a run no longer (or never) here, the thread's state."""
    record = await _find_run(request)
    if record is None:
        return json_response({"__error__": _RUN_NOT_FOUND})
    run = request.app[RUNS].get_local(record["run_id"])
    cancel = request.query.get("cancel_on_disconnect", "").lower() in _TRUE

    async def thread_values() -> Any:
        # The server's fallback: the thread's pending interrupts if it is paused, else its values.
        thread = await request.app[RECORDS].get_thread(record["thread_id"])
        if thread is None or "graph_id" not in thread["metadata"]:
            return {}
        snapshot = await graph_of(request, thread).aget_state({"configurable": {"thread_id": record["thread_id"]}})
        if thread["status"] == "interrupted" and snapshot.interrupts:
            return {"__interrupt__": [interrupt_json(i) for i in snapshot.interrupts]}
        return snapshot.values or {}

    headers = _record_headers(record, "join")
    return await _json_when_done(request, run, "cancel" if cancel else "continue", headers, thread_values)


async def join_run_stream(request: web.Request) -> web.StreamResponse:
    """Watch a run's events from now on; ``Last-Event-ID`` replays a resumable run's earlier ones."""
    record = await _find_run(request)
    if record is None:
        response = web.StreamResponse(headers=sse.HEADERS)
        await response.prepare(request)
        await response.write(sse.frame("error", _RUN_NOT_FOUND))
        await response.write_eof()
        return response
    run = request.app[RUNS].get_local(record["run_id"])
    cancel = request.query.get("cancel_on_disconnect", "").lower() in _TRUE
    modes = _stream_mode_query(request.query.get("stream_mode"))
    last_event_id = request.headers.get("Last-Event-ID") or None
    # A run that ended before this process's memory of it (or on another replica): an empty stream.
    sub = run.subscribe(last_event_id=last_event_id, modes=modes) if run is not None else None
    return await _stream_response(request, run, sub, "cancel" if cancel else "continue", _record_headers(record, "stream"))


def _stream_mode_query(raw: str | None) -> list[str]:
    """The SDK sends ``stream_mode`` as one name or a JSON array of names."""
    if not raw:
        return []
    if raw.startswith("["):
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            if isinstance(parsed, list):
                return [str(m) for m in parsed]
    return [raw]


def _record_headers(record: dict[str, Any], location: str) -> dict[str, str]:
    base = f"/threads/{record['thread_id']}/runs/{record['run_id']}"
    return {"Location": f"{base}/{location}", "Content-Location": base}


async def cancel_thread_run(request: web.Request) -> web.StreamResponse:
    record = await _run_record(request, "No runs found to cancel.")
    manager = request.app[RUNS]
    manager.cancel(record["run_id"])
    local = manager.get_local(record["run_id"])
    if request.query.get("wait", "").lower() in _TRUE and local is not None and local.task is not None:
        await asyncio.wait([local.task], timeout=30)
        return json_response(local.result if local.result is not None else {}, headers=run_headers(local, stream=False))
    return web.Response(status=202)


async def cancel_runs(request: web.Request) -> web.Response:
    body = await read_object(request)
    run_ids = required(body, "run_ids", list)
    thread_id = optional(body, "thread_id", str)
    if thread_id is not None:
        thread_id = uuid_str(thread_id, "thread")
    checked = [uuid_str(r, "run") if isinstance(r, str) else uuid_str("", "run") for r in run_ids]
    records = request.app[RECORDS]
    found = [await records.get_run(r) for r in checked]
    known = [r for r in found if r is not None and (thread_id is None or r["thread_id"] == thread_id)]
    if not known:
        raise ApiError(404, "No runs found to cancel.")
    for record in known:
        request.app[RUNS].cancel(record["run_id"])
    return web.Response(status=204)


ROUTES = [
    web.post("/threads/{thread_id}/runs", create_run),
    web.get("/threads/{thread_id}/runs", list_runs),
    web.post("/threads/{thread_id}/runs/stream", thread_run_stream),
    web.post("/threads/{thread_id}/runs/wait", thread_run_wait),
    web.get("/threads/{thread_id}/runs/{run_id}", get_run),
    web.get("/threads/{thread_id}/runs/{run_id}/join", join_run),
    web.get("/threads/{thread_id}/runs/{run_id}/stream", join_run_stream),
    web.post("/threads/{thread_id}/runs/{run_id}/cancel", cancel_thread_run),
    web.post("/runs/stream", run_stream),
    web.post("/runs/wait", run_wait),
    web.post("/runs/cancel", cancel_runs),
]
