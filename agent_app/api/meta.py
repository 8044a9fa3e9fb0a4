"""``/ok``, ``/info`` and the assistants (one per graph, read-only)."""

from __future__ import annotations

from typing import Any

import langgraph.version
from aiohttp import web

from agent_app.api.common import ASSISTANTS, json_response
from agent_app.assistants import Assistant
from agent_app.validation import ApiError, optional, read_object, required, uuid_str


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


def assistant_for_run(request: web.Request, body: dict[str, Any]) -> Assistant:
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


ROUTES = [
    web.get("/ok", ok),
    web.get("/info", info),
    web.post("/assistants/search", search_assistants),
    web.get("/assistants/{assistant_id}", get_assistant),
]
