"""The agent graph: a model node and a tool node in a loop, plus a graph that always fails.

``graph`` and ``failing`` are module-level compiled graphs without a checkpointer, for
``langgraph dev`` (see langgraph.json), which supplies its own persistence. The aiohttp app
builds its own copies with :func:`build_graph` and a real checkpointer.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agent_app.llm import make_model
from agent_app.tools import TOOLS

DEFAULT_RECURSION_LIMIT = 10


def build_graph(
    model: BaseChatModel | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    recursion_limit: int = DEFAULT_RECURSION_LIMIT,
) -> CompiledStateGraph:
    """Compile the tool-calling agent.

    The model node answers or asks for tools; the tool node runs them and hands back to the
    model. ``recursion_limit`` is baked into the graph's config (a request's own config still
    wins) so a model that keeps calling tools fails with ``GraphRecursionError`` after a few
    steps instead of spending tokens on the library default of 25.
    """
    bound = (model or make_model()).bind_tools(TOOLS)

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode(TOOLS))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "model")
    compiled = builder.compile(checkpointer=checkpointer, name="agent")
    return compiled.with_config(recursion_limit=recursion_limit)


class FailingNodeError(RuntimeError):
    """Raised by the ``failing`` graph's only node, every time."""


def build_failing_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """Compile a graph whose node always raises: a fixture for run-error detection."""

    async def explode(state: MessagesState) -> dict[str, Any]:
        raise FailingNodeError("the failing graph always raises in its node")

    builder = StateGraph(MessagesState)
    builder.add_node("explode", explode)
    builder.add_edge(START, "explode")
    builder.add_edge("explode", END)
    return builder.compile(checkpointer=checkpointer, name="failing")


graph = build_graph()
failing = build_failing_graph()
