"""The offline model's rules, the calculator, and the compiled graph, in-process (no server)."""

from __future__ import annotations

import time

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.errors import GraphRecursionError

from agent_app.graph import FailingNodeError, build_failing_graph, build_graph
from agent_app.llm import make_model
from agent_app.model import OfflineChatModel, OfflineModelError
from agent_app.tools import TOOLS, calculator, evaluate


def reply(text: str, *, tools: bool = True) -> AIMessage:
    model = OfflineChatModel(token_delay=0)
    bound = model.bind_tools(TOOLS) if tools else model
    return bound.invoke([HumanMessage(text)])


def test_pong_probe_gets_pong() -> None:
    assert reply("Reply with the single word PONG.").content == "PONG"


def test_arithmetic_calls_the_calculator() -> None:
    message = reply("What is 6 * 7?")
    assert message.tool_calls[0]["name"] == "calculator"
    assert message.tool_calls[0]["args"] == {"expression": "6 * 7"}


def test_without_bound_tools_the_model_does_not_call_them() -> None:
    assert reply("What is 6 * 7?", tools=False).content == "You said: What is 6 * 7?"


def test_tool_result_becomes_the_answer() -> None:
    model = OfflineChatModel(token_delay=0).bind_tools(TOOLS)
    history = [HumanMessage("2+2?"), reply("2+2?"), ToolMessage("4", tool_call_id="call_1", name="calculator")]
    assert model.invoke(history).content == "The answer is 4."


def test_raise_raises() -> None:
    with pytest.raises(OfflineModelError):
        reply("RAISE")


def test_slow_streams_n_tokens_with_the_delay() -> None:
    model = OfflineChatModel(token_delay=0.02)
    started = time.monotonic()
    chunks = [c.content for c in model.stream("SLOW 5")]
    assert chunks == ["1 ", "2 ", "3 ", "4 ", "5"]
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(("expression", "value"), [("6 * 7", 42), ("(2 + 3) ** 2", 25), ("7 / 2", 3.5), ("-3 + 1", -2)])
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "1 / 0", "9 ** 999", "x + 1", "2 +"])
def test_calculator_refuses_anything_else(expression: str) -> None:
    assert calculator.invoke({"expression": expression}).startswith("error: ")


def test_openai_model_when_configured() -> None:
    from langchain_openai import ChatOpenAI

    model = make_model(env={"AGENT_MODEL": "llama3", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert isinstance(model, ChatOpenAI) and model.model_name == "llama3"
    assert isinstance(make_model(env={}), OfflineChatModel)
    assert make_model(env={"AGENT_TOKEN_DELAY": "0.5"}).token_delay == 0.5


async def test_graph_tool_loop_and_recursion_limit() -> None:
    graph = build_graph(OfflineChatModel(token_delay=0), recursion_limit=6)
    result = await graph.ainvoke({"messages": [HumanMessage("What is 3 * 3?")]})
    assert [m.type for m in result["messages"]] == ["human", "ai", "tool", "ai"]
    assert result["messages"][-1].content == "The answer is 9."
    with pytest.raises(GraphRecursionError, match="Recursion limit of 6 reached"):
        await graph.ainvoke({"messages": [HumanMessage("LOOP")]})


async def test_failing_graph_raises() -> None:
    with pytest.raises(FailingNodeError):
        await build_failing_graph().ainvoke({"messages": [HumanMessage("hi")]})


def test_usage_is_reported_on_the_last_chunk_only() -> None:
    model = OfflineChatModel(token_delay=0)
    chunks = list(model.stream([HumanMessage("SLOW 3")]))
    assert [c.usage_metadata for c in chunks[:-1]] == [None, None]
    assert chunks[-1].usage_metadata == {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
    assert chunks[-1].response_metadata == {"model_name": "offline-deterministic", "finish_reason": "stop"}
    whole = model.invoke([HumanMessage("SLOW 3")])
    assert whole.usage_metadata == chunks[-1].usage_metadata, "the same count whichever way it is called"
    assert whole.response_metadata["model_name"] == "offline-deterministic"


def test_a_tool_call_reports_its_arguments_as_output_tokens() -> None:
    message = reply("What is 6 * 7?")
    # '{"expression": "6 * 7"}' is four words; the prompt "What is 6 * 7?" five.
    assert message.usage_metadata == {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_buy_calls_the_purchase_tool_only_when_bound() -> None:
    message = reply("BUY a red bike")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("purchase", {"item": "a red bike"})]
    assert reply("BUY a red bike", tools=False).content == "You said: BUY a red bike"
    # The probe and the other rules never reach the tool that costs money.
    assert not reply("Reply with the single word PONG.").tool_calls
    assert not reply("please buy me a bike").tool_calls


async def test_the_graph_asks_before_buying_and_obeys_the_answer() -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    graph = build_graph(OfflineChatModel(token_delay=0), InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    paused = await graph.ainvoke({"messages": [HumanMessage("BUY a pizza")]}, config)
    (question,) = paused["__interrupt__"]
    assert question.value["tool_calls"][0]["args"] == {"item": "a pizza"}
    assert (await graph.aget_state(config)).next == ("approve",)
    done = await graph.ainvoke(Command(resume="yes"), config)
    assert [m.type for m in done["messages"]] == ["human", "ai", "tool", "ai"]
    assert done["messages"][-1].content == "Purchase: bought a pizza."
    await graph.ainvoke({"messages": [HumanMessage("BUY a car")]}, config)
    declined = await graph.ainvoke(Command(resume=False), config)
    assert declined["messages"][-2].content == "not bought: the user declined (False)"
    # Other tools need no approval.
    answered = await graph.ainvoke({"messages": [HumanMessage("What is 2 + 2?")]}, {"configurable": {"thread_id": "u"}})
    assert answered["messages"][-1].content == "The answer is 4." and "__interrupt__" not in answered
