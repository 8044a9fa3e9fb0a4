"""CLI: ``python -m agent_app --port N`` serves the agent until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from agent_app import api
from agent_app.graph import DEFAULT_RECURSION_LIMIT
from agent_app.llm import token_delay_from_env
from agent_app.server import Settings, create_app

log = logging.getLogger("agent_app")
# One line per request, after it finished (for streams: when the stream ended).
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent_app", description="Serve the example LangGraph agent.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2024, help="port (0 picks a free one; default 2024)")
    parser.add_argument(
        "--db",
        default=os.environ.get("AGENT_DB", "./var/agent.sqlite"),
        help="SQLite file for checkpoints and threads (env AGENT_DB; ignored when DATABASE_URI is set)",
    )
    parser.add_argument(
        "--token-delay",
        type=float,
        default=token_delay_from_env(),
        help="seconds before each token the offline model streams (env AGENT_TOKEN_DELAY, default 0.02)",
    )
    parser.add_argument(
        "--recursion-limit",
        type=int,
        default=DEFAULT_RECURSION_LIMIT,
        help=f"graph steps per run before it fails with GraphRecursionError (default {DEFAULT_RECURSION_LIMIT})",
    )
    args = parser.parse_args(argv)
    if args.token_delay < 0:
        parser.error("--token-delay must be >= 0")
    if args.recursion_limit < 1:
        parser.error("--recursion-limit must be >= 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    settings = Settings(
        db_path=args.db,
        database_uri=os.environ.get("DATABASE_URI") or None,
        token_delay=args.token_delay,
        recursion_limit=args.recursion_limit,
    )
    app = create_app(settings)
    # handler_cancellation: a client that goes away cancels its handler within milliseconds,
    # which is what cancels its run; without it aiohttp notices only on the next write.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log_format=ACCESS_LOG_FORMAT, shutdown_timeout=5
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    for sock in site._server.sockets if site._server else []:  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        # Tests and scripts read this line to learn the port when --port 0 was given.
        log.info("agent_app listening on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        # Cancel runs first: their streams then end and aiohttp need not wait out open handlers.
        if api.RUNS in app:
            await app[api.RUNS].shutdown()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
