"""The HTTP API: the LangGraph Server subset the SDK uses, plus the hand-rolled /agent/* pair.

Requests, responses, SSE framing, headers and error shapes follow langgraph-api 0.16.7, so a
client (or the sidecar proxy) cannot tell this app from ``langgraph dev`` for these calls
(``agent_app/README.md`` lists where it still differs). One module per resource.
"""

from __future__ import annotations

from aiohttp import web

from agent_app.api import agent, meta, runs, store, threads
from agent_app.api.common import ASSISTANTS, RECORDS, RUNS, STORE, error_middleware, json_response

__all__ = ["ASSISTANTS", "RECORDS", "RUNS", "STORE", "add_routes", "error_middleware", "json_response"]


def add_routes(app: web.Application) -> None:
    app.add_routes([*meta.ROUTES, *threads.ROUTES, *runs.ROUTES, *store.ROUTES, *agent.ROUTES])
