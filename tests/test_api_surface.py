"""The public surface: pinned names, seed spellings, and listings that show what an operator needs."""

from __future__ import annotations

from pathlib import Path

import pytest

import perdure
import perdure.durable
from perdure import Agent, DurableExecution, Task, tool
from perdure.db import SqliteDatabase
from perdure.durable import SQLiteDurableStorage


def test_public_names_are_pinned() -> None:
    assert sorted(perdure.__all__) == sorted(
        [
            "Agent",
            "AgentRunOutput",
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
            "current_step",
            "idempotency_key",
            "register",
            "tool",
        ]
    )
    for name in ("AgentFactory", "AttemptResult", "ResumeTarget", "FileDurableStorage", "storage_from_url"):
        assert name in perdure.durable.__all__
    assert (Path(perdure.__file__).parent / "py.typed").exists()


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
