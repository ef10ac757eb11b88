"""A custom backend written before `keep_statuses` and `limit` still cleans up (CLI, worker, dashboard)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from perdure.errors import UserError
from perdure.records import ExecutionRecord, ExecutionStatus, utcnow
from perdure.storage.base import cleanup_executions
from perdure.storage.memory import InMemoryDurableStorage


class OldStyleStorage(InMemoryDurableStorage):
    """Overrides cleanup with the signature of earlier perdure versions."""

    async def cleanup_old_executions_async(self, older_than_days: float | None = None) -> int:  # type: ignore[override]
        return await super().cleanup_old_executions_async(older_than_days, keep_statuses=())


async def _old(storage: InMemoryDurableStorage, execution_id: str, status: ExecutionStatus) -> None:
    stamp = utcnow() - timedelta(days=30)
    head = ExecutionRecord(execution_id=execution_id, status=status, created_at=stamp, updated_at=stamp)
    await storage.save_state_async(head)


async def test_an_old_signature_cleans_up_when_no_status_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERDURE_RETENTION_KEEP", raising=False)
    storage = OldStyleStorage()
    await _old(storage, "a", ExecutionStatus.COMPLETED)
    await _old(storage, "b", ExecutionStatus.FAILED)
    assert await cleanup_executions(storage, 7, keep_statuses=None, limit=100) == 2
    assert await storage.load_state_async("a") is None


async def test_an_old_signature_refuses_to_drop_kept_statuses_silently() -> None:
    storage = OldStyleStorage()
    await _old(storage, "b", ExecutionStatus.FAILED)
    with pytest.raises(UserError, match=r"OldStyleStorage.*does not take keep_statuses.*keep failed"):
        await cleanup_executions(storage, 7, keep_statuses=["failed"])
    assert await storage.load_state_async("b") is not None  # nothing deleted


async def test_a_current_backend_gets_every_option() -> None:
    storage = InMemoryDurableStorage()
    await _old(storage, "a", ExecutionStatus.COMPLETED)
    await _old(storage, "b", ExecutionStatus.FAILED)
    assert await cleanup_executions(storage, 7, keep_statuses=["failed"], limit=10) == 1
    assert await storage.load_state_async("b") is not None
