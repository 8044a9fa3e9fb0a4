"""Executes runs as background tasks and turns graph output into LangGraph server events.

A run is decoupled from the HTTP request that started it: the request only listens to its
event queue. That is what lets a disconnect either cancel the run or leave it running
(``on_disconnect``), and lets ``/cancel`` stop a run that another request is streaming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessageChunk, message_chunk_to_message

from agent_app.assistants import Assistant
from agent_app.ids import uuid7
from agent_app.store import Store, now

log = logging.getLogger("agent_app.runs")

# Modes the graph produces natively and that pass through unchanged.
_NATIVE_MODES = {"values", "updates", "custom", "debug", "tasks", "checkpoints"}
STREAM_MODES = _NATIVE_MODES | {"messages", "messages-tuple"}
_DONE = object()


class ThreadBusyError(Exception):
    """The thread already has a run in flight and the request asked to ``reject`` in that case."""


@dataclass
class RunSpec:
    """Everything a run needs, validated by the API layer."""

    assistant: Assistant
    thread_id: str
    input: Any
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    stream_modes: list[str] = field(default_factory=lambda: ["values"])
    multitask_strategy: str = "enqueue"
    stateless: bool = False


@dataclass
class Run:
    """A started run: its id, its task, and the queue of ``(event, data)`` it produces.

    ``result`` is the body ``/runs/wait`` answers with once the task is done: the final state
    values, or ``{"__error__": {...}}`` when the graph raised.
    """

    run_id: str
    spec: RunSpec
    task: asyncio.Task[None] | None = None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    result: Any = None
    status: str = "pending"
    listening: bool = True
    started: bool = False

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """Yield events until the run ends (no ``end`` event, as on the real server)."""
        while True:
            item = await self.queue.get()
            if item is _DONE:
                return
            yield item

    async def next_event(self, timeout: float) -> tuple[str, Any] | None:
        """The next event, or None after ``timeout`` seconds of silence.

        Raises StopAsyncIteration once the run has ended.
        """
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        if item is _DONE:
            self.queue.put_nowait(_DONE)  # stay ended for any later call
            raise StopAsyncIteration
        return item

    def detach(self) -> None:
        """Nobody listens any more: stop queueing events so a long run doesn't hoard memory."""
        self.listening = False

    def emit(self, event: str, data: Any) -> None:
        if self.listening:
            self.queue.put_nowait((event, data))


class RunManager:
    """Starts, tracks and cancels the runs of this process; records their status in the store.

    Runs on one thread execute one at a time (the server's ``enqueue`` strategy); ``reject``
    answers :class:`ThreadBusyError` instead of waiting. Only runs of this process can be
    cancelled: a run's task lives where it was started.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._runs: dict[str, Run] = {}
        self._thread_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Future[None]] = set()

    def get_local(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    async def start(self, spec: RunSpec) -> Run:
        lock = self._thread_locks.setdefault(spec.thread_id, asyncio.Lock())
        if spec.multitask_strategy == "reject" and lock.locked():
            raise ThreadBusyError(spec.thread_id)
        run = Run(run_id=uuid7(), spec=spec)
        stamp = now()
        await self._store.create_run(
            {
                "run_id": run.run_id,
                "thread_id": spec.thread_id,
                "assistant_id": spec.assistant.assistant_id,
                "status": "pending",
                "metadata": spec.metadata,
                "kwargs": {"input": spec.input, "config": spec.config, "stream_mode": spec.stream_modes},
                "multitask_strategy": spec.multitask_strategy,
                "created_at": stamp,
                "updated_at": stamp,
            }
        )
        self._runs[run.run_id] = run
        run.task = asyncio.create_task(self._execute(run, lock), name=f"run-{run.run_id}")
        run.task.add_done_callback(lambda task: self._on_task_done(run, task))
        return run

    def cancel(self, run_id: str) -> bool:
        """Cancel a run in flight here; False if it isn't (unknown, finished, or elsewhere)."""
        run = self._runs.get(run_id)
        if run is None or run.task is None or run.task.done():
            return False
        run.task.cancel()
        return True

    async def shutdown(self) -> None:
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _execute(self, run: Run, lock: asyncio.Lock) -> None:
        run.started = True
        run.emit("metadata", {"run_id": run.run_id, "attempt": 1})
        try:
            async with lock:
                await self._set_status(run, "running", thread_status="busy")
                await self._stream_graph(run)
        except asyncio.CancelledError:
            # Cancelled while queued behind another run of the thread: that thread isn't ours to mark.
            thread_status = "interrupted" if run.status == "running" else None
            await self._set_status(run, "interrupted", thread_status=thread_status)
            raise
        except Exception as exc:  # the graph's failure is the run's result, not ours
            log.info("run %s failed: %s: %s", run.run_id, type(exc).__name__, exc)
            error = {"error": type(exc).__name__, "message": str(exc)}
            run.result = {"__error__": error}
            run.emit("error", error)
            await self._set_status(run, "error", thread_status="error")
        else:
            await self._set_status(run, "success", thread_status="idle")
        finally:
            self._finish(run)

    def _finish(self, run: Run) -> None:
        run.queue.put_nowait(_DONE)
        # Keep finished runs briefly for /cancel and /wait races, but not forever.
        asyncio.get_running_loop().call_later(60, self._runs.pop, run.run_id, None)

    def _on_task_done(self, run: Run, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs its body, so nothing else would
        # end its listeners' streams or record the interruption.
        if task.cancelled() and not run.started:
            run.status = "interrupted"
            self._finish(run)
            self._background.add(bg := asyncio.ensure_future(self._store.update_run(run.run_id, "interrupted")))
            bg.add_done_callback(self._background.discard)

    async def _set_status(self, run: Run, status: str, *, thread_status: str | None) -> None:
        run.status = status
        try:
            await self._store.update_run(run.run_id, status)
            if thread_status is not None and not run.spec.stateless:
                await self._store.update_thread(run.spec.thread_id, status=thread_status)
        except Exception:
            # A status write must never turn a finished run into a crashed task.
            log.exception("could not record status %s of run %s", status, run.run_id)

    async def _stream_graph(self, run: Run) -> None:
        spec = run.spec
        requested = spec.stream_modes
        graph_modes = {"values"} | {m for m in requested if m in _NATIVE_MODES}
        if "messages" in requested or "messages-tuple" in requested:
            graph_modes.add("messages")
        graph = spec.assistant.stateless_graph if spec.stateless else spec.assistant.graph
        partial: dict[str, Any] = {}
        async for mode, chunk in graph.astream(spec.input, _run_config(run), stream_mode=sorted(graph_modes)):
            if mode == "values":
                run.result = chunk
            if mode == "messages":
                if "messages-tuple" in requested:
                    run.emit("messages", list(chunk))
                else:
                    for event, data in _message_events(chunk, partial):
                        run.emit(event, data)
            elif mode in requested:
                run.emit(mode, chunk)
        if run.result is None:
            run.result = {}


def _run_config(run: Run) -> dict[str, Any]:
    spec = run.spec
    ids = {
        "thread_id": spec.thread_id,
        "run_id": run.run_id,
        "graph_id": spec.assistant.graph_id,
        "assistant_id": spec.assistant.assistant_id,
    }
    config = dict(spec.config)
    config["configurable"] = {**spec.config.get("configurable", {}), **ids}
    config["metadata"] = {**spec.config.get("metadata", {}), **spec.metadata, **ids}
    return config


def _message_events(chunk: tuple[Any, dict[str, Any]], seen: dict[str, Any]) -> list[tuple[str, Any]]:
    """The server's ``messages`` mode: metadata once per message, then the message so far."""
    message, meta = chunk
    events: list[tuple[str, Any]] = []
    if message.id in seen:
        seen[message.id] = seen[message.id] + message
    else:
        seen[message.id] = message
        events.append(("messages/metadata", {message.id: {"metadata": meta}}))
    if isinstance(message, BaseMessageChunk):
        events.append(("messages/partial", [seen[message.id]]))
    else:
        events.append(("messages/complete", [message_chunk_to_message(seen[message.id])]))
    return events

