"""In-process storage for tests and short-lived runs: fast, and gone when the process exits."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..codec import decode_head, decode_step, encode_head, encode_step
from ..errors import CorruptRecordError, IncompatibleSchemaError, StepConflictError
from ..records import ExecutionRecord, StepRecord
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
        self._lock = threading.Lock()

    async def save_state_async(self, record: ExecutionRecord) -> None:
        payload = encode_head(record)
        with self._lock:
            self._heads[record.execution_id] = payload

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        with self._lock:
            payload = self._heads.get(execution_id)
        return None if payload is None else decode_head(execution_id, payload)

    async def delete_state_async(self, execution_id: str) -> bool:
        with self._lock:
            existed = self._heads.pop(execution_id, None) is not None
            existed = self._journals.pop(execution_id, None) is not None or existed
        return existed

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        head, entry = encode_head(record), encode_step(step)
        with self._lock:
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
        heads = []
        for execution_id, payload in items:
            try:
                heads.append(decode_head(execution_id, payload))
            except (CorruptRecordError, IncompatibleSchemaError) as exc:
                logger.warning("skipping corrupt execution record: %s", exc)
        return heads

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        with self._lock:
            self._heads[execution_id] = payload
