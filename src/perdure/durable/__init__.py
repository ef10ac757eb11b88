"""Durable execution: the engine, the execution handle and the storage backends under seed names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..models.openai import openai_chat_model
from ..storage import (
    DurableExecutionStorage,
    DurableStorage,
    FileDurableStorage,
    InMemoryDurableStorage,
    SQLiteDurableStorage,
    storage_from_url,
)
from .capability import TOOL_CONFIG_KEY, PerdureDurability
from .checkpoints import Checkpoint
from .circuit import CircuitBreaker, circuit_breaker_for, circuit_stats
from .decisions import ToolResolution
from .durable_agent import DurableAgent
from .engine import AgentFactory, AttemptResult, ResumeTarget
from .execution import DurableEventStream, DurableExecution, StreamedEvent
from .journal import ExecutionAborted, StepContext, current_step, idempotency_key
from .retry import RetryPolicy
from .transient import is_transient

if TYPE_CHECKING:
    from ..storage.postgres import PostgresDurableStorage
    from ..storage.redis import RedisDurableStorage
    from ..workflows import StatefulWorkflow

__all__ = [
    "TOOL_CONFIG_KEY",
    "AgentFactory",
    "AttemptResult",
    "Checkpoint",
    "CircuitBreaker",
    "DurableAgent",
    "DurableEventStream",
    "DurableExecution",
    "DurableExecutionStorage",
    "DurableStorage",
    "ExecutionAborted",
    "FileDurableStorage",
    "InMemoryDurableStorage",
    "PerdureDurability",
    "PostgresDurableStorage",
    "RedisDurableStorage",
    "ResumeTarget",
    "RetryPolicy",
    "SQLiteDurableStorage",
    "StatefulWorkflow",
    "StepContext",
    "StreamedEvent",
    "ToolResolution",
    "circuit_breaker_for",
    "circuit_stats",
    "current_step",
    "idempotency_key",
    "is_transient",
    "openai_chat_model",
    "storage_from_url",
]


def __getattr__(name: str) -> Any:
    """Server backends are imported on first use (they need the `redis` / `postgres` extras).

    `StatefulWorkflow` lives in `perdure.workflows` (the layer above); it is offered here under the
    seed's import path and imported when first asked for.
    """
    if name == "StatefulWorkflow":
        from ..workflows import StatefulWorkflow

        return StatefulWorkflow
    if name in ("RedisDurableStorage", "PostgresDurableStorage"):
        from .. import storage

        return getattr(storage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
