"""The public surface: pinned names, seed spellings, and listings that show what an operator needs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import perdure
import perdure.durable
from perdure import Agent, DurableExecution, Task, tool
from perdure.db import SqliteDatabase
from perdure.durable import SQLiteDurableStorage

PUBLIC = {
    "perdure": [
        "Agent", "AgentRunOutput", "Alert", "AlertRule", "Checkpoint", "create_checkpoint", "CircuitBreaker",
        "Database", "DurableExecution", "ExecutionSummary", "PerdureDurability", "PerdureError",
        "RetryPolicy", "SqliteDatabase", "StepContext", "Task", "ToolResolution", "add_listener",
        "current_step", "execution_summary", "execution_summary_async", "idempotency_key", "monitor",
        "now", "random", "register", "save_state", "sleep", "sleep_until", "state", "step", "tool",
        "watch", "workflow",
    ],
    "perdure.events": [
        "EVENT_ADAPTER", "Event", "EventBus", "EventStream", "ExecutionCancelled", "ExecutionCompleted",
        "ExecutionEvent", "ExecutionFailed", "ExecutionPaused", "ExecutionResumed", "ExecutionStarted",
        "ExecutionSummary", "Listener", "PerdureEvent", "UnitCompleted", "UnitEvent", "UnitFailed",
        "UnitReplayed", "UnitRetried", "UnitStarted", "Watch", "add_listener", "execution_summary",
        "execution_summary_async", "watch",
    ],
    "perdure.alerts": [
        "MAX_IDS", "MAX_SCAN", "Alert", "AlertEvaluator", "AlertRule", "WebhookError", "monitor",
        "monitor_sync", "notify_async", "parse_duration",
    ],
    "perdure.workflows": [
        "StatefulWorkflow", "Step", "Workflow", "now", "random", "run_graph", "save_state", "sleep",
        "sleep_until", "state", "step", "workflow",
    ],
    "perdure.durable": [
        "AgentFactory", "AttemptResult", "Checkpoint", "CircuitBreaker", "DurableAgent", "DurableEventStream",
        "DurableExecution", "StatefulWorkflow", "StreamedEvent",
        "DurableExecutionStorage", "DurableStorage", "ExecutionAborted", "FileDurableStorage",
        "InMemoryDurableStorage", "PerdureDurability", "PostgresDurableStorage", "RedisDurableStorage",
        "ResumeTarget", "RetryPolicy", "SQLiteDurableStorage", "StepContext", "TOOL_CONFIG_KEY",
        "ToolResolution", "circuit_breaker_for", "circuit_stats", "current_step", "idempotency_key",
        "is_transient", "openai_chat_model", "storage_from_url",
    ],
    "perdure.storage": [
        "ActivityBucket", "CancelRequest", "ExecutionPage", "ExecutionQuery",
        "ChangeFeed", "DurableExecutionStorage", "DurableStorage", "FileDurableStorage",
        "InMemoryDurableStorage", "PostgresDurableStorage", "RedisDurableStorage", "SQLiteDurableStorage",
        "storage_from_url", "validate_identifier",
    ],
    "perdure.errors": [
        "CheckpointNotFoundError", "CircuitOpenError", "CorruptRecordError", "ExecutionAborted",
        "ExecutionCancelledError", "ExecutionCompletedError", "ExecutionConflictError",
        "ExecutionDeletedError", "ExecutionLeased", "ExecutionLeasedError",
        "ExecutionNotFoundError", "IdentityError", "IncompatibleSchemaError", "InvalidExecutionIdError",
        "InvalidResumeTokenError", "JournalMismatchError", "LeaseLostError", "NonIdempotentReplayError",
        "PerdureError", "RecoveryGaveUpError", "ReplicationError", "SerializationError",
        "StepConflictError", "StorageConfigurationError", "StorageLockedError", "StorageNotFoundError",
        "StorageUnavailableError", "ToolNotFoundError", "UnregisteredReferenceError", "UserError",
    ],
    "perdure.operations": [
        "CancelOutcome", "DecisionOutcome", "ResumeOutcome", "approve", "cancel", "delete", "deny", "fork",
        "recover", "resolve", "resume", "retry_failed",
    ],
    "perdure.telemetry": ["Instrumentation", "instrument", "is_instrumented"],
    "perdure.ui": ["create_app"],
    "perdure.testing": [
        "ConformanceFailure", "ConformanceReport", "PROPERTIES", "PropertyResult", "RawWriter",
        "Reopen", "StorageFactory", "check_storage", "check_storage_sync", "pytest_suite",
    ],
}  # fmt: skip
"""The public surface, pinned: a change here is always deliberate (like pydantic-ai's export table)."""


PUBLIC_MODULES = [
    "perdure.agent.agent",
    "perdure.agent.output",
    "perdure.agent.task",
    "perdure.agent.tools",
    "perdure.alerts",
    "perdure.codec",
    "perdure.db",
    "perdure.durable.capability",
    "perdure.durable.checkpoints",
    "perdure.durable.circuit",
    "perdure.durable.decisions",
    "perdure.durable.durable_agent",
    "perdure.durable.engine",
    "perdure.durable.execution",
    "perdure.durable.identity",
    "perdure.durable.journal",
    "perdure.durable.leases",
    "perdure.durable.recovery",
    "perdure.durable.retry",
    "perdure.durable.step_context",
    "perdure.durable.transient",
    "perdure.durable.worker",
    "perdure.engines.dbos",
    "perdure.engines.prefect",
    "perdure.engines.temporal",
    "perdure.errors",
    "perdure.models.openai",
    "perdure.models.resolve",
    "perdure.models.scripted",
    "perdure.operations",
    "perdure.records",
    "perdure.registry",
    "perdure.settings",
    "perdure.storage.base",
    "perdure.storage.file",
    "perdure.storage.memory",
    "perdure.storage.postgres",
    "perdure.storage.redis",
    "perdure.storage.sqlite",
    "perdure.storage.url",
    "perdure.telemetry",
]
"""Modules without a leading `_`, pinned: a new module is internal (`_name`) unless made public on purpose."""


def test_module_names_are_pinned() -> None:
    root = Path(perdure.__file__).parent
    found = sorted(
        ".".join(("perdure", *path.relative_to(root).with_suffix("").parts))
        for path in root.rglob("*.py")
        if not any(part.startswith("_") for part in path.relative_to(root).parts)
    )
    assert found == sorted(PUBLIC_MODULES)
    for package in (
        "perdure",
        "perdure.durable",
        "perdure.storage",
        "perdure.agent",
        "perdure.testing",
        "perdure.workflows",
    ):
        exported = importlib.import_module(package).__all__
        assert not [name for name in exported if name.startswith("_")], package


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned(module: str) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == sorted(PUBLIC[module])
    for name in imported.__all__:  # every name resolves (server backends lazily, with their extras)
        assert getattr(imported, name) is not None
    assert (Path(perdure.__file__).parent / "py.typed").exists()


def test_no_unexported_types_leak_through_the_public_modules() -> None:
    """`current_run` returns the engine's private JournalRun: it is not part of the surface."""
    assert "current_run" not in perdure.durable.__all__
    assert not hasattr(perdure.durable, "current_run")


@tool(requires_approval=True)
def transfer(amount: int, to: str) -> str:
    """Transfer money (a human approves every call)."""
    return f"sent {amount} to {to}"


def test_listings_show_pending_calls_not_the_message_history(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "p.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    Agent("perdure:scripted").do(Task("transfer 5 to 'bob'", tools=[transfer], durable_execution=durable))
    [info] = DurableExecution.list_all_executions(storage)
    assert info["status"] == "paused"
    pending = info["pending"]
    assert "messages" not in pending
    [call] = pending["calls"]
    assert call["tool_name"] == "transfer" and call["tool_call_id"] and call["args"]
    assert (
        "messages"
        not in (DurableExecution.get_execution_info(durable.execution_id, storage) or {})["pending"]
    )


def test_seed_spellings(tmp_path: Path) -> None:
    db = SqliteDatabase(db_file=str(tmp_path / "seed.db"))
    agent = Agent("perdure:scripted", db=db, print=False)
    out = agent.do(Task("transfer 5 to 'bob'", tools=[transfer]), return_output=True)
    assert out.is_paused and not out.is_complete and not out.is_error
    assert out.pause_reason == "approval" and out.error_details is None
    assert agent.last_run_output is out and agent._agent_run_output is out  # the seed's private name too

    def broken(source: str) -> str:
        """Always fails."""
        raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError):
        agent.do(Task("broken 'x'", tools=[broken]))
    failed = agent.last_run_output
    assert failed is not None and failed.is_error and not failed.is_complete and failed.pause_reason is None
    assert failed.error_details is not None and failed.error_details["message"] == "upstream down"
