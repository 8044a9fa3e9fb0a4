"""Chooses the chat model: the offline one by default, an OpenAI-compatible endpoint when configured."""

from __future__ import annotations

import os
from collections.abc import Mapping

from langchain_core.language_models import BaseChatModel

from agent_app.model import OfflineChatModel

DEFAULT_TOKEN_DELAY = 0.02


def token_delay_from_env(env: Mapping[str, str] = os.environ) -> float:
    """The per-token delay of the offline model: ``AGENT_TOKEN_DELAY`` seconds, default 0.02."""
    raw = env.get("AGENT_TOKEN_DELAY")
    return float(raw) if raw else DEFAULT_TOKEN_DELAY


def make_model(token_delay: float | None = None, env: Mapping[str, str] = os.environ) -> BaseChatModel:
    """Return the chat model the agent uses.

    ``AGENT_MODEL`` set → ``langchain-openai`` against ``OPENAI_BASE_URL`` (any OpenAI-compatible
    server: OpenAI, vLLM, Ollama, LM Studio) with ``OPENAI_API_KEY``. Otherwise the offline
    deterministic model, which needs no key and no network.
    """
    model_name = env.get("AGENT_MODEL")
    if not model_name:
        delay = token_delay_from_env(env) if token_delay is None else token_delay
        return OfflineChatModel(token_delay=delay)

    # Imported here so the offline default never pays for (or depends on) the OpenAI client.
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model_name,
        base_url=env.get("OPENAI_BASE_URL") or None,
        # Local servers (vLLM, Ollama, LM Studio) accept any key, but the client insists on one.
        api_key=env.get("OPENAI_API_KEY") or "not-needed",
        streaming=True,
    )
