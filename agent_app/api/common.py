"""What every resource module of the API shares: app keys, JSON answers, the error middleware."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from langgraph.store.base import BaseStore

from agent_app.assistants import Assistants
from agent_app.records import Records
from agent_app.runs import RunManager
from agent_app.serde import dumpb
from agent_app.validation import ApiError

log = logging.getLogger("agent_app.api")

ASSISTANTS: web.AppKey[Assistants] = web.AppKey("assistants", Assistants)
RECORDS: web.AppKey[Records] = web.AppKey("records", Records)
STORE: web.AppKey[BaseStore] = web.AppKey("store", BaseStore)
RUNS: web.AppKey[RunManager] = web.AppKey("runs", RunManager)

# The real server writes a keep-alive every 5 s while a run is quiet.
HEARTBEAT_SECONDS = 5.0

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
