"""perdure: durable AI-agent runs on pydantic-ai.

Every model request and tool call of a run is journaled; after an exception, a `kill -9` or a
deploy the run resumes where it stopped, in any process, without paying again for finished model
calls and without repeating finished tool calls.
"""

from __future__ import annotations

from .agent import Agent, AgentRunOutput, Task, register, tool
from .alerts import Alert, AlertRule, monitor
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
from .events import ExecutionSummary, add_listener, execution_summary, execution_summary_async, watch
from .workflows import now, random, save_state, sleep, sleep_until, state, step, workflow

__all__ = [
    "Agent",
    "AgentRunOutput",
    "Alert",
    "AlertRule",
    "Checkpoint",
    "CircuitBreaker",
    "Database",
    "DurableExecution",
    "ExecutionSummary",
    "PerdureDurability",
    "PerdureError",
    "RetryPolicy",
    "SqliteDatabase",
    "StepContext",
    "Task",
    "ToolResolution",
    "add_listener",
    "create_checkpoint",
    "current_step",
    "execution_summary",
    "execution_summary_async",
    "idempotency_key",
    "monitor",
    "now",
    "random",
    "register",
    "save_state",
    "sleep",
    "sleep_until",
    "state",
    "step",
    "tool",
    "watch",
    "workflow",
]

__version__ = "0.1.0"
