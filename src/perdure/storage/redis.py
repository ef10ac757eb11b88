"""Storage on a Redis server: many workers on many machines share executions through one server.

Key layout (every key starts with the configured prefix `P`, default `durable:state:`):

- `P head:<id>`: hash `{c: codec, d: encoded head, s: status}`. `s` duplicates the status of the
  head body so the write scripts see a status change (and move the execution between status
  indexes, or drop the expiry of a finished execution written again) without decoding the body.
- `P journal:<id>`: list of encoded journal entries (`<codec>:<payload>`); the list index is the seq.
- `P lease:<id>`: hash `{o: owner, e: expiry in microseconds of the Redis server's clock}`, kept
  apart from the head so head writes never change it.
- `P idx:all` and `P idx:status:<status>`: sorted sets of execution ids scored by `updated_at` in
  epoch microseconds (exact in a double until the year 2255, and sub-millisecond updates keep their
  order); `list_executions` reads them newest first and `get_stats` counts them with `ZCARD`.
- `P idx:expiry`: sorted set of executions whose keys carry a TTL, scored by the server time in
  milliseconds at which they expire (see `ttl` below).
- `P cancel:<id>`: hash `{t: request time in server microseconds, r: reason}`, a pending cancel
  request; deleted with the execution, expires with it (`ttl`).
- `P tomb:<id>`: the tombstone of a deleted execution (deletion time in server microseconds), with
  an expiry of max(7 days, `ttl`); while it exists, writes of that id are refused
  (`ExecutionDeletedError`). `P idx:tombstones` scores the tombstones by deletion time, so
  `cleanup_old_executions` purges old ones by range instead of scanning keys.

Every write is one Lua script run with `EVALSHA`, so the fence check, the seq check, the journal
append, the head write and the index updates happen atomically: a refused or failed write changes
nothing. Lease expiry is always compared with the server's clock (`TIME` inside the scripts), so
workers with skewed clocks agree on who holds a lease. All keys a script touches are passed in
`KEYS`; the global indexes make the layout unsuitable for Redis Cluster (use one primary, with
replicas and persistence as needed). Needs Redis 5 or newer (scripts replicate their effects).

The key names and the scripts are in `perdure.storage._redis_scripts`, and the client of each event
loop is kept by `perdure.storage._per_loop`. What is left here (some 650 lines) is one concept, the
client side of that format: options and URL parsing, redis-py's errors mapped to perdure's, heads
encoded into script arguments, and every contract method next to the reply it reads, so that a
script's reply codes (`lease`, `deleted`, `missing`, `conflict`, ...) are read where they are asked for.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from .._sync import run_sync
from ..codec import Codec, decode_head, decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    LeaseLostError,
    ReplicationError,
    StepConflictError,
    StorageConfigurationError,
    StorageUnavailableError,
    UserError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepRecord
from . import _per_loop, _redis_query
from ._per_loop import PerLoop
from ._query import (
    ActivityBucket,
    CancelRequest,
    ExecutionPage,
    ExecutionQuery,
    activity_bounds,
    check_reason,
)
from ._redis_feed import RedisChangeFeed
from ._redis_scripts import SCRIPTS, STATUSES, Keys
from .base import DurableExecutionStorage, check_journal_seqs, retention_keep, stored_seq

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.commands.core import AsyncScript
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise UserError(
        "RedisDurableStorage needs the 'redis' package: install it with `pip install 'perdure[redis]'`."
    ) from _exc

__all__ = ["RedisDurableStorage"]

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_BATCH = 256
"""Ids read per index page (list, cleanup) and expired executions forgotten per script call."""
_URL_PARAMS = ("prefix", "replica_timeout", "replicas", "socket_timeout", "ttl")
_TOMBSTONE_TTL = 7 * 24 * 3600.0
"""Minimum lifetime of a tombstone (seconds); longer when `ttl` is."""
_CLOSE_WAIT = 3.0
"""Seconds `close` waits for the clients of loops whose thread ended to close."""

# ---- helpers ------------------------------------------------------------------------------------


def _zcount(key: str, below: str) -> Callable[[Any], Awaitable[Any]]:
    """A `_call` operation counting the members of sorted set `key` scored in [-inf, `below`]."""
    return lambda client: client.zcount(key, "-inf", below)


def _micros(moment: datetime) -> int:
    """Exact epoch microseconds (naive datetimes are taken as UTC, as everywhere in perdure)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICRO


def _from_micros(value: bytes | str | int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _validate_prefix(prefix: str) -> str:
    """Refuse prefixes that are empty or would be mangled by logs and CLI tools (whitespace)."""
    if not isinstance(prefix, str) or not prefix:
        raise UserError(f"Redis key prefix must be a non-empty string, got {prefix!r}.")
    if len(prefix) > 200 or any(ch.isspace() or not ch.isprintable() for ch in prefix):
        raise UserError(
            f"Invalid Redis key prefix {prefix!r}: use at most 200 printable characters without spaces "
            f"or newlines, e.g. 'durable:state:' or 'myapp:runs:'."
        )
    return prefix


def _seconds(value: Any, what: str) -> float:
    """A positive, finite number of seconds, or `UserError` naming the setting."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise UserError(f"{what} must be a positive number of seconds, got {value!r}.")
    return number


def _connection_options(url: str) -> dict[str, Any]:
    """Client keywords for a `redis://` / `rediss://` URL without query parameters."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise UserError(f"RedisDurableStorage needs a redis:// or rediss:// URL, got {url!r}.")
    if parts.query or parts.fragment:
        raise UserError(
            f"Pass query parameters through RedisDurableStorage.from_url({url!r}) or storage_from_url, "
            f"not the url= argument."
        )
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise UserError(f"Invalid port in Redis URL {url!r}.") from exc
    path = parts.path.strip("/")
    if not path.isdigit() and path:
        raise UserError(
            f"The path of a Redis URL is the database number, e.g. redis://host:6379/0; got {url!r}."
        )
    return {
        "host": parts.hostname or "localhost",
        "port": port,
        "db": int(path or 0),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "ssl": scheme == "rediss",
    }


@dataclass
class _Conn:
    """A client bound to one event loop, with the scripts registered on it."""

    client: aioredis.Redis
    scripts: dict[str, AsyncScript]
    guard: AsyncGenerator[None, None]
    """Started on the client's loop; closes the client when that loop shuts down (see `_closing`)."""

    async def aclose(self) -> None:
        """Close the client (on its own loop)."""
        await self.guard.aclose()

    def abandon(self) -> None:
        """Nothing to drop by hand: a loop shut down by `asyncio.run` or `perdure._sync` closed it."""


async def _closing(client: aioredis.Redis) -> AsyncGenerator[None, None]:
    """Close `client` when this generator is closed.

    Once iterated on a loop, the loop tracks the generator and `asyncio.run` / `asyncio.Runner`
    close it before closing the loop (`shutdown_asyncgens`), so a client of a loop that ends before
    `close()` is called still closes its connections on its own loop instead of leaking them.
    """
    try:
        yield
    finally:
        with contextlib.suppress(redis_errors.RedisError, OSError, RuntimeError):
            await client.aclose()


class RedisDurableStorage(DurableExecutionStorage):
    """Durable storage on a Redis server (redis-py's asyncio client), shared by many workers.

    Every write is one atomic Lua script; leases and write fencing use the server's clock; listing
    and statistics read sorted-set indexes instead of scanning keys. See the module docstring for
    the key layout.

    `ttl` applies to executions that reach `completed` or `cancelled`: their head, journal and lease
    keys get that expiry, so finished runs clean themselves up. `failed` and `paused` executions
    never expire, because they are waiting to be resumed (a retry, an approval) and expiring them
    would silently lose a run someone still means to finish; `success` means in progress. A finished
    execution that is written again with another status loses its expiry. Redis removes expired keys
    on its own, so their index entries are tracked in `P idx:expiry`: `get_stats` first forgets the
    index entries of executions whose expiry passed (in the same script that counts, by the server's
    clock), and `list_executions` skips and forgets ids whose head is gone, so neither reports
    expired executions.

    Args:
        host: Server host (ignored when `url` is given).
        port: Server port.
        db: Database number.
        password: Server password (`requirepass` / ACL password).
        prefix: Prefix of every key, so several applications or tests can share one database.
        ttl: Seconds after which completed and cancelled executions expire; None keeps them.
        url: `redis://[[user]:password@]host:port/db` or `rediss://...` (TLS) instead of
            host/port/db/password; use `from_url` for a URL with `?prefix=...&ttl=...`.
        codec: Payload codec; `Codec(compress_above=...)` zstd-compresses large records.
        socket_timeout: Seconds to wait for the server before a call fails with
            `StorageUnavailableError` (also the connect timeout); a timeout is not retried, so a
            stalled server fails a call after one `socket_timeout`. Wrong credentials or a missing
            database raise `StorageConfigurationError`.
        replicas: Replicas that must confirm each write the engine relies on before it counts as
            done: after the write, `WAIT replicas timeout` runs on the same connection (one
            non-transactional pipeline, one round trip), and fewer confirmations than `replicas`
            raise `ReplicationError`. 0 (the default) sends no `WAIT`. Waited writes: heads
            (`save_state`), journal appends, deletes, lease acquire and renew, cancel requests;
            maintenance writes (lease release, cleanup, expiry bookkeeping, clearing a cancel
            request) do not wait, as losing one in a failover only delays a takeover or a cleanup.
        replica_timeout: Seconds `WAIT` may block (rounded up to whole milliseconds). With replicas,
            the socket read timeout is `socket_timeout + replica_timeout`, so a slow `WAIT` is not
            mistaken for a dead server.

    A redis-py asyncio client belongs to the event loop it first ran on, so one client is kept per
    loop (the sync twins run on a loop of their own per thread); clients of loops whose thread
    ended are closed when the next loop's client is created. Connection failures are retried twice within
    a fraction of a second, then raised as `StorageUnavailableError`. A retried step append whose
    first attempt was applied but whose reply was lost finds its own entry (byte-identical, last in
    the journal) and succeeds instead of reporting a conflict; any other writer of that seq gets
    `StepConflictError`. A batch (`append_steps_async`) is one call of the same script with several
    entries, and a retried batch likewise finds all of its entries last.

    """

    backend_name = "redis"
    atomic_batches = True
    shared_cancel_requests = True

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        prefix: str = "durable:state:",
        ttl: float | None = None,
        *,
        url: str | None = None,
        codec: Codec | None = None,
        socket_timeout: float = 5.0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        if url is not None:
            options = _connection_options(url)
        else:
            if not isinstance(port, int) or not 0 < port < 65536:
                raise UserError(f"Redis port must be an integer between 1 and 65535, got {port!r}.")
            options = {"host": host, "port": port, "db": db, "username": None, "password": password}
            options["ssl"] = False
        if not isinstance(options["db"], int) or options["db"] < 0:
            raise UserError(f"Redis database number must be a non-negative integer, got {options['db']!r}.")
        self.prefix = _validate_prefix(prefix)
        self.ttl = None if ttl is None else _seconds(ttl, "ttl")
        self.socket_timeout = _seconds(socket_timeout, "socket_timeout")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise UserError(f"replicas must be a non-negative integer (0: no WAIT), got {replicas!r}.")
        self.replicas = replicas
        self.replica_timeout = _seconds(replica_timeout, "replica_timeout")
        self._wait_ms = max(1, math.ceil(self.replica_timeout * 1000))
        # An append whose WAIT fell short is applied on the primary (step and head in one script) though
        # the engine saw it fail: the engine re-reads the stored head before recording the attempt's end
        # (`JournalRun._adopt_stored_progress`), so the journal never leads the head here.
        self.codec = codec or Codec()
        self.host, self.port, self.db = options["host"], options["port"], options["db"]
        self._ttl_ms = 0 if self.ttl is None else max(1, round(self.ttl * 1000))
        self._tomb_ttl_ms = round(max(_TOMBSTONE_TTL, self.ttl or 0) * 1000)
        self._client_options = {
            **options,
            "socket_timeout": self.socket_timeout + (self.replica_timeout if replicas else 0.0),
            "socket_connect_timeout": self.socket_timeout,
            # A dropped connection is retried; a timeout is not: a stalled server would multiply it.
            "retry": Retry(
                ExponentialBackoff(cap=0.25, base=0.05), 2, supported_errors=(redis_errors.ConnectionError,)
            ),
            "decode_responses": False,
        }
        scheme = "rediss" if options["ssl"] else "redis"
        self._where = f"{scheme}://{self.host}:{self.port}/{self.db}"
        user = options["username"] or ""
        auth = f"{user}:***@" if options["password"] else (f"{user}@" if user else "")
        self._searched = f"at {scheme}://{auth}{self.host}:{self.port}/{self.db} under prefix {self.prefix!r}"
        """Where executions are looked up, for `ExecutionNotFoundError` (password masked)."""
        self._keys = Keys(self.prefix)
        self._conns: PerLoop[_Conn] = PerLoop()
        self._feeds: weakref.WeakSet[RedisChangeFeed] = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisDurableStorage:
        """Build a storage from `redis://[:password@]host:port/db?prefix=P&ttl=SECONDS` (or `rediss://`).

        `socket_timeout=SECONDS`, `replicas=N` and `replica_timeout=SECONDS` are accepted too. Keyword
        `options` (e.g. `codec=`) override the URL's parameters. Unknown parameters raise `UserError`,
        so a typo does not silently fall back to a default prefix and mix two applications' executions.
        """
        base, _, query_text = url.partition("?")
        try:
            query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text)))
        except ValueError as exc:
            raise UserError(f"Malformed query string in Redis URL {url!r}: {exc}.") from exc
        unknown = sorted(set(query) - set(_URL_PARAMS))
        if unknown:
            raise UserError(
                f"Unknown parameter(s) {', '.join(unknown)} in Redis URL {url!r}; "
                f"supported: {', '.join(_URL_PARAMS)}."
            )
        kwargs: dict[str, Any] = {"url": base}
        if "prefix" in query:
            kwargs["prefix"] = query["prefix"]
        for name in ("ttl", "socket_timeout", "replica_timeout"):
            if name in query:
                kwargs[name] = _seconds(query[name], f"{name} in Redis URL {url!r}")
        if "replicas" in query:
            text = query["replicas"]
            if not text.isdigit():
                raise UserError(f"replicas in Redis URL {url!r} must be an integer >= 0, got {text!r}.")
            kwargs["replicas"] = int(text)
        return cls(**{**kwargs, **options})

    def __repr__(self) -> str:
        replicated = f", replicas={self.replicas}" if self.replicas else ""
        return f"RedisDurableStorage({self._where!r}, prefix={self.prefix!r}, ttl={self.ttl!r}{replicated})"

    # ---- connections --------------------------------------------------------------------------------

    async def _conn(self) -> _Conn:
        """Return the running loop's client, created on first use (a client cannot move between loops)."""
        conn, created, orphans = self._conns.get(self._new_conn)
        if created:
            await anext(conn.guard)
            await _per_loop.close(orphans, wait=_CLOSE_WAIT)
        return conn

    def _new_conn(self) -> _Conn:
        client = aioredis.Redis(**self._client_options)
        scripts = {name: client.register_script(text) for name, text in SCRIPTS.items()}
        return _Conn(client, scripts, _closing(client))

    async def close_async(self) -> None:
        """Close every loop's client and every change feed; a later call opens new ones."""
        for feed in list(self._feeds):
            await feed.close_from_any_loop()
        await _per_loop.close(self._conns.take_all(), wait=_CLOSE_WAIT)

    def change_feed(self) -> RedisChangeFeed:
        """A pub/sub feed on channel `<prefix>changes`, on a dedicated connection (`_redis_feed`)."""
        feed = RedisChangeFeed(self, self._client_options, self._keys.channel)
        self._feeds.add(feed)
        return feed

    @contextlib.contextmanager
    def _errors(self, execution_id: str | None) -> Iterator[None]:
        """Turn redis-py's errors into perdure's typed ones."""
        try:
            yield
        except (
            redis_errors.AuthenticationError,
            redis_errors.AuthorizationError,
            redis_errors.NoPermissionError,
        ) as exc:
            raise StorageConfigurationError(
                f"Redis at {self._where} refused perdure's credentials or commands ({type(exc).__name__}: "
                f"{exc}). Check the password / user in the URL and the user's ACL (perdure runs EVALSHA, "
                f"GET, SET, ZADD, ... on keys under prefix {self.prefix!r}); retrying will not help."
            ) from exc
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.OutOfMemoryError,
            redis_errors.ReadOnlyError,
            redis_errors.TryAgainError,
            redis_errors.ClusterDownError,
            redis_errors.ExecAbortError,
        ) as exc:
            raise self._unavailable(exc, execution_id) from exc
        except redis_errors.ResponseError as exc:
            message = str(exc)
            if any(code in message for code in ("MISCONF", "NOREPLICAS", "BUSY", "OOM", "READONLY")):
                raise self._unavailable(exc, execution_id) from exc
            if "DB index is out of range" in message or "invalid DB index" in message:
                raise StorageConfigurationError(
                    f"Redis at {self._where} has no database {self.db} ({message}); use a database "
                    f"number the server has (see its `databases` setting)."
                ) from exc
            if "WRONGTYPE" in message:
                raise StorageConfigurationError(
                    f"Redis keys under prefix {self.prefix!r} at {self._where} hold data that perdure did "
                    f"not write ({message}); choose a prefix no other application uses."
                ) from exc
            raise

    def _unavailable(self, exc: Exception, execution_id: str | None) -> StorageUnavailableError:
        detail = f"{self._where}: {type(exc).__name__}: {exc}"
        return StorageUnavailableError("redis", detail, execution_id=execution_id)

    async def _script(
        self, name: str, keys: Sequence[str], args: Sequence[Any], execution_id: str | None
    ) -> Any:
        conn = await self._conn()
        with self._errors(execution_id):
            return await conn.scripts[name](keys=keys, args=args)

    async def _write(
        self, name: str, keys: Sequence[str], args: Sequence[Any], execution_id: str | None
    ) -> tuple[Any, int | None]:
        """Run a write script; with `replicas`, `WAIT` follows it on the same connection.

        Returns the script's reply and the number of replicas that confirmed (None without
        `replicas`). WAIT counts the writes of the connection that sends it, and redis-py's pool
        hands each command any free connection, so both go in one non-transactional pipeline (one
        connection, one round trip; inside MULTI, WAIT would not block). The caller reads the
        reply's codes first, then passes the count to `_confirm`.
        """
        if not self.replicas:
            return await self._script(name, keys, args, execution_id), None
        conn = await self._conn()
        with self._errors(execution_id):
            async with conn.client.pipeline(transaction=False) as pipe:
                await conn.scripts[name](keys=keys, args=args, client=pipe)
                pipe.wait(self.replicas, self._wait_ms)
                reply, acknowledged = await pipe.execute()
        return reply, int(acknowledged)

    def _confirm(self, execution_id: str | None, acknowledged: int | None) -> None:
        """Raise `ReplicationError` when fewer than `replicas` replicas confirmed a write."""
        if acknowledged is None or acknowledged >= self.replicas:
            return
        raise ReplicationError(
            "redis",
            f"{self._where}: WAIT {self.replicas} {self._wait_ms} returned {acknowledged}",
            execution_id=execution_id,
            required=self.replicas,
            acknowledged=acknowledged,
            timeout=self.replica_timeout,
        )

    async def _call(self, op: Callable[[aioredis.Redis], Awaitable[T]], execution_id: str | None) -> T:
        conn = await self._conn()
        with self._errors(execution_id):
            return await op(conn.client)

    def _delete_args(
        self, execution_id: str, *, only_if_gone: bool, force: bool, max_score: str, keep: str = ""
    ) -> list[str]:
        flags = ["1" if only_if_gone else "0", "1" if force else "0"]
        return [execution_id, *flags, str(self._tomb_ttl_ms), max_score, keep]

    async def _delete_batch(
        self, ids: Sequence[str], *, only_if_gone: bool, max_score: str = "", keep: str = ""
    ) -> list[Any]:
        """Run the (unforced) delete script for each id in one pipeline (one round trip, each atomic).

        `keep` (`,failed,paused,` or empty): statuses the script refuses to delete (cleanup).
        """
        conn = await self._conn()
        with self._errors(None):
            async with conn.client.pipeline(transaction=False) as pipe:
                for eid in ids:
                    args = self._delete_args(
                        eid, only_if_gone=only_if_gone, force=False, max_score=max_score, keep=keep
                    )
                    await conn.scripts["delete"](keys=self._keys.execution(eid), args=args, client=pipe)
                return await pipe.execute()

    # ---- encoding -----------------------------------------------------------------------------------

    def _location(self, execution_id: str) -> str:
        return f"{self._where} key {self._keys.head(execution_id)}"

    def _head_args(self, record: ExecutionRecord) -> list[Any]:
        """ARGV 1-7 of the head-writing scripts."""
        codec, payload = self.codec.encode(encode_head(record))
        return [
            record.execution_id,
            record.lease_owner or "",
            codec,
            payload,
            record.status.value,
            str(_micros(record.updated_at)),
            str(self._ttl_ms),
        ]

    def _decode(self, execution_id: str, head: Sequence[Any], lease: Sequence[Any]) -> ExecutionRecord:
        """Decode a head hash `[c, d]` and attach the stored lease `[o, e]`; raises typed errors."""
        codec, payload = head
        record = decode_head(
            execution_id,
            payload,
            codec=_text(codec),
            location=self._location(execution_id),
            max_size=self.codec.max_decompressed_size,
        )
        owner, expires = lease
        record.lease_owner = _text(owner) if owner is not None else None
        record.lease_expires_at = _from_micros(expires) if owner is not None and expires else None
        return record

    def _decode_step(self, execution_id: str, seq: int, raw: bytes) -> StepRecord:
        codec, _, payload = raw.partition(b":")
        return decode_step(
            execution_id,
            seq,
            payload,
            codec=codec.decode(errors="replace"),
            location=f"{self._where} key {self._keys.journal(execution_id)}",
            max_size=self.codec.max_decompressed_size,
        )

    # ---- contract -----------------------------------------------------------------------------------

    async def save_state_async(self, record: ExecutionRecord) -> None:  # noqa: D102
        eid = record.execution_id
        keys = self._keys.execution(eid)
        reply, acknowledged = await self._write("save", keys, self._head_args(record), eid)
        self._check_write(record, reply)
        self._confirm(eid, acknowledged)

    def _check_write(self, record: ExecutionRecord, reply: list[Any]) -> None:
        if reply[0] == b"lease":
            raise self._lease_lost(record, _text(reply[1]))
        if reply[0] == b"deleted":
            raise ExecutionDeletedError(record.execution_id)
        if reply[0] == b"missing":
            raise self._not_found(record.execution_id)

    def _not_found(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(execution_id, backend=self.backend_name, where=self._searched)

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:  # noqa: D102
        [(head, lease)] = await self._fetch([execution_id], execution_id)
        if head[1] is None:
            return None
        return self._decode(execution_id, head, lease)

    async def _fetch(
        self, ids: Sequence[str], execution_id: str | None = None
    ) -> list[tuple[list[Any], list[Any]]]:
        """Head `[c, d]` and lease `[o, e]` of each id, read in one MULTI so each pair is consistent."""

        async def op(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                for eid in ids:
                    pipe.hmget(self._keys.head(eid), ["c", "d"])
                    pipe.hmget(self._keys.lease(eid), ["o", "e"])
                return await pipe.execute()

        replies = await self._call(op, execution_id)
        return [(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]

    async def delete_state_async(self, execution_id: str, *, force: bool = False) -> bool:  # noqa: D102
        keys = self._keys.execution(execution_id)
        args = self._delete_args(execution_id, only_if_gone=False, force=force, max_score="")
        reply, acknowledged = await self._write("delete", keys, args, execution_id)
        if reply[0] == b"leased":
            raise ExecutionLeasedError(execution_id, _text(reply[1]), _from_micros(reply[2]))
        self._confirm(execution_id, acknowledged)
        return bool(reply[1])

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:  # noqa: D102
        await self._append(record, [step])

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Every journal entry and the head in one script call (atomic: all of it or nothing)."""
        await self._append(record, self._batch(record, steps))

    async def _append(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Run the append script for consecutive entries `steps` and the head `record`."""
        entries = []
        for step in steps:
            codec, payload = self.codec.encode(encode_step(step))
            entries.append(codec.encode() + b":" + payload)
        args = [*self._head_args(record), str(steps[0].seq), *entries]
        keys = self._keys.execution(record.execution_id)
        reply, acknowledged = await self._write("append", keys, args, record.execution_id)
        self._check_write(record, reply)
        if reply[0] == b"conflict":  # the first seq is journaled already, or would leave a gap
            raise StepConflictError(steps[0].execution_id, steps[0].seq)
        self._confirm(record.execution_id, acknowledged)

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:  # noqa: D102
        return await self._load_from(execution_id, 0)

    async def load_steps_after_async(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """Read the entries after `after_seq` with one `LRANGE` from that index (the index is the seq)."""
        return await self._load_from(execution_id, self._tail_start(execution_id, after_seq))

    async def _load_from(self, execution_id: str, start: int) -> list[StepRecord]:
        key = self._keys.journal(execution_id)
        read = await self._call(lambda client: client.lrange(key, start, -1), execution_id)
        entries = cast(list[bytes], read)
        steps = []
        for seq, raw in enumerate(entries, start):
            try:
                steps.append(self._decode_step(execution_id, seq, raw))
            except CorruptRecordError:
                # The list index is the seq: an entry removed from the middle shifts the rest down.
                codec, _, payload = raw.partition(b":")
                found = stored_seq(payload) if codec == b"json" else None
                if found is not None and found > seq:
                    location = f"{self._where} key {key}"
                    seqs = [*range(start, seq), found]
                    check_journal_seqs(execution_id, seqs, location=location, start=start)
                raise
        return steps

    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        return await self.list_executions_async()

    # ---- leases -------------------------------------------------------------------------------------

    async def acquire_lease_async(  # noqa: D102
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        ttl_us = round(self._check_ttl(ttl_seconds) * 1_000_000)
        keys = [self._keys.head(execution_id), self._keys.lease(execution_id)]
        steal = ["0", ""] if steal_from is None else ["1", steal_from]
        reply, acknowledged = await self._write("acquire", keys, [owner, str(ttl_us), *steal], execution_id)
        if reply[0] == b"missing":
            raise self._not_found(execution_id)
        if reply[0] == b"leased":
            raise ExecutionLeasedError(execution_id, _text(reply[1]), _from_micros(reply[2]))
        self._confirm(execution_id, acknowledged)
        return self._decode(execution_id, [reply[2], reply[3]], [owner.encode(), reply[1]])

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:  # noqa: D102
        ttl_us = round(self._check_ttl(ttl_seconds) * 1_000_000)
        keys = [self._keys.head(execution_id), self._keys.lease(execution_id)]
        reply, acknowledged = await self._write("renew", keys, [owner, str(ttl_us)], execution_id)
        if reply[0] == b"lost":
            raise LeaseLostError(execution_id, owner, _text(reply[1]) or None)
        self._confirm(execution_id, acknowledged)
        return _from_micros(reply[1])

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:  # noqa: D102
        reply = await self._script("release", [self._keys.lease(execution_id)], [owner], execution_id)
        return bool(reply)

    # ---- indexed queries ----------------------------------------------------------------------------

    async def list_executions_async(
        self, status: ExecutionStatus | str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        """Page through the `updated_at` index newest first, decoding only the heads returned.

        Damaged heads are skipped with a warning; ids whose head expired are skipped and their index
        entries forgotten.
        """
        key = self._keys.all if status is None else self._keys.status(ExecutionStatus(status).value)
        wanted = None if limit is None else max(limit, 0)
        heads: list[ExecutionRecord] = []
        seen: set[str] = set()
        gone: list[str] = []
        start = 0
        while wanted is None or len(heads) < wanted:
            page = _BATCH if wanted is None else min(wanted - len(heads), _BATCH)
            raw_ids = await self._page(key, start, page)
            if not raw_ids:
                break
            start += len(raw_ids)
            ids = [i for i in (_text(r) for r in raw_ids) if i not in seen]
            seen.update(ids)
            found = []
            for eid, (head, lease) in zip(ids, await self._fetch(ids), strict=True):
                if head[1] is None:
                    gone.append(eid)
                else:
                    found.append((eid, head, lease))
            heads.extend(self._readable_heads(found, lambda row: self._decode(*row)))
            if len(raw_ids) < page:
                break
        if gone:
            await self._forget(gone)
        return heads if wanted is None else heads[:wanted]

    async def _page(self, key: str, start: int, count: int) -> list[bytes]:
        """Ids at ranks `start`.. of an index, newest first."""
        return cast(list[bytes], await self._call(lambda c: c.zrevrange(key, start, start + count - 1), None))

    async def _forget(self, ids: Sequence[str]) -> None:
        """Drop the index entries of executions whose head is gone (expired); keep live ones."""
        await self._delete_batch(ids, only_if_gone=True)

    async def get_stats_async(self) -> dict[str, Any]:
        """Count the status indexes with `ZCARD`, after forgetting executions whose keys expired.

        Damaged heads written by `_put_raw_head` carry no status and are left out of both counts.
        """
        keys = [self._keys.expiry, *self._keys.statuses()]
        for _ in range(10_000):  # each round forgets up to _BATCH expired executions
            kind, values = await self._script("stats", keys, [_BATCH], None)
            if kind == b"ok":
                return self._stats(zip(STATUSES, values, strict=True))
            await self._forget([_text(v) for v in values])
        raise StorageUnavailableError(
            "redis", f"{self._where}: expiry index did not settle"
        )  # pragma: no cover

    async def cleanup_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Delete executions whose `updated_at` is older than the cutoff, found by index range.

        Without kept statuses the ids come from `P idx:all`, with some from the status indexes of the
        other statuses (so kept executions are never even read); each page of up to 256 ids is one
        pipeline of delete scripts, each of which checks again, atomically, the age, the status and
        the lease. Executions with an unexpired lease are left alone (they are running); tombstones
        older than the cutoff are purged first, by range over `P idx:tombstones`.
        """
        score = str(_micros(self._cutoff(older_than_days)))
        keep = retention_keep(keep_statuses)
        wanted = self._cleanup_limit(limit)
        marks = f",{','.join(sorted(keep))}," if keep else ""
        await self._purge_tombstones(score)
        indexes = [self._keys.all] if not keep else [self._keys.status(s) for s in STATUSES if s not in keep]
        deleted = 0
        for key in indexes:
            kept = 0
            while wanted is None or deleted < wanted:
                page = await self._older(key, score, kept)
                if not page:
                    break
                if wanted is not None:
                    page = page[: wanted - deleted]
                replies = await self._delete_batch(
                    [_text(r) for r in page], only_if_gone=False, max_score=score, keep=marks
                )
                done = sum(1 for reply in replies if reply[0] == b"ok" and reply[1])
                deleted += done
                kept += len(page) - done  # leased (running) ones stay in the index range: page past them
        return deleted

    async def count_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
    ) -> int:
        """`ZCOUNT` of the `updated_at` index (or of the status indexes of the statuses not kept)."""
        score = f"({_micros(self._cutoff(older_than_days))}"
        keep = retention_keep(keep_statuses)
        keys = [self._keys.all] if not keep else [self._keys.status(s) for s in STATUSES if s not in keep]
        total = 0
        for key in keys:
            total += int(await self._call(_zcount(key, score), None))
        return total

    async def _older(self, key: str, score: str, start: int) -> list[bytes]:
        """A page of members of sorted set `key` scored below `score`, lowest first, from rank `start`."""
        return cast(
            list[bytes],
            await self._call(
                lambda c: c.zrangebyscore(key, "-inf", f"({score}", start=start, num=_BATCH), None
            ),
        )

    async def _purge_tombstones(self, score: str) -> None:
        """Forget tombstones older than `score` (epoch microseconds)."""
        key = self._keys.tombstones
        while True:
            ids = [_text(r) for r in await self._older(key, score, 0)]
            if not ids or not await self._script(
                "purge", [key, *(self._keys.tomb(i) for i in ids)], [score, *ids], None
            ):
                return

    # ---- list queries and cancel requests (see `perdure.storage._redis_query`) -----------------------

    async def query_executions_async(self, query: ExecutionQuery) -> ExecutionPage:
        """Walk the `updated_at` index(es) from the cursor, decoding heads until a page matches."""
        return await _redis_query.page(self, query)

    async def count_executions_async(self, query: ExecutionQuery) -> int:
        """`ZCARD`s for a status filter alone; a walk of the index for any other filter."""
        return await _redis_query.count(self, query)

    async def activity_async(self, since: datetime, bucket_seconds: int = 3600) -> list[ActivityBucket]:
        """Failed per bucket by `ZCOUNT`; started from the heads updated since `since`."""
        bounds = activity_bounds(since, bucket_seconds)
        return await _redis_query.activity(self, bounds) if bounds else []

    async def request_cancel_async(self, execution_id: str, reason: str = "") -> bool:
        """One script: the request's hash if the head exists (the first stays), announced on the feed."""
        check_reason(reason)
        keys = [
            self._keys.head(execution_id),
            self._keys.cancel(execution_id),
            self._keys.channel if self._keys.announce else "",
        ]
        reply, acknowledged = await self._write("cancel", keys, [execution_id, reason], execution_id)
        if reply:
            self._confirm(execution_id, acknowledged)
        return bool(reply)

    async def cancel_request_async(self, execution_id: str) -> CancelRequest | None:
        """One `HMGET` of the request's hash."""
        key = self._keys.cancel(execution_id)
        stamp, reason = await self._call(lambda client: client.hmget(key, ["t", "r"]), execution_id)
        if stamp is None:
            return None
        return CancelRequest(_from_micros(stamp), _text(reason) if reason is not None else "")

    async def clear_cancel_request_async(self, execution_id: str) -> bool:  # noqa: D102
        key = self._keys.cancel(execution_id)
        return bool(await self._call(lambda client: client.delete(key), execution_id))

    # ---- test hook ----------------------------------------------------------------------------------

    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        """Store `payload` as the head body as-is, the way a bad disk or a bad deploy would.

        The execution stays in the `updated_at` index (so list finds and skips it) but leaves the
        status indexes, as its status is unknown.
        """
        now = datetime.now(UTC)
        args = [execution_id, "", "json", payload, "", str(_micros(now)), "0"]
        run_sync(self._script("save", self._keys.execution(execution_id), args, execution_id))
