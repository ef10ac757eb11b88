"""Durable execution: the engine, the execution handle and the storage backends under seed names."""

from __future__ import annotations

from ..storage import (
    DurableExecutionStorage,
    DurableStorage,
    FileDurableStorage,
    InMemoryDurableStorage,
    SQLiteDurableStorage,
    storage_from_url,
)
from .capability import PerdureDurability
from .execution import AttemptResult, DurableExecution
from .journal import current_run

__all__ = [
    "AttemptResult",
    "DurableExecution",
    "DurableExecutionStorage",
    "DurableStorage",
    "FileDurableStorage",
    "InMemoryDurableStorage",
    "PerdureDurability",
    "SQLiteDurableStorage",
    "current_run",
    "storage_from_url",
]
