"""The LangGraph store (long-term memory shared across threads): ``/store/items`` and namespaces.

A thin layer over LangGraph's own ``BaseStore`` (SQLite or PostgreSQL, in the app's database),
so graph nodes given the same store see what the API writes. No vector index: as on the server
without one, a search's ``query`` is ignored.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from langgraph.store.base import InvalidNamespaceError, Item

from agent_app.api.common import STORE, json_response
from agent_app.validation import ApiError, optional, read_object, required


def _namespace(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(label, str) and label for label in value):
        raise ApiError(422, f'"{name}" must be a list of non-empty strings')
    return tuple(value)


def _item_json(item: Item) -> dict[str, Any]:
    return item.dict()


async def put_item(request: web.Request) -> web.Response:
    body = await read_object(request)
    namespace = _namespace(required(body, "namespace", list), "namespace")
    key = required(body, "key", str)
    value = required(body, "value", dict)
    try:
        await request.app[STORE].aput(namespace, key, value, index=False)
    except InvalidNamespaceError as exc:
        raise ApiError(422, str(exc)) from None
    return web.Response(status=204)


async def get_item(request: web.Request) -> web.Response:
    """``?namespace=a.b&key=k`` (the SDK joins the namespace with dots); null when absent."""
    raw_namespace = request.query.get("namespace", "")
    key = request.query.get("key")
    if not key:
        return json_response({"error": "Key is required"}, status=400)  # the server's words and status
    namespace = tuple(raw_namespace.split(".")) if raw_namespace else ()
    item = await request.app[STORE].aget(namespace, key)
    return json_response(_item_json(item) if item is not None else None)


async def delete_item(request: web.Request) -> web.Response:
    body = await read_object(request)
    namespace = _namespace(optional(body, "namespace", list, []), "namespace")
    await request.app[STORE].adelete(namespace, required(body, "key", str))
    return web.Response(status=204)


async def search_items(request: web.Request) -> web.Response:
    body = await read_object(request)
    prefix = _namespace(optional(body, "namespace_prefix", list, []), "namespace_prefix") if body.get("namespace_prefix") else ()
    items = await request.app[STORE].asearch(
        prefix,
        filter=optional(body, "filter", dict),
        limit=optional(body, "limit", int, 10),
        offset=optional(body, "offset", int, 0),
    )
    return json_response({"items": [_item_json(item) for item in items]})


async def list_namespaces(request: web.Request) -> web.Response:
    body = await read_object(request)
    prefix = optional(body, "prefix", list)
    suffix = optional(body, "suffix", list)
    found = await request.app[STORE].alist_namespaces(
        prefix=_namespace(prefix, "prefix") if prefix else None,
        suffix=_namespace(suffix, "suffix") if suffix else None,
        max_depth=optional(body, "max_depth", int),
        limit=optional(body, "limit", int, 100),
        offset=optional(body, "offset", int, 0),
    )
    return json_response({"namespaces": [list(ns) for ns in found]})


ROUTES = [
    web.put("/store/items", put_item),
    web.get("/store/items", get_item),
    web.delete("/store/items", delete_item),
    web.post("/store/items/search", search_items),
    web.post("/store/namespaces", list_namespaces),
]
