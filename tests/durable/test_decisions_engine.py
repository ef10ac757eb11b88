"""Engine-level tests of idempotency keys, non-idempotent tools and approval rounds.

They drive plain pydantic-ai agents through `DurableExecution`, so they pin the engine's contract
independently of the seed facade.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import RunContext, Tool
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests

from perdure.durable import (
    DurableExecution,
    PerdureDurability,
    SQLiteDurableStorage,
    ToolResolution,
    current_step,
    idempotency_key,
)
from perdure.errors import ExecutionAborted, NonIdempotentReplayError, UserError
from perdure.records import ExecutionStatus, StepKind
from perdure.storage.base import DurableExecutionStorage

EFFECTS: list[tuple[str, Any]] = []
KEYS: list[str] = []
FAIL: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EFFECTS.clear()
    KEYS.clear()
    FAIL.clear()


@pytest.fixture
def storage(tmp_path: Path) -> DurableExecutionStorage:
    return SQLiteDurableStorage(tmp_path / "d.db")


def _tool_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def _script(*calls: list[tuple[str, dict[str, Any]]]) -> FunctionModel:
    """A model that makes the given tool calls, one response per entry, then answers with the returns."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        responses = sum(1 for m in messages if isinstance(m, ModelResponse))
        if responses < len(calls):
            return ModelResponse(
                parts=[
                    ToolCallPart(name, args, tool_call_id=f"call-{responses}-{i}")
                    for i, (name, args) in enumerate(calls[responses])
                ]
            )
        returns = [f"{p.tool_name}={p.content}" for p in _tool_returns(messages)]
        return ModelResponse(parts=[TextPart("done: " + "; ".join(returns))])

    return FunctionModel(respond)


def pay(amount: int) -> str:
    """Send a payment (non-idempotent)."""
    EFFECTS.append(("pay", amount))
    if FAIL["pay"]:
        FAIL["pay"] -= 1
        raise ConnectionError("connection reset after the request was sent")
    return f"paid {amount}"


def notify(ctx: RunContext[None], text: str) -> str:
    """Send a message through an API that deduplicates by idempotency key."""
    step = current_step()
    assert idempotency_key(ctx) == step.idempotency_key
    KEYS.append(step.idempotency_key)
    if FAIL["notify"]:
        FAIL["notify"] -= 1
        raise ConnectionError("timeout")
    return f"sent {text}"


def delete_account(user: str) -> str:
    """Delete a user account (needs approval)."""
    EFFECTS.append(("delete", user))
    return f"deleted {user}"


def _agent(model: FunctionModel, *, approval: bool = False) -> PydanticAgent[None, Any]:
    tools = [
        Tool(pay, metadata={"perdure": {"idempotent": False}}),
        Tool(notify, takes_ctx=True),
        Tool(delete_account, requires_approval=approval),
    ]
    output: Any = [str, DeferredToolRequests] if approval else str
    return PydanticAgent(
        model, name="ops", tools=tools, output_type=output, capabilities=[PerdureDurability()]
    )


# ---- idempotency keys ---------------------------------------------------------------------------


async def test_idempotency_key_is_stable_across_resumes(storage: DurableExecutionStorage) -> None:
    FAIL["notify"] = 1
    agent = _agent(_script([("notify", {"text": "hi"})]))
    durable = DurableExecution(storage, execution_id="exec-key", auto_cleanup=False)
    with pytest.raises(ConnectionError):
        await durable.run_agent_async(agent, "go")
    result = await DurableExecution(storage, execution_id="exec-key").resume_agent_async(agent)
    assert result.output == "done: notify=sent hi"
    assert KEYS == ["exec-key:tool:1/call-0-0", "exec-key:tool:1/call-0-0"]


def test_current_step_outside_a_unit_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="only available inside"):
        current_step()


# ---- non-idempotent tools -----------------------------------------------------------------------


async def test_started_marker_precedes_the_call(storage: DurableExecutionStorage) -> None:
    agent = _agent(_script([("pay", {"amount": 5})]))
    result = await DurableExecution(storage, execution_id="exec-m", auto_cleanup=False).run_agent_async(
        agent, "go"
    )
    assert result.output == "done: pay=paid 5"
    steps = await storage.load_steps_async("exec-m")
    kinds = [(s.kind, s.key) for s in steps]
    started = kinds.index((StepKind.STARTED, "started:tool:1/call-0-0"))
    assert kinds[started + 1] == (StepKind.TOOL_CALL, "tool:1/call-0-0")
    assert steps[started].result == {"tool_call_id": "call-0-0", "args": {"amount": 5}}


async def _interrupted(storage: DurableExecutionStorage, execution_id: str) -> PydanticAgent[None, Any]:
    """Run until the non-idempotent call started but recorded nothing, then try to resume."""
    FAIL["pay"] = 1
    agent = _agent(_script([("notify", {"text": "a"})], [("pay", {"amount": 7})]))
    with pytest.raises(ConnectionError):
        await DurableExecution(storage, execution_id=execution_id, auto_cleanup=False).run_agent_async(
            agent, "go"
        )
    assert EFFECTS == [("pay", 7)]
    with pytest.raises(NonIdempotentReplayError) as info:
        await DurableExecution(storage, execution_id=execution_id, auto_cleanup=False).resume_agent_async(
            agent
        )
    err = info.value
    assert (err.execution_id, err.tool_name, err.tool_call_id, err.tool_args) == (
        execution_id,
        "pay",
        "call-1-0",
        {"amount": 7},
    )
    assert "ToolResolution.done" in str(err) and execution_id in str(err)
    head = await storage.load_state_async(execution_id)
    assert head is not None and head.status is ExecutionStatus.PAUSED
    assert head.pending is not None and head.pending.kind == "non_idempotent"
    assert [(c.tool_name, c.tool_call_id, c.args) for c in head.pending.calls] == [
        ("pay", "call-1-0", {"amount": 7})
    ]
    assert EFFECTS == [("pay", 7)]  # never re-run silently
    return agent


async def test_interrupted_call_resolved_as_done(storage: DurableExecutionStorage) -> None:
    agent = await _interrupted(storage, "exec-done")
    durable = DurableExecution(storage, execution_id="exec-done", auto_cleanup=False)
    result = await durable.resume_agent_async(
        agent, resolutions={"call-1-0": ToolResolution.done("paid 7 (manual)")}
    )
    assert result.output == "done: notify=sent a; pay=paid 7 (manual)"
    assert EFFECTS == [("pay", 7)]
    decisions = [s for s in await storage.load_steps_async("exec-done") if s.kind is StepKind.DECISION]
    assert [d.result["action"] for d in decisions] == ["done"]


async def test_interrupted_call_resolved_as_rerun(storage: DurableExecutionStorage) -> None:
    agent = await _interrupted(storage, "exec-rerun")
    durable = DurableExecution(storage, execution_id="exec-rerun", auto_cleanup=False)
    result = await durable.resume_agent_async(agent, resolutions={"call-1-0": "rerun"})
    assert result.output == "done: notify=sent a; pay=paid 7"
    assert EFFECTS == [("pay", 7), ("pay", 7)]
    # Resolved once: a later resume does not ask again.
    head = await storage.load_state_async("exec-rerun")
    assert head is not None and head.status is ExecutionStatus.COMPLETED and head.pending is None


async def test_interrupted_call_resolved_as_abort(storage: DurableExecutionStorage) -> None:
    agent = await _interrupted(storage, "exec-abort")
    durable = DurableExecution(storage, execution_id="exec-abort", auto_cleanup=False)
    with pytest.raises(ExecutionAborted, match="cancelled"):
        await durable.resume_agent_async(agent, resolutions={"call-1-0": ToolResolution.abort()})
    head = await storage.load_state_async("exec-abort")
    assert head is not None and head.status is ExecutionStatus.CANCELLED
    assert EFFECTS == [("pay", 7)]


async def test_resolution_right_after_the_crash(storage: DurableExecutionStorage) -> None:
    FAIL["pay"] = 1
    agent = _agent(_script([("pay", {"amount": 3})]))
    with pytest.raises(ConnectionError):
        await DurableExecution(storage, execution_id="exec-now", auto_cleanup=False).run_agent_async(
            agent, "go"
        )
    # The operator checked the payment system: the payment went through. No paused round-trip needed.
    durable = DurableExecution(storage, execution_id="exec-now", auto_cleanup=False)
    result = await durable.resume_agent_async(agent, resolutions={"call-0-0": ToolResolution.done("paid 3")})
    assert result.output == "done: pay=paid 3" and EFFECTS == [("pay", 3)]


async def test_run_metadata_is_stored(storage: DurableExecutionStorage) -> None:
    agent = _agent(_script())
    durable = DurableExecution(storage, execution_id="exec-meta", auto_cleanup=False)
    await durable.run_agent_async(agent, "go", metadata={"tenant": "acme"})
    head = await storage.load_state_async("exec-meta")
    assert head is not None and head.metadata == {"tenant": "acme"}


async def test_resolution_for_unknown_call_is_refused(storage: DurableExecutionStorage) -> None:
    agent = await _interrupted(storage, "exec-unknown")
    durable = DurableExecution(storage, execution_id="exec-unknown", auto_cleanup=False)
    with pytest.raises(UserError, match="no interrupted non-idempotent call"):
        await durable.resume_agent_async(agent, resolutions={"nope": "rerun"})
    with pytest.raises(UserError, match="must be ToolResolution"):
        await durable.resume_agent_async(agent, resolutions={"call-1-0": "maybe"})  # type: ignore[dict-item]


# ---- approvals ----------------------------------------------------------------------------------


async def test_approval_round_pauses_and_resumes_in_a_new_handle(storage: DurableExecutionStorage) -> None:
    model = _script([("notify", {"text": "bye"}), ("delete_account", {"user": "ann"})])
    agent = _agent(model, approval=True)
    first = await DurableExecution(storage, execution_id="exec-a", auto_cleanup=False).run_agent_async(
        agent, "go"
    )
    assert first.paused and isinstance(first.output, DeferredToolRequests)
    head = await storage.load_state_async("exec-a")
    assert head is not None and head.status is ExecutionStatus.PAUSED and head.pending is not None
    assert [(c.tool_name, c.tool_call_id, c.args) for c in head.pending.calls] == [
        ("delete_account", "call-0-1", {"user": "ann"})
    ]
    assert EFFECTS == [] and len(KEYS) == 1  # notify ran, delete waits

    again = DurableExecution(storage, execution_id="exec-a", auto_cleanup=False)
    with pytest.raises(UserError, match="approvals="):
        await again.resume_agent_async(agent)
    with pytest.raises(UserError, match="missing decisions"):
        await again.resume_agent_async(agent, approvals={"other": True})
    done = await again.resume_agent_async(_agent(model, approval=True), approvals={"call-0-1": True})
    assert done.output == "done: notify=sent bye; delete_account=deleted ann"
    assert EFFECTS == [("delete", "ann")] and len(KEYS) == 1  # notify was not re-run


async def test_denial_message_reaches_the_model_and_override_args(storage: DurableExecutionStorage) -> None:
    model = _script([("delete_account", {"user": "ann"})], [("delete_account", {"user": "bob"})])
    agent = _agent(model, approval=True)
    durable = DurableExecution(storage, execution_id="exec-d", auto_cleanup=False)
    assert (await durable.run_agent_async(agent, "go")).paused
    second = await durable.resume_agent_async(agent, approvals={"call-0-0": "not this user"})
    assert second.paused  # round 2 asks about the second call
    head = await storage.load_state_async("exec-d")
    assert head is not None and head.pending is not None and head.pending.round == 1
    final = await durable.resume_agent_async(agent, approvals={"call-1-0": {"user": "carol"}})
    assert final.output == "done: delete_account=not this user; delete_account=deleted carol"
    assert EFFECTS == [("delete", "carol")]


async def test_crash_after_approval_replays_the_journaled_decision(storage: DurableExecutionStorage) -> None:
    FAIL["notify"] = 1
    model = _script([("delete_account", {"user": "ann"})], [("notify", {"text": "done"})])
    agent = _agent(model, approval=True)
    durable = DurableExecution(storage, execution_id="exec-c", auto_cleanup=False)
    assert (await durable.run_agent_async(agent, "go")).paused
    with pytest.raises(ConnectionError):  # round 2 fails after the approved tool ran
        await durable.resume_agent_async(agent, approvals={"call-0-0": True})
    assert EFFECTS == [("delete", "ann")]
    head = await storage.load_state_async("exec-c")
    assert head is not None and head.status is ExecutionStatus.FAILED
    # No approvals needed now: the decision is in the journal, and the approved call is not re-run.
    final = await DurableExecution(storage, execution_id="exec-c").resume_agent_async(agent)
    assert final.output == "done: delete_account=deleted ann; notify=sent done"
    assert EFFECTS == [("delete", "ann")]


async def test_a_rerun_that_is_interrupted_again_needs_a_new_decision(
    storage: DurableExecutionStorage,
) -> None:
    agent = await _interrupted(storage, "exec-rerun2")
    FAIL["pay"] = 1
    durable = DurableExecution(storage, execution_id="exec-rerun2", auto_cleanup=False)
    with pytest.raises(ConnectionError):
        await durable.resume_agent_async(agent, resolutions={"call-1-0": "rerun"})
    assert EFFECTS == [("pay", 7), ("pay", 7)]
    # The journaled "rerun" belongs to the first try; the second try has its own marker.
    with pytest.raises(NonIdempotentReplayError):
        await durable.resume_agent_async(agent)
    assert EFFECTS == [("pay", 7), ("pay", 7)]
    markers = [s.key for s in await storage.load_steps_async("exec-rerun2") if s.kind is StepKind.STARTED]
    assert markers == ["started:tool:2/call-1-0", "started:tool:2/call-1-0#2"]
    result = await durable.resume_agent_async(agent, resolutions={"call-1-0": ToolResolution.done("ok")})
    assert result.output == "done: notify=sent a; pay=ok"
