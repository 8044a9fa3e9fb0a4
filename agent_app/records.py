"""Thread and run records (the checkpointer holds conversation state; this holds the rest).

Not to be confused with the LangGraph *store* (``/store/items``, long-term memory), which is
LangGraph's own ``AsyncSqliteStore``/``AsyncPostgresStore`` in the same database.

They live in the same database as the checkpoints, so a restarted process or another replica
sees the same threads and run statuses.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
from typing import Any

import aiosqlite
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS agent_app_threads (
        thread_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        metadata TEXT NOT NULL,
        status TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS agent_app_runs (
        run_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        assistant_id TEXT NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        multitask_strategy TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS agent_app_runs_thread ON agent_app_runs (thread_id)",
]
_THREAD_COLUMNS = "thread_id, created_at, updated_at, metadata, status"
_RUN_COLUMNS = "run_id, thread_id, assistant_id, status, metadata, kwargs, multitask_strategy, created_at, updated_at"


def now() -> str:
    """The current UTC time in the server's ISO format."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


class Records:
    """Thread and run records over SQL with ``?`` placeholders; subclasses supply the driver.

    Rows come back as plain dicts with JSON columns decoded, shaped like the LangGraph server's
    thread and run objects (minus the state values, which come from the checkpointer).
    """

    async def setup(self) -> None:
        for statement in _SCHEMA:
            await self._execute(statement, ())

    async def create_thread(self, thread_id: str, metadata: dict[str, Any]) -> bool:
        """Insert a thread; False (and no change) if it already exists."""
        stamp = now()
        count = await self._execute(
            f"INSERT INTO agent_app_threads ({_THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO NOTHING",
            (thread_id, stamp, stamp, json.dumps(metadata), "idle"),
        )
        return count > 0

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        row = await self._fetchone(f"SELECT {_THREAD_COLUMNS} FROM agent_app_threads WHERE thread_id = ?", (thread_id,))
        if row is None:
            return None
        return {**row, "metadata": json.loads(row["metadata"])}

    async def search_threads(self, *, status: str | None, metadata: dict[str, Any], limit: int, offset: int) -> list[dict[str, Any]]:
        """Threads newest-updated first whose metadata contains ``metadata`` (like jsonb ``@>``).

        The metadata match runs here, not in SQL, to stay portable between SQLite and
        PostgreSQL: fine for an example's thousands of threads, not for millions.
        """
        sql = f"SELECT {_THREAD_COLUMNS} FROM agent_app_threads"
        params: tuple[Any, ...] = ()
        if status is not None:
            sql, params = sql + " WHERE status = ?", (status,)
        rows = await self._fetchall(sql + " ORDER BY updated_at DESC", params)
        found = [{**row, "metadata": json.loads(row["metadata"])} for row in rows]
        found = [t for t in found if contains(t["metadata"], metadata)]
        return found[offset : offset + limit]

    async def update_thread(self, thread_id: str, *, status: str, metadata: dict[str, Any] | None = None) -> None:
        if metadata is None:
            await self._execute(
                "UPDATE agent_app_threads SET status = ?, updated_at = ? WHERE thread_id = ?",
                (status, now(), thread_id),
            )
        else:
            await self._execute(
                "UPDATE agent_app_threads SET status = ?, metadata = ?, updated_at = ? WHERE thread_id = ?",
                (status, json.dumps(metadata), now(), thread_id),
            )

    async def create_run(self, run: dict[str, Any]) -> None:
        await self._execute(
            f"INSERT INTO agent_app_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run["run_id"],
                run["thread_id"],
                run["assistant_id"],
                run["status"],
                json.dumps(run["metadata"]),
                json.dumps(run["kwargs"]),
                run["multitask_strategy"],
                run["created_at"],
                run["updated_at"],
            ),
        )

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        row = await self._fetchone(f"SELECT {_RUN_COLUMNS} FROM agent_app_runs WHERE run_id = ?", (run_id,))
        if row is None:
            return None
        return {**row, "metadata": json.loads(row["metadata"]), "kwargs": json.loads(row["kwargs"])}

    async def list_runs(self, thread_id: str, *, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """A thread's runs, newest first."""
        sql = f"SELECT {_RUN_COLUMNS} FROM agent_app_runs WHERE thread_id = ?"
        params: tuple[Any, ...] = (thread_id,)
        if status is not None:
            sql, params = sql + " AND status = ?", (*params, status)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?"
        rows = await self._fetchall(sql, (*params, limit, offset))
        return [{**row, "metadata": json.loads(row["metadata"]), "kwargs": json.loads(row["kwargs"])} for row in rows]

    async def update_run(self, run_id: str, status: str) -> None:
        await self._execute("UPDATE agent_app_runs SET status = ?, updated_at = ? WHERE run_id = ?", (status, now(), run_id))

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        raise NotImplementedError

    async def _fetchone(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        raise NotImplementedError

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        raise NotImplementedError


def contains(whole: Any, part: Any) -> bool:
    """JSON containment as PostgreSQL's ``jsonb @>``: every key of ``part`` matches inside ``whole``."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and contains(whole[k], v) for k, v in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and all(any(contains(w, p) for w in whole) for p in part)
    return whole == part


class SqliteRecords(Records):
    """:class:`Records` on the checkpointer's own aiosqlite connection, under its lock.

    One connection for both: two connections to one SQLite file fail with "database is locked"
    whenever a cancelled run leaves the checkpointer mid-transaction.
    """

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock | None = None) -> None:
        self._conn = conn
        self._lock = lock or asyncio.Lock()

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        async with self._lock:
            cursor = await self._conn.execute(sql, params)
            await self._conn.commit()
            return cursor.rowcount

    async def _fetchone(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self._lock, self._conn.execute(sql, params) as cursor:
            row = await cursor.fetchone()
            # Not a row_factory: the connection is shared and the checkpointer expects tuples.
            names = [column[0] for column in cursor.description]
        return dict(zip(names, row, strict=True)) if row is not None else None

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._lock, self._conn.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
            names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]


class PostgresRecords(Records):
    """:class:`Records` on a psycopg pool shared with the Postgres checkpointer."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql.replace("?", "%s"), params)
            return cursor.rowcount

    async def _fetchone(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(sql.replace("?", "%s"), params)
            return await cursor.fetchone()

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(sql.replace("?", "%s"), params)
            return await cursor.fetchall()
