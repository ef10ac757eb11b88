"""Storage in one SQLite file: zero servers, safe for several processes on one machine.

Heads live in `<table>`, journal entries in `<table>_steps`, the layout version in `<table>_meta`.
A step is one `BEGIN IMMEDIATE` transaction holding the journal insert and the head upsert, so a
crash leaves both or neither. The lease lives in two columns of the heads table that head
upserts never touch; the upsert's `WHERE` clause is the write fence. WAL mode lets readers run
while a writer commits, and `busy_timeout`
makes concurrent writers from other processes wait instead of failing at once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..codec import Codec, decode_head, decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    LeaseLostError,
    StepConflictError,
    StorageUnavailableError,
    UserError,
)
from ..records import SCHEMA_VERSION, ExecutionRecord, ExecutionStatus, StepRecord
from .base import DurableExecutionStorage, logger, validate_identifier

__all__ = ["SQLiteDurableStorage"]

_SYNCHRONOUS = ("FULL", "NORMAL")
_T = TypeVar("_T")


def _from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _ts(moment: datetime) -> str:
    """Fixed-width UTC text, so that SQL string order is time order."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # 10x cheaper than strftime


class SQLiteDurableStorage(DurableExecutionStorage):
    """Durable storage in a SQLite database (stdlib `sqlite3`, WAL mode).

    Args:
        db_path: Database file; created when missing.
        table_name: Name of the heads table; `<name>_steps` and `<name>_meta` are created next to it.
        synchronous: `"FULL"` (default) survives power loss; `"NORMAL"` is faster and survives
            process crashes but may lose the last commits on power loss.
        busy_timeout_ms: How long a writer waits for another process's transaction.
        codec: Payload codec; `Codec(compress_above=...)` zstd-compresses large records.

    """

    backend_name = "sqlite"

    def __init__(
        self,
        db_path: str | os.PathLike[str] = "./durable_executions.db",
        table_name: str = "durable_executions",
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30000,
        codec: Codec | None = None,
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
        self.busy_timeout_ms = busy_timeout_ms
        self.codec = codec or Codec()
        self._location = f"{self.db_path}:{table_name}"
        t, s, m = table_name, f"{table_name}_steps", f"{table_name}_meta"
        self._sql_upsert_head = (
            f"INSERT INTO {t} (execution_id, status, created_at, updated_at, schema_version, codec, payload) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(execution_id) DO UPDATE SET "
            f"status=excluded.status, created_at=excluded.created_at, updated_at=excluded.updated_at, "
            f"schema_version=excluded.schema_version, codec=excluded.codec, payload=excluded.payload"
        )
        # Fenced variant for the engine's writes: an unexpired lease of another owner blocks the update
        # (rowcount 0), which the caller turns into LeaseLostError inside the same transaction.
        self._sql_fenced_head = (
            self._sql_upsert_head
            + f" WHERE {t}.lease_owner IS NULL OR {t}.lease_owner IS ? OR {t}.lease_expires <= ?"
        )
        self._sql_lease_get = (
            f"SELECT codec, payload, lease_owner, lease_expires FROM {t} WHERE execution_id = ?"
        )
        self._sql_lease_set = f"UPDATE {t} SET lease_owner = ?, lease_expires = ? WHERE execution_id = ?"
        self._sql_lease_renew = f"UPDATE {t} SET lease_expires = ? WHERE execution_id = ? AND lease_owner = ?"
        self._sql_lease_release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_expires = NULL "
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
        self._sql_delete_head = f"DELETE FROM {t} WHERE execution_id = ?"
        self._sql_delete_steps = f"DELETE FROM {s} WHERE execution_id = ?"
        self._sql_all_heads = f"SELECT execution_id, codec, payload, lease_owner, lease_expires FROM {t}"
        self._sql_list = (
            f"SELECT execution_id, codec, payload, lease_owner, lease_expires FROM {t} {{where}} "
            f"ORDER BY updated_at DESC, execution_id DESC LIMIT ?"
        )
        self._sql_stats = f"SELECT status, COUNT(*) FROM {t} GROUP BY status"
        self._sql_cleanup_steps = (
            f"DELETE FROM {s} WHERE execution_id IN (SELECT execution_id FROM {t} WHERE updated_at < ?)"
        )
        self._sql_cleanup_heads = f"DELETE FROM {t} WHERE updated_at < ?"
        self._sql_schema = [
            f"CREATE TABLE IF NOT EXISTS {m} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {t} (execution_id TEXT PRIMARY KEY, status TEXT, "
            f"created_at TEXT, updated_at TEXT, schema_version INTEGER, codec TEXT, payload BLOB, "
            f"lease_owner TEXT, lease_expires REAL)",
            f"CREATE INDEX IF NOT EXISTS {t}_status_updated ON {t} (status, updated_at)",
            f"CREATE INDEX IF NOT EXISTS {t}_updated ON {t} (updated_at)",
            f"CREATE TABLE IF NOT EXISTS {s} (execution_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            f"kind TEXT, name TEXT, key TEXT, codec TEXT, payload BLOB, "
            f"PRIMARY KEY (execution_id, seq)) WITHOUT ROWID",
        ]
        self._sql_meta_get = f"SELECT value FROM {m} WHERE key = 'schema_version'"
        self._sql_meta_put = f"INSERT OR IGNORE INTO {m} (key, value) VALUES ('schema_version', ?)"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._generation = 0
        if Path(self.db_path).parent != Path():
            Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    def __repr__(self) -> str:
        return f"SQLiteDurableStorage({self.db_path!r}, table_name={self.table_name!r})"

    # ---- connections ----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's connection: sqlite3 connections must not be shared between threads."""
        held: tuple[int, sqlite3.Connection] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == self._generation:
            return held[1]
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            raise StorageUnavailableError("sqlite", f"{self.db_path}: {exc}") from exc
        with self._conns_lock:
            self._conns.append(conn)
            self._local.held = (self._generation, conn)
        return conn

    def _unavailable(self, exc: sqlite3.Error, execution_id: str | None) -> StorageUnavailableError:
        return StorageUnavailableError("sqlite", f"{self.db_path}: {exc}", execution_id=execution_id)

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]], execution_id: str | None) -> list[int]:
        """Run `statements` in one immediate transaction; return their row counts."""
        return self._transaction(
            execution_id, lambda conn: [conn.execute(sql, params).rowcount for sql, params in statements]
        )

    def _read(self, sql: str, params: Sequence[Any], execution_id: str | None = None) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable(exc, execution_id) from exc

    def _init_schema(self) -> None:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in self._sql_schema:
                    conn.execute(sql)
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({self.table_name})")}
                for column, kind in (("lease_owner", "TEXT"), ("lease_expires", "REAL")):
                    if column not in columns:  # tables created before leases existed
                        conn.execute(f"ALTER TABLE {self.table_name} ADD COLUMN {column} {kind}")
                conn.execute(self._sql_meta_put, (str(SCHEMA_VERSION),))
                found = int(conn.execute(self._sql_meta_get).fetchone()[0])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc, None) from exc
        if found > SCHEMA_VERSION:
            raise IncompatibleSchemaError("*", found, SCHEMA_VERSION)

    async def close_async(self) -> None:
        """Close every thread's connection; a later call opens new ones."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        for conn in conns:
            conn.close()

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
        )

    def _decode_head(
        self,
        execution_id: str,
        codec: str,
        payload: bytes,
        lease_owner: str | None = None,
        lease_expires: float | None = None,
    ) -> ExecutionRecord:
        head = decode_head(execution_id, payload, codec=codec, location=self._location)
        head.lease_owner = lease_owner
        head.lease_expires_at = _from_epoch(lease_expires)
        return head

    def _fenced(self, conn: sqlite3.Connection, record: ExecutionRecord) -> None:
        """Upsert the head unless another owner's unexpired lease fences it (inside a transaction)."""
        now = time.time()
        if (
            conn.execute(self._sql_fenced_head, (*self._head_row(record), record.lease_owner, now)).rowcount
            == 0
        ):
            holder = conn.execute(self._sql_lease_holder, (record.execution_id,)).fetchone()
            raise LeaseLostError(
                record.execution_id, record.lease_owner or "(no lease)", holder[0] if holder else None
            )

    def _transaction(self, execution_id: str | None, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` in one immediate transaction, mapping driver errors to StorageUnavailableError."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc, execution_id) from exc
        return result

    async def save_state_async(self, record: ExecutionRecord) -> None:
        """Upsert the head (fenced by the lease) in its own transaction."""
        self._transaction(record.execution_id, lambda conn: self._fenced(conn, record))

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        """Read the head; None when the execution does not exist."""
        rows = self._read(self._sql_load_head, (execution_id,), execution_id)
        return self._decode_head(execution_id, *rows[0]) if rows else None

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        ttl = self._check_ttl(ttl_seconds)

        def acquire(conn: sqlite3.Connection) -> ExecutionRecord:
            row = conn.execute(self._sql_lease_get, (execution_id,)).fetchone()
            if row is None:
                raise ExecutionNotFoundError(execution_id, backend=self.backend_name)
            now = time.time()
            codec, payload, holder, expires = row
            if (
                holder is not None
                and holder not in (owner, steal_from)
                and expires is not None
                and expires > now
            ):
                raise ExecutionLeasedError(execution_id, holder, _from_epoch(expires))
            conn.execute(self._sql_lease_set, (owner, now + ttl, execution_id))
            return self._decode_head(execution_id, codec, payload, owner, now + ttl)

        return self._transaction(execution_id, acquire)

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        ttl = self._check_ttl(ttl_seconds)

        def renew(conn: sqlite3.Connection) -> datetime:
            expires = time.time() + ttl
            if conn.execute(self._sql_lease_renew, (expires, execution_id, owner)).rowcount == 0:
                holder = conn.execute(self._sql_lease_holder, (execution_id,)).fetchone()
                raise LeaseLostError(execution_id, owner, holder[0] if holder else None)
            return _from_epoch(expires)  # type: ignore[return-value]

        return self._transaction(execution_id, renew)

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        (count,) = self._write([(self._sql_lease_release, (execution_id, owner))], execution_id)
        return count > 0

    async def delete_state_async(self, execution_id: str) -> bool:
        """Delete head and journal in one transaction; return whether either existed."""
        steps, heads = self._write(
            [(self._sql_delete_steps, (execution_id,)), (self._sql_delete_head, (execution_id,))],
            execution_id,
        )
        return steps > 0 or heads > 0

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Insert the journal entry and upsert the head in one immediate transaction."""
        codec, payload = self.codec.encode(encode_step(step))
        step_row = (step.execution_id, step.seq, step.kind.value, step.name, step.key, codec, payload)
        head_row = (*self._head_row(record), record.lease_owner, time.time())
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(self._sql_insert_step, step_row)
                if conn.execute(self._sql_fenced_head, head_row).rowcount == 0:
                    holder = conn.execute(self._sql_lease_holder, (record.execution_id,)).fetchone()
                    raise LeaseLostError(
                        record.execution_id, record.lease_owner or "(no lease)", holder[0] if holder else None
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:  # the seq is already journaled
            raise StepConflictError(step.execution_id, step.seq) from exc
        except sqlite3.Error as exc:
            raise self._unavailable(exc, step.execution_id) from exc

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        """Read the journal in sequence order."""
        rows = self._read(self._sql_load_steps, (execution_id,), execution_id)
        return [
            decode_step(execution_id, seq, payload, codec=codec, location=self._location)
            for seq, codec, payload in rows
        ]

    def _decode_rows(self, rows: Iterable[Any]) -> list[ExecutionRecord]:
        heads = []
        for execution_id, codec, payload, lease_owner, lease_expires in rows:
            try:
                heads.append(self._decode_head(execution_id, codec, payload, lease_owner, lease_expires))
            except (CorruptRecordError, IncompatibleSchemaError) as exc:
                logger.warning("skipping unreadable execution record: %s", exc)
        return heads

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
        by_status = {s.value: 0 for s in ExecutionStatus}
        for status, count in self._read(self._sql_stats, ()):
            if status in by_status:
                by_status[status] = count
        return {
            "backend": self.backend_name,
            "total_executions": sum(by_status.values()),
            "by_status": by_status,
        }

    async def cleanup_old_executions_async(self, older_than_days: float = 7) -> int:
        """Delete heads and journals of old executions in one transaction."""
        cutoff = _ts(self._cutoff(older_than_days))
        _, deleted = self._write(
            [(self._sql_cleanup_steps, (cutoff,)), (self._sql_cleanup_heads, (cutoff,))], None
        )
        return deleted

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        now = _ts(datetime.now(UTC))
        row = (execution_id, None, now, now, SCHEMA_VERSION, "json", payload)
        self._write([(self._sql_upsert_head, row)], execution_id)
