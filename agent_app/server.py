"""Builds the aiohttp application: persistence, graphs, run manager and routes, with cleanup."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from agent_app import api
from agent_app.assistants import Assistant, Assistants
from agent_app.checkpoint import open_persistence
from agent_app.graph import DEFAULT_RECURSION_LIMIT, build_failing_graph, build_graph
from agent_app.llm import DEFAULT_TOKEN_DELAY, make_model
from agent_app.runs import RunManager

log = logging.getLogger("agent_app")


@dataclass(frozen=True)
class Settings:
    """What the CLI (or a test) decides; ``database_uri`` set means PostgreSQL instead of ``db_path``."""

    db_path: str = "./var/agent.sqlite"
    database_uri: str | None = None
    token_delay: float = DEFAULT_TOKEN_DELAY
    recursion_limit: int = DEFAULT_RECURSION_LIMIT


def create_app(settings: Settings) -> web.Application:
    """An app whose startup opens the database and whose cleanup cancels runs and closes it."""
    # The server accepts bodies up to hundreds of MB; conversations with images get large.
    app = web.Application(middlewares=[api.error_middleware], client_max_size=64 * 1024 * 1024)
    api.add_routes(app)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        async with open_persistence(settings.db_path, settings.database_uri) as persistence:
            log.info("persistence: %s", persistence.description)
            model = make_model(settings.token_delay)
            assistants = Assistants(
                [
                    Assistant(
                        "agent",
                        build_graph(model, persistence.checkpointer, settings.recursion_limit, persistence.store),
                        build_graph(model, None, settings.recursion_limit, persistence.store),
                    ),
                    Assistant("failing", build_failing_graph(persistence.checkpointer), build_failing_graph(None)),
                ]
            )
            runs = RunManager(persistence.records)
            app[api.ASSISTANTS] = assistants
            app[api.RECORDS] = persistence.records
            app[api.STORE] = persistence.store
            app[api.RUNS] = runs
            yield
            await runs.shutdown()

    app.cleanup_ctx.append(lifespan)
    return app
