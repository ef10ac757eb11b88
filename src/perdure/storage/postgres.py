"""Storage in PostgreSQL: many workers on many machines share one database.

Four tables, named after `table_prefix` (default `perdure_`): `<prefix>heads` (one row per execution:
indexed columns, the lease, and the encoded head), `<prefix>steps` (the journal, primary key
`(execution_id, seq)`), `<prefix>tombstones` (deleted ids, whose writes are refused until cleanup
purges them; layout version 2) and `<prefix>meta` (the layout version). They are created on first use
and migrated by version under a transaction-level advisory lock, so workers starting together do not
race.

Every write is one SQL statement on an autocommit connection: its own transaction, one round trip. A
step append is a data-modifying CTE that upserts the head and inserts the journal row only if the head
write went through (a batch of steps inserts all its rows, unnested from arrays, in the same CTE);
the head upsert is fenced by the lease in its `ON CONFLICT ... WHERE`, which PostgreSQL evaluates on
the row it locked, and the journal's primary key refuses a duplicate seq and aborts the whole
statement. Writes of a running attempt (`lease_owner` set) and step appends only
UPDATE the head, so they never re-create a deleted execution. Creating a head and deleting one are short
transactions that take a per-execution advisory lock; a delete also locks the head row, so it is atomic
with lease acquisition and with every write. Lease expiry is compared with the server's
`clock_timestamp()`, so workers with skewed clocks still agree.

psycopg's async connections belong to the event loop that opened them, while the sync twins run each
thread's coroutines on that thread's own loop; the storage therefore keeps one pool per event loop
(`perdure.storage._per_loop`). The tables and statements are in `perdure.storage._postgres_sql`, the
pool and connection handling in `perdure.storage._postgres_pool`. What is left here (some 630 lines)
is one concept, the client side: options and DSN parsing, driver errors mapped to perdure's, rows
turned into records, and each contract method next to the statement it runs, so that what an empty
result means (fenced, deleted, never created) is decided where the statement is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from .._sync import run_sync
from ..codec import Codec, decode_head, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    InvalidExecutionIdError,
    LeaseLostError,
    PerdureError,
    StepConflictError,
    StorageConfigurationError,
    StorageUnavailableError,
    UserError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepRecord
from . import _per_loop
from ._per_loop import PerLoop
from ._postgres_feed import PostgresChangeFeed, channel_of
from ._postgres_pool import CLOSE_TIMEOUT, Conn, LoopPool, NoAnswer, Pool, checkout, watchdog
from ._postgres_sql import LAYOUT_VERSION, TRGM_LOCK, Names, Sql, search_index_statements
from ._postgres_sql import MIGRATIONS as _MIGRATIONS  # a module global: tests add steps to it
from ._query import (
    ActivityBucket,
    CancelRequest,
    ExecutionPage,
    ExecutionQuery,
    activity_bounds,
    check_reason,
    encode_cursor,
    execution_name,
    search_text,
)
from ._sql_query import Dialect, QuerySql, like_pattern, postgres_activity
from .base import CLEANUP_BATCH, DurableExecutionStorage, retention_keep, validate_identifier

# isort: split
# After `_postgres_pool`, which refuses to load without psycopg and says what to install.
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

__all__ = ["LAYOUT_VERSION", "PostgresDurableStorage"]

logger = logging.getLogger("perdure.storage")
_trgm_warned = False
"""Whether the missing `pg_trgm` index was logged already (once per process)."""


def _trigram_clause(folded: str) -> tuple[str, list[Any]]:
    """`search LIKE '%text%'`: what a `gin_trgm_ops` index answers (a literal substring)."""
    return "search LIKE %s", [like_pattern(folded)]


_Row = tuple[Any, ...]
_Params = Sequence[Any] | Mapping[str, Any]
_T = TypeVar("_T")

_BACKEND = "postgresql"
_SCHEMES = ("postgresql", "postgres")
_ACQUIRE_TRIES = 3
_ANSWER_GRACE = 2.0
"""Seconds past `statement_timeout` after which the client gives up on a server that does not answer."""
# Connection refusals that retrying will not fix: wrong database, user, password or pg_hba rules.
_MISCONFIGURED = re.compile(
    r"FATAL:.*(does not exist|authentication failed|no pg_hba\.conf entry|permission denied|"
    r"password|not permitted to log in)",
    re.IGNORECASE,
)
_CONFIG_STATES = ("28", "3D", "3F", "42501")  # auth, missing database/schema, privilege
_CORRUPT_STATES = ("XX001", "XX002")  # data_corrupted, index_corrupted
_SYNCHRONOUS_COMMIT = ("off", "local", "remote_write", "on", "remote_apply")
"""PostgreSQL's values of `synchronous_commit` (its aliases true/false/yes/no/1/0 are not taken)."""
_WAITS_FOR_STANDBY = ("remote_write", "on", "remote_apply")


def _utc(moment: datetime) -> datetime:
    """Aware UTC datetimes in and out; a naive one is taken as UTC (every stored time is UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class PostgresDurableStorage(DurableExecutionStorage):
    """Durable storage in PostgreSQL (psycopg 3, async, one connection pool per event loop).

    Args:
        dsn: libpq connection string or URL, e.g. `postgresql://user@host:5432/db`.
        table_prefix: Prefix of the table names (`<prefix>heads`, `<prefix>steps`, `<prefix>meta`);
            several applications can share a database with different prefixes.
        codec: Payload codec; `Codec(compress_above=...)` zstd-compresses large records.
        min_size: Connections each pool keeps open.
        max_size: Connections each pool may open.
        connect_timeout: Seconds an operation waits for a connection (connecting, reconnecting
            after a server restart, or a free pooled one) before failing with `StorageUnavailableError`.
        statement_timeout: Seconds a statement may run before the server cancels it (PostgreSQL's
            `statement_timeout`, which also bounds waiting for a lock); a server that does not answer
            at all is given up 2 seconds later. Either fails with `StorageUnavailableError`; wrong
            credentials, a missing database or privileges raise `StorageConfigurationError`.
        synchronous_commit: PostgreSQL's `synchronous_commit` for perdure's sessions (`SET` on every
            pooled connection): `"off"`, `"local"`, `"remote_write"`, `"on"` or `"remote_apply"`;
            `None` (default) keeps the server's setting. With a synchronous standby
            (`synchronous_standby_names` on the primary), `"remote_apply"` makes every step write
            return only once the standby has applied it, so a standby promoted after the primary is
            lost has every step a run saw journaled. A commit that waits for a standby is not bounded
            by the server's `statement_timeout`; the client gives up after `statement_timeout` plus
            2 seconds with `StorageUnavailableError` (the write may have committed on the primary).

    """

    backend_name = _BACKEND
    atomic_batches = True
    shared_cancel_requests = True

    def __init__(
        self,
        dsn: str,
        table_prefix: str = "perdure_",
        *,
        codec: Codec | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
        synchronous_commit: str | None = None,
    ) -> None:
        self.dsn = dsn
        self._info = _parse_dsn(dsn)
        self.table_prefix = _check_prefix(table_prefix)
        self.min_size, self.max_size = _check_sizes(min_size, max_size)
        if not isinstance(connect_timeout, int | float) or not connect_timeout > 0:
            raise UserError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}.")
        self.connect_timeout = float(connect_timeout)
        if isinstance(statement_timeout, bool) or not isinstance(statement_timeout, int | float):
            raise UserError(f"statement_timeout must be > 0 seconds, got {statement_timeout!r}.")
        if not statement_timeout > 0:
            raise UserError(f"statement_timeout must be > 0 seconds, got {statement_timeout!r}.")
        self.statement_timeout = float(statement_timeout)
        self._answer_timeout = self.statement_timeout + min(_ANSWER_GRACE, self.statement_timeout)
        self._statement_ms = max(1, round(self.statement_timeout * 1000))
        self.synchronous_commit = _check_synchronous_commit(synchronous_commit)
        self.codec = codec or Codec()
        self._names = Names(self.table_prefix)
        self._sql = Sql.build(self._names)
        self._queries = QuerySql(
            self._names.heads,
            "execution_id, codec, payload, lease_owner, lease_expires_at",
            Dialect(param="%s", contains="strpos(search, %s) > 0", stamp=_utc, activity=postgres_activity),
        )
        self._channel = ""
        """The LISTEN/NOTIFY channel of the tables (`Names.channel`), known once the layout is checked."""
        self._feeds: weakref.WeakSet[PostgresChangeFeed] = weakref.WeakSet()
        where = self._info
        self._where = (
            f"{where.get('host') or 'localhost'}:{where.get('port') or 5432}/"
            f"{where.get('dbname') or where.get('user') or '?'}"
        )
        self._location = f"postgresql://{self._where} table {self._names.heads}"
        user = where.get("user") or ""
        auth = f"{user}:***@" if where.get("password") else (f"{user}@" if user else "")
        self._searched = f"at postgresql://{auth}{self._where} with table_prefix {self.table_prefix!r}"
        """Where executions are looked up, for `ExecutionNotFoundError` (password masked)."""
        self._loops: PerLoop[LoopPool] = PerLoop()
        self._layout_ok = False
        # A storage dropped without close(): hand its pools back to their loops to close.
        weakref.finalize(self, self._loops.release_all).atexit = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresDurableStorage:
        """Build from `postgresql://user[:password]@host[:port]/db[?table_prefix=P&<libpq params>]`.

        `table_prefix`, `statement_timeout` (seconds) and `synchronous_commit` (`off`, `local`,
        `remote_write`, `on`, `remote_apply`) are taken out of the URL; every other query
        parameter (`sslmode`, `application_name`, ...) stays in the DSN for libpq. `connect_timeout`
        also sets the storage's own timeout. Keyword `options` override the URL.
        """
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme.lower() not in _SCHEMES:
            raise UserError(
                f"Not a PostgreSQL URL: {url!r}. Use postgresql://user@host:5432/dbname?table_prefix=perdure_."
            )
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as exc:
            raise UserError(f"Malformed query string in PostgreSQL URL: {exc}.") from exc
        kwargs: dict[str, Any] = {}
        for key, value in query:
            if key == "table_prefix":
                kwargs["table_prefix"] = value
            elif key in ("connect_timeout", "statement_timeout"):
                kwargs[key] = _float_param(key, value)
            elif key == "synchronous_commit":
                kwargs[key] = value
        # Keep the other parameters byte for byte: libpq decodes %XX but not `+`.
        ours = ("table_prefix", "statement_timeout", "synchronous_commit")
        kept = [p for p in parts.query.split("&") if p and unquote_plus(p.split("=", 1)[0]) not in ours]
        dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))
        return cls(dsn, **{**kwargs, **options})

    def __repr__(self) -> str:
        user = self._info.get("user")
        return (
            f"PostgresDurableStorage('postgresql://{f'{user}@' if user else ''}{self._where}', "
            f"table_prefix={self.table_prefix!r})"
        )

    # ---- connections ----------------------------------------------------------------------------

    def _new_pool(self) -> LoopPool:
        conns: weakref.WeakSet[Conn] = weakref.WeakSet()

        timeout = f"SET statement_timeout = {self._statement_ms}"
        # A validated keyword (see `_SYNCHRONOUS_COMMIT`), so it can be spliced into the statement.
        commit = f"SET synchronous_commit = {self.synchronous_commit}" if self.synchronous_commit else None

        async def track(conn: Conn) -> None:
            conns.add(conn)
            # A SET rather than a startup `options` parameter, which PgBouncer refuses by default.
            await conn.execute(timeout)
            if commit is not None:
                await conn.execute(commit)

        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(self.connect_timeout)),
        }
        if "application_name" not in self._info:
            kwargs["application_name"] = "perdure"
        pool = Pool(
            self.dsn,
            kwargs=kwargs,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            configure=track,
            timeout=self.connect_timeout,
            name=f"perdure-{self.table_prefix or 'default'}",
        )
        return LoopPool(pool, conns)

    async def _pool(self) -> Pool:
        """Return this loop's pool, created and opened on first use (a pool cannot serve another loop)."""
        entry, _, orphans = self._loops.get(self._new_pool)
        _per_loop.release(orphans)  # loops of finished threads and closed loops
        if entry.pool.closed:
            await entry.pool.open()
        return entry.pool

    @property
    def _pools(self) -> dict[asyncio.AbstractEventLoop, _per_loop.Slot[LoopPool]]:
        """The pools by event loop."""
        return self._loops.slots

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A pooled connection of this loop for the body, under the watchdog; returned to the pool after."""
        pool = await self._pool()
        conn = await checkout(pool, self.max_size)
        try:
            with watchdog(conn, self._answer_timeout, self.statement_timeout):
                yield conn
        finally:
            await pool.putconn(conn)

    async def _retire_pool(self) -> None:
        """Drop this loop's pool after a pool timeout, so the next call reconnects at once.

        A pool that failed to connect retries with a growing back-off; a fresh pool does not wait.
        """
        entry = self._loops.pop()
        if entry is not None:
            await entry.client.aclose()

    async def close_async(self) -> None:
        """Close every pool and change feed; a later call opens new ones. Never blocks on another loop."""
        for feed in list(self._feeds):
            await feed.close_from_any_loop()
        await _per_loop.close(self._loops.take_all(), wait=CLOSE_TIMEOUT + 1)

    def change_feed(self) -> PostgresChangeFeed:
        """A LISTEN/NOTIFY feed on a dedicated connection (see `perdure.storage._postgres_feed`)."""
        feed = PostgresChangeFeed(self)
        self._feeds.add(feed)
        return feed

    # ---- statements -----------------------------------------------------------------------------

    async def _ensure_layout(self) -> None:
        """Create or migrate the tables once per storage; refuse a layout newer than this code."""
        if self._layout_ok:
            return
        async with self._connection() as conn:
            found = await self._layout_version(conn)
            if found is None or found < LAYOUT_VERSION:
                found = await self._migrate(conn)
            self._channel = await channel_of(conn, self._names)
            if found <= LAYOUT_VERSION:
                await self._backfill(conn)
                await self._ensure_search_index(conn)
        if found > LAYOUT_VERSION:
            raise self._incompatible(found)
        self._layout_ok = True

    async def _ensure_search_index(self, conn: Conn) -> None:
        """Use the `pg_trgm` index of `search`, creating it (and the extension) when it is missing.

        One catalog probe when the index exists. Otherwise one transaction, under an advisory lock
        (concurrent `CREATE EXTENSION` calls would collide): when the server has no `pg_trgm` or the
        role may not create it, it is rolled back, logged once per process, and searches read rows
        instead (same answers, slower for a rare text).
        """
        global _trgm_warned
        probe = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self._names.search_trgm,))
        row = await probe.fetchone()
        if not (row and row[0]):
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (TRGM_LOCK,))
                    for statement in search_index_statements(self._names):
                        await conn.execute(statement)
            except psycopg.Error as exc:
                if not _trgm_warned:
                    _trgm_warned = True
                    logger.warning(
                        "PostgreSQL at %s: no pg_trgm index for execution search (%s); searches "
                        "read rows instead (CREATE EXTENSION pg_trgm as a privileged role to index them)",
                        self._where,
                        _one_line(exc),
                    )
                self._queries.search_index = None
                return
        self._queries.search_index = _trigram_clause

    async def _backfill(self, conn: Conn) -> None:
        """Fill `name` and `search` of heads written before layout 3 (or by an older perdure since).

        Runs once per storage, when it first checks the layout: a partial index finds such rows, so
        it costs one index probe when there are none. Batches of `CLEANUP_BATCH`, each its own
        statement; a head that cannot be decoded gets an empty `search` and is not tried again.
        """
        while True:
            async with conn.cursor(binary=True) as cur:
                await cur.execute(self._sql.unfilled, (CLEANUP_BATCH,))
                rows = await cur.fetchall()
            updates = []
            for execution_id, codec, payload, *_ in rows:
                try:
                    head = self._decode_head((execution_id, codec, payload, None, None))
                    updates.append((execution_name(head), search_text(head), execution_id))
                except (CorruptRecordError, IncompatibleSchemaError):
                    updates.append((None, "", execution_id))
            if updates:
                async with conn.cursor() as cur:
                    await cur.executemany(self._sql.fill, updates)
            if len(rows) < CLEANUP_BATCH:
                return

    async def _layout_version(self, conn: Conn) -> int | None:
        try:
            cur = await conn.execute(self._sql.meta_get)
        except pg_errors.UndefinedTable:
            return None
        row = await cur.fetchone()
        return int(row[0]) if row else None

    async def _migrate(self, conn: Conn) -> int:
        """Apply the missing layout steps in one transaction, serialized across workers by a lock."""
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"perdure:{self.table_prefix.lower()}",),
            )
            await conn.execute(self._sql.meta_create)
            current = await self._layout_version(conn) or 0
            if current > LAYOUT_VERSION:
                return current
            for version, statements in _MIGRATIONS:
                if version > current:
                    for statement in statements(self._names):
                        await conn.execute(statement)
                    await conn.execute(self._sql.meta_put, (str(version),))
            return LAYOUT_VERSION

    def _incompatible(self, found: int) -> IncompatibleSchemaError:
        where = (
            f"PostgreSQL database {self._where} (tables {self._names.heads}/{self._names.steps}, layout "
            f"version in table {self._names.meta})"
        )
        return IncompatibleSchemaError(
            None, found, LAYOUT_VERSION, where=where, hint=", or use another table_prefix"
        )

    async def _query(
        self, sql: str, params: _Params, execution_id: str | None, step: StepRecord | None = None
    ) -> list[_Row]:
        """Run one statement (one autocommit transaction) and return its rows, with typed errors."""
        try:
            await self._ensure_layout()
            async with self._connection() as conn, conn.cursor(binary=True) as cur:
                await cur.execute(sql, self._announcing(params))
                return await cur.fetchall()
        except pg_errors.UniqueViolation as exc:
            if step is None:
                raise await self._unavailable(exc, execution_id) from exc
            raise StepConflictError(step.execution_id, step.seq) from exc
        except psycopg.Error as exc:
            raise await self._unavailable(exc, execution_id) from exc

    async def _transaction(self, work: Callable[[Conn], Awaitable[_T]], execution_id: str | None) -> _T:
        """Run `work` in one transaction on a pooled connection (rolled back if it raises)."""
        try:
            await self._ensure_layout()
            async with self._connection() as conn, conn.transaction():
                return await work(conn)
        except psycopg.Error as exc:
            raise await self._unavailable(exc, execution_id) from exc

    def _announcing(self, params: _Params) -> _Params:
        """Named parameters get `channel`, the notification channel the writing statements use."""
        return {**params, "channel": self._channel} if isinstance(params, Mapping) else params

    async def _rows(self, conn: Conn, sql: str, params: _Params) -> list[_Row]:
        async with conn.cursor(binary=True) as cur:
            await cur.execute(sql, self._announcing(params))
            return await cur.fetchall() if cur.description is not None else []

    async def _lock_id(self, conn: Conn, execution_id: str) -> None:
        """Serialize creating and deleting one execution (transaction-level advisory lock)."""
        await conn.execute(self._sql.lock_id, (f"perdure:{self.table_prefix.lower()}:{execution_id}",))

    async def _unavailable(self, exc: psycopg.Error, execution_id: str | None) -> PerdureError:
        """The typed error of a driver error: misconfigured, corrupt, or else unavailable (timeouts too)."""
        detail = f"{self._where}: {type(exc).__name__}: {_one_line(exc)}"
        state = getattr(exc, "sqlstate", None) or ""
        if state.startswith(_CORRUPT_STATES):
            err = CorruptRecordError(execution_id or "*", _one_line(exc), location=self._location)
            err.execution_id = execution_id
            err.message = (
                f"PostgreSQL reports damaged data in {self._location} ({_one_line(exc)}). perdure did "
                f"not modify it; repair the database (REINDEX, restore from a backup) and resume."
            )
            err.args = (err.message,)
            return err
        if state.startswith(_CONFIG_STATES):
            return self._misconfigured(_one_line(exc), execution_id)
        if isinstance(exc, psycopg.DataError) and execution_id is not None and "\x00" in execution_id:
            return InvalidExecutionIdError(execution_id, "PostgreSQL text cannot hold NUL characters")
        if isinstance(exc, pg_errors.QueryCanceled):
            detail = (
                f"{self._where}: a statement ran past statement_timeout={self.statement_timeout:g}s (the "
                f"server is overloaded, or another session holds a lock on the tables): {_one_line(exc)}"
            )
        elif isinstance(exc, NoAnswer) and self.synchronous_commit in _WAITS_FOR_STANDBY:
            detail += (
                f"; with synchronous_commit={self.synchronous_commit} a commit also waits for the "
                f"synchronous standbys (synchronous_standby_names on the primary): check that they "
                f"are connected. The write may have committed on the primary without being replicated"
            )
        elif isinstance(exc, PoolTimeout):
            entry = self._pools.get(asyncio.get_running_loop())
            if entry is not None and entry.client.pool.get_stats().get("pool_size", 0) >= self.max_size:
                detail = (
                    f"all {self.max_size} connections to {self._where} stayed busy for "
                    f"{self.connect_timeout:g}s; raise max_size or connect_timeout"
                )
            else:  # cannot connect: start afresh next time instead of waiting out the pool's back-off
                await self._retire_pool()
                reason = await self._probe()
                if _MISCONFIGURED.search(reason):
                    return self._misconfigured(reason, execution_id)
                detail = f"no connection to {self._where} within {self.connect_timeout:g}s ({reason})"
        elif not state and _MISCONFIGURED.search(str(exc)):
            return self._misconfigured(_one_line(exc), execution_id)
        return StorageUnavailableError(_BACKEND, detail, execution_id=execution_id)

    def _misconfigured(self, reason: str, execution_id: str | None) -> StorageConfigurationError:
        return StorageConfigurationError(
            f"PostgreSQL at {self._where} refused perdure: {reason}. Check the database name, user, "
            f"password and the user's privileges on tables {self.table_prefix}* (password not shown); "
            f"retrying will not help.",
            execution_id=execution_id,
        )

    async def _probe(self) -> str:
        """Why connecting fails, for the error message (the pool only says that it timed out)."""
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.dsn, connect_timeout=2), timeout=2.5
            )
        except (psycopg.Error, TimeoutError, OSError) as exc:
            return _one_line(exc)
        await conn.close()
        return "the server answers again now"

    # ---- rows <-> records -----------------------------------------------------------------------

    def _head_params(self, record: ExecutionRecord) -> dict[str, Any]:
        codec, payload = self.codec.encode(encode_head(record))
        return {
            "id": record.execution_id,
            "status": record.status.value,
            "updated": _utc(record.updated_at),
            "created": _utc(record.created_at),
            "codec": codec,
            "payload": payload,
            "owner": record.lease_owner,
            "name": execution_name(record),
            "search": search_text(record),
        }

    def _decode_head(self, row: _Row) -> ExecutionRecord:
        execution_id, codec, payload, owner, expires = row
        head = decode_head(
            execution_id,
            bytes(payload),
            codec=codec,
            location=self._location,
            max_size=self.codec.max_decompressed_size,
        )
        head.lease_owner = owner
        head.lease_expires_at = _utc(expires) if expires is not None else None
        return head

    async def _renewal_lost(self, execution_id: str, owner: str) -> LeaseLostError:
        rows = await self._query(self._sql.lease_of, (execution_id,), execution_id)
        return LeaseLostError(execution_id, owner, rows[0][0] if rows else None)

    async def _refused(self, record: ExecutionRecord) -> PerdureError:
        """Why a head write changed nothing: deleted, never created, or fenced by another's lease."""
        execution_id = record.execution_id
        [(holder, exists, deleted)] = await self._query(self._sql.refusal, {"id": execution_id}, execution_id)
        if deleted:
            return ExecutionDeletedError(execution_id)
        if not exists:
            return self._not_found(execution_id)
        return self._lease_lost(record, holder)

    def _not_found(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(execution_id, backend=_BACKEND, where=self._searched)

    # ---- contract -------------------------------------------------------------------------------

    async def save_state_async(self, record: ExecutionRecord) -> None:
        """Write the head, fenced by the lease; the lease columns are left as they are.

        A write of a running attempt (`lease_owner` set) only updates an existing head, in one
        statement; an unleased write may create the head, unless the id is tombstoned.
        """
        execution_id, params = record.execution_id, self._head_params(record)
        if record.lease_owner is not None:
            written = await self._query(self._sql.update, params, execution_id)
        else:

            async def upsert(conn: Conn) -> list[_Row]:
                await self._lock_id(conn, execution_id)
                return await self._rows(conn, self._sql.save, params)

            written = await self._transaction(upsert, execution_id)
        if not written:
            raise await self._refused(record)

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        """Read the head with its stored lease; None when the execution does not exist."""
        rows = await self._query(self._sql.load, (execution_id,), execution_id)
        return self._decode_head(rows[0]) if rows else None

    async def delete_state_async(self, execution_id: str, *, force: bool = False) -> bool:
        """Delete head (with its lease) and journal and leave a tombstone, in one transaction.

        The head row is locked first, so no lease can be taken and no write can land in between.
        """

        async def delete(conn: Conn) -> bool:
            await self._lock_id(conn, execution_id)
            rows = await self._rows(conn, self._sql.lock_head, (execution_id,))
            if not rows:
                return False
            holder, expires, live = rows[0]
            if holder is not None and live and not force:
                raise ExecutionLeasedError(execution_id, holder, _utc(expires))
            await self._rows(conn, self._sql.delete, {"id": execution_id})
            return True

        return await self._transaction(delete, execution_id)

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Fenced head upsert and journal insert in one statement: both happen or neither."""
        codec, payload = self.codec.encode(encode_step(step))
        params = {
            **self._head_params(record),
            "step_id": step.execution_id,
            "seq": step.seq,
            "kind": step.kind.value,
            "name": step.name,
            "key": step.key,
            "step_codec": codec,
            "step_payload": payload,
        }
        if not await self._query(self._sql.append, params, record.execution_id, step):
            raise await self._refused(record)

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Fenced head update and every journal insert in one statement: all of them happen or none.

        The entries travel as one array per column (`unnest`), so a batch is one round trip and one
        commit; a seq that is journaled already aborts the whole statement.
        """
        batch = self._batch(record, steps)
        encoded = [self.codec.encode(encode_step(step)) for step in batch]
        params = {
            **self._head_params(record),
            "step_id": record.execution_id,
            "seqs": [step.seq for step in batch],
            "kinds": [step.kind.value for step in batch],
            "names": [step.name for step in batch],
            "keys": [step.key for step in batch],
            "step_codecs": [codec for codec, _ in encoded],
            "step_payloads": [payload for _, payload in encoded],
        }
        try:
            written = await self._query(self._sql.append_many, params, record.execution_id, batch[0])
        except StepConflictError as exc:  # name the first journaled seq (only on this error path)
            seqs = params["seqs"]
            rows = await self._query(self._sql.first_taken, (record.execution_id, seqs), record.execution_id)
            taken = rows[0][0] if rows and rows[0][0] is not None else batch[0].seq
            raise StepConflictError(record.execution_id, taken) from exc.__cause__
        if not written:
            raise await self._refused(record)

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        """Read the journal in sequence order (primary-key order)."""
        rows = await self._query(self._sql.steps, (execution_id,), execution_id)
        max_size = self.codec.max_decompressed_size
        return self._journal_from_rows(execution_id, rows, location=self._location, max_size=max_size)

    async def load_steps_after_async(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """Read the entries after `after_seq` by primary-key range (`seq > %s`)."""
        start = self._tail_start(execution_id, after_seq)
        rows = await self._query(self._sql.steps_after, (execution_id, start - 1), execution_id)
        max_size = self.codec.max_decompressed_size
        return self._journal_from_rows(
            execution_id, rows, location=self._location, max_size=max_size, start=start
        )

    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        return self._readable_heads(await self._query(self._sql.all_heads, (), None), self._decode_head)

    # ---- leases ---------------------------------------------------------------------------------

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        """One conditional UPDATE takes the lease: of two racing workers the row lock lets one win."""
        ttl = self._check_ttl(ttl_seconds)
        params = {"id": execution_id, "owner": owner, "steal": steal_from, "ttl": ttl}
        for _ in range(_ACQUIRE_TRIES):
            rows = await self._query(self._sql.acquire, params, execution_id)
            if rows:
                return self._decode_head(rows[0])
            current = await self._query(self._sql.lease_of, (execution_id,), execution_id)
            if not current:
                raise self._not_found(execution_id)
            holder, expires, live = current[0]
            if holder is not None and holder not in (owner, steal_from) and live:
                raise ExecutionLeasedError(execution_id, holder, _utc(expires))
            # Released or expired between the two statements: try again.
        raise ExecutionLeasedError(execution_id, "(contended)", None)

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        """Extend the lease if `owner` still holds it (even expired, as long as nobody took it)."""
        params = {"id": execution_id, "owner": owner, "ttl": self._check_ttl(ttl_seconds)}
        rows = await self._query(self._sql.renew, params, execution_id)
        if not rows:
            raise await self._renewal_lost(execution_id, owner)
        return _utc(rows[0][0])

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        """Clear the lease if `owner` holds it."""
        return bool(await self._query(self._sql.release, (execution_id, owner), execution_id))

    # ---- indexed queries ------------------------------------------------------------------------

    async def list_executions_async(
        self, status: ExecutionStatus | str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        """Newest first from the `(updated_at)` or `(status, updated_at)` index; unreadable heads skipped."""
        lim = None if limit is None else max(limit, 0)
        if status is None:
            rows = await self._query(self._sql.list_all, (lim,), None)
        else:
            rows = await self._query(self._sql.list_status, (ExecutionStatus(status).value, lim), None)
        return self._readable_heads(rows, self._decode_head)

    async def get_stats_async(self) -> dict[str, Any]:
        """Counted by SQL; rows without a known status (damaged heads) are left out of both counts."""
        return self._stats(await self._query(self._sql.stats, (), None))

    async def cleanup_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Purge old tombstones, then delete old executions that are not running nor kept, in batches.

        Each batch is one short transaction: up to `CLEANUP_BATCH` of the oldest heads that are old,
        whose status is not kept (`status <> ALL(keep)`, in the query) and without an unexpired
        lease are locked (rows being written are skipped), then deleted with their journals, each
        leaving a tombstone. Returns how many were deleted.
        """
        cutoff = self._cutoff(older_than_days)
        keep = sorted(retention_keep(keep_statuses))
        wanted = self._cleanup_limit(limit)
        purge = {"cutoff": cutoff, "limit": CLEANUP_BATCH}
        while int((await self._query(self._sql.purge, purge, None))[0][0]) >= CLEANUP_BATCH:
            pass
        deleted = 0
        for size in self._cleanup_rounds(wanted):
            params = {"cutoff": cutoff, "keep": keep, "limit": size}

            async def clean(conn: Conn, params: dict[str, Any] = params) -> int:
                ids = [row[0] for row in await self._rows(conn, self._sql.cleanup, params)]
                if not ids:
                    return 0
                return int((await self._rows(conn, self._sql.delete_many, {"ids": ids}))[0][0])

            done = await self._transaction(clean, None)
            deleted += done
            if done < size:
                return deleted
        return deleted

    async def count_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
    ) -> int:
        """Counted by SQL over the `updated_at` index."""
        params = {"cutoff": self._cutoff(older_than_days), "keep": sorted(retention_keep(keep_statuses))}
        return int((await self._query(self._sql.count_old, params, None))[0][0])

    # ---- list queries and cancel requests ---------------------------------------------------------

    async def query_executions_async(self, query: ExecutionQuery) -> ExecutionPage:
        """One statement over an index, newest first (see `perdure.storage._sql_query`)."""
        rows = await self._query(*self._queries.page(query), None)
        page = rows[: query.limit]
        cursor = None
        if len(rows) > query.limit:
            cursor = encode_cursor(_utc(page[-1][-1]), page[-1][0])
        return ExecutionPage(self._readable_heads([row[:-1] for row in page], self._decode_head), cursor)

    async def count_executions_async(self, query: ExecutionQuery) -> int:
        """`count(*)` over the filters (an index range for a status or a name)."""
        return int((await self._query(*self._queries.count(query), None))[0][0])

    async def activity_async(self, since: datetime, bucket_seconds: int = 3600) -> list[ActivityBucket]:
        """One grouped statement over two index ranges (`created_at`; `status, updated_at` for failed)."""
        bounds = activity_bounds(since, bucket_seconds)
        if not bounds:
            return []
        return self._queries.buckets(bounds, await self._query(*self._queries.activity(bounds), None))

    async def request_cancel_async(self, execution_id: str, reason: str = "") -> bool:
        """Insert into `<prefix>cancels` if the head exists, and announce it on the change feed."""
        params = {"id": execution_id, "reason": check_reason(reason)}
        rows = await self._query(self._sql.cancel_put, params, execution_id)
        return bool(rows and rows[0][0])

    async def cancel_request_async(self, execution_id: str) -> CancelRequest | None:
        """One primary-key read of `<prefix>cancels`."""
        rows = await self._query(self._sql.cancel_get, (execution_id,), execution_id)
        return CancelRequest(_utc(rows[0][0]), rows[0][1]) if rows else None

    async def clear_cancel_request_async(self, execution_id: str) -> bool:  # noqa: D102
        return bool(await self._query(self._sql.cancel_del, (execution_id,), execution_id))

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        run_sync(self._query(self._sql.raw_head, (execution_id, payload), execution_id))


# ---- argument checks ----------------------------------------------------------------------------


def _parse_dsn(dsn: str) -> dict[str, Any]:
    if not isinstance(dsn, str) or not dsn.strip():
        raise UserError(f"PostgresDurableStorage needs a DSN such as postgresql://user@host/db, got {dsn!r}.")
    try:
        return conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise UserError(
            f"Invalid PostgreSQL connection string (password not shown): {_one_line(exc)}."
        ) from exc


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise UserError(f"table_prefix must be a string, got {prefix!r}.")
    if prefix:
        validate_identifier(prefix, "table_prefix")
    for name in Names(prefix).all:
        validate_identifier(name, f"table name (from table_prefix {prefix!r})")
    return prefix


def _check_sizes(min_size: int, max_size: int) -> tuple[int, int]:
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
        raise UserError(f"min_size must be an integer >= 0, got {min_size!r}.")
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < max(min_size, 1):
        raise UserError(f"max_size must be an integer >= max(min_size, 1), got {max_size!r}.")
    return min_size, max_size


def _check_synchronous_commit(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in _SYNCHRONOUS_COMMIT:
        raise UserError(
            f"synchronous_commit must be one of {', '.join(_SYNCHRONOUS_COMMIT)} (or None for the "
            f"server's setting), got {value!r}."
        )
    return value.strip().lower()


def _float_param(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise UserError(f"{key} must be a number in a PostgreSQL URL, got {value!r}.") from exc
