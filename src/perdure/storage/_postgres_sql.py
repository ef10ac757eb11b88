"""The PostgreSQL backend's table layout, its migrations and its SQL statements.

Why a module of its own: this is the backend's storage format in the database, versioned as a whole
(`LAYOUT_VERSION`, stored in the meta table), and it is text built once per table prefix; the client
side (`perdure.storage.postgres`) only runs these statements and maps their rows and errors. Keeping
the statements together keeps the write fence (`ON CONFLICT ... WHERE` / `UPDATE ... WHERE` on the
lease columns) in one place for every write that needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LAYOUT_VERSION", "MIGRATIONS", "TRGM_LOCK", "Names", "Sql", "search_index_statements"]


@dataclass(frozen=True)
class Names:
    """Every identifier derived from the table prefix (validated before any SQL is built)."""

    prefix: str

    @property
    def heads(self) -> str:
        return f"{self.prefix}heads"

    @property
    def steps(self) -> str:
        return f"{self.prefix}steps"

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta"

    @property
    def tombstones(self) -> str:
        return f"{self.prefix}tombstones"

    @property
    def cancels(self) -> str:
        return f"{self.prefix}cancels"

    def channel(self, schema: str) -> str:
        """The LISTEN/NOTIFY channel of these tables in `schema` (at most 63 bytes, PostgreSQL's limit).

        Two stores on one server share a channel only when they share their tables (same database,
        schema and prefix); a name too long for the limit is replaced by a hash of it.
        """
        name = f"perdure.{schema}.{self.prefix}"
        if len(name.encode()) <= 63:
            return name
        return "perdure." + hashlib.sha256(f"{schema}.{self.prefix}".encode()).hexdigest()[:40]

    @property
    def all(self) -> tuple[str, ...]:
        h, tb = self.heads, self.tombstones
        return (
            *(h, self.steps, self.meta, f"{h}_updated_idx", f"{h}_status_idx", tb, f"{tb}_idx"),
            *(self.cancels, f"{h}_name_idx", f"{h}_created_idx", f"{h}_fill_idx", self.search_trgm),
        )

    @property
    def search_trgm(self) -> str:
        """The optional `pg_trgm` index of `search` (see `search_index_statements`)."""
        return f"{self.heads}_search_trgm"


TRGM_LOCK = "perdure:pg_trgm"
"""Advisory lock key that serializes `CREATE EXTENSION pg_trgm` across stores of one database."""


def search_index_statements(n: Names) -> list[str]:
    """The trigram index of `search` (substring search by index), created when `pg_trgm` can be.

    Not a layout step: the extension may be missing from the server or the role may not be allowed
    to create it, and the tables work without it (a search then reads rows newest first). The
    client tries these once per storage, in a transaction of their own, see
    `PostgresDurableStorage._ensure_search_index`.
    """
    h = n.heads
    return [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        f"CREATE INDEX IF NOT EXISTS {n.search_trgm} ON {h} USING gin (search gin_trgm_ops)",
    ]


def _layout_v1(n: Names) -> list[str]:
    """Heads, journal and the two indexes that answer list, stats and cleanup."""
    h, s = n.heads, n.steps
    return [
        f"CREATE TABLE IF NOT EXISTS {h} (execution_id TEXT PRIMARY KEY, status TEXT, "
        f"updated_at TIMESTAMPTZ NOT NULL, created_at TIMESTAMPTZ NOT NULL, lease_owner TEXT, "
        f"lease_expires_at TIMESTAMPTZ, codec TEXT NOT NULL, payload BYTEA NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {s} (execution_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        f"kind TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, codec TEXT NOT NULL, "
        f"payload BYTEA NOT NULL, PRIMARY KEY (execution_id, seq))",
        # Newest-first listing; its leading column also serves cleanup's `updated_at < cutoff` range.
        f"CREATE INDEX IF NOT EXISTS {h}_updated_idx ON {h} (updated_at DESC, execution_id DESC)",
        # Listing by status, and stats (GROUP BY status) as an index-only scan.
        f"CREATE INDEX IF NOT EXISTS {h}_status_idx ON {h} (status, updated_at DESC, execution_id DESC)",
    ]


def _layout_v2(n: Names) -> list[str]:
    """Tombstones of deleted executions, purged by `deleted_at` range."""
    tb = n.tombstones
    return [
        f"CREATE TABLE IF NOT EXISTS {tb} (execution_id TEXT PRIMARY KEY, deleted_at TIMESTAMPTZ NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {tb}_idx ON {tb} (deleted_at)",
    ]


def _layout_v3(n: Names) -> list[str]:
    """The list queries' columns and indexes, and cancel requests.

    `name` (agent or workflow name) and `search` (case-folded id, name and error) are filled on every
    head write; rows of older layouts are filled after the migration by the client (`_fill_idx`
    finds them), see `PostgresDurableStorage._backfill`.
    """
    h = n.heads
    return [
        f"ALTER TABLE {h} ADD COLUMN IF NOT EXISTS name TEXT, ADD COLUMN IF NOT EXISTS search TEXT",
        f"CREATE INDEX IF NOT EXISTS {h}_name_idx ON {h} (name, updated_at DESC, execution_id DESC)",
        f"CREATE INDEX IF NOT EXISTS {h}_created_idx ON {h} (created_at)",
        f"CREATE INDEX IF NOT EXISTS {h}_fill_idx ON {h} (execution_id) WHERE search IS NULL",
        f"CREATE TABLE IF NOT EXISTS {n.cancels} (execution_id TEXT PRIMARY KEY, "
        f"requested_at TIMESTAMPTZ NOT NULL, reason TEXT NOT NULL)",
    ]


MIGRATIONS: tuple[tuple[int, Callable[[Names], list[str]]], ...] = (
    (1, _layout_v1),
    (2, _layout_v2),
    (3, _layout_v3),
)
"""Ordered `(version, statements)` steps; a new layout appends `(2, _layout_v2)` with its ALTERs."""

LAYOUT_VERSION = MIGRATIONS[-1][0]
"""Version of the table layout this perdure writes; it refuses tables of a higher version."""


@dataclass(frozen=True)
class Sql:
    """The statements of one table prefix, built once per storage."""

    save: str
    update: str
    append: str
    append_many: str
    first_taken: str
    refusal: str
    lock_id: str
    lock_head: str
    load: str
    lease_of: str
    acquire: str
    renew: str
    release: str
    delete: str
    steps: str
    steps_after: str
    all_heads: str
    list_all: str
    list_status: str
    stats: str
    cleanup: str
    count_old: str
    delete_many: str
    purge: str
    unfilled: str
    fill: str
    cancel_put: str
    cancel_get: str
    cancel_del: str
    raw_head: str
    meta_create: str
    meta_get: str
    meta_put: str

    @classmethod
    def build(cls, n: Names, *, notify: bool = True) -> Sql:
        """The statements of `n`'s tables; `notify=False` leaves out the change notifications.

        Every statement that changes a head or the journal (save, update, append, append_many,
        delete, delete_many) runs `pg_notify(%(channel)s, <execution id>)` in its own transaction
        when it wrote something, so listeners hear of the change when it commits, and only then.
        `notify=False` only exists to measure what the notification costs (benchmarks/change_feed.py).
        """
        h, s, m, tb, cn = n.heads, n.steps, n.meta, n.tombstones, n.cancels

        def announced(rows: str, execution_id: str = "%(id)s") -> str:
            """Rows of `rows` (a CTE name), notifying when there is one; a volatile filter, per row."""
            if not notify:
                return f"SELECT 1 FROM {rows}"
            return f"SELECT 1 FROM {rows} WHERE pg_notify(%(channel)s, {execution_id}) IS NOT NULL"

        cols = "execution_id, codec, payload, lease_owner, lease_expires_at"
        # Cleanup's status filter: %(keep)s is the array of kept statuses (empty: keep none);
        # damaged heads (status NULL) are never kept.
        not_kept = "(status IS NULL OR NOT status = ANY(%(keep)s))"
        # The fence: evaluated on the locked, latest row version; the lease columns are never set.
        fence = (
            "(cur.lease_owner IS NULL OR cur.lease_owner = %(owner)s "
            "OR cur.lease_expires_at <= clock_timestamp())"
        )
        # Creates the head unless the id is tombstoned (callers hold the id's advisory lock).
        upsert = (
            f"INSERT INTO {h} AS cur (execution_id, status, updated_at, created_at, codec, payload, name, "
            f"search) SELECT %(id)s, %(status)s, %(updated)s, %(created)s, %(codec)s, %(payload)s, "
            f"%(name)s, %(search)s WHERE NOT EXISTS (SELECT FROM {tb} WHERE execution_id = %(id)s) "
            f"ON CONFLICT (execution_id) DO UPDATE SET status = EXCLUDED.status, "
            f"updated_at = EXCLUDED.updated_at, created_at = EXCLUDED.created_at, "
            f"codec = EXCLUDED.codec, payload = EXCLUDED.payload, name = EXCLUDED.name, "
            f"search = EXCLUDED.search WHERE {fence} RETURNING 1"
        )
        # Never creates: the write of a running attempt, and the head half of a step append.
        update = (
            f"UPDATE {h} AS cur SET status = %(status)s, updated_at = %(updated)s, "
            f"created_at = %(created)s, codec = %(codec)s, payload = %(payload)s, name = %(name)s, "
            f"search = %(search)s WHERE cur.execution_id = %(id)s AND {fence} RETURNING 1"
        )
        listing = f"SELECT {cols} FROM {h} {{where}} ORDER BY updated_at DESC, execution_id DESC LIMIT %s"
        # One notification however many rows a batch inserts (the LIMIT stops the filter's scan).
        once = "(SELECT 1 FROM ins LIMIT 1) AS one"
        expiry = "clock_timestamp() + make_interval(secs => %(ttl)s)"
        return cls(
            save=f"WITH ins AS ({upsert}) {announced('ins')}",
            update=f"WITH ins AS ({update}) {announced('ins')}",
            append=(
                f"WITH head AS ({update}), ins AS ("
                f"INSERT INTO {s} (execution_id, seq, kind, name, key, codec, payload) "
                f"SELECT %(step_id)s, %(seq)s::integer, %(kind)s, %(name)s, %(key)s, %(step_codec)s, "
                f"%(step_payload)s WHERE EXISTS (SELECT FROM head) RETURNING 1) {announced(once)}"
            ),
            # A batch: the same, its rows unnested from one array per column (one statement).
            append_many=(
                f"WITH head AS ({update}), ins AS ("
                f"INSERT INTO {s} (execution_id, seq, kind, name, key, codec, payload) "
                f"SELECT %(step_id)s, e.seq, e.kind, e.name, e.key, e.codec, e.payload "
                f"FROM unnest(%(seqs)s::integer[], %(kinds)s::text[], %(names)s::text[], %(keys)s::text[], "
                f"%(step_codecs)s::text[], %(step_payloads)s::bytea[]) "
                f"AS e(seq, kind, name, key, codec, payload) WHERE EXISTS (SELECT FROM head) RETURNING 1) "
                f"{announced(once)}"
            ),
            first_taken=f"SELECT min(seq) FROM {s} WHERE execution_id = %s AND seq = ANY(%s::integer[])",
            refusal=(
                f"SELECT (SELECT lease_owner FROM {h} WHERE execution_id = %(id)s), "
                f"EXISTS (SELECT FROM {h} WHERE execution_id = %(id)s), "
                f"EXISTS (SELECT FROM {tb} WHERE execution_id = %(id)s)"
            ),
            lock_id="SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            lock_head=(
                f"SELECT lease_owner, lease_expires_at, lease_expires_at > clock_timestamp() "
                f"FROM {h} WHERE execution_id = %s FOR UPDATE"
            ),
            load=f"SELECT {cols} FROM {h} WHERE execution_id = %s",
            lease_of=(
                f"SELECT lease_owner, lease_expires_at, lease_expires_at > clock_timestamp() "
                f"FROM {h} WHERE execution_id = %s"
            ),
            acquire=(
                f"UPDATE {h} SET lease_owner = %(owner)s, lease_expires_at = {expiry} "
                f"WHERE execution_id = %(id)s AND (lease_owner IS NULL OR lease_owner = %(owner)s "
                f"OR lease_owner = %(steal)s OR lease_expires_at <= clock_timestamp()) RETURNING {cols}"
            ),
            renew=(
                f"UPDATE {h} SET lease_expires_at = {expiry} "
                f"WHERE execution_id = %(id)s AND lease_owner = %(owner)s RETURNING lease_expires_at"
            ),
            release=(
                f"UPDATE {h} SET lease_owner = NULL, lease_expires_at = NULL "
                f"WHERE execution_id = %s AND lease_owner = %s RETURNING 1"
            ),
            delete=(
                f"WITH st AS (DELETE FROM {s} WHERE execution_id = %(id)s), "
                f"hd AS (DELETE FROM {h} WHERE execution_id = %(id)s), "
                f"cn AS (DELETE FROM {cn} WHERE execution_id = %(id)s), "
                f"tb AS (INSERT INTO {tb} (execution_id, deleted_at) VALUES (%(id)s, clock_timestamp()) "
                f"ON CONFLICT (execution_id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at) "
                + ("SELECT pg_notify(%(channel)s, %(id)s)" if notify else "SELECT 1")
            ),
            steps=f"SELECT seq, codec, payload FROM {s} WHERE execution_id = %s ORDER BY seq",
            steps_after=(
                f"SELECT seq, codec, payload FROM {s} WHERE execution_id = %s AND seq > %s ORDER BY seq"
            ),
            all_heads=f"SELECT {cols} FROM {h}",
            list_all=listing.format(where=""),
            list_status=listing.format(where="WHERE status = %s"),
            stats=f"SELECT status, count(*) FROM {h} GROUP BY status",
            # A batch of the oldest executions that are old, not kept and not running, locked until
            # the batch's transaction ends (rows being written right now are skipped).
            cleanup=(
                f"SELECT execution_id FROM {h} WHERE updated_at < %(cutoff)s AND {not_kept} "
                f"AND (lease_owner IS NULL OR lease_expires_at IS NULL "
                f"OR lease_expires_at <= clock_timestamp()) "
                f"ORDER BY updated_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
            ),
            count_old=f"SELECT count(*) FROM {h} WHERE updated_at < %(cutoff)s AND {not_kept}",
            delete_many=(
                f"WITH st AS (DELETE FROM {s} WHERE execution_id = ANY(%(ids)s)), "
                f"cn AS (DELETE FROM {cn} WHERE execution_id = ANY(%(ids)s)), "
                f"hd AS (DELETE FROM {h} WHERE execution_id = ANY(%(ids)s) RETURNING execution_id), "
                f"tb AS (INSERT INTO {tb} (execution_id, deleted_at) SELECT execution_id, clock_timestamp() "
                f"FROM hd ON CONFLICT (execution_id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at) "
                f"SELECT count(*) FROM hd"
                + (" WHERE pg_notify(%(channel)s, hd.execution_id) IS NOT NULL" if notify else "")
            ),
            # One batch of old tombstones; the caller repeats until a batch comes back short.
            purge=(
                f"WITH gone AS (DELETE FROM {tb} WHERE execution_id IN (SELECT execution_id FROM {tb} "
                f"WHERE deleted_at < %(cutoff)s LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING 1) "
                f"SELECT count(*) FROM gone"
            ),
            unfilled=f"SELECT execution_id, codec, payload FROM {h} WHERE search IS NULL LIMIT %s",
            fill=f"UPDATE {h} SET name = %s, search = %s WHERE execution_id = %s AND search IS NULL",
            # The head row is share-locked against a concurrent delete (which locks it FOR UPDATE), so
            # a request never outlives its execution; announced on the change feed when it exists.
            cancel_put=(
                f"WITH head AS (SELECT execution_id FROM {h} WHERE execution_id = %(id)s FOR KEY SHARE), "
                f"ins AS (INSERT INTO {cn} (execution_id, requested_at, reason) "
                f"SELECT execution_id, clock_timestamp(), %(reason)s FROM head "
                f"ON CONFLICT (execution_id) DO NOTHING) "
                f"SELECT count(*) FROM head"
                + (" WHERE pg_notify(%(channel)s, head.execution_id) IS NOT NULL" if notify else "")
            ),
            cancel_get=f"SELECT requested_at, reason FROM {cn} WHERE execution_id = %s",
            cancel_del=f"DELETE FROM {cn} WHERE execution_id = %s RETURNING 1",
            raw_head=(
                f"INSERT INTO {h} (execution_id, status, updated_at, created_at, codec, payload) "
                f"VALUES (%s, NULL, clock_timestamp(), clock_timestamp(), 'json', %s) "
                f"ON CONFLICT (execution_id) DO UPDATE SET status = NULL, codec = 'json', "
                f"payload = EXCLUDED.payload RETURNING 1"
            ),
            meta_create=f"CREATE TABLE IF NOT EXISTS {m} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            meta_get=f"SELECT value FROM {m} WHERE key = 'layout_version'",
            meta_put=(
                f"INSERT INTO {m} (key, value) VALUES ('layout_version', %s) "
                f"ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
        )
