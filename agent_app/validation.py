"""Request validation: every bad input becomes an :class:`ApiError` with the server's wording."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from agent_app.runs import STREAM_MODES

_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", bool: "boolean"}


class ApiError(Exception):
    """An error the client caused or should see: answered as ``status`` + ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body; an empty body counts as ``{}`` (the SDK sends none on some POSTs)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "Invalid JSON in request body") from None
    if not isinstance(body, dict):
        raise ApiError(422, f'{json.dumps(body)[:200]} is not of type "object"')
    return body


def optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` if present and not null, checked against ``kind``; else ``default``."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python, never in JSON schema.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(f'"{_TYPE_NAMES.get(k, k.__name__)}"' for k in kinds)
        raise ApiError(422, f'{json.dumps(value)[:200]} is not of type {expected} (field "{name}")')
    return value


def required(body: dict[str, Any], name: str, kind: type) -> Any:
    if body.get(name) is None:
        raise ApiError(422, f'"{name}" is a required property')
    return optional(body, name, kind)


def choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = optional(body, name, str, default)
    if value not in allowed:
        raise ApiError(422, f'{json.dumps(value)} is not one of {list(allowed)} (field "{name}")')
    return value


def uuid_str(value: str, what: str) -> str:
    """Validate a uuid path parameter, normalised to the canonical lowercase form."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ApiError(422, f"Invalid {what} ID: must be a UUID") from None


def stream_modes(body: dict[str, Any]) -> list[str]:
    """``stream_mode`` as a list; a string or a list of them, default ``["values"]``."""
    value = optional(body, "stream_mode", (str, list), "values")
    modes = [value] if isinstance(value, str) else value
    for mode in modes:
        if mode not in STREAM_MODES:
            raise ApiError(422, f'{json.dumps(mode)} is not a supported stream_mode; use one of {sorted(STREAM_MODES)}')
    # Order kept, duplicates dropped.
    return list(dict.fromkeys(modes)) or ["values"]
