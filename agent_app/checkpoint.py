"""Opens the persistence: a LangGraph checkpointer, the LangGraph store (``/store/items``) and the
thread/run records, all in one database.

SQLite (a file) by default; PostgreSQL when a ``DATABASE_URI`` is given, which is what several
replicas need, since every replica must see every thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.base import BaseStore
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agent_app.records import PostgresRecords, Records, SqliteRecords

# Any constant works; it only has to be the same in every replica.
_SETUP_LOCK_KEY = 0x4147454E54  # "AGENT"


@dataclass(frozen=True)
class Persistence:
    """A ready checkpointer, store and records; ``description`` names the backend for logs, never secrets."""

    checkpointer: BaseCheckpointSaver
    store: BaseStore
    records: Records
    description: str


@contextlib.asynccontextmanager
async def open_persistence(db_path: str, database_uri: str | None = None) -> AsyncIterator[Persistence]:
    """Open (and create or migrate) the database; close it on exit."""
    if database_uri:
        async with _open_postgres(database_uri) as persistence:
            yield persistence
    else:
        async with _open_sqlite(db_path) as persistence:
            yield persistence


@contextlib.asynccontextmanager
async def _open_sqlite(db_path: str) -> AsyncIterator[Persistence]:
    directory = os.path.dirname(os.path.abspath(db_path))
    os.makedirs(directory, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(db_path) as saver:
        # WAL: readers (e.g. a backup or a second process inspecting the file) don't block writes.
        await saver.conn.execute("PRAGMA journal_mode=WAL")
        await saver.conn.execute("PRAGMA busy_timeout=5000")
        await saver.setup()
        records = SqliteRecords(saver.conn, saver.lock)
        await records.setup()
        store = AsyncSqliteStore(saver.conn)
        # The same connection and lock as the checkpointer, for the same "database is locked" reason.
        store.lock = saver.lock
        await store.setup()
        # The store expects autocommit and leaves its migration insert open on this connection.
        await saver.conn.commit()
        yield Persistence(saver, store, records, f"sqlite:{os.path.abspath(db_path)}")


@contextlib.asynccontextmanager
async def _open_postgres(database_uri: str) -> AsyncIterator[Persistence]:
    pool = AsyncConnectionPool(
        database_uri,
        min_size=1,
        max_size=10,
        open=False,
        # The checkpointer needs autocommit and dict rows; prepare_threshold=0 keeps it working
        # behind pgbouncer in transaction mode.
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    await pool.open(wait=True, timeout=30)
    try:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        records = PostgresRecords(pool)
        store = AsyncPostgresStore(pool)  # type: ignore[arg-type]
        # Replicas starting together would race on CREATE TABLE and the migration table.
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK_KEY,))
            try:
                await saver.setup()
                await records.setup()
                await store.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))
        yield Persistence(saver, store, records, "postgres")
    finally:
        await pool.close()
