"""Executes runs as background tasks and turns graph output into LangGraph server events.

A run is decoupled from the HTTP requests that watch it: each request subscribes to the run's
events and may go away. That is what lets a disconnect either cancel the run or leave it
running (``on_disconnect``), lets ``POST /threads/{id}/runs`` start a run nobody watches, lets
``join``/``join_stream`` watch it later, and lets ``/cancel`` stop a run another request streams.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessageChunk, message_chunk_to_message
from langgraph.types import Command

from agent_app.assistants import Assistant
from agent_app.ids import uuid7
from agent_app.records import Records, now

log = logging.getLogger("agent_app.runs")

# Modes the graph produces natively and that pass through unchanged.
_NATIVE_MODES = {"values", "updates", "custom", "debug", "tasks", "checkpoints"}
STREAM_MODES = _NATIVE_MODES | {"messages", "messages-tuple"}
# A finished run stays in memory this long, for late joins, Last-Event-ID replays and /cancel races.
RUN_RETENTION_SECONDS = 60.0
# Events a resumable run keeps for replay; the oldest go first (a SLOW 100000 must not hoard memory).
MAX_REPLAY_EVENTS = 10_000
# Per subscriber: a watcher that stops reading is dropped rather than buffered without bound.
MAX_QUEUED_EVENTS = 10_000
_DONE = object()


class ThreadBusyError(Exception):
    """The thread already has a run in flight and the request asked to ``reject`` in that case."""


@dataclass
class RunSpec:
    """Everything a run needs, validated by the API layer.

    ``metadata`` is the run's, merged as the server merges it (assistant, thread, request).
    ``command`` (``{"resume"|"update"|"goto": ...}``) replaces ``input`` when given; ``input``
    None continues a thread paused by ``interrupt_before``/``interrupt_after``.
    """

    assistant: Assistant
    thread_id: str
    input: Any
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    stream_modes: list[str] = field(default_factory=lambda: ["values"])
    multitask_strategy: str = "enqueue"
    stateless: bool = False
    command: dict[str, Any] | None = None
    interrupt_before: list[str] | str | None = None
    interrupt_after: list[str] | str | None = None
    resumable: bool = False

    def kwargs(self, run_id: str) -> dict[str, Any]:
        """The run record's ``kwargs``, named as the server names them, with the effective config."""
        return {
            "input": self.input,
            "command": self.command,
            "config": run_config(self, run_id),
            "context": {},
            "stream_mode": self.stream_modes,
            "interrupt_before": self.interrupt_before,
            "interrupt_after": self.interrupt_after,
            "resumable": self.resumable,
        }


def parse_event_id(value: str) -> tuple[int, int]:
    """``<ms>-<seq>`` as a sortable pair; ``"0"`` (or garbage) sorts before every event."""
    ms, _, seq = value.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (-1, -1)


class Subscription:
    """One watcher's view of a run: ``(event, data, id)`` items, then the end of the run."""

    def __init__(self, run: Run, modes: list[str] | None, max_queued: int = MAX_QUEUED_EVENTS) -> None:
        self._run = run
        self._modes = modes
        self._max_queued = max_queued
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def wants(self, event: str) -> bool:
        """The server's join filter: no modes means everything; ``messages`` covers ``messages/*``."""
        if not self._modes:
            return True
        base = event.partition("|")[0]
        if event in self._modes or base in self._modes:
            return True
        return event.startswith("messages") and ("messages" in self._modes or "messages-tuple" in self._modes)

    def put(self, item: Any) -> None:
        if item is not _DONE and self.queue.qsize() >= self._max_queued:
            log.warning("run %s: a watcher fell %d events behind; dropping it", self._run.run_id, self._max_queued)
            self.close()
            # The stream must look cut, not finished; the run itself goes on.
            error = {"error": "WatcherTooSlow", "message": f"fell {self._max_queued} events behind the run"}
            self.queue.put_nowait(("error", error, None))
            self.queue.put_nowait(_DONE)
            return
        self.queue.put_nowait(item)

    async def next_event(self, timeout: float) -> tuple[str, Any, str | None] | None:
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

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """Yield ``(event, data)`` until the run ends (no ``end`` event, as on the real server)."""
        while True:
            item = await self.queue.get()
            if item is _DONE:
                return
            yield item[0], item[1]

    def close(self) -> None:
        self._run.subscribers.discard(self)


@dataclass
class Run:
    """A started run: its id, its task, the watchers of its events, and its outcome.

    ``result`` is the body ``/runs/wait`` and ``/join`` answer with once the task is done: the
    final state values (with ``__interrupt__`` when the graph paused in ``interrupt()``), or
    ``{"__error__": {...}}`` when the graph raised. A resumable run also keeps its events with
    ids for ``Last-Event-ID`` replay.
    """

    run_id: str
    spec: RunSpec
    task: asyncio.Task[None] | None = None
    result: Any = None
    status: str = "pending"
    started: bool = False
    done: bool = False
    subscribers: set[Subscription] = field(default_factory=set)
    replay: collections.deque[tuple[str, Any, str]] = field(default_factory=lambda: collections.deque(maxlen=MAX_REPLAY_EVENTS))
    _last_id: tuple[int, int] = (0, 0)

    def subscribe(
        self, *, last_event_id: str | None = None, modes: list[str] | None = None, max_queued: int = MAX_QUEUED_EVENTS
    ) -> Subscription:
        """Watch the run from now on; with ``last_event_id`` (resumable runs) replay what came after it."""
        sub = Subscription(self, modes, max_queued)
        if last_event_id is not None:
            after = parse_event_id(last_event_id)
            for event, data, event_id in self.replay:
                if parse_event_id(event_id) > after and sub.wants(event):
                    sub.put((event, data, event_id))
        if self.done:
            sub.put(_DONE)
        else:
            self.subscribers.add(sub)
        return sub

    def emit(self, event: str, data: Any) -> None:
        event_id = self._next_id() if self.spec.resumable else None
        if event_id is not None:
            self.replay.append((event, data, event_id))
        for sub in list(self.subscribers):
            if sub.wants(event):
                sub.put((event, data, event_id))

    def finish(self) -> None:
        self.done = True
        for sub in list(self.subscribers):
            sub.put(_DONE)
        self.subscribers.clear()

    def _next_id(self) -> str:
        # Like the server's ids: ms timestamp, then a sequence number within that millisecond;
        # never going backwards, even if the clock does.
        last_ms, last_seq = self._last_id
        ms = max(time.time_ns() // 1_000_000, last_ms)
        self._last_id = (ms, last_seq + 1 if ms == last_ms else 0)
        return f"{ms}-{self._last_id[1]}"


class RunManager:
    """Starts, tracks and cancels the runs of this process; records their status.

    Runs on one thread execute one at a time (the server's ``enqueue`` strategy); ``reject``
    answers :class:`ThreadBusyError` instead of waiting. Only runs of this process can be
    cancelled or joined live: a run's task lives where it was started.
    """

    def __init__(self, records: Records) -> None:
        self._records = records
        self._runs: dict[str, Run] = {}
        self._thread_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Future[None]] = set()

    def get_local(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    async def start(self, spec: RunSpec) -> tuple[Run, dict[str, Any]]:
        """Record and start a run; returns it and its record."""
        lock = self._thread_locks.setdefault(spec.thread_id, asyncio.Lock())
        if spec.multitask_strategy == "reject" and lock.locked():
            raise ThreadBusyError(spec.thread_id)
        run = Run(run_id=uuid7(), spec=spec)
        stamp = now()
        record = {
            "run_id": run.run_id,
            "thread_id": spec.thread_id,
            "assistant_id": spec.assistant.assistant_id,
            "status": "pending",
            "metadata": spec.metadata,
            "kwargs": spec.kwargs(run.run_id),
            "multitask_strategy": spec.multitask_strategy,
            "created_at": stamp,
            "updated_at": stamp,
        }
        await self._records.create_run(record)
        self._runs[run.run_id] = run
        run.task = asyncio.create_task(self._execute(run, lock), name=f"run-{run.run_id}")
        run.task.add_done_callback(lambda task: self._on_task_done(run, task))
        return run, record

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
                # A graph paused by interrupt() or interrupt_before/after ends the run
                # successfully; the thread waits for a resume.
                paused = await self._paused(run)
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
            await self._set_status(run, "success", thread_status="interrupted" if paused else "idle")
        finally:
            self._finish(run)

    async def _paused(self, run: Run) -> bool:
        if run.spec.stateless:
            return False
        snapshot = await run.spec.assistant.graph.aget_state({"configurable": {"thread_id": run.spec.thread_id}})
        return bool(snapshot.next)

    def _finish(self, run: Run) -> None:
        run.finish()
        asyncio.get_running_loop().call_later(RUN_RETENTION_SECONDS, self._runs.pop, run.run_id, None)

    def _on_task_done(self, run: Run, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs its body, so nothing else would
        # end its watchers' streams or record the interruption.
        if task.cancelled() and not run.started:
            run.status = "interrupted"
            self._finish(run)
            self._background.add(bg := asyncio.ensure_future(self._records.update_run(run.run_id, "interrupted")))
            bg.add_done_callback(self._background.discard)

    async def _set_status(self, run: Run, status: str, *, thread_status: str | None) -> None:
        run.status = status
        try:
            await self._records.update_run(run.run_id, status)
            if thread_status is not None and not run.spec.stateless:
                await self._records.update_thread(run.spec.thread_id, status=thread_status)
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
        graph_input = Command(**spec.command) if spec.command is not None else spec.input
        partial: dict[str, Any] = {}
        async for mode, chunk in graph.astream(
            graph_input,
            run_config(spec, run.run_id),
            stream_mode=sorted(graph_modes),
            interrupt_before=spec.interrupt_before,
            interrupt_after=spec.interrupt_after,
        ):
            if mode == "values":
                # With langgraph >= 1.0.4 the values chunk after an interrupt() carries
                # "__interrupt__", which is what /wait and /join answer with.
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


def run_config(spec: RunSpec, run_id: str) -> dict[str, Any]:
    """The graph's config: the request's, plus the ids; its metadata lands in every checkpoint."""
    ids = {
        "thread_id": spec.thread_id,
        "run_id": run_id,
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
