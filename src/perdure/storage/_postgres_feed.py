"""The PostgreSQL change feed: LISTEN on the tables' channel, on one dedicated autocommit connection.

Why a module of its own: it is the one part of the backend that holds a connection open outside the
pools, for as long as a watcher follows the storage. The writing statements (`_postgres_sql`) run
`pg_notify(<channel>, execution_id)` in their own transaction, so a notification is delivered when
the write commits, and only if it commits. The feed reads them with psycopg's `notifies()`. A
notification that arrives while the connection is down is lost: the feed reconnects and says so
(`wait` returns None), or fails with `StorageUnavailableError` naming the storage. While idle it
checks the connection with a round trip every `HEARTBEAT` seconds, bounded like every statement of
the storage (`statement_timeout` plus a grace period, see `_postgres_pool.watchdog`), so a server that
stopped answering is noticed instead of waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..errors import StorageUnavailableError, UserError
from ._postgres_pool import CLOSE_TIMEOUT, Conn, watchdog
from ._postgres_sql import Names
from .base import ChangeFeed

if TYPE_CHECKING:
    from .postgres import PostgresDurableStorage

__all__ = ["HEARTBEAT", "PostgresChangeFeed", "channel_of"]

HEARTBEAT = 5.0
"""Seconds without news after which a waiting feed checks its connection with `SELECT 1`."""


async def channel_of(conn: Conn, names: Names) -> str:
    """The channel of `names`' tables as this connection resolves them (its `current_schema()`)."""
    cur = await conn.execute("SELECT current_schema()")
    row = await cur.fetchone()
    return names.channel(row[0] if row and row[0] else "public")


class PostgresChangeFeed(ChangeFeed):
    """The `ChangeFeed` of a `PostgresDurableStorage` (see `perdure.storage.base`); one waiter at a time."""

    def __init__(self, storage: PostgresDurableStorage) -> None:
        self._storage = storage
        self._conn: Conn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = False
        self._pending: set[str] = set()
        self._contact = 0.0
        self.channel = ""
        """The channel listened to (set by `open`)."""

    def __repr__(self) -> str:
        return f"PostgresChangeFeed({self._storage!r}, channel={self.channel!r})"

    async def open(self) -> None:
        if not self._open:
            await self._connect()
            self._open = True

    async def wait(self, timeout: float) -> set[str] | None:
        if not self._open:
            raise UserError(f"{self!r} is not open: use `async with storage.change_feed() as feed:`.")
        if self._conn is None:  # lost earlier and not reconnected: notifications may be missing
            await self._connect()
            return None
        try:
            if not self._pending:
                await self._receive(max(0.0, timeout), stop_after=1)
            await self._receive(0.0)  # whatever else has arrived, without waiting
            if not self._pending and time.monotonic() - self._contact >= HEARTBEAT:
                await self._heartbeat()
        except (psycopg.Error, OSError) as exc:
            self._drop()
            try:
                await self._connect()
            except StorageUnavailableError as error:
                raise error from exc
            return None
        changed, self._pending = self._pending, set()
        return changed

    async def aclose(self) -> None:
        self._open = False
        self._pending = set()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)

    async def close_from_any_loop(self) -> None:
        """`aclose`, or from another loop (the storage's close): shut the socket without that loop."""
        if self._loop is None or self._loop is asyncio.get_running_loop() or self._loop.is_closed():
            await self.aclose()
        else:
            self._open = False
            self._drop()

    # ---- connection -----------------------------------------------------------------------------

    async def _connect(self) -> None:
        storage = self._storage
        options: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(storage.connect_timeout)),
        }
        if "application_name" not in storage._info:
            options["application_name"] = "perdure-feed"
        conn: Conn | None = None
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(storage.dsn, **options), storage.connect_timeout + 1
            )
            with watchdog(conn, storage._answer_timeout, storage.statement_timeout):
                self.channel = await channel_of(conn, storage._names)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if conn is not None:
                conn.pgconn.finish()
            raise self._unavailable("cannot listen", exc) from exc
        self._conn, self._loop, self._contact = conn, asyncio.get_running_loop(), time.monotonic()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()

    async def _receive(self, timeout: float, stop_after: int | None = None) -> None:
        assert self._conn is not None
        async with contextlib.aclosing(self._conn.notifies(timeout=timeout, stop_after=stop_after)) as notes:
            async for note in notes:
                self._pending.add(note.payload)
                self._contact = time.monotonic()

    async def _heartbeat(self) -> None:
        assert self._conn is not None
        storage = self._storage
        with watchdog(self._conn, storage._answer_timeout, storage.statement_timeout):
            await self._conn.execute("SELECT 1")
        self._contact = time.monotonic()
        await self._receive(0.0)  # notifications that came in with the answer

    def _unavailable(self, doing: str, exc: BaseException) -> StorageUnavailableError:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return StorageUnavailableError(
            "postgresql",
            f"the change feed of {self._storage!r} {doing} on channel {self.channel or '(not known yet)'!r}: "
            f"{type(exc).__name__}: {reason}",
        )
