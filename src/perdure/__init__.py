"""perdure: durable AI-agent runs on pydantic-ai.

Every model request and tool call of a run is journaled; after an exception, a `kill -9` or a
deploy the run resumes where it stopped, in any process, without paying again for finished model
calls and without repeating finished tool calls.
"""

from __future__ import annotations

from .agent import Agent, AgentRunOutput, Task, register, tool
from .db import Database, SqliteDatabase
from .durable import (
    CircuitBreaker,
    DurableExecution,
    PerdureDurability,
    RetryPolicy,
    StepContext,
    ToolResolution,
    current_step,
    idempotency_key,
)
from .durable.checkpoints import Checkpoint, create_checkpoint
from .errors import PerdureError
from .workflows import now, random, save_state, sleep, sleep_until, state, step, workflow

__all__ = [
    "Agent",
    "AgentRunOutput",
    "Checkpoint",
    "CircuitBreaker",
    "Database",
    "DurableExecution",
    "PerdureDurability",
    "PerdureError",
    "RetryPolicy",
    "SqliteDatabase",
    "StepContext",
    "Task",
    "ToolResolution",
    "create_checkpoint",
    "current_step",
    "idempotency_key",
    "now",
    "random",
    "register",
    "save_state",
    "sleep",
    "sleep_until",
    "state",
    "step",
    "tool",
    "workflow",
]

__version__ = "0.1.0"
