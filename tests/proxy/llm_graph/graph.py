"""A two-call LangGraph graph whose fake chat models report known ``usage_metadata``.

Each run calls two models in a row, so one run is two LLM calls with different model names:

- ``plan`` node, model ``fake-small``: answers ``"plan ok"``;
- ``answer`` node, model ``fake-large``: answers ``"the answer is <n>"`` (n = messages it saw),
  and reports prompt-cache use.

Usage is a pure function of what the model saw, so a test can compute what one run costs:
``input_tokens = 10 * len(messages)``, ``output_tokens`` = the number of streamed chunks (one
per whitespace-separated word), and for ``fake-large`` ``input_token_details`` =
``{"cache_read": 4, "cache_creation": 2}`` (already included in ``input_tokens``, as LangChain
reports them). The usage arrives on the *last* chunk only, like OpenAI's ``include_usage``.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.language_models.chat_models import agenerate_from_stream
from langgraph.graph import END, START, MessagesState, StateGraph

TOKEN_DELAY = float(os.environ.get("LLM_GRAPH_TOKEN_DELAY", "0.01"))
CACHE = {"cache_read": 4, "cache_creation": 2}


def usage_for(model: str, seen: int, words: int) -> dict[str, Any]:
    """The usage a call reports; the one formula the tests rely on."""
    u: dict[str, Any] = {"input_tokens": 10 * seen, "output_tokens": words, "total_tokens": 10 * seen + words}
    if model == "fake-large":
        u["input_token_details"] = dict(CACHE)
    return u


class FakeUsageModel(BaseChatModel):
    """Streams a fixed answer word by word; the last chunk carries usage and the model name."""

    model_name: str
    answer: str

    @property
    def _llm_type(self) -> str:
        return "fake-usage"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # pragma: no cover - async only
        raise NotImplementedError("the graph calls the model asynchronously")

    async def _astream(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs):
        text = self.answer.format(n=len(messages))
        words = text.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(TOKEN_DELAY)
            last = i == len(words) - 1
            chunk = AIMessageChunk(content=word if i == 0 else " " + word)
            if last:
                chunk = AIMessageChunk(content=chunk.content, chunk_position="last",
                                       usage_metadata=usage_for(self.model_name, len(messages), len(words)),
                                       response_metadata={"model_name": self.model_name, "finish_reason": "stop"})
            gen = ChatGenerationChunk(message=chunk)
            if run_manager:
                await run_manager.on_llm_new_token(gen.text, chunk=gen)
            yield gen

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


small = FakeUsageModel(model_name="fake-small", answer="plan ok")
large = FakeUsageModel(model_name="fake-large", answer="the answer is {n}")


async def plan(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await small.ainvoke(state["messages"])]}


async def answer(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await large.ainvoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("plan", plan)
builder.add_node("answer", answer)
builder.add_edge(START, "plan")
builder.add_edge("plan", "answer")
builder.add_edge("answer", END)
graph = builder.compile(name="llm_usage")
