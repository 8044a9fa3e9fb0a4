"""JSON encoding of graph output the way the LangGraph server writes it on the wire."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import uuid
from typing import Any

from langchain_core.load import Serializable


def _default(obj: Any) -> Any:
    # Messages and other pydantic models go out as their model_dump(), as the real server's
    # serializer does; the SDK and LangChain's message coercion expect exactly those fields.
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        return obj.model_dump()
    if isinstance(obj, Serializable):
        return obj.to_json()
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    # Never fail a response over one odd value in the state: say what it was instead.
    return repr(obj)


def dumps(value: Any) -> str:
    """Serialize ``value`` compactly; unknown objects degrade to ``repr`` rather than raising."""
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False)


def dumpb(value: Any) -> bytes:
    """:func:`dumps` as UTF-8 bytes."""
    return dumps(value).encode()


def to_jsonable(value: Any) -> Any:
    """Round-trip ``value`` through JSON so it can be stored or compared as plain data."""
    return json.loads(dumps(value))
