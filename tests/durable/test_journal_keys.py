"""Journal keys are a compatibility contract: every persisted format, pinned with literal strings.

A journal written by one version of perdure is replayed by the next, so a change here that breaks a
literal is a break of stored data, not a refactoring (compare pydantic-ai's
`test_durable_exec_compat.py`, which pins its operation names the same way). The formats are built
and parsed in `perdure.durable._keys` only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, ToolApproved

from perdure.durable import (
    DurableExecution,
    InMemoryDurableStorage,
    PerdureDurability,
    RetryPolicy,
    ToolResolution,
)
from perdure.durable._keys import (
    MODEL_REQUEST,
    TOOL,
    CallKey,
    UnitKeys,
    attempt_key,
    attempt_unit,
    call_key,
    decision_key,
    is_decision_for,
    is_round_key,
    is_started_marker_for,
    legacy_call_key,
    parse_call_key,
    round_key,
    started_key,
    started_units,
    unit_key,
    workflow_key,
    workflow_scope,
)
from perdure.durable._prechecks import interrupted_calls as _interrupted_calls
from perdure.errors import NonIdempotentReplayError, UserError
from perdure.records import ExecutionStatus, StepKind, StepRecord

# ---- the formats, one literal each --------------------------------------------------------------


def test_unit_keys() -> None:
    assert MODEL_REQUEST == "model" and TOOL == "tool"
    assert unit_key("model", 1) == "model#1"
    assert unit_key("model", 12) == "model#12"
    assert unit_key("event_stream_handler", 2) == "event_stream_handler#2"
    assert unit_key("model", 1, round=2) == "r2/model#1"


def test_workflow_keys() -> None:
    assert workflow_key(1) == "w1"
    assert workflow_key(12) == "w12"
    assert workflow_scope(3) == "w3/"
    assert workflow_scope(3) + unit_key("model", 1) == "w3/model#1"
    assert workflow_scope(3) + call_key("tool", 1, "c0") == "w3/tool:1/c0"


def test_call_keys() -> None:
    assert call_key("tool", 1, "call_abc") == "tool:1/call_abc"
    assert call_key("tool", 0, "call_abc", round=1) == "r1/tool:0/call_abc"
    assert call_key("tool", 3, "c", repeat=2) == "tool:3/c#2"
    assert call_key("validate", 2, "c") == "validate:2/c"
    assert legacy_call_key("tool", "call_abc") == "tool:call_abc"
    assert legacy_call_key("validate", "c") == "validate:c"


def test_bookkeeping_keys() -> None:
    assert started_key("tool:2/c1") == "started:tool:2/c1"
    assert started_key("tool:2/c1", 2) == "started:tool:2/c1#2"
    assert attempt_key("tool:2/c3", 1) == "attempt:tool:2/c3#1"
    assert attempt_key("model#3", 2) == "attempt:model#3#2"
    assert decision_key("tool:2/c1", 1) == "decision:tool:2/c1#1"
    assert round_key(1) == "round:1"


def test_parsing() -> None:
    assert parse_call_key("tool:2/c1") == CallKey("tool", "c1", response=2)
    assert parse_call_key("r1/tool:0/c1") == CallKey("tool", "c1", response=0, round=1)
    assert parse_call_key("tool:3/c#2") == CallKey("tool", "c", response=3, repeat=2)
    assert parse_call_key("tool:3/call:with/odd#chars") == CallKey("tool", "call:with/odd#chars", response=3)
    assert parse_call_key("validate:2/c") == CallKey("validate", "c", response=2)
    assert parse_call_key("tool:call_abc") == CallKey("tool", "call_abc")  # legacy
    assert parse_call_key("tool:c#2") == CallKey("tool", "c#2")  # legacy keys had no repeats
    for not_a_call in ("model#1", "r1/model#2", "started:tool:1/c", "attempt:tool:1/c#1", "round:1"):
        assert parse_call_key(not_a_call) is None, not_a_call
    assert attempt_unit("attempt:tool:2/c3#1") == "tool:2/c3"
    assert attempt_unit("attempt:model#3#2") == "model#3"
    assert attempt_unit("tool:2/c3") is None
    assert is_started_marker_for("started:tool:2/c1", "tool:2/c1")
    assert is_started_marker_for("started:tool:2/c1#3", "tool:2/c1")
    assert not is_started_marker_for("started:tool:2/c10", "tool:2/c1")
    assert not is_started_marker_for("started:tool:2/c1#2#2", "tool:2/c1")
    assert started_units("started:tool:2/c1") == ("tool:2/c1",)
    assert started_units("started:tool:2/c1#2") == ("tool:2/c1#2", "tool:2/c1")
    assert started_units("tool:2/c1") == ()
    assert is_decision_for("decision:tool:2/c1#4", "tool:2/c1")
    assert not is_decision_for("decision:tool:2/c10#4", "tool:2/c1")
    assert not is_decision_for("decision:tool:2/c1#2#4", "tool:2/c1")
    assert is_round_key("round:2") and not is_round_key("round:x") and not is_round_key("r2/model#1")


def test_keys_assigned_in_run_order() -> None:
    keys = UnitKeys(journaled=set())
    assert keys.call("tool", "early") == "tool:0/early"  # before any model response (approval rounds)
    assert keys.unit("model") == "model#1"
    assert [keys.call("tool", "c1"), keys.call("tool", "c2"), keys.call("tool", "c1")] == [
        "tool:1/c1",
        "tool:1/c2",
        "tool:1/c1#2",
    ]
    assert keys.unit("model") == "model#2"
    assert keys.call("tool", "c1") == "tool:2/c1"  # an id reused in a later response: a new key
    assert keys.unit("model", round=1) == "r1/model#3"


def test_legacy_call_keys_are_used_when_the_journal_has_them() -> None:
    journaled = {"model#1", "tool:c1", "model#2", "started:tool:p1"}
    keys = UnitKeys(journaled)
    assert keys.unit("model") == "model#1"
    assert keys.call("tool", "c1") == "tool:c1"
    assert keys.unit("model") == "model#2"
    assert keys.call("tool", "p1") == "tool:p1"  # an interrupted non-idempotent call: its marker
    assert keys.call("tool", "c1") == "tool:2/c1"  # each legacy key answers one call only
    assert keys.call("tool", "c9") == "tool:2/c9"


# ---- what a real run journals -------------------------------------------------------------------

RAN: Counter[str] = Counter()
FAIL: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    FAIL.clear()


def lookup(q: str) -> str:
    """Look something up (idempotent)."""
    RAN["lookup"] += 1
    return f"found {q}"


def pay(amount: int) -> str:
    """Pay (non-idempotent)."""
    RAN["pay"] += 1
    if FAIL["pay"]:
        FAIL["pay"] -= 1
        raise ConnectionError("reset after sending")
    return f"paid {amount}"


def flaky() -> str:
    """Fails once, then works (retried by policy)."""
    RAN["flaky"] += 1
    if FAIL["flaky"]:
        FAIL["flaky"] -= 1
        raise ConnectionError("reset")
    return "ok"


def wipe() -> str:
    """Needs approval."""
    RAN["wipe"] += 1
    return "wiped"


SCRIPT = [
    [
        ToolCallPart("lookup", {"q": "a"}, tool_call_id="c1"),
        ToolCallPart("lookup", {"q": "b"}, tool_call_id="c2"),
    ],
    [ToolCallPart("pay", {"amount": 5}, tool_call_id="p1"), ToolCallPart("flaky", {}, tool_call_id="c3")],
]


def _model(*, approval: bool = False) -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        RAN["model"] += 1
        n = sum(1 for m in messages if isinstance(m, ModelResponse))
        script = [*SCRIPT, [ToolCallPart("wipe", {}, tool_call_id="w1")]] if approval else SCRIPT
        if n < len(script):
            return ModelResponse(parts=list(script[n]))
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


def _agent(*, approval: bool = False) -> PydanticAgent[None, Any]:
    tools = [
        Tool(lookup),
        Tool(pay, metadata={"perdure": {"idempotent": False}}),
        Tool(flaky, metadata={"perdure": {"retry": RetryPolicy(max_retries=2, retry_delay=0, jitter=0)}}),
        Tool(wipe, requires_approval=True),
    ]
    output: Any = [str, DeferredToolRequests] if approval else str
    return PydanticAgent(
        _model(approval=approval),
        name="keys",
        tools=tools,
        output_type=output,
        capabilities=[PerdureDurability()],
    )


def _keys(steps: list[StepRecord]) -> list[tuple[str, str]]:
    return [(s.kind.value, s.key) for s in steps]


async def test_a_run_journals_these_exact_keys() -> None:
    FAIL["flaky"] = 1
    storage = InMemoryDurableStorage()
    result = await DurableExecution(storage, execution_id="e", auto_cleanup=False).run_agent_async(
        _agent(), "go"
    )
    assert result.output == "done"
    assert _keys(await storage.load_steps_async("e")) == [
        ("model_request", "model#1"),
        ("tool_call", "tool:1/c1"),
        ("tool_call", "tool:1/c2"),
        ("model_request", "model#2"),
        ("started", "started:tool:2/p1"),
        ("tool_call", "tool:2/p1"),
        ("attempt", "attempt:tool:2/c3#1"),
        ("tool_call", "tool:2/c3"),
        ("model_request", "model#3"),
    ]


async def test_decisions_and_approval_rounds_journal_these_exact_keys() -> None:
    storage = InMemoryDurableStorage()
    agent = _agent(approval=True)
    FAIL["pay"] = 1
    with pytest.raises(ConnectionError):
        await DurableExecution(storage, execution_id="d", auto_cleanup=False).run_agent_async(agent, "go")
    with pytest.raises(NonIdempotentReplayError):
        await DurableExecution(storage, execution_id="d", auto_cleanup=False).resume_agent_async(agent)
    paused = await DurableExecution(storage, execution_id="d", auto_cleanup=False).resume_agent_async(
        agent, resolutions={"p1": ToolResolution.rerun()}
    )
    assert paused.paused
    done = await DurableExecution(storage, execution_id="d", auto_cleanup=False).resume_agent_async(
        agent, approvals={"w1": ToolApproved()}
    )
    assert done.output == "done"
    assert _keys(await storage.load_steps_async("d")) == [
        ("model_request", "model#1"),
        ("tool_call", "tool:1/c1"),
        ("tool_call", "tool:1/c2"),
        ("model_request", "model#2"),
        ("started", "started:tool:2/p1"),
        ("decision", "decision:tool:2/p1#1"),
        ("started", "started:tool:2/p1#2"),
        ("tool_call", "tool:2/p1"),
        ("tool_call", "tool:2/c3"),
        ("model_request", "model#3"),
        ("decision", "round:1"),
        ("tool_call", "r1/tool:0/w1"),
        ("model_request", "r1/model#1"),
    ]


async def test_a_journal_written_with_legacy_call_keys_still_replays() -> None:
    """Journals from before per-response keys (`tool:<id>`) resume without running anything twice."""
    storage = InMemoryDurableStorage()
    FAIL["pay"] = 1  # the first run stops inside the non-idempotent call (an exception, journal intact)
    with pytest.raises(ConnectionError):
        await DurableExecution(storage, execution_id="new", auto_cleanup=False).run_agent_async(
            _agent(), "go"
        )
    head = await storage.load_state_async("new")
    assert head is not None and head.status is ExecutionStatus.FAILED
    legacy = {"tool:1/c1": "tool:c1", "tool:1/c2": "tool:c2", "started:tool:2/p1": "started:tool:p1"}
    steps = [
        s.model_copy(update={"execution_id": "old", "key": legacy.get(s.key, s.key)})
        for s in await storage.load_steps_async("new")
    ]
    assert _keys(steps) == [  # what perdure wrote before per-response keys
        ("model_request", "model#1"),
        ("tool_call", "tool:c1"),
        ("tool_call", "tool:c2"),
        ("model_request", "model#2"),
        ("started", "started:tool:p1"),
    ]
    old_storage = InMemoryDurableStorage()
    old_head = head.model_copy(update={"execution_id": "old", "next_seq": 0})
    await old_storage.save_state_async(old_head)
    for step in steps:
        old_head = old_head.model_copy(update={"next_seq": step.seq + 1})
        await old_storage.append_step_async(old_head, step)
    RAN.clear()
    with pytest.raises(NonIdempotentReplayError):  # the interrupted call is recognised, not re-run
        await DurableExecution(old_storage, execution_id="old", auto_cleanup=False).resume_agent_async(
            _agent()
        )
    assert not RAN
    result = await DurableExecution(old_storage, execution_id="old", auto_cleanup=False).resume_agent_async(
        _agent(), resolutions={"p1": ToolResolution.done("paid 5")}
    )
    assert result.output == "done"
    assert RAN == {"flaky": 1, "model": 1}  # lookups, the first two model requests and pay: replayed
    assert result.replay.replayed_tool_calls == 2 and result.replay.replayed_model_requests == 2
    assert [k for _, k in _keys(await old_storage.load_steps_async("old"))][5:] == [
        "decision:tool:p1#1",
        "tool:p1",
        "tool:2/c3",
        "model#3",
    ]


def _step(seq: int, kind: StepKind, key: str, result: Any = None) -> StepRecord:
    return StepRecord(execution_id="i", seq=seq, kind=kind, name="tool:pay", key=key, result=result)


def test_interrupted_calls_are_found_by_key() -> None:
    def marker(seq: int, key: str, call_id: str) -> StepRecord:
        return _step(seq, StepKind.STARTED, key, {"tool_call_id": call_id, "args": {}})

    journal = [
        _step(0, StepKind.MODEL_REQUEST, "model#1"),
        marker(1, "started:tool:1/a", "a"),
        _step(2, StepKind.TOOL_CALL, "tool:1/a"),
        marker(3, "started:tool:1/b", "b"),
        _step(4, StepKind.DECISION, "decision:tool:1/b#1"),
        marker(5, "started:tool:1/b#2", "b"),
        _step(6, StepKind.TOOL_CALL, "tool:1/b"),
        marker(7, "started:tool:c", "c"),  # legacy key, done
        _step(8, StepKind.TOOL_CALL, "tool:c"),
        _step(9, StepKind.MODEL_REQUEST, "model#2"),
        marker(10, "started:tool:2/a", "a"),  # the id `a` again, in a later response: interrupted
    ]
    assert _interrupted_calls(journal) == ["a"]
    assert _interrupted_calls(journal[:-2]) == []
    assert _interrupted_calls([marker(0, "started:tool:d", "d")]) == ["d"]


async def test_a_resolution_for_a_call_that_finished_is_refused() -> None:
    FAIL["flaky"] = 3  # fails after the non-idempotent call finished
    storage = InMemoryDurableStorage()
    with pytest.raises(ConnectionError):
        await DurableExecution(storage, execution_id="f", auto_cleanup=False).run_agent_async(_agent(), "go")
    with pytest.raises(UserError, match="no interrupted non-idempotent call"):
        await DurableExecution(storage, execution_id="f", auto_cleanup=False).resume_agent_async(
            _agent(), resolutions={"p1": ToolResolution.rerun()}
        )
