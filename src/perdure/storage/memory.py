"""In-process storage for tests and short-lived runs: fast, and gone when the process exits."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from ..codec import decode_head, decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    LeaseLostError,
    StepConflictError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepRecord, utcnow
from ._query import CancelRequest, check_reason
from .base import DurableExecutionStorage, check_journal_seqs, logger, retention_keep, stored_seq

__all__ = ["InMemoryDurableStorage"]


class InMemoryDurableStorage(DurableExecutionStorage):
    """Keeps encoded records in dictionaries.

    Records are stored as the same JSON bytes the persistent backends write, so a value that would
    fail to store on SQLite fails here too and callers never share mutable objects with the store.
    """

    backend_name = "memory"
    atomic_batches = True
    shared_cancel_requests = True

    def __init__(self) -> None:
        self._heads: dict[str, bytes] = {}
        self._journals: dict[str, list[bytes]] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._tombstones: dict[str, datetime] = {}
        """Deleted ids and when: their writes are refused until cleanup purges the tombstone."""
        self._cancels: dict[str, CancelRequest] = {}
        self._lock = threading.Lock()

    def _not_found(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(
            execution_id, backend=self.backend_name, where=f"(in-process storage {id(self):#x})"
        )

    def _writable(self, record: ExecutionRecord, *, create: bool) -> None:
        """Refuse writes of a deleted id, and writes that would create a head (call with the lock held)."""
        execution_id = record.execution_id
        if execution_id in self._heads:
            return
        if execution_id in self._tombstones:
            raise ExecutionDeletedError(execution_id)
        if not create or record.lease_owner is not None:
            raise self._not_found(execution_id)

    def _fence(self, record: ExecutionRecord) -> None:
        """Refuse a write by anyone but the holder of an unexpired lease (call with the lock held)."""
        lease = self._leases.get(record.execution_id)
        if lease is not None and lease[0] != record.lease_owner and lease[1] > utcnow():
            raise self._lease_lost(record, lease[0])

    def _with_lease(self, head: ExecutionRecord) -> ExecutionRecord:
        lease = self._leases.get(head.execution_id)
        head.lease_owner, head.lease_expires_at = lease if lease is not None else (None, None)
        return head

    async def save_state_async(self, record: ExecutionRecord) -> None:
        payload = encode_head(record)
        with self._lock:
            self._writable(record, create=True)
            self._fence(record)
            self._heads[record.execution_id] = payload

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        with self._lock:
            payload = self._heads.get(execution_id)
            lease = self._leases.get(execution_id)
        if payload is None:
            return None
        head = decode_head(execution_id, payload)
        head.lease_owner, head.lease_expires_at = lease if lease is not None else (None, None)
        return head

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        ttl = self._check_ttl(ttl_seconds)
        with self._lock:
            payload = self._heads.get(execution_id)
            if payload is None:
                raise self._not_found(execution_id)
            now = utcnow()
            lease = self._leases.get(execution_id)
            if lease is not None and lease[0] not in (owner, steal_from) and lease[1] > now:
                raise ExecutionLeasedError(execution_id, lease[0], lease[1])
            self._leases[execution_id] = (owner, now + timedelta(seconds=ttl))
            head = decode_head(execution_id, payload)
            return self._with_lease(head)

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        ttl = self._check_ttl(ttl_seconds)
        with self._lock:
            lease = self._leases.get(execution_id)
            if execution_id not in self._heads or lease is None or lease[0] != owner:
                raise LeaseLostError(execution_id, owner, lease[0] if lease else None)
            expires = utcnow() + timedelta(seconds=ttl)
            self._leases[execution_id] = (owner, expires)
            return expires

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        with self._lock:
            lease = self._leases.get(execution_id)
            if lease is None or lease[0] != owner:
                return False
            del self._leases[execution_id]
            return True

    async def delete_state_async(self, execution_id: str, *, force: bool = False) -> bool:
        with self._lock:
            return self._delete(execution_id, force=force, now=utcnow())

    def _delete(self, execution_id: str, *, force: bool, now: datetime) -> bool:
        """Remove head, journal and lease and leave a tombstone (call with the lock held)."""
        if execution_id not in self._heads and execution_id not in self._journals:
            return False
        lease = self._leases.get(execution_id)
        if lease is not None and lease[1] > now and not force:
            raise ExecutionLeasedError(execution_id, lease[0], lease[1])
        self._leases.pop(execution_id, None)
        self._cancels.pop(execution_id, None)
        self._heads.pop(execution_id, None)
        self._journals.pop(execution_id, None)
        self._tombstones[execution_id] = now
        return True

    async def cleanup_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Delete old executions not running nor kept (oldest first), purge old tombstones, atomically.

        An in-process dict: there is no transaction to keep short.
        """
        cutoff = self._cutoff(older_than_days)
        keep = retention_keep(keep_statuses)
        wanted = self._cleanup_limit(limit)
        heads = sorted(
            (
                h
                for h in await self._iter_heads_async()
                if h.updated_at < cutoff and h.status.value not in keep
            ),
            key=lambda h: (h.updated_at, h.execution_id),
        )
        with self._lock:
            now = utcnow()
            for execution_id in [i for i, when in self._tombstones.items() if when < cutoff]:
                del self._tombstones[execution_id]
            deleted = 0
            for head in heads:
                if wanted is not None and deleted >= wanted:
                    break
                lease = self._leases.get(head.execution_id)
                if lease is not None and lease[1] > now:
                    continue
                current = self._heads.get(head.execution_id)
                if current is None:
                    continue
                try:  # re-check age and status on the current head: it may have moved on since the scan
                    fresh = decode_head(head.execution_id, current)
                except (CorruptRecordError, IncompatibleSchemaError):
                    continue
                if fresh.updated_at >= cutoff or fresh.status.value in keep:
                    continue
                deleted += self._delete(head.execution_id, force=False, now=now)
            return deleted

    async def request_cancel_async(self, execution_id: str, reason: str = "") -> bool:
        """Record the request in a dict (the first request's time and reason stay)."""
        check_reason(reason)
        with self._lock:
            if execution_id not in self._heads:
                return False
            self._cancels.setdefault(execution_id, CancelRequest(utcnow(), reason))
            return True

    async def cancel_request_async(self, execution_id: str) -> CancelRequest | None:
        with self._lock:
            return self._cancels.get(execution_id)

    async def clear_cancel_request_async(self, execution_id: str) -> bool:
        with self._lock:
            return self._cancels.pop(execution_id, None) is not None

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        head, entry = encode_head(record), encode_step(step)
        with self._lock:
            self._writable(record, create=False)
            self._fence(record)
            journal = self._journals.setdefault(step.execution_id, [])
            if step.seq != len(journal):
                raise StepConflictError(step.execution_id, step.seq)
            journal.append(entry)
            self._heads[record.execution_id] = head

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Append every entry and replace the head under one hold of the lock: all of it or nothing."""
        batch = self._batch(record, steps)
        head, entries = encode_head(record), [encode_step(step) for step in batch]
        execution_id = record.execution_id
        with self._lock:
            self._writable(record, create=False)
            self._fence(record)
            journal = self._journals.setdefault(execution_id, [])
            if batch[0].seq != len(journal):
                raise StepConflictError(execution_id, batch[0].seq)
            journal.extend(entries)
            self._heads[execution_id] = head

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        return self._load_from(execution_id, 0)

    async def load_steps_after_async(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """Decode only the entries after `after_seq` (a slice of the list)."""
        return self._load_from(execution_id, self._tail_start(execution_id, after_seq))

    def _load_from(self, execution_id: str, start: int) -> list[StepRecord]:
        with self._lock:
            entries = self._journals.get(execution_id, [])[start:]
        steps = []
        for seq, raw in enumerate(entries, start):
            try:
                steps.append(decode_step(execution_id, seq, raw))
            except CorruptRecordError:
                found = stored_seq(raw)  # the list index is the seq: a removed entry shifts the rest
                if found is not None and found > seq:
                    check_journal_seqs(execution_id, [*range(start, seq), found], start=start)
                raise
        return steps

    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        with self._lock:
            items = list(self._heads.items())
            leases = dict(self._leases)
        heads = []
        for execution_id, payload in items:
            try:
                head = decode_head(execution_id, payload)
                head.lease_owner, head.lease_expires_at = leases.get(execution_id, (None, None))
                heads.append(head)
            except (CorruptRecordError, IncompatibleSchemaError) as exc:
                logger.warning("skipping corrupt execution record: %s", exc)
        return heads

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        with self._lock:
            self._heads[execution_id] = payload
