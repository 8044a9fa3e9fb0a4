"""The registry of assistants: one per compiled graph, with the LangGraph server's ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from agent_app.records import now

# The LangGraph server derives a graph's default assistant id as uuid5(this, graph_id), so the
# same assistant has the same id here and there.
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


@dataclass(frozen=True)
class Assistant:
    """A graph exposed as an assistant.

    ``graph`` persists through the checkpointer (thread runs); ``stateless_graph`` is the same
    graph without one, for ``/runs/*`` calls that have no thread to keep.
    """

    graph_id: str
    graph: CompiledStateGraph
    stateless_graph: CompiledStateGraph
    created_at: str = field(default_factory=now)

    @property
    def assistant_id(self) -> str:
        return str(uuid.uuid5(NAMESPACE_GRAPH, self.graph_id))

    def to_json(self) -> dict[str, Any]:
        return {
            "assistant_id": self.assistant_id,
            "graph_id": self.graph_id,
            "config": {},
            "context": {},
            "metadata": {"created_by": "system"},
            "name": self.graph_id,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "version": 1,
            "description": None,
        }


class Assistants:
    """Looks assistants up by graph name (``"agent"``) or by assistant uuid."""

    def __init__(self, assistants: list[Assistant]) -> None:
        self._by_key: dict[str, Assistant] = {}
        self._all = list(assistants)
        for assistant in assistants:
            self._by_key[assistant.graph_id] = assistant
            self._by_key[assistant.assistant_id] = assistant

    def __iter__(self):
        return iter(self._all)

    def resolve(self, key: str) -> Assistant | None:
        return self._by_key.get(key)

    def graph_ids(self) -> list[str]:
        return [a.graph_id for a in self._all]
