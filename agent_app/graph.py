"""The agent graph: a model node and a tool node in a loop, an approval step before tools that
cost money, plus a graph that always fails.

``graph`` and ``failing`` are module-level compiled graphs without a checkpointer, for
``langgraph dev`` (see langgraph.json), which supplies its own persistence. The aiohttp app
builds its own copies with :func:`build_graph` and a real checkpointer.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from langgraph.store.base import BaseStore
from langgraph.types import Command, interrupt

from agent_app.llm import make_model
from agent_app.tools import TOOLS, costs_money

DEFAULT_RECURSION_LIMIT = 10


def build_graph(
    model: BaseChatModel | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    recursion_limit: int = DEFAULT_RECURSION_LIMIT,
    store: BaseStore | None = None,
) -> CompiledStateGraph:
    """Compile the tool-calling agent.

    The model node answers or asks for tools; the tool node runs them and hands back to the
    model. A tool call that costs money (``purchase``) first goes to the ``approve`` node, which
    pauses the run with ``interrupt()`` until a human resumes it with ``Command(resume="yes")``
    (anything else declines, and the model is told so). ``recursion_limit`` is baked into the graph's config (a request's own config still
    wins) so a model that keeps calling tools fails with ``GraphRecursionError`` after a few
    steps instead of spending tokens on the library default of 25.
    """
    bound = (model or make_model()).bind_tools(TOOLS)

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("approve", approve, destinations=("tools", "model"))
    builder.add_node("tools", ToolNode(TOOLS))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", after_model, ["approve", "tools", END])
    builder.add_edge("tools", "model")
    compiled = builder.compile(checkpointer=checkpointer, store=store, name="agent")
    return compiled.with_config(recursion_limit=recursion_limit)


def after_model(state: MessagesState) -> Literal["approve", "tools", "__end__"]:
    calls = _tool_calls(state)
    if not calls:
        return END
    return "approve" if any(costs_money(c["name"]) for c in calls) else "tools"


async def approve(state: MessagesState) -> Command[Literal["tools", "model"]]:
    """Ask a human before spending money; on anything but "yes" the tools don't run."""
    calls = _tool_calls(state)
    # On resume the node runs again from the top and interrupt() returns the resume value.
    answer = interrupt({"question": "Approve this purchase?", "tool_calls": [c for c in calls if costs_money(c["name"])]})
    if answer is True or (isinstance(answer, str) and answer.strip().lower() in ("yes", "y", "approve")):
        return Command(goto="tools")
    declined = [ToolMessage(f"not bought: the user declined ({answer})", tool_call_id=c["id"], name=c["name"]) for c in calls]
    return Command(goto="model", update={"messages": declined})


def _tool_calls(state: MessagesState) -> list[Any]:
    last = state["messages"][-1]
    return last.tool_calls if isinstance(last, AIMessage) else []


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
