"""The hand-rolled pair (``/agent/invoke``, ``/agent/stream``): the pattern without the LangGraph API."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from agent_app import sse
from agent_app.api.common import ASSISTANTS, RECORDS, RUNS, json_response
from agent_app.api.runs import follow, run_headers
from agent_app.ids import uuid7
from agent_app.runs import Run, RunSpec, Subscription
from agent_app.validation import optional, read_object, required, uuid_str


async def _start_simple(request: web.Request, *, watch: bool) -> tuple[Run, Subscription | None]:
    body = await read_object(request)
    message = required(body, "message", str)
    raw_thread = optional(body, "thread_id", str)
    thread_id = uuid_str(raw_thread, "thread") if raw_thread else uuid7()
    assistant = request.app[ASSISTANTS].resolve("agent")
    assert assistant is not None
    records = request.app[RECORDS]
    await records.create_thread(thread_id, {})
    thread = await records.get_thread(thread_id)
    assert thread is not None
    metadata = {**thread["metadata"], "graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id}
    await records.update_thread(thread_id, status=thread["status"], metadata=metadata)
    spec = RunSpec(
        assistant=assistant,
        thread_id=thread_id,
        input={"messages": [{"role": "user", "content": message}]},
        stream_modes=["messages-tuple"],
    )
    run, _ = await request.app[RUNS].start(spec)
    # No await between start() and here: the run's task has not run yet.
    return run, run.subscribe() if watch else None


def _final_text(result: Any) -> str:
    messages = result.get("messages", []) if isinstance(result, dict) else []
    return messages[-1].text if messages else ""


async def agent_invoke(request: web.Request) -> web.StreamResponse:
    """``{"message", "thread_id"?}`` → ``{"thread_id", "run_id", "output"}``; a failed run is a 500 JSON."""
    run, _ = await _start_simple(request, watch=False)
    assert run.task is not None
    try:
        await asyncio.shield(run.task)
    except asyncio.CancelledError:
        run.task.cancel()
        raise
    ids = {"thread_id": run.spec.thread_id, "run_id": run.run_id}
    if isinstance(run.result, dict) and "__error__" in run.result:
        return json_response({"detail": run.result["__error__"], **ids}, 500)
    return json_response({**ids, "output": _final_text(run.result)})


async def agent_stream(request: web.Request) -> web.StreamResponse:
    """SSE: ``metadata``, then ``token`` events ``{"content"}``, then ``done`` or ``error``."""
    run, sub = await _start_simple(request, watch=True)
    assert sub is not None
    response = web.StreamResponse(headers={**sse.HEADERS, **run_headers(run, stream=True)})

    async def write() -> None:
        await response.prepare(request)
        failed = False
        async for event, data in sub.events():
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

    await follow(run, sub, "cancel", write)
    return response


ROUTES = [
    web.post("/agent/invoke", agent_invoke),
    web.post("/agent/stream", agent_stream),
]
