"""Storage in one SQLite file: zero servers, safe for several processes on one machine.

Heads live in `<table>`, journal entries in `<table>_steps`, the layout version in `<table>_meta`,
tombstones of deleted executions (their writes are refused until cleanup purges them) in
`<table>_tombstones`. The file is created by the first write; other operations on a file that does
not exist raise `StorageNotFoundError` and create nothing.
A step is one `BEGIN IMMEDIATE` transaction holding the journal insert and the head upsert, so a
crash leaves both or neither; a batch of steps (`append_steps_async`) is one such transaction with
all its inserts (`executemany`): one commit for the batch. The lease lives in two columns of the
heads table that head upserts never touch; the upsert's `WHERE` clause is the write fence. Lease
expiry is compared on the boot's monotonic clock (see `_clock`), so a wall-clock step neither frees
nor extends a lease.
WAL mode lets readers run while a writer commits, and `busy_timeout` makes concurrent writers from
other processes wait (then fail with `StorageLockedError`) instead of failing at once; it stays well
under a lease's time so a stuck writer cannot outlive the heartbeat. Connections come from a small
pool shared by all threads. A file this process cannot write is opened read-only: reads work, writes
raise `StorageConfigurationError`. Driver errors map to typed errors: damaged file
`CorruptRecordError`, lock timeout `StorageLockedError`, read-only or unusable path
`StorageConfigurationError`, anything else `StorageUnavailableError`.

One module (some 630 lines) for one concept, the SQLite backend: its statements (built per table
name; the benchmarks read them from the storage), opening the file read-write or read-only, the
mapping of SQLite's result codes, and the contract, each write one `_transaction` (`_immediate`).
The connection pool shared by threads is `perdure.storage._sqlite_pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from .. import _faults
from ..codec import Codec, decode_head, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    LeaseLostError,
    PerdureError,
    StepConflictError,
    StorageConfigurationError,
    StorageLockedError,
    StorageNotFoundError,
    StorageUnavailableError,
    UserError,
)
from ..records import SCHEMA_VERSION, ExecutionRecord, ExecutionStatus, StepRecord, utcnow
from . import _clock
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
from ._sql_query import Dialect, QuerySql, sqlite_activity
from ._sqlite_pool import ConnectionPool
from .base import DurableExecutionStorage, logger, retention_keep, validate_identifier

__all__ = ["SQLiteDurableStorage"]

_SYNCHRONOUS = ("FULL", "NORMAL")
_CLEANUP_BATCH = 100
"""Executions one cleanup transaction deletes: a few milliseconds of holding the write lock."""
_T = TypeVar("_T")
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_CONFIG = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH}
# Read-only with a WAL index this process cannot create (directory not writable, no -shm yet).
_RO_NO_WAL_INDEX = {
    sqlite3.SQLITE_READONLY_DIRECTORY,
    sqlite3.SQLITE_READONLY_CANTINIT,
    sqlite3.SQLITE_CANTOPEN,
}


def _from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _codes(exc: sqlite3.Error) -> tuple[int | None, int | None]:
    """The extended and primary SQLite result codes of a driver error (None when it has none)."""
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    return code, None if code is None else code & 0xFF


def _immediate(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run `work` in one `BEGIN IMMEDIATE` transaction on `conn`: committed, or rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        _faults.point("before_commit")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


_SQL_NAMES = "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?, ?)"


@functools.cache
def _trigram_available() -> bool:
    """Whether this process's SQLite has FTS5 with the trigram tokenizer (SQLite >= 3.34)."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(s, tokenize='trigram case_sensitive 1')")
    except sqlite3.Error:
        return False
    return True


@functools.cache
def _log_no_trigram(db_path: str) -> None:
    """Say once per database that its search index is left unmaintained."""
    logger.warning(
        "SQLite %s has no FTS5 trigram tokenizer: the search index of %s is not maintained "
        "(searches read rows; a SQLite >= 3.34 with FTS5 rebuilds the index when it opens the file)",
        sqlite3.sqlite_version,
        db_path,
    )


def _ts(moment: datetime) -> str:
    """Fixed-width UTC text, so that SQL string order is time order."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # 10x cheaper than strftime


class SQLiteDurableStorage(DurableExecutionStorage):
    """Durable storage in a SQLite database (stdlib `sqlite3`, WAL mode).

    Args:
        db_path: Database file; created (with its directory) by the first write. Reads of a file
            that does not exist raise `StorageNotFoundError`.
        table_name: Name of the heads table; `<name>_steps` and `<name>_meta` are created next to it.
        synchronous: `"FULL"` (default) survives power loss; `"NORMAL"` is faster and survives
            process crashes but may lose the last commits on power loss.
        busy_timeout_ms: How long a writer waits for another process's transaction before
            `StorageLockedError`; keep it well under the lease time (default 5 s, leases 30 s).
        codec: Payload codec; `Codec(compress_above=...)` zstd-compresses large records.
        max_connections: Connections shared by all threads of this process (each holds three file
            descriptors); a thread waits up to `busy_timeout_ms` for one.

    """

    backend_name = "sqlite"
    atomic_batches = True
    shared_cancel_requests = True

    def __init__(
        self,
        db_path: str | os.PathLike[str] = "./durable_executions.db",
        table_name: str = "durable_executions",
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        codec: Codec | None = None,
        max_connections: int = 8,
    ) -> None:
        self.db_path = str(db_path)
        if self.db_path == ":memory:" or self.db_path.startswith("file::memory:"):
            raise UserError(
                "SQLiteDurableStorage needs a database file (each thread opens its own connection); "
                "use InMemoryDurableStorage() or storage_from_url('memory://') for in-process storage."
            )
        self.table_name = validate_identifier(table_name, "table name")
        self.synchronous = str(synchronous).upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise UserError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}.")
        if not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise UserError(f"busy_timeout_ms must be a non-negative integer, got {busy_timeout_ms!r}.")
        if not isinstance(max_connections, int) or isinstance(max_connections, bool) or max_connections < 1:
            raise UserError(f"max_connections must be an integer >= 1, got {max_connections!r}.")
        self.busy_timeout_ms = busy_timeout_ms
        self.codec = codec or Codec()
        self._location = f"{self.db_path}:{table_name}"
        self._searched = f"at {self.db_path} (table {table_name})"
        """Where executions are looked up, for `ExecutionNotFoundError`."""
        t, s, m = table_name, f"{table_name}_steps", f"{table_name}_meta"
        tb, cn = f"{table_name}_tombstones", f"{table_name}_cancels"
        self._sql_upsert_head = (
            f"INSERT INTO {t} (execution_id, status, created_at, updated_at, schema_version, codec, payload, "
            f"name, search) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(execution_id) DO UPDATE SET "
            f"status=excluded.status, created_at=excluded.created_at, updated_at=excluded.updated_at, "
            f"schema_version=excluded.schema_version, codec=excluded.codec, payload=excluded.payload, "
            f"name=excluded.name, search=excluded.search"
        )
        # Whether the stored lease expired, as `_clock.is_live` decides it; parameters from `_expired_args`.
        self._sql_expired = (
            f"(CASE WHEN {t}.lease_boot IS NOT NULL AND {t}.lease_mono IS NOT NULL AND ? IS NOT NULL "
            f"THEN {t}.lease_boot IS NOT ? OR {t}.lease_mono <= ? ELSE {t}.lease_expires <= ? END)"
        )
        # Fenced variant for the engine's writes: an unexpired lease of another owner blocks the update
        # (rowcount 0), which the caller turns into LeaseLostError inside the same transaction.
        self._sql_fenced_head = (
            self._sql_upsert_head
            + f" WHERE {t}.lease_owner IS NULL OR {t}.lease_owner IS ? OR {self._sql_expired}"
        )
        # Never creates: the write of a running attempt, and the head half of a step append.
        self._sql_fenced_update = (
            f"UPDATE {t} SET status = ?, created_at = ?, updated_at = ?, schema_version = ?, codec = ?, "
            f"payload = ?, name = ?, search = ? WHERE execution_id = ? AND "
            f"({t}.lease_owner IS NULL OR {t}.lease_owner IS ? OR {self._sql_expired})"
        )
        # The same write without `name` and `search`: a step's head write, where they rarely change,
        # then does not fire the search index's trigger (~30 us a write); see `_search_written`.
        self._sql_fenced_update_plain = (
            f"UPDATE {t} SET status = ?, created_at = ?, updated_at = ?, schema_version = ?, codec = ?, "
            f"payload = ? WHERE execution_id = ? AND "
            f"({t}.lease_owner IS NULL OR {t}.lease_owner IS ? OR {self._sql_expired})"
        )
        self._search_written: dict[str, tuple[Any, Any]] = {}
        """(name, search) this storage last committed per execution; a head write that would store the
        same text skips the two columns. Dropped on a failed write, a lease taken and a delete."""
        self._sql_lease_state = (
            f"SELECT lease_owner, lease_expires, lease_boot, lease_mono FROM {t} WHERE execution_id = ?"
        )
        self._sql_tomb_get = f"SELECT 1 FROM {tb} WHERE execution_id = ?"
        self._sql_tomb_put = f"INSERT OR REPLACE INTO {tb} (execution_id, deleted_at) VALUES (?, ?)"
        # One batch of old tombstones (the caller repeats while batches come back full).
        self._sql_tomb_purge = (
            f"DELETE FROM {tb} WHERE rowid IN (SELECT rowid FROM {tb} WHERE deleted_at < ? LIMIT ?)"
        )
        # A batch of the oldest executions that are old and not running (no unexpired lease); {keep}
        # is `_not_kept`'s status filter. Parameters: cutoff, kept statuses, `_expired_args`, limit.
        self._sql_cleanup_ids = (
            f"SELECT execution_id FROM {t} WHERE updated_at < ? {{keep}} AND "
            f"({t}.lease_owner IS NULL OR {self._sql_expired}) ORDER BY updated_at LIMIT ?"
        )
        self._sql_count_old = f"SELECT COUNT(*) FROM {t} WHERE updated_at < ? {{keep}}"
        self._sql_lease_get = (
            f"SELECT codec, payload, lease_owner, lease_expires, lease_boot, lease_mono FROM {t} "
            f"WHERE execution_id = ?"
        )
        self._sql_lease_set = (
            f"UPDATE {t} SET lease_owner = ?, lease_expires = ?, lease_boot = ?, lease_mono = ? "
            f"WHERE execution_id = ?"
        )
        self._sql_lease_renew = (
            f"UPDATE {t} SET lease_expires = ?, lease_boot = ?, lease_mono = ? "
            f"WHERE execution_id = ? AND lease_owner = ?"
        )
        self._sql_lease_release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_expires = NULL, lease_boot = NULL, lease_mono = NULL "
            f"WHERE execution_id = ? AND lease_owner = ?"
        )
        self._sql_lease_holder = f"SELECT lease_owner, lease_expires FROM {t} WHERE execution_id = ?"
        # No SELECT before the insert: the primary key refuses a seq that is already journaled.
        self._sql_insert_step = (
            f"INSERT INTO {s} (execution_id, seq, kind, name, key, codec, payload) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self._sql_load_head = (
            f"SELECT codec, payload, lease_owner, lease_expires FROM {t} WHERE execution_id = ?"
        )
        self._sql_load_steps = f"SELECT seq, codec, payload FROM {s} WHERE execution_id = ? ORDER BY seq"
        self._sql_load_steps_after = (
            f"SELECT seq, codec, payload FROM {s} WHERE execution_id = ? AND seq > ? ORDER BY seq"
        )
        self._sql_first_taken = f"SELECT min(seq) FROM {s} WHERE execution_id = ? AND seq BETWEEN ? AND ?"
        self._sql_delete_head = f"DELETE FROM {t} WHERE execution_id = ?"
        self._sql_delete_steps = f"DELETE FROM {s} WHERE execution_id = ?"
        self._sql_all_heads = f"SELECT execution_id, codec, payload, lease_owner, lease_expires FROM {t}"
        self._sql_list = (
            f"SELECT execution_id, codec, payload, lease_owner, lease_expires FROM {t} {{where}} "
            f"ORDER BY updated_at DESC, execution_id DESC LIMIT ?"
        )
        self._sql_stats = f"SELECT status, COUNT(*) FROM {t} GROUP BY status"
        self._sql_schema = [
            f"CREATE TABLE IF NOT EXISTS {m} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {t} (execution_id TEXT PRIMARY KEY, status TEXT, "
            f"created_at TEXT, updated_at TEXT, schema_version INTEGER, codec TEXT, payload BLOB, "
            f"lease_owner TEXT, lease_expires REAL, lease_boot TEXT, lease_mono REAL)",
            f"CREATE TABLE IF NOT EXISTS {s} (execution_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            f"kind TEXT, name TEXT, key TEXT, codec TEXT, payload BLOB, "
            f"PRIMARY KEY (execution_id, seq)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {tb} (execution_id TEXT PRIMARY KEY, deleted_at TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {tb}_deleted ON {tb} (deleted_at)",
            f"CREATE TABLE IF NOT EXISTS {cn} (execution_id TEXT PRIMARY KEY, requested_at TEXT NOT NULL, "
            f"reason TEXT NOT NULL) WITHOUT ROWID",
        ]
        # After the columns they index exist (tables of older versions get them by ALTER TABLE). The
        # list queries' indexes end in execution_id, their tie-break; they replace the older
        # `_status_updated (status, updated_at)` and `_updated (updated_at)`, dropped on upgrade.
        self._sql_indexes = [
            f"DROP INDEX IF EXISTS {t}_status_updated",
            f"DROP INDEX IF EXISTS {t}_updated",
            f"CREATE INDEX IF NOT EXISTS {t}_status_updated_id ON {t} (status, updated_at, execution_id)",
            f"CREATE INDEX IF NOT EXISTS {t}_updated_id ON {t} (updated_at, execution_id)",
            f"CREATE INDEX IF NOT EXISTS {t}_name_updated ON {t} (name, updated_at, execution_id)",
            f"CREATE INDEX IF NOT EXISTS {t}_created ON {t} (created_at)",
            f"CREATE INDEX IF NOT EXISTS {t}_unfilled ON {t} (execution_id) WHERE search IS NULL",
        ]
        self._sql_unfilled = f"SELECT execution_id, codec, payload FROM {t} WHERE search IS NULL LIMIT ?"
        self._sql_fill = f"UPDATE {t} SET name = ?, search = ? WHERE execution_id = ? AND search IS NULL"
        self._sql_cancel_put = (
            f"INSERT OR IGNORE INTO {cn} (execution_id, requested_at, reason) "
            f"SELECT execution_id, ?, ? FROM {t} WHERE execution_id = ?"
        )
        self._sql_exists = f"SELECT 1 FROM {t} WHERE execution_id = ?"
        self._sql_cancel_get = f"SELECT requested_at, reason FROM {cn} WHERE execution_id = ?"
        self._sql_cancel_del = f"DELETE FROM {cn} WHERE execution_id = ?"
        self._queries = QuerySql(
            t,
            "execution_id, codec, payload, lease_owner, lease_expires",
            Dialect(param="?", contains="instr(search, ?) > 0", stamp=_ts, activity=sqlite_activity),
        )
        # The search index: an FTS5 table (trigram tokenizer) over the heads' `search` column, kept
        # in sync by triggers that only touch it when `search` changes (not at every step's head
        # write, where the text stays the same). See `_search_index_sql`.
        fts = f"{t}_search"
        self._fts_table = fts
        self._fts_triggers = (f"{fts}_ins", f"{fts}_del", f"{fts}_upd")
        put = f"INSERT INTO {fts} (rowid, search) SELECT new.rowid, new.search WHERE new.search <> ''"
        drop = (
            f"INSERT INTO {fts} ({fts}, rowid, search) SELECT 'delete', old.rowid, old.search "
            f"WHERE old.search <> ''"
        )
        ins, dele, upd = self._fts_triggers
        self._sql_fts = [
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5(search, content='{t}', "
            f"content_rowid='rowid', tokenize='trigram case_sensitive 1')",
            f"CREATE TRIGGER IF NOT EXISTS {ins} AFTER INSERT ON {t} BEGIN {put}; END",
            f"CREATE TRIGGER IF NOT EXISTS {dele} AFTER DELETE ON {t} BEGIN {drop}; END",
            f"CREATE TRIGGER IF NOT EXISTS {upd} AFTER UPDATE OF search ON {t} "
            f"WHEN old.search IS NOT new.search BEGIN {drop}; {put}; END",
        ]
        self._sql_fts_rebuild = f"INSERT INTO {fts} ({fts}) VALUES ('rebuild')"
        self._sql_meta_get = f"SELECT value FROM {m} WHERE key = 'schema_version'"
        self._sql_meta_put = f"INSERT OR IGNORE INTO {m} (key, value) VALUES ('schema_version', ?)"
        self._read_only = False
        self._pool = ConnectionPool(
            self._open, max_connections, max(busy_timeout_ms / 1000, 1.0), f"SQLite database {self.db_path}"
        )
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._query_columns: bool | None = None

    def __repr__(self) -> str:
        return f"SQLiteDurableStorage({self.db_path!r}, table_name={self.table_name!r})"

    # ---- connections ----------------------------------------------------------------------------

    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{quote(self.db_path)}?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        return conn

    def _open(self) -> sqlite3.Connection:
        """A new pooled connection: read-write, or read-only when this process cannot write the file."""
        if not self._read_only and os.path.exists(self.db_path) and not os.access(self.db_path, os.W_OK):
            self._read_only = True
        if not self._read_only:
            conn = self._connect("rwc")
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                return conn
            except sqlite3.Error as exc:
                conn.close()
                if _codes(exc)[1] != sqlite3.SQLITE_READONLY:
                    raise
                self._read_only = True
        logger.info("SQLite database %s is not writable here: opened read-only", self.db_path)
        conn = self._connect("ro")
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # reads the file now, not at first use
            return conn
        except sqlite3.Error as exc:
            conn.close()
            wal = Path(f"{self.db_path}-wal")
            if not (set(_codes(exc)) & _RO_NO_WAL_INDEX) or (wal.exists() and wal.stat().st_size > 0):
                raise
        # No WAL index can be created here and no WAL content is pending: the file alone is the database.
        return self._connect("ro&immutable=1")

    def _unavailable(self, exc: sqlite3.Error, execution_id: str | None) -> PerdureError:
        """The typed error for a driver error: damaged, locked, misconfigured, or else unavailable."""
        extended, primary = _codes(exc)
        path = self.db_path
        if primary in _CORRUPT:
            err = CorruptRecordError(execution_id or "*", str(exc), location=path)
            err.execution_id = execution_id
            who = f" (execution {execution_id!r})" if execution_id else ""
            err.message = (
                f"The SQLite database {path} is damaged: {exc}{who}. perdure did not modify it. Restore "
                f"the file from a backup, or salvage the readable rows with `sqlite3 {path} .recover`."
            )
            err.args = (err.message,)
            return err
        if primary in _LOCKED:
            return StorageLockedError(
                "sqlite",
                f"{path}: {exc} (another connection held its lock longer than busy_timeout_ms="
                f"{self.busy_timeout_ms}); retry once it is released",
                execution_id=execution_id,
            )
        if primary == sqlite3.SQLITE_READONLY:
            return StorageConfigurationError(
                f"The SQLite database {path} is read-only for this process ({exc}): executions can be "
                f"listed and read, not written. Make the file and its directory writable, or use a "
                f"writable copy.",
                execution_id=execution_id,
            )
        parent = Path(path).parent
        if primary in _CONFIG or (primary == sqlite3.SQLITE_CANTOPEN and not parent.is_dir()):
            return StorageConfigurationError(
                f"Cannot use the SQLite database {path} ({exc}): check the path and its permissions.",
                execution_id=execution_id,
            )
        if extended == sqlite3.SQLITE_ERROR and "no such table" in str(exc):
            return StorageNotFoundError(
                "sqlite", f"{path} (table {self.table_name})", hint=f"It has no perdure tables ({exc})."
            )
        return StorageUnavailableError("sqlite", f"{path}: {exc}", execution_id=execution_id)

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]], execution_id: str | None) -> list[int]:
        """Run `statements` in one immediate transaction; return their row counts."""
        return self._transaction(
            execution_id, lambda conn: [conn.execute(sql, params).rowcount for sql, params in statements]
        )

    def _read(self, sql: str, params: Sequence[Any], execution_id: str | None = None) -> list[Any]:
        self._ready(create=False)
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable(exc, execution_id) from exc

    def _ready(self, *, create: bool) -> None:
        """Open the database on first use (nothing is touched at construction).

        A write (`create`) creates the file and its directory; any other operation raises
        `StorageNotFoundError` when the file does not exist, and creates nothing.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            if not os.path.exists(self.db_path):
                if not create:
                    raise StorageNotFoundError("sqlite", self.db_path)
                parent = Path(self.db_path).parent
                if parent != Path():
                    parent.mkdir(parents=True, exist_ok=True)
            self._init_schema()
            self._schema_ready = True

    def _init_schema(self) -> None:
        try:
            with self._pool.connection() as conn:
                if self._read_only:  # inspection only: nothing to create, check the version
                    row = conn.execute(self._sql_meta_get).fetchone()
                    found = int(row[0]) if row else SCHEMA_VERSION
                    names = conn.execute(_SQL_NAMES, (self._fts_table, *self._fts_triggers)).fetchall()
                    self._use_search_index(_trigram_available() and len(names) == 4)
                else:
                    found = self._create_schema(conn)
        except sqlite3.Error as exc:
            raise self._unavailable(exc, None) from exc
        if found > SCHEMA_VERSION:
            where = f"SQLite database {self.db_path} (schema version in table {self.table_name}_meta)"
            raise IncompatibleSchemaError(None, found, SCHEMA_VERSION, where=where)
        if not self._read_only:
            self._backfill()

    def _search_index(self, conn: sqlite3.Connection) -> bool:
        """Create or repair the FTS5 search index when this SQLite has the trigram tokenizer.

        Inside `_create_schema`'s transaction. Triggers missing next to the table (a new table, or
        one that a SQLite without FTS5 trigram left unmaintained) mean it is rebuilt from the heads.
        Without the tokenizer, the triggers are dropped (writes would fail on them) and searches
        read rows; a later open with the tokenizer rebuilds the index.
        """
        names = {row[0] for row in conn.execute(_SQL_NAMES, (self._fts_table, *self._fts_triggers))}
        if not _trigram_available():
            for trigger in self._fts_triggers:
                conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            if names:
                _log_no_trigram(self.db_path)
            return False
        for sql in self._sql_fts:
            conn.execute(sql)
        if not set(self._fts_triggers) <= names:
            conn.execute(self._sql_fts_rebuild)
        return True

    def _use_search_index(self, enabled: bool) -> None:
        self._queries.search_index = self._fts_clause if enabled else None

    def _fts_clause(self, folded: str) -> tuple[str, list[Any]]:
        """Rows whose `search` holds `folded`'s trigrams in sequence (an FTS5 phrase: a substring)."""
        phrase = '"' + folded.replace('"', '""') + '"'
        return f"rowid IN (SELECT rowid FROM {self._fts_table} WHERE {self._fts_table} MATCH ?)", [phrase]

    def _has_query_columns(self) -> bool:
        """Whether the heads table has the list queries' columns (a read-only older file may not)."""
        if self._query_columns is None:
            rows = self._read(f"PRAGMA table_info({self.table_name})", ())
            self._query_columns = {"name", "search"} <= {row[1] for row in rows}
        return self._query_columns

    def _backfill(self) -> None:
        """Fill `name` and `search` of heads written before those columns existed, in short batches.

        Runs when the storage opens the file: after the upgrade that added the columns, and for heads
        an older perdure wrote since (it leaves them NULL). A head that cannot be decoded gets an
        empty `search`, so it is not tried again (the queries skip it like every listing does).
        """
        while True:

            def fill(conn: sqlite3.Connection) -> int:
                rows = conn.execute(self._sql_unfilled, (_CLEANUP_BATCH,)).fetchall()
                updates = []
                for execution_id, codec, payload in rows:
                    try:
                        head = self._decode_head(execution_id, codec, payload)
                        updates.append((execution_name(head), search_text(head), execution_id))
                    except (CorruptRecordError, IncompatibleSchemaError):
                        updates.append((None, "", execution_id))
                conn.executemany(self._sql_fill, updates)
                return len(rows)

            try:
                with self._pool.connection() as conn:
                    done = _immediate(conn, fill)
            except sqlite3.Error as exc:
                raise self._unavailable(exc, None) from exc
            if done < _CLEANUP_BATCH:
                return

    def _create_schema(self, conn: sqlite3.Connection) -> int:
        """Create or upgrade the tables in one transaction; return the stored schema version."""

        def create(conn: sqlite3.Connection) -> int:
            for sql in self._sql_schema:
                conn.execute(sql)
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({self.table_name})")}
            for column, kind in (
                ("lease_owner", "TEXT"),
                ("lease_expires", "REAL"),
                ("lease_boot", "TEXT"),
                ("lease_mono", "REAL"),
                ("name", "TEXT"),
                ("search", "TEXT"),
            ):
                if column not in columns:  # tables created before leases, lease clocks, list queries
                    conn.execute(f"ALTER TABLE {self.table_name} ADD COLUMN {column} {kind}")
            for sql in self._sql_indexes:
                conn.execute(sql)
            self._use_search_index(self._search_index(conn))
            conn.execute(self._sql_meta_put, (str(SCHEMA_VERSION),))
            return int(conn.execute(self._sql_meta_get).fetchone()[0])

        return _immediate(conn, create)

    async def close_async(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        self._pool.close()

    # ---- contract -------------------------------------------------------------------------------

    def _head_row(self, record: ExecutionRecord) -> tuple[Any, ...]:
        codec, payload = self.codec.encode(encode_head(record))
        return (
            record.execution_id,
            record.status.value,
            _ts(record.created_at),
            _ts(record.updated_at),
            record.schema_version,
            codec,
            payload,
            execution_name(record),
            search_text(record),
        )

    def _decode_head(
        self,
        execution_id: str,
        codec: str,
        payload: bytes,
        lease_owner: str | None = None,
        lease_expires: float | None = None,
    ) -> ExecutionRecord:
        head = decode_head(
            execution_id,
            payload,
            codec=codec,
            location=self._location,
            max_size=self.codec.max_decompressed_size,
        )
        head.lease_owner = lease_owner
        head.lease_expires_at = _from_epoch(lease_expires)
        return head

    @staticmethod
    def _expired_args(now: _clock.LeaseTime | None = None) -> tuple[Any, ...]:
        """Parameters of `_sql_expired` for the instant `now` (default: now)."""
        now = now or _clock.lease_now()
        return (now.boot, now.boot, now.mono, now.wall)

    def _fenced(
        self, conn: sqlite3.Connection, record: ExecutionRecord, row: tuple[Any, ...], *, create: bool
    ) -> None:
        """Write the head row unless another owner's unexpired lease fences it (inside a transaction).

        With `create` a missing head is created, unless the id is tombstoned; without, the head
        must exist (a write of a running attempt, a step append).
        """
        if create:
            if conn.execute(self._sql_tomb_get, (record.execution_id,)).fetchone() is not None:
                raise ExecutionDeletedError(record.execution_id)
            sql, params = self._sql_fenced_head, (*row, record.lease_owner, *self._expired_args())
        elif self._search_written.get(record.execution_id) == row[-2:]:  # name and search unchanged
            sql, params = self._sql_fenced_update_plain, (*row[1:-2], row[0], record.lease_owner)
            params += self._expired_args()
        else:  # the UPDATE takes the id last
            sql, params = self._sql_fenced_update, (*row[1:], row[0], record.lease_owner)
            params += self._expired_args()
        if conn.execute(sql, params).rowcount == 0:
            raise self._refusal(conn, record)

    def _refusal(self, conn: sqlite3.Connection, record: ExecutionRecord) -> PerdureError:
        """Why a head write changed nothing: fenced by another's lease, deleted, or never created."""
        execution_id = record.execution_id
        holder = conn.execute(self._sql_lease_holder, (execution_id,)).fetchone()
        if holder is not None:
            return self._lease_lost(record, holder[0])
        if conn.execute(self._sql_tomb_get, (execution_id,)).fetchone() is not None:
            return ExecutionDeletedError(execution_id)
        return self._not_found(execution_id)

    def _not_found(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(execution_id, backend=self.backend_name, where=self._searched)

    def _transaction(self, execution_id: str | None, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` in one immediate transaction, mapping driver errors to typed ones (`_unavailable`)."""
        try:
            with self._pool.connection() as conn:
                return _immediate(conn, work)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc, execution_id) from exc

    async def save_state_async(self, record: ExecutionRecord) -> None:
        """Write the head (fenced by the lease) in its own transaction.

        Only an unleased write may create the head (the first write of a new run); a write whose
        `lease_owner` is set updates an existing head or raises `ExecutionNotFoundError`.
        """
        row, create = self._head_row(record), record.lease_owner is None
        try:
            self._ready(create=create)
        except StorageNotFoundError as exc:
            raise self._not_found(record.execution_id) from exc
        self._committed_head(
            record.execution_id,
            row,
            lambda: self._transaction(
                record.execution_id, lambda conn: self._fenced(conn, record, row, create=create)
            ),
        )

    def _committed_head(self, execution_id: str, row: tuple[Any, ...], write: Callable[[], _T]) -> _T:
        """Run the head `write`; remember its (name, search) once committed, forget them if it failed."""
        try:
            result = write()
        except BaseException:
            self._search_written.pop(execution_id, None)
            raise
        if len(self._search_written) >= 4096:  # bounded: the executions this process is running
            self._search_written.clear()
        self._search_written[execution_id] = row[-2:]
        return result

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        """Read the head; None when the execution does not exist."""
        rows = self._read(self._sql_load_head, (execution_id,), execution_id)
        return self._decode_head(execution_id, *rows[0]) if rows else None

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        ttl = self._check_ttl(ttl_seconds)
        self._ready(create=False)  # a storage that does not exist: StorageNotFoundError, nothing created
        self._search_written.pop(execution_id, None)  # another process may have written it meanwhile

        def acquire(conn: sqlite3.Connection) -> ExecutionRecord:
            row = conn.execute(self._sql_lease_get, (execution_id,)).fetchone()
            if row is None:
                raise self._not_found(execution_id)
            codec, payload, holder, expires, boot, mono = row
            if holder not in (None, owner, steal_from) and _clock.is_live(
                expires, mono, boot, _clock.lease_now()
            ):
                raise ExecutionLeasedError(execution_id, holder, _from_epoch(expires))
            until = _clock.lease_until(ttl)
            conn.execute(self._sql_lease_set, (owner, until.wall, until.boot, until.mono, execution_id))
            return self._decode_head(execution_id, codec, payload, owner, until.wall)

        return self._transaction(execution_id, acquire)

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        ttl = self._check_ttl(ttl_seconds)
        try:
            self._ready(create=False)
        except StorageNotFoundError as exc:
            raise LeaseLostError(execution_id, owner, None) from exc

        def renew(conn: sqlite3.Connection) -> datetime:
            until = _clock.lease_until(ttl)
            params = (until.wall, until.boot, until.mono, execution_id, owner)
            if conn.execute(self._sql_lease_renew, params).rowcount == 0:
                holder = conn.execute(self._sql_lease_holder, (execution_id,)).fetchone()
                raise LeaseLostError(execution_id, owner, holder[0] if holder else None)
            return _from_epoch(until.wall)  # type: ignore[return-value]

        return self._transaction(execution_id, renew)

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        if not self._schema_ready and not os.path.exists(self.db_path):
            return False
        self._ready(create=False)
        (count,) = self._write([(self._sql_lease_release, (execution_id, owner))], execution_id)
        return count > 0

    async def delete_state_async(self, execution_id: str, *, force: bool = False) -> bool:
        """Delete head and journal and leave a tombstone, in one transaction; return whether it existed.

        The lease check happens in the same transaction, so no lease can be taken in between.
        """
        self._search_written.pop(execution_id, None)
        self._ready(create=False)

        def delete(conn: sqlite3.Connection) -> bool:
            row = conn.execute(self._sql_lease_state, (execution_id,)).fetchone()
            if row is None:
                return False
            holder, expires, boot, mono = row
            if holder is not None and not force and _clock.is_live(expires, mono, boot, _clock.lease_now()):
                raise ExecutionLeasedError(execution_id, holder, _from_epoch(expires))
            self._delete_rows(conn, [execution_id])
            return True

        return self._transaction(execution_id, delete)

    def _delete_rows(self, conn: sqlite3.Connection, ids: Sequence[str]) -> None:
        """Delete journals and heads of `ids` and tombstone them (inside a transaction)."""
        deleted_at = _ts(utcnow())
        conn.executemany(self._sql_delete_steps, [(i,) for i in ids])
        conn.executemany(self._sql_delete_head, [(i,) for i in ids])
        conn.executemany(self._sql_cancel_del, [(i,) for i in ids])
        conn.executemany(self._sql_tomb_put, [(i, deleted_at) for i in ids])

    def _step_row(self, step: StepRecord) -> tuple[Any, ...]:
        codec, payload = self.codec.encode(encode_step(step))
        return (step.execution_id, step.seq, step.kind.value, step.name, step.key, codec, payload)

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Insert the journal entry and upsert the head in one immediate transaction."""
        self._append(record, [self._step_row(step)])

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Insert every journal entry (`executemany`) and update the head in one immediate transaction.

        One commit (one WAL sync at `synchronous=FULL`) for the whole batch; a refusal or a seq that
        is journaled already rolls all of it back.
        """
        batch = self._batch(record, steps)
        self._append(record, [self._step_row(step) for step in batch])

    def _append(self, record: ExecutionRecord, rows: list[tuple[Any, ...]]) -> None:
        """The journal rows `rows` (seqs in order) and the head `record`, in one transaction."""
        head_row = self._head_row(record)
        execution_id = record.execution_id

        def append(conn: sqlite3.Connection) -> None:
            # The head first: an append never creates it, and a refused head write inserts nothing.
            self._fenced(conn, record, head_row, create=False)
            if len(rows) == 1:
                conn.execute(self._sql_insert_step, rows[0])
            else:
                conn.executemany(self._sql_insert_step, rows)

        try:
            self._ready(create=False)
        except StorageNotFoundError as exc:
            raise self._not_found(execution_id) from exc
        try:
            self._committed_head(execution_id, head_row, lambda: self._transaction(execution_id, append))
        except sqlite3.IntegrityError as exc:  # a seq is already journaled: nothing was written
            seq = rows[0][1]
            if len(rows) > 1:  # name the first journaled one (only on this error path: one read)
                found = self._read(self._sql_first_taken, (rows[0][0], seq, rows[-1][1]), execution_id)
                seq = found[0][0] if found and found[0][0] is not None else seq
            raise StepConflictError(rows[0][0], seq) from exc

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        """Read the journal in sequence order; a gap in the seqs is `CorruptRecordError`."""
        rows = self._read(self._sql_load_steps, (execution_id,), execution_id)
        max_size = self.codec.max_decompressed_size
        return self._journal_from_rows(execution_id, rows, location=self._location, max_size=max_size)

    async def load_steps_after_async(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """Read the entries after `after_seq` by primary-key range (`seq > ?`)."""
        start = self._tail_start(execution_id, after_seq)
        rows = self._read(self._sql_load_steps_after, (execution_id, start - 1), execution_id)
        max_size = self.codec.max_decompressed_size
        return self._journal_from_rows(
            execution_id, rows, location=self._location, max_size=max_size, start=start
        )

    def _decode_rows(self, rows: Iterable[Any]) -> list[ExecutionRecord]:
        return self._readable_heads(rows, lambda row: self._decode_head(*row))

    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        return self._decode_rows(self._read(self._sql_all_heads, ()))

    # ---- indexed queries ------------------------------------------------------------------------

    async def list_executions_async(
        self, status: ExecutionStatus | str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        """Answered from the `(status, updated_at)` index instead of decoding every head."""
        lim = -1 if limit is None else max(limit, 0)
        if status is None:
            rows = self._read(self._sql_list.format(where=""), (lim,))
        else:
            wanted = ExecutionStatus(status).value
            rows = self._read(self._sql_list.format(where="WHERE status = ?"), (wanted, lim))
        return self._decode_rows(rows)

    async def get_stats_async(self) -> dict[str, Any]:
        """Count by SQL; rows without a known status (damaged heads) are left out of both counts."""
        return self._stats(self._read(self._sql_stats, ()))

    @staticmethod
    def _not_kept(keep: Sequence[str]) -> str:
        """The `{keep}` filter of the cleanup queries: statuses not kept (damaged heads never are)."""
        if not keep:
            return ""
        return f"AND (status IS NULL OR status NOT IN ({', '.join('?' * len(keep))}))"

    async def cleanup_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Purge old tombstones, then delete old executions not running nor kept, in short batches.

        Each batch is one immediate transaction over at most 100 of the oldest matching heads (the
        `updated_at` index; kept statuses are filtered in the query); after each, the write lock
        stays free as long as it was held (`_yield_writer_lock`), so running executions' steps get in.
        Executions with an unexpired lease are skipped; each deleted one leaves a tombstone.
        """
        cutoff = _ts(self._cutoff(older_than_days))
        keep = sorted(retention_keep(keep_statuses))
        wanted = self._cleanup_limit(limit)
        self._ready(create=False)
        purge = (cutoff, _CLEANUP_BATCH)
        while True:
            began = time.monotonic()
            purged = self._transaction(None, lambda conn: conn.execute(self._sql_tomb_purge, purge).rowcount)
            if purged < _CLEANUP_BATCH:
                break
            await self._yield_writer_lock(began)
        sql = self._sql_cleanup_ids.format(keep=self._not_kept(keep))
        deleted = 0
        for size in self._cleanup_rounds(wanted, _CLEANUP_BATCH):

            def clean(conn: sqlite3.Connection, size: int = size) -> int:
                params = (cutoff, *keep, *self._expired_args(), size)
                ids = [r[0] for r in conn.execute(sql, params)]
                self._delete_rows(conn, ids)
                return len(ids)

            began = time.monotonic()
            done = self._transaction(None, clean)
            deleted += done
            if done < size:
                break
            await self._yield_writer_lock(began)
        return deleted

    @staticmethod
    async def _yield_writer_lock(began: float) -> None:
        """Stay off the write lock as long as the last cleanup transaction (since `began`) held it.

        SQLite has one writer at a time, and a writer of another process that finds the lock taken
        polls for it (its busy handler sleeps 1, 2, 5, ... up to 100 ms between tries): back-to-back
        cleanup transactions would starve it for seconds. Idle as long as busy, the running
        executions' steps (other processes, and other tasks of this event loop) get in between.
        """
        await asyncio.sleep(max(time.monotonic() - began, 0.001))

    async def count_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
    ) -> int:
        """Counted by SQL over the `updated_at` index."""
        keep = sorted(retention_keep(keep_statuses))
        sql = self._sql_count_old.format(keep=self._not_kept(keep))
        return int(self._read(sql, (_ts(self._cutoff(older_than_days)), *keep))[0][0])

    # ---- list queries and cancel requests ---------------------------------------------------------

    async def query_executions_async(self, query: ExecutionQuery) -> ExecutionPage:
        """One statement over an index, newest first (see `perdure.storage._sql_query`)."""
        self._ready(create=False)
        if not self._has_query_columns():  # an older file opened read-only: no columns to filter on
            return await super().query_executions_async(query)
        rows = self._read(*self._queries.page(query))
        page = rows[: query.limit]
        cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            cursor = encode_cursor(datetime.fromisoformat(last[-1]), last[0])
        return ExecutionPage(self._decode_rows(row[:-1] for row in page), cursor)

    async def count_executions_async(self, query: ExecutionQuery) -> int:
        """`count(*)` over the filters (an index range for a status or a name)."""
        self._ready(create=False)
        if not self._has_query_columns():
            return await super().count_executions_async(query)
        return int(self._read(*self._queries.count(query))[0][0])

    async def activity_async(self, since: datetime, bucket_seconds: int = 3600) -> list[ActivityBucket]:
        """Two index range counts per bucket (`created_at`; `status, updated_at` for failed ones)."""
        bounds = activity_bounds(since, bucket_seconds)
        if not bounds:
            return []
        return self._queries.buckets(bounds, self._read(*self._queries.activity(bounds)))

    async def request_cancel_async(self, execution_id: str, reason: str = "") -> bool:
        """Insert into `<table>_cancels` if the head exists, in one transaction (the first request stays)."""
        check_reason(reason)
        if not self._schema_ready and not os.path.exists(self.db_path):
            return False
        self._ready(create=False)

        def put(conn: sqlite3.Connection) -> bool:
            conn.execute(self._sql_cancel_put, (_ts(utcnow()), reason, execution_id))
            return conn.execute(self._sql_exists, (execution_id,)).fetchone() is not None

        return self._transaction(execution_id, put)

    async def cancel_request_async(self, execution_id: str) -> CancelRequest | None:
        """One primary-key read of `<table>_cancels`."""
        if not self._schema_ready and not os.path.exists(self.db_path):
            return None
        rows = self._read(self._sql_cancel_get, (execution_id,), execution_id)
        if not rows:
            return None
        requested_at, reason = rows[0]
        return CancelRequest(datetime.fromisoformat(requested_at), reason)

    async def clear_cancel_request_async(self, execution_id: str) -> bool:
        if not self._schema_ready and not os.path.exists(self.db_path):
            return False
        self._ready(create=False)
        (count,) = self._write([(self._sql_cancel_del, (execution_id,))], execution_id)
        return count > 0

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        now = _ts(datetime.now(UTC))
        row = (execution_id, None, now, now, SCHEMA_VERSION, "json", payload, None, None)
        self._ready(create=True)
        self._write([(self._sql_upsert_head, row)], execution_id)
