"""An offline, deterministic chat model: no key, no network, the same answer every time.

It exists so the example runs anywhere and so tests and benchmarks can emulate an LLM
(tool calls, token streaming, slowness, failures) without one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

_SINGLE_WORD = re.compile(r"reply with the single word\s+(\w+)", re.IGNORECASE)
_SLOW = re.compile(r"^\s*SLOW\s+(\d+)\s*$")
# A run of at least two numbers joined by operators; prose around it is ignored.
_ARITHMETIC = re.compile(r"[-(]*\d+(?:\.\d+)?\)*(?:\s*(?:\*\*|//|[-+*/%])\s*[-(]*\d+(?:\.\d+)?\)*)+")
_CLOCK = re.compile(r"\b(time|clock|date)\b", re.IGNORECASE)
_TOKEN = re.compile(r"\S+\s*|\s+")
_BUY = re.compile(r"^\s*BUY\s+(.+?)\s*$")
# What the model reports as response_metadata.model_name (and telemetry labels by).
MODEL_NAME = "offline-deterministic"
# SLOW n is meant to emulate long streams, not to allocate unbounded memory.
MAX_SLOW_TOKENS = 100_000


class OfflineModelError(RuntimeError):
    """Raised when a message asks the offline model to fail (the text ``RAISE``)."""


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model for demos and tests.

    Rules, applied to the latest human message of the conversation:

    - ``RAISE`` → raises :class:`OfflineModelError` (to exercise run-error handling).
    - ``SLOW n`` → answers with ``n`` tokens (``"1 2 3 … n"``), one per ``token_delay`` seconds.
    - ``LOOP`` → calls the calculator forever: a runaway tool loop for the recursion limit to stop.
    - ``BUY <item>`` → calls the ``purchase`` tool, the one that costs money (the graph asks a
      human to approve it first), then answers ``Purchase: <tool result>.``
    - ``Reply with the single word X.`` → answers ``X`` (so the PONG probe gets ``PONG``).
    - arithmetic such as ``What is 6 * 7?`` → calls the ``calculator`` tool (when bound), then
      answers ``The answer is 42.`` from the tool result.
    - a mention of time, clock or date → calls the ``clock`` tool, then reports its result.
    - anything else → ``You said: <text>``.

    Answers stream token by token with ``token_delay`` seconds before each token, in ``invoke``
    as well as ``stream``, so a slow LLM is emulated whichever way the graph calls the model.
    The last chunk of every answer reports ``usage_metadata`` like a provider does: input tokens
    are the whitespace-separated words of the prompt's messages, output tokens the streamed
    tokens (for a tool call, the words of its JSON arguments), so the counts are deterministic.
    """

    token_delay: float = 0.02

    @property
    def _llm_type(self) -> str:
        return MODEL_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"token_delay": self.token_delay}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):  # type: ignore[override]
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _reply(self, messages: list[BaseMessage], tools: list[dict] | None) -> AIMessage:
        """Decide the whole answer up front; streaming only paces its delivery."""
        tool_names = {t["function"]["name"] for t in tools or []}
        human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        text = human.text.strip() if human is not None else ""
        last = messages[-1] if messages else None
        call_id = f"call_{len(messages)}"

        if text == "RAISE":
            raise OfflineModelError("the offline model was asked to fail (message RAISE)")
        if text == "LOOP" and "calculator" in tool_names:
            return _tool_call("calculator", {"expression": "1 + 1"}, call_id)
        if isinstance(last, ToolMessage):
            if last.name == "purchase":
                return AIMessage(content=f"Purchase: {last.text}.")
            if last.name == "clock":
                return AIMessage(content=f"The current UTC time is {last.text}.")
            return AIMessage(content=f"The answer is {last.text}.")
        if (match := _BUY.match(text)) and "purchase" in tool_names:
            return _tool_call("purchase", {"item": match.group(1)}, call_id)
        if match := _SLOW.match(text):
            count = min(int(match.group(1)), MAX_SLOW_TOKENS)
            return AIMessage(content=" ".join(str(i) for i in range(1, count + 1)))
        if match := _SINGLE_WORD.search(text):
            return AIMessage(content=match.group(1))
        if (match := _ARITHMETIC.search(text)) and "calculator" in tool_names:
            return _tool_call("calculator", {"expression": match.group(0).strip()}, call_id)
        if _CLOCK.search(text) and "clock" in tool_names:
            return _tool_call("clock", {}, call_id)
        return AIMessage(content=f"You said: {text}")

    def _chunks(self, messages: list[BaseMessage], reply: AIMessage) -> list[AIMessageChunk]:
        chunks = self._content_chunks(reply)
        output = _count_tokens(json.dumps(reply.tool_calls[0]["args"])) if reply.tool_calls else len(_TOKEN.findall(reply.text))
        prompt = sum(_count_tokens(m.text) for m in messages)
        chunks[-1].usage_metadata = {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}
        chunks[-1].response_metadata = {"model_name": MODEL_NAME, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}
        return chunks

    def _content_chunks(self, reply: AIMessage) -> list[AIMessageChunk]:
        if reply.tool_calls:
            # Real providers stream a tool call as argument fragments; one chunk keeps it simple.
            call = reply.tool_calls[0]
            return [
                AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        {
                            "name": call["name"],
                            "args": json.dumps(call["args"]),
                            "id": call["id"],
                            "index": 0,
                            "type": "tool_call_chunk",
                        }
                    ],
                    chunk_position="last",
                )
            ]
        tokens = _TOKEN.findall(reply.text) or [""]
        chunks = [AIMessageChunk(content=token) for token in tokens]
        chunks[-1].chunk_position = "last"
        return chunks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, self._reply(messages, kwargs.get("tools"))):
            if self.token_delay > 0:
                time.sleep(self.token_delay)
            generation = ChatGenerationChunk(message=chunk)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, self._reply(messages, kwargs.get("tools"))):
            # Even with no delay, yield to the loop per token: a long answer must stay cancellable.
            await asyncio.sleep(self.token_delay)
            generation = ChatGenerationChunk(message=chunk)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


def _count_tokens(text: str) -> int:
    return len(text.split())


def _tool_call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}])

