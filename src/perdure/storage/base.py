"""The storage contract every backend implements.

Async-first: the engine awaits the `*_async` methods. Each has a synchronous twin with the seed
API's name (`get_stats()`, `delete_state()`, ...) that also works when an event loop is already
running in the calling thread.

A backend makes `append_step_async` atomic where the medium allows it: SQL backends store the journal
entry and the new head in one transaction. The file backend cannot replace two files atomically, so
it orders the writes instead: the journal entry is appended and fsync'd first, then the head is
replaced. A crash between the two leaves the journal one entry ahead of the head, never behind, and
the engine treats the journal as the source of truth when it resumes (a journaled result is never
lost, so its unit never runs again). A second writer of the same journal sequence must fail with
`StepConflictError` rather than overwrite.

`append_steps_async` journals several consecutive entries and the head after the last of them in one
write (one transaction, one script call, one `write` and one fsync), so that the engine can journal
N units with one commit instead of N. Every built-in backend writes a batch atomically (SQL, Redis,
memory) or, for the file backend, as one append before the head, so that a crash leaves the journal
at most one batch ahead of the head (`journal_may_lead_head`). A custom backend that does not
override it gets a default that appends entry by entry: each entry atomic with a head that counts
it, which is crash-safe but not one write (`atomic_batches` says which a backend does).

Leases make one worker the only writer of an execution. The lease (owner id and expiry) is stored
apart from the head body: `save_state_async` and `append_step_async` never change it, and
`load_state_async` / `list_executions_async` return heads whose `lease_owner` / `lease_expires_at`
are the stored lease. Writes are fenced: a head write or step append whose `record.lease_owner`
differs from an unexpired stored lease is refused with `LeaseLostError` and changes nothing, so a
worker that stalled past its lease cannot write over the worker that took the execution over. A
backend compares expiry with one clock per write: the server's clock where there is a server, and a
clock that wall-clock steps do not move (the boot's monotonic clock, see `_clock`) for the
single-host SQLite and file backends.

Watchers in other processes follow executions with `load_steps_after_async` (the journal entries
after the last seq they saw, at a cost that does not grow with the history where the backend allows
it) and `change_feed()`: a `ChangeFeed` that announces the ids of changed executions (PostgreSQL
LISTEN/NOTIFY, Redis pub/sub), or None where the watcher polls (memory, files, SQLite).

One module (some 680 lines) for one concept, the contract: each abstract method states the
guarantee every backend must give, and the shared parts every backend inherits (sync twins, the
default batch append, stats and cleanup helpers, the seed's checkpoint methods) sit next to the
guarantees they implement. Backend-specific code lives in each backend's module.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from .._sync import run_sync
from ..codec import decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    LeaseLostError,
    StorageConfigurationError,
    UserError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepRecord, utcnow
from ..settings import keep_statuses as _parse_keep
from ..settings import settings
from ._query import (
    ActivityBucket,
    CancelRequest,
    ExecutionPage,
    ExecutionQuery,
    activity_bounds,
    activity_of,
    check_reason,
    page_of,
)

__all__ = [
    "CLEANUP_BATCH",
    "ActivityBucket",
    "CancelRequest",
    "ExecutionPage",
    "ExecutionQuery",
    "DEFAULT_RETENTION_DAYS",
    "ChangeFeed",
    "DurableExecutionStorage",
    "DurableStorage",
    "check_journal_seqs",
    "cleanup_executions",
    "retention_days",
    "retention_keep",
    "validate_identifier",
]

logger = logging.getLogger("perdure.storage")

_Row = TypeVar("_Row")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # always `fullmatch`: `$` lets a trailing newline in


async def cleanup_executions(
    storage: DurableExecutionStorage,
    older_than_days: float | None,
    *,
    keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
    limit: int | None = None,
) -> int:
    """`storage.cleanup_old_executions_async` with only the options that backend's method takes.

    A custom backend written before `keep_statuses` and `limit` existed overrides the method with
    `(self, older_than_days)`; the CLI, the worker and the dashboard call it through here, so such a
    backend keeps working (a cleanup without a limit deletes in one call) instead of failing with a
    TypeError. Keeping statuses is never silently dropped: then the error names the backend and the
    signature to add.
    """
    method = storage.cleanup_old_executions_async
    parameters = inspect.signature(method).parameters
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options: dict[str, Any] = {}
    if any_keyword or "keep_statuses" in parameters:
        options["keep_statuses"] = keep_statuses
    elif retention_keep(keep_statuses):
        raise UserError(
            f"{type(storage).__name__}.cleanup_old_executions_async does not take keep_statuses, so it "
            f"cannot keep {', '.join(sorted(retention_keep(keep_statuses)))} executions: add "
            f"`*, keep_statuses=None, limit=None` to its signature (see DurableExecutionStorage), or clean "
            f"up without kept statuses."
        )
    if any_keyword or "limit" in parameters:
        options["limit"] = limit
    deleted: int = await method(older_than_days, **options)
    return deleted


def validate_identifier(value: str, what: str) -> str:
    """Refuse names that would be interpolated into SQL or key names unless they are plain identifiers."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise StorageConfigurationError(
            f"Invalid {what} {value!r}: use letters, digits and underscores only, starting with a letter "
            f"or underscore, at most 63 characters."
        )
    return value


def check_journal_seqs(execution_id: str, seqs: Sequence[int], *, location: str = "", start: int = 0) -> None:
    """Refuse a journal whose entries are not exactly seqs start..start+n-1 (an entry deleted, a gap).

    `start` is 0 for a whole journal, `after_seq + 1` for the tail `load_steps_after_async` reads.
    Raises `CorruptRecordError` naming the missing seqs: resuming over a gap would run the lost
    units again.
    """
    if all(seq == start + index for index, seq in enumerate(seqs)):
        return
    present = set(seqs)
    missing = [seq for seq in range(start, max(max(present), start + len(seqs))) if seq not in present]
    if not missing:  # out of order or duplicated: cannot happen with a primary key, but say so
        first = next(index for index, seq in enumerate(seqs) if seq != start + index)
        raise CorruptRecordError(
            execution_id,
            f"journal entry {start + first} holds seq {seqs[first]}",
            step=str(start + first),
            location=location,
        )
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    shown = ", ".join(str(seq) for seq in missing[:10]) + more
    raise CorruptRecordError(
        execution_id,
        f"journal entries {shown} are missing (deleted or never written) while later ones exist",
        step=str(missing[0]),
        location=location,
    )


DEFAULT_RETENTION_DAYS = 7.0
"""Days `cleanup_old_executions` keeps executions when neither its argument nor the setting says."""


def retention_days(older_than_days: float | None = None) -> float:
    """`older_than_days` when given, else the `retention_days` setting, else `DEFAULT_RETENTION_DAYS`."""
    if older_than_days is not None:
        return float(older_than_days)
    configured = settings().retention_days
    return DEFAULT_RETENTION_DAYS if configured is None else float(configured)


def retention_keep(keep_statuses: Iterable[ExecutionStatus | str] | str | None = None) -> frozenset[str]:
    """The status values a cleanup keeps: `keep_statuses` when given, else the `retention_keep` setting.

    `keep_statuses` may be statuses, their names, or one comma-separated string; an empty one keeps
    nothing (even when the setting keeps some). An unknown status is `UserError`.
    """
    if keep_statuses is None:
        return frozenset(settings().retention_keep)
    try:
        return frozenset(_parse_keep(keep_statuses))
    except ValueError as exc:
        raise UserError(f"keep_statuses: {exc}.") from None


CLEANUP_BATCH = 500
"""Executions one cleanup transaction (or script round) deletes at most: a cleanup of many executions
is a series of short writes, so running executions' steps get in between them."""


def stored_seq(payload: bytes) -> int | None:
    """The `seq` a plain-JSON journal entry says it has (None when unreadable), to name a gap."""
    try:
        value = json.loads(payload).get("seq")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


class ChangeFeed(ABC):
    """Announces which executions of one storage changed, for watchers in another process.

    Made by `DurableExecutionStorage.change_feed()`. Use it as an async context manager (or call
    `open` and `aclose`)::

        async with storage.change_feed() as feed:
            while True:
                changed = await feed.wait(1.0)
                if changed is None:
                    ...  # announcements may have been lost: re-read every execution you follow
                for execution_id in changed or ():
                    ...  # re-read its head and load_steps_after_async(execution_id, last_seq)

    A change is any committed write of a head or of the journal: `save_state_async`,
    `append_step(s)_async`, `delete_state_async`, the deletes of `cleanup_old_executions_async`.
    Lease calls are not changes (the head's status and journal do not move), nor are expiries a
    server performs on its own (Redis `ttl`). Every change committed after `open()` returned is
    announced, by writers in any process, announced at most once per `wait` however often it
    was written; an announcement says only that something changed, so a watcher re-reads and
    derives its events from what it reads, and a spurious or duplicated id costs one read.
    A feed belongs to the event loop that opened it.
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @abstractmethod
    async def open(self) -> None:
        """Subscribe: changes committed after this returns are announced (idempotent).

        Raises `StorageUnavailableError` naming the storage when its server cannot be reached.
        """

    @abstractmethod
    async def wait(self, timeout: float) -> set[str] | None:
        """The ids of the executions changed since the previous call; waits up to `timeout` seconds.

        Returns at once when changes are pending, else as soon as one arrives (with everything that
        arrived with it), else an empty set after `timeout`. Returns None when announcements may
        have been lost: the connection to the server broke and the feed reconnected; the caller
        then re-reads every execution it follows. Raises `StorageUnavailableError` naming the
        storage when it cannot reconnect (a later `wait` tries again), `UserError` when the feed is
        not open. Never hangs on a server that stopped answering: a feed checks its connection
        while idle and treats a server that does not answer as gone.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Unsubscribe and release the feed's connection (idempotent); `open` may subscribe again."""


class DurableExecutionStorage(ABC):
    """Abstract base class of all storage backends (subclass it for a custom backend).

    Implement the abstract `*_async` methods; the sync twins, `get_stats` and `cleanup` helpers are
    derived from them. Override `get_stats_async`, `list_executions_async`,
    `query_executions_async`, `count_executions_async`, `activity_async` and
    `cleanup_old_executions_async` when the backend can answer them from an index,
    `append_steps_async` (with `atomic_batches = True`) when it can write several journal entries
    and a head in one atomic write, and the cancel request methods (with
    `shared_cancel_requests = True`) to store cancel requests where every process sees them.
    """

    backend_name: ClassVar[str] = "custom"
    """Short name reported by `get_stats()['backend']`."""

    journal_may_lead_head: ClassVar[int] = 0
    """How many journal entries a crash may leave beyond the head's `next_seq`.

    0 for backends that write the journal entries and the head atomically (SQL, Redis, memory). The
    file backend appends the entries of a write (one step, or a batch of `append_steps_async`) before
    it replaces the head, so a crash may leave up to one batch: it accepts batches of at most
    `max_batch` entries and sets both to 64. Any other difference between the journal and the head
    (entries missing, gaps, a longer lead) is corruption, and the engine refuses to run the execution
    (`CorruptRecordError`) rather than run lost units again.
    """

    atomic_batches: ClassVar[bool] = False
    """Whether `append_steps_async` writes a whole batch in one atomic write (see there).

    True for every built-in backend (for the file backend: atomic up to its crash window,
    `journal_may_lead_head`). False for the default implementation a custom backend inherits, which
    appends entry by entry: a crash or an I/O error inside a batch may leave a prefix of it
    written, each entry with a head that counts it. Batching then saves nothing: the engine may as
    well append unit by unit with its own exact heads.
    """

    max_batch: ClassVar[int | None] = None
    """The most entries one `append_steps_async` call takes (None: no bound); longer is `UserError`.

    The file backend bounds it (64) because a crash may leave a whole batch in the journal ahead of
    the head, and the engine tolerates no more than `journal_may_lead_head` such entries: callers
    split longer batches into batches of `max_batch`.
    """

    # ---- the contract -------------------------------------------------------------------------

    @abstractmethod
    async def save_state_async(self, record: ExecutionRecord) -> None:
        """Create or overwrite the head record of `record.execution_id`."""

    @abstractmethod
    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        """Return the head record, None when absent; raise `CorruptRecordError` if it is damaged."""

    @abstractmethod
    async def delete_state_async(self, execution_id: str, *, force: bool = False) -> bool:
        """Delete the head and journal of an execution; return whether it existed.

        Deleting an execution whose lease is held and unexpired (a worker runs it right now) raises
        `ExecutionLeasedError` and changes nothing, unless `force` is true. Every delete leaves a
        tombstone for the id (atomically with the removal): later writes of that id
        (`save_state_async`, `append_step_async`, also a new run reusing the id) raise
        `ExecutionDeletedError` instead of re-creating the execution, `acquire_lease_async` raises
        `ExecutionNotFoundError`, and reads see nothing. `cleanup_old_executions_async` purges
        tombstones older than its cutoff. Deleting an id that is absent (never existed, or already
        deleted) returns False and writes nothing.

        Only an unexpired lease blocks the delete, whoever holds it: perdure cannot tell from here
        whether the holder still runs. An operator who knows the holder is dead passes `force=True`
        (its attempt, should it still run, then fails with `ExecutionDeletedError` at its next write).
        """

    @abstractmethod
    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Atomically append `step` to the journal and store `record` as the new head.

        Never creates an execution: without a head it raises `ExecutionNotFoundError` (or
        `ExecutionDeletedError` after a delete) and writes nothing. Likewise `save_state_async` of a
        record whose `lease_owner` is set (a write of a running attempt) requires the head to exist;
        only an unleased `save_state_async` of a new id creates an execution.
        """

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Append the consecutive entries `steps` to the journal and store `record` as the new head.

        `steps` are entries of `record.execution_id` with consecutive seqs, in order; `record` is the
        head after the last of them (the engine's has `next_seq` = last seq + 1; like
        `append_step_async`, the storage does not check it). The guarantees are those of
        `append_step_async`, for the batch as a whole: the entries and the head are one atomic write;
        it is fenced by the lease (`LeaseLostError`); it never creates an execution
        (`ExecutionNotFoundError`, or `ExecutionDeletedError` after a delete); `StepConflictError`
        when any of the seqs is journaled already (naming the first journaled one where the backend
        can tell, else the batch's first seq), or, on backends that refuse gaps, when the first seq
        is not the journal's next one. A byte-identical retry of a batch whose reply was lost may
        succeed as a no-op (Redis). A refusal, and any error raised before the write (an entry or
        head that cannot be encoded, `SerializationError`), writes nothing: no entry, and the head
        stays as it was. An empty `steps`, entries of another execution, seqs that are not
        consecutive, or more than `max_batch` entries raise `UserError` and write nothing (a head
        alone is written with `save_state_async`).

        Where the medium cannot write two things atomically (the file backend), the entries are
        appended in one write and made durable before the head is replaced, so a crash leaves the
        journal ahead of the head by at most the batch, never behind: `journal_may_lead_head`
        covers it, and the journal is what the engine resumes from. A crash in the middle of that
        one write (power loss) may leave a prefix of the batch, its last line torn: the torn line is
        cut off like the torn line of a single append, the complete entries before it stay.

        The default implementation, for custom backends that do not override it, is NOT one write:
        it checks the batch and encodes every entry and the head first (so a malformed batch or an
        unstorable value writes nothing), then calls `append_step_async` once per entry, each with
        `record` as the head but `next_seq` = that entry's seq + 1. Every write is atomic and the
        head never lags the journal, so it is crash-safe for the engine, but a crash, an I/O error
        or a refusal that only shows at the second entry or later (a lease taken over, a seq that
        a concurrent writer journaled meanwhile) leaves the entries before it written, under a head
        that counts them and whose other fields are already `record`'s. Such backends report
        `atomic_batches = False`; override this method with one atomic write to make it True.
        """
        batch = self._batch(record, steps)
        encode_head(record)  # refuse an unstorable head or entry before the first write
        for step in batch:
            encode_step(step)
        for step in batch[:-1]:
            await self.append_step_async(record.model_copy(update={"next_seq": step.seq + 1}), step)
        await self.append_step_async(record, batch[-1])

    @abstractmethod
    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        """Return the journal of an execution in sequence order (empty when it has none).

        Raises `CorruptRecordError` when the stored seqs are not exactly 0..n-1 (see
        `check_journal_seqs`).
        """

    async def load_steps_after_async(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """The journal entries with seq > `after_seq`, in sequence order (empty when there are none).

        What a watcher reads after its last seen seq: `after_seq=-1` returns the whole journal. The
        entries, their decoding and the errors are those of `load_steps_async` for the same tail:
        `CorruptRecordError` when the stored seqs from `after_seq + 1` are not consecutive (a gap
        before `after_seq` is only seen by `load_steps_async`). The built-in backends read only the
        tail (an index range, a list range; the file backend remembers where the lines it read end),
        so the cost follows the number of new entries, not the length of the history. This default
        filters `load_steps_async`. A negative `after_seq` is taken as -1; a non-integer is `UserError`.
        """
        start = self._tail_start(execution_id, after_seq)
        return [entry for entry in await self.load_steps_async(execution_id) if entry.seq >= start]

    def change_feed(self) -> ChangeFeed | None:
        """A new, unopened `ChangeFeed` of this storage, or None when watchers must poll.

        None (the default; memory, file and SQLite backends): a watcher re-reads the executions it
        follows on a period of its choice. PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub) return a
        feed holding one dedicated connection; the notification is sent in the same transaction or
        script as the write, so it is delivered exactly when the write is visible. Feeds of two
        storages with different table prefixes / key prefixes never see each other's changes.
        `close_async` of the storage closes the feeds it made.
        """
        return None

    @abstractmethod
    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        """Every readable head record; damaged ones are skipped with a warning."""

    # ---- leases -------------------------------------------------------------------------------

    @abstractmethod
    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        """Atomically take the lease of an existing execution for `owner` until now + `ttl_seconds`.

        Succeeds when no lease is held, the held lease expired, `owner` holds it already (then it is
        extended), or the holder is exactly `steal_from` (a compare-and-swap the engine uses to take
        over from a worker it knows is dead, e.g. a process of this host that no longer exists).
        Returns the head with the new lease. Raises `ExecutionNotFoundError` when the execution has
        no head, `StorageNotFoundError` when the storage itself does not exist (a file or directory
        backend; nothing is created), and `ExecutionLeasedError` when another owner holds an
        unexpired lease.
        """

    @abstractmethod
    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        """Extend `owner`'s lease to now + `ttl_seconds` and return the new expiry.

        Raises `LeaseLostError` when another owner holds the lease now or the execution is gone. A
        lease of `owner` that expired but was not taken over is renewed.
        """

    @abstractmethod
    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        """Clear the lease if `owner` holds it; return whether it did (idempotent)."""

    def not_found_error(self, execution_id: str) -> ExecutionNotFoundError:
        """The error for an execution this storage does not hold, naming where it looked."""
        own = getattr(self, "_not_found", None)
        if callable(own):
            error = own(execution_id)
            if isinstance(error, ExecutionNotFoundError):
                return error
        return ExecutionNotFoundError(execution_id, backend=self.backend_name)

    async def close_async(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and file handles (idempotent)."""

    # ---- derived queries (backends with indexes override) ---------------------------------------

    async def list_executions_async(
        self, status: ExecutionStatus | str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        """Head records, most recently updated first, optionally filtered by status."""
        wanted = ExecutionStatus(status) if status is not None else None
        heads = [h for h in await self._iter_heads_async() if wanted is None or h.status == wanted]
        heads.sort(key=lambda h: (h.updated_at, h.execution_id), reverse=True)
        return heads if limit is None else heads[: max(limit, 0)]

    async def get_stats_async(self) -> dict[str, Any]:
        """`{"backend", "total_executions", "by_status"}`; `by_status` lists every status."""
        return self._stats((head.status.value, 1) for head in await self._iter_heads_async())

    async def query_executions_async(self, query: ExecutionQuery) -> ExecutionPage:
        """One page of the executions `query` selects (see `ExecutionQuery`), newest first.

        Order: `updated_at` descending, then `execution_id` descending. `next_cursor` (None on the
        last page) encodes the last row's `(updated_at, execution_id)`; the page after it starts
        strictly after that row, so rows added while paging never shift later pages and a walk
        sees every row that existed and was not updated meanwhile exactly once. Damaged heads are
        skipped with a warning. This default decodes every head (memory, file and custom backends);
        SQLite and PostgreSQL answer from indexes, Redis pages through its `updated_at` indexes.
        """
        return page_of(await self._iter_heads_async(), query)

    async def count_executions_async(self, query: ExecutionQuery) -> int:
        """How many executions `query`'s filters select (its `limit` and `cursor` are ignored)."""
        return sum(1 for head in await self._iter_heads_async() if query.matches(head))

    async def activity_async(self, since: datetime, bucket_seconds: int = 3600) -> list[ActivityBucket]:
        """Executions started and failed per bucket of `bucket_seconds`, from `since` to now, oldest first.

        Bucket k starts at `since + k * bucket_seconds` and the last one contains now; empty buckets
        are included (a `since` in the future gives none). `started` counts executions whose
        `created_at` falls in the bucket, `failed` those whose status is `failed` and whose
        `updated_at` falls in it. At most `MAX_BUCKETS` (10,000) buckets; `UserError` otherwise or
        for a `bucket_seconds` that is not an integer >= 1.
        """
        bounds = activity_bounds(since, bucket_seconds)
        if not bounds:
            return []
        return activity_of(await self._iter_heads_async(), bounds)

    # ---- cancel requests ------------------------------------------------------------------------
    # Cooperative cancel: an operator records a request, the worker holding the lease polls it (its
    # heartbeat) and stops at the next unit boundary. The request lives apart from the head, which the
    # worker rewrites at every step.

    shared_cancel_requests: ClassVar[bool] = False
    """Whether cancel requests are stored with the executions, seen by every instance and process.

    True for every built-in backend. The default implementation a custom backend inherits keeps them
    in this storage object only (workers in other processes never see them): override
    `request_cancel_async`, `cancel_request_async` and `clear_cancel_request_async`, remove the
    request when the execution is deleted, and set this to True.
    """

    def _local_cancels(self) -> dict[str, CancelRequest]:
        cancels: dict[str, CancelRequest] | None = self.__dict__.get("_default_cancels")
        if cancels is None:
            cancels = self.__dict__.setdefault("_default_cancels", {})
        return cancels

    async def request_cancel_async(self, execution_id: str, reason: str = "") -> bool:
        """Ask the worker running `execution_id` to stop at its next unit boundary.

        Returns False when the execution does not exist, True otherwise. Idempotent: a second
        request keeps the first one's time and reason. The request stays until
        `clear_cancel_request_async` or until the execution is deleted (`delete_state_async`,
        cleanup). Backends with a change feed announce the execution on it.
        """
        check_reason(reason)
        if await self.load_state_async(execution_id) is None:
            return False
        self._local_cancels().setdefault(execution_id, CancelRequest(utcnow(), reason))
        return True

    async def cancel_request_async(self, execution_id: str) -> CancelRequest | None:
        """The pending cancel request of `execution_id`, None when there is none (or no such execution).

        Cheap (one key or primary-key read on the built-in backends): the lease heartbeat polls it.
        """
        request = self._local_cancels().get(execution_id)
        if request is not None and await self.load_state_async(execution_id) is None:
            self._local_cancels().pop(execution_id, None)  # deleted meanwhile
            return None
        return request

    async def clear_cancel_request_async(self, execution_id: str) -> bool:
        """Remove the cancel request of `execution_id`; whether there was one (idempotent)."""
        return self._local_cancels().pop(execution_id, None) is not None

    async def cleanup_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Delete executions last updated more than `older_than_days` ago; return how many.

        `older_than_days=None` (the default) reads the `retention_days` setting
        (`PERDURE_RETENTION_DAYS`), else `DEFAULT_RETENTION_DAYS` (7); every backend resolves it the
        same way, in `_cutoff`. An execution whose status is in `keep_statuses` is never deleted
        (None, the default, reads the `retention_keep` setting, `PERDURE_RETENTION_KEEP`; empty
        keeps every status eligible; `retention_keep` resolves it). Executions with an unexpired
        lease are skipped (they are running), and tombstones older than the cutoff are purged.
        `limit` deletes at most that many, oldest first (None: all); a caller that deletes in
        batches, with progress, calls again until a call returns less than its limit.

        Backends override this to select from an index (never decoding every head) and to delete
        in short writes of at most `CLEANUP_BATCH` executions, so a cleanup of many executions never
        holds a long transaction in front of running executions.
        """
        cutoff = self._cutoff(older_than_days)
        keep = retention_keep(keep_statuses)
        wanted = self._cleanup_limit(limit)
        old = sorted(
            (
                h
                for h in await self._iter_heads_async()
                if h.updated_at < cutoff and h.status.value not in keep
            ),
            key=lambda h: (h.updated_at, h.execution_id),
        )
        deleted = 0
        for head in old:
            if wanted is not None and deleted >= wanted:
                break
            try:
                if await self.delete_state_async(head.execution_id):
                    deleted += 1
            except ExecutionLeasedError:
                continue
        return deleted

    async def count_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
    ) -> int:
        """How many executions `cleanup_old_executions_async` with these arguments would consider.

        Those last updated before the cutoff whose status is not kept, running (leased) ones
        included: the total of a progress bar, counted from an index by the built-in backends.
        """
        cutoff = self._cutoff(older_than_days)
        keep = retention_keep(keep_statuses)
        return sum(
            1 for h in await self._iter_heads_async() if h.updated_at < cutoff and h.status.value not in keep
        )

    # ---- helpers for backends ----------------------------------------------------------------

    def _batch(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> list[StepRecord]:
        """The entries of an `append_steps_async` call, checked: `UserError` unless they form a batch.

        A batch is 1 to `max_batch` entries of `record`'s execution with consecutive seqs, in order.
        """
        batch = list(steps)
        execution_id = record.execution_id
        if not batch:
            raise UserError(
                f"append_steps_async of execution {execution_id!r} got no journal entries; write a head "
                f"alone with save_state_async."
            )
        if self.max_batch is not None and len(batch) > self.max_batch:
            raise UserError(
                f"append_steps_async of execution {execution_id!r} got {len(batch)} entries; the "
                f"{self.backend_name} backend takes at most {self.max_batch} per batch (its crash "
                f"window, journal_may_lead_head): split the batch."
            )
        first = batch[0].seq
        for index, step in enumerate(batch):
            if step.execution_id != execution_id:
                raise UserError(
                    f"append_steps_async of execution {execution_id!r} got an entry of execution "
                    f"{step.execution_id!r} (seq {step.seq}); a batch belongs to one execution."
                )
            if step.seq != first + index:
                seqs = ", ".join(str(s.seq) for s in batch[:20]) + (", ..." if len(batch) > 20 else "")
                raise UserError(
                    f"append_steps_async of execution {execution_id!r} got seqs {seqs}; a batch holds "
                    f"consecutive seqs in order."
                )
        return batch

    @staticmethod
    def _lease_lost(record: ExecutionRecord, holder: str | None) -> LeaseLostError:
        """The error of a head write or step append fenced off by `holder`'s unexpired lease."""
        return LeaseLostError(record.execution_id, record.lease_owner or "(no lease)", holder)

    @staticmethod
    def _readable_heads(
        rows: Iterable[_Row], decode: Callable[[_Row], ExecutionRecord | None]
    ) -> list[ExecutionRecord]:
        """Decode each stored row into a head, skipping damaged and newer-schema ones with a warning.

        What listings and `_iter_heads_async` promise: one unreadable record never hides the others.
        `decode` returns None for a row whose head is gone (deleted meanwhile): left out too.
        """
        heads = []
        for row in rows:
            try:
                head = decode(row)
            except (CorruptRecordError, IncompatibleSchemaError) as exc:
                logger.warning("skipping unreadable execution record: %s", exc)
                continue
            if head is not None:
                heads.append(head)
        return heads

    @staticmethod
    def _tail_start(execution_id: str, after_seq: int) -> int:
        """The first seq `load_steps_after_async(execution_id, after_seq)` returns (`after_seq` checked)."""
        if isinstance(after_seq, bool) or not isinstance(after_seq, int):
            raise UserError(
                f"load_steps_after of execution {execution_id!r} needs an integer after_seq (the last seq "
                f"seen, -1 for none), got {after_seq!r}."
            )
        return max(after_seq, -1) + 1

    @staticmethod
    def _journal_from_rows(
        execution_id: str, rows: Sequence[Any], *, location: str, max_size: int | None, start: int = 0
    ) -> list[StepRecord]:
        """Decode journal rows `(seq, codec, payload)` read in seq order from `start`; a gap is corrupt."""
        check_journal_seqs(execution_id, [row[0] for row in rows], location=location, start=start)
        return [
            decode_step(execution_id, seq, bytes(payload), codec=codec, location=location, max_size=max_size)
            for seq, codec, payload in rows
        ]

    def _stats(self, counts: Iterable[tuple[str | None, int]]) -> dict[str, Any]:
        """`get_stats` from `(status, count)` pairs; unknown statuses (damaged heads) count nowhere."""
        by_status = {s.value: 0 for s in ExecutionStatus}
        for status, count in counts:
            if status in by_status:
                by_status[status] += int(count)
        return {
            "backend": self.backend_name,
            "total_executions": sum(by_status.values()),
            "by_status": by_status,
        }

    @staticmethod
    def _check_ttl(ttl_seconds: float) -> float:
        if not ttl_seconds > 0:
            raise UserError(f"Lease ttl_seconds must be > 0, got {ttl_seconds!r}.")
        return float(ttl_seconds)

    @staticmethod
    def _cleanup_limit(limit: int | None) -> int | None:
        """`limit` of a cleanup, checked: None or an integer >= 1, else `UserError`."""
        if limit is None:
            return None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UserError(f"cleanup limit must be an integer >= 1 or None, got {limit!r}.")
        return limit

    @staticmethod
    def _cleanup_rounds(limit: int | None, batch: int = CLEANUP_BATCH) -> Iterable[int]:
        """Sizes of the successive batches (of at most `batch`) of a cleanup deleting at most `limit`.

        `limit` None is unbounded; the caller stops early when a batch deletes less than its size.
        """
        left = limit
        while left is None or left > 0:
            size = batch if left is None else min(left, batch)
            yield size
            if left is not None:
                left -= size

    @staticmethod
    def _cutoff(older_than_days: float | None) -> datetime:
        """The cutoff of a cleanup; None reads the `retention_days` setting (see `retention_days`)."""
        days = retention_days(older_than_days)
        if days < 0:
            raise UserError(f"older_than_days must be >= 0, got {days!r}.")
        return utcnow() - timedelta(days=days)

    # ---- the seed's checkpoint backend methods (see perdure.durable.checkpoints) --------------------
    # Checkpoints are journal entries, so these work on every backend without code of their own. The
    # stored side of checkpoints is `perdure.storage._checkpoints` (imported when first used).

    async def save_checkpoint_async(self, workflow_id: str, checkpoint: Any) -> str:
        """Journal `checkpoint` (a `perdure.durable.Checkpoint`) as a manual checkpoint; its id.

        The execution must exist and not be running (the write takes its lease).
        """
        from ._checkpoints import save_checkpoint_async

        return (await save_checkpoint_async(workflow_id, self, checkpoint)).id

    async def load_checkpoint_async(self, checkpoint_id: str) -> Any:
        """The `Checkpoint` with this id, None when there is none."""
        from ..errors import CheckpointNotFoundError, ExecutionNotFoundError
        from ._checkpoints import get_checkpoint_async

        try:
            return await get_checkpoint_async(checkpoint_id, self)
        except (CheckpointNotFoundError, ExecutionNotFoundError):
            return None

    async def list_checkpoints_async(self, workflow_id: str) -> list[str]:
        """Ids of the execution's checkpoints in journal order (journaled units and manual ones)."""
        from ._checkpoints import list_checkpoints_async

        return [point.id for point in await list_checkpoints_async(workflow_id, self)]

    async def delete_checkpoints_async(self, workflow_id: str, before_step: int | None = None) -> int:
        """Delete the execution's manual checkpoints (those before `before_step` only); how many.

        Journaled units stay: they are what a resume replays (and never removed); a deleted manual
        checkpoint's entry stays in the journal too, hidden from listings.
        """
        from ._checkpoints import delete_checkpoint_async, list_checkpoints_async

        deleted = 0
        for point in await list_checkpoints_async(workflow_id, self):
            if point.kind == "manual" and (before_step is None or point.step_index < before_step):
                deleted += await delete_checkpoint_async(point.id, self)
        return deleted

    # ---- sync twins ---------------------------------------------------------------------------

    def save_state(self, record: ExecutionRecord) -> None:
        """Sync twin of `save_state_async`."""
        run_sync(self.save_state_async(record))

    def load_state(self, execution_id: str) -> ExecutionRecord | None:
        """Sync twin of `load_state_async`."""
        return run_sync(self.load_state_async(execution_id))

    def delete_state(self, execution_id: str, *, force: bool = False) -> bool:
        """Sync twin of `delete_state_async`."""
        return run_sync(self.delete_state_async(execution_id, force=force))

    def append_step(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Sync twin of `append_step_async`."""
        run_sync(self.append_step_async(record, step))

    def append_steps(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Sync twin of `append_steps_async`."""
        run_sync(self.append_steps_async(record, steps))

    def load_steps(self, execution_id: str) -> list[StepRecord]:
        """Sync twin of `load_steps_async`."""
        return run_sync(self.load_steps_async(execution_id))

    def load_steps_after(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """Sync twin of `load_steps_after_async`."""
        return run_sync(self.load_steps_after_async(execution_id, after_seq))

    def list_executions(
        self, status: ExecutionStatus | str | None = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        """Sync twin of `list_executions_async`."""
        return run_sync(self.list_executions_async(status, limit))

    def query_executions(self, query: ExecutionQuery) -> ExecutionPage:
        """Sync twin of `query_executions_async`."""
        return run_sync(self.query_executions_async(query))

    def count_executions(self, query: ExecutionQuery) -> int:
        """Sync twin of `count_executions_async`."""
        return run_sync(self.count_executions_async(query))

    def activity(self, since: datetime, bucket_seconds: int = 3600) -> list[ActivityBucket]:
        """Sync twin of `activity_async`."""
        return run_sync(self.activity_async(since, bucket_seconds))

    def request_cancel(self, execution_id: str, reason: str = "") -> bool:
        """Sync twin of `request_cancel_async`."""
        return run_sync(self.request_cancel_async(execution_id, reason))

    def cancel_request(self, execution_id: str) -> CancelRequest | None:
        """Sync twin of `cancel_request_async`."""
        return run_sync(self.cancel_request_async(execution_id))

    def clear_cancel_request(self, execution_id: str) -> bool:
        """Sync twin of `clear_cancel_request_async`."""
        return run_sync(self.clear_cancel_request_async(execution_id))

    def save_checkpoint(self, workflow_id: str, checkpoint: Any) -> str:
        """Sync twin of `save_checkpoint_async`."""
        return run_sync(self.save_checkpoint_async(workflow_id, checkpoint))

    def load_checkpoint(self, checkpoint_id: str) -> Any:
        """Sync twin of `load_checkpoint_async`."""
        return run_sync(self.load_checkpoint_async(checkpoint_id))

    def list_checkpoints(self, workflow_id: str) -> list[str]:
        """Sync twin of `list_checkpoints_async`."""
        return run_sync(self.list_checkpoints_async(workflow_id))

    def delete_checkpoints(self, workflow_id: str, before_step: int | None = None) -> int:
        """Sync twin of `delete_checkpoints_async`."""
        return run_sync(self.delete_checkpoints_async(workflow_id, before_step))

    def get_stats(self) -> dict[str, Any]:
        """Sync twin of `get_stats_async`."""
        return run_sync(self.get_stats_async())

    def cleanup_old_executions(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Sync twin of `cleanup_old_executions_async`."""
        return run_sync(
            self.cleanup_old_executions_async(older_than_days, keep_statuses=keep_statuses, limit=limit)
        )

    def count_old_executions(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
    ) -> int:
        """Sync twin of `count_old_executions_async`."""
        return run_sync(self.count_old_executions_async(older_than_days, keep_statuses=keep_statuses))

    def acquire_lease(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        """Sync twin of `acquire_lease_async`."""
        return run_sync(self.acquire_lease_async(execution_id, owner, ttl_seconds, steal_from=steal_from))

    def renew_lease(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        """Sync twin of `renew_lease_async`."""
        return run_sync(self.renew_lease_async(execution_id, owner, ttl_seconds))

    def release_lease(self, execution_id: str, owner: str) -> bool:
        """Sync twin of `release_lease_async`."""
        return run_sync(self.release_lease_async(execution_id, owner))

    def close(self) -> None:
        """Sync twin of `close_async`."""
        run_sync(self.close_async())

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


DurableStorage = DurableExecutionStorage
"""Alias used in the design documents."""
