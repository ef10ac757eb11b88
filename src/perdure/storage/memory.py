"""In-process storage for tests and short-lived runs: fast, and gone when the process exits."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta

from ..codec import decode_head, decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    LeaseLostError,
    StepConflictError,
)
from ..records import ExecutionRecord, StepRecord, utcnow
from .base import DurableExecutionStorage, logger

__all__ = ["InMemoryDurableStorage"]


class InMemoryDurableStorage(DurableExecutionStorage):
    """Keeps encoded records in dictionaries.

    Records are stored as the same JSON bytes the persistent backends write, so a value that would
    fail to store on SQLite fails here too and callers never share mutable objects with the store.
    """

    backend_name = "memory"

    def __init__(self) -> None:
        self._heads: dict[str, bytes] = {}
        self._journals: dict[str, list[bytes]] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def _fence(self, record: ExecutionRecord) -> None:
        """Refuse a write by anyone but the holder of an unexpired lease (call with the lock held)."""
        lease = self._leases.get(record.execution_id)
        if lease is not None and lease[0] != record.lease_owner and lease[1] > utcnow():
            raise LeaseLostError(record.execution_id, record.lease_owner or "(no lease)", lease[0])

    def _with_lease(self, head: ExecutionRecord) -> ExecutionRecord:
        lease = self._leases.get(head.execution_id)
        head.lease_owner, head.lease_expires_at = lease if lease is not None else (None, None)
        return head

    async def save_state_async(self, record: ExecutionRecord) -> None:
        payload = encode_head(record)
        with self._lock:
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
                raise ExecutionNotFoundError(execution_id, backend=self.backend_name)
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

    async def delete_state_async(self, execution_id: str) -> bool:
        with self._lock:
            self._leases.pop(execution_id, None)
            existed = self._heads.pop(execution_id, None) is not None
            existed = self._journals.pop(execution_id, None) is not None or existed
        return existed

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        head, entry = encode_head(record), encode_step(step)
        with self._lock:
            self._fence(record)
            journal = self._journals.setdefault(step.execution_id, [])
            if step.seq != len(journal):
                raise StepConflictError(step.execution_id, step.seq)
            journal.append(entry)
            self._heads[record.execution_id] = head

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        with self._lock:
            entries = list(self._journals.get(execution_id, ()))
        return [decode_step(execution_id, seq, raw) for seq, raw in enumerate(entries)]

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
