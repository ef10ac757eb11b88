"""Durable streaming: live deltas inside an execution, replayed events marked on resume, one warning outside.

The crash test kills a real subprocess (`tests/support/stream_app.py`) while the second model request
is streaming, after the tool call finished, and resumes in a new process: only that request is sent
again, and the consumer gets the journaled part first (marked replayed), then live deltas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import (
    AgentStreamEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.run import AgentRunResultEvent

from perdure.durable import DurableExecution, PerdureDurability
from perdure.durable.execution import StreamedEvent
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import InMemoryDurableStorage, storage_from_url
from support.paths import SRC, TESTS

CHUNKS = ["The ", "sum ", "is ", "5."]


def _answered(messages: list[ModelMessage]) -> bool:
    return any(
        isinstance(part, ToolReturnPart)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
    )


class Script:
    """A deterministic model: first a call of `add`, then the answer in CHUNKS; counts requests."""

    def __init__(self, *, fail_at_chunk: int = 0, gate: asyncio.Event | None = None) -> None:
        self.requests = 0
        self.fail_at_chunk = fail_at_chunk
        self.gate = gate
        self.tools = 0

    def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests += 1
        if not _answered(messages):
            return ModelResponse(parts=[ToolCallPart("add", {"a": 2, "b": 3}, tool_call_id="call-add")])
        return ModelResponse(parts=[TextPart("".join(CHUNKS))])

    async def stream(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        self.requests += 1
        if not _answered(messages):
            yield {0: DeltaToolCall(name="add", json_args='{"a": 2, "b": 3}', tool_call_id="call-add")}
            return
        for index, chunk in enumerate(CHUNKS, start=1):
            if index == self.fail_at_chunk:
                self.fail_at_chunk = 0  # once
                raise ConnectionError("stream broke")
            yield chunk
            if index == 1 and self.gate is not None:
                # The consumer must see the first delta while the model is still producing the rest.
                await asyncio.wait_for(self.gate.wait(), timeout=5)

    def agent(self, name: str = "streamer", **options: Any) -> Agent[None, str]:
        agent = Agent(
            FunctionModel(self.respond, stream_function=self.stream, model_name="script"),
            name=name,
            capabilities=[PerdureDurability(**options)],
        )

        @agent.tool_plain
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            self.tools += 1
            return a + b

        return agent


def _text_deltas(items: list[StreamedEvent[Any]]) -> list[str]:
    return [
        item.event.delta.content_delta
        for item in items
        if isinstance(item.event, PartDeltaEvent) and isinstance(item.event.delta, TextPartDelta)
    ]


async def test_streaming_inside_an_execution_delivers_live_deltas_and_the_same_result() -> None:
    gate = asyncio.Event()
    script = Script(gate=gate)
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    stream = durable.run_agent_stream_events(script.agent(), "Add 2 and 3.")
    items: list[StreamedEvent[str]] = []
    async for item in stream:
        items.append(item)
        if isinstance(item.event, PartStartEvent) and isinstance(item.event.part, TextPart):
            assert item.event.part.content == "The "  # the first chunk, not the whole answer
            gate.set()
    assert gate.is_set()
    assert stream.result is not None
    assert stream.result.output == "The sum is 5."
    assert not any(item.replayed for item in items)  # a first run: everything is live
    assert _text_deltas(items) == CHUNKS[1:]  # one delta per chunk after the first
    assert isinstance(items[-1].event, AgentRunResultEvent)
    assert items[-1].event.result.output == "The sum is 5."
    kinds = [type(item.event) for item in items]
    assert (
        kinds.index(FunctionToolCallEvent)
        < kinds.index(FunctionToolResultEvent)
        < kinds.index(PartDeltaEvent)
    )
    # No part is delivered twice: the run's own copy of a live-streamed response is dropped.
    text_starts = [
        i for i in items if isinstance(i.event, PartStartEvent) and isinstance(i.event.part, TextPart)
    ]
    assert len(text_starts) == 1
    assert script.requests == 2 and script.tools == 1

    # Each streamed request journaled its final response: one unit per request.
    steps = storage.load_steps(durable.execution_id)
    assert [s.kind for s in steps if s.kind in (StepKind.MODEL_REQUEST, StepKind.TOOL_CALL)] == [
        StepKind.MODEL_REQUEST,
        StepKind.TOOL_CALL,
        StepKind.MODEL_REQUEST,
    ]

    # The same agent, not streamed, gives the same result.
    plain = Script()
    result = await DurableExecution(InMemoryDurableStorage()).run_agent_async(plain.agent(), "Add 2 and 3.")
    assert result.output == stream.result.output
    assert plain.requests == 2


async def test_a_stream_broken_mid_request_resends_that_request_only_and_replays_the_rest() -> None:
    script = Script(fail_at_chunk=3)
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    first: list[StreamedEvent[str]] = []
    with pytest.raises(ConnectionError):
        async for item in durable.run_agent_stream_events(script.agent(), "Add 2 and 3."):
            first.append(item)
    assert _text_deltas(first) == ["sum "]  # what streamed before the break reached the consumer
    assert (script.requests, script.tools) == (2, 1)
    assert storage.load_state(durable.execution_id).status is ExecutionStatus.FAILED  # type: ignore[union-attr]

    stream = durable.resume_agent_stream_events(script.agent())
    items = [item async for item in stream]
    assert stream.result is not None and stream.result.output == "The sum is 5."
    assert (script.requests, script.tools) == (3, 1)  # only the broken request again, no tool
    flags = [item.replayed for item in items]
    assert flags[: flags.index(False)] == [True] * flags.index(False)
    assert not any(flags[flags.index(False) :])  # every replayed event comes before the live ones
    replayed = [type(item.event) for item in items if item.replayed]
    assert FunctionToolCallEvent in replayed and FunctionToolResultEvent in replayed
    assert _text_deltas(items) == CHUNKS[1:]
    replay = stream.result.head.replay
    assert (replay.replayed_model_requests, replay.replayed_tool_calls) == (1, 1)


async def test_leaving_the_stream_early_stops_the_attempt_and_it_resumes() -> None:
    script = Script()
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    async with durable.run_agent_stream_events(script.agent(), "Add 2 and 3.") as stream:
        async for item in stream:
            if isinstance(item.event, FunctionToolResultEvent):
                break
    assert stream.result is None
    result = await durable.resume_agent_async(script.agent())
    assert result.output == "The sum is 5."
    assert script.tools == 1


async def test_a_run_level_event_stream_handler_works_inside_an_execution() -> None:
    """pydantic-ai's documented semantics: the per-run handler sees each model response after it completed."""
    seen: list[AgentStreamEvent] = []

    async def handler(ctx: Any, events: Any) -> None:
        async for event in events:
            seen.append(event)

    script = Script()
    result = await DurableExecution(InMemoryDurableStorage()).run_agent_async(
        script.agent(), "Add 2 and 3.", event_stream_handler=handler
    )
    assert result.output == "The sum is 5."
    assert any(isinstance(e, FunctionToolResultEvent) for e in seen)
    assert any(isinstance(e, PartStartEvent) and isinstance(e.part, TextPart) for e in seen)


async def test_a_capability_level_handler_and_the_consumer_both_get_the_live_stream() -> None:
    handled: list[str] = []

    async def handler(ctx: Any, events: Any) -> None:
        async for event in events:
            if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                handled.append(event.delta.content_delta)

    script = Script()
    durable = DurableExecution(InMemoryDurableStorage())
    items = [
        item
        async for item in durable.run_agent_stream_events(script.agent(event_stream_handler=handler), "x")
    ]
    assert handled == CHUNKS[1:]
    assert _text_deltas(items) == CHUNKS[1:]


async def test_a_durable_agent_outside_an_execution_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    name = f"outside-{uuid.uuid4().hex[:8]}"
    script = Script()
    agent = script.agent(name)
    with caplog.at_level(logging.WARNING, logger="perdure"):
        assert (await agent.run("Add 2 and 3.")).output == "The sum is 5."
        async with agent.run_stream("Add 2 and 3.") as result:
            assert await result.get_output() == "The sum is 5."
        await DurableExecution(InMemoryDurableStorage()).run_agent_async(agent, "Add 2 and 3.")
        quiet = script.agent(f"quiet-{uuid.uuid4().hex[:8]}", warn_outside_execution=False)
        await quiet.run("Add 2 and 3.")
    warnings = [r for r in caplog.records if r.name == "perdure" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert name in message and "nothing is being saved" in message and "DurableExecution" in message


# ---- crash in a real subprocess --------------------------------------------------------------------


def _run_app(
    mode: str, url: str, execution_id: str, tmp: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]),
        "LEDGER": str(tmp / "ledger"),
        "EVENTS": str(tmp / "events"),
        "PHASE": mode,
        **env,
    }
    code = (
        "import sys; from support import stream_app; "
        f"sys.exit(stream_app.main(['stream_app', {mode!r}, {url!r}, {execution_id!r}]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def _lines(path: Path, phase: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines() if line.startswith(phase + " ")]


def _events(path: Path, phase: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["phase"] == phase]


@pytest.mark.crash
def test_sigkill_mid_stream_then_resume_in_a_new_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'stream.db'}"
    execution_id = "stream-crash-1"
    crashed = _run_app("start", url, execution_id, tmp_path, KILL_AT_CHUNK="3")
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    # Before the kill: request 1 (the tool call), the tool, and request 2 streaming live.
    assert _lines(tmp_path / "ledger", "start") == ["model", "tool add", "model"]
    before = _events(tmp_path / "events", "start")
    assert [e["text"] for e in before if e["type"] == "PartDeltaEvent"] == ["sum "]
    assert not any(e["replayed"] for e in before)
    steps = storage_from_url(url).load_steps(execution_id)
    assert [s.kind for s in steps if s.kind in (StepKind.MODEL_REQUEST, StepKind.TOOL_CALL)] == [
        StepKind.MODEL_REQUEST,
        StepKind.TOOL_CALL,
    ]

    resumed = _run_app("resume", url, execution_id, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.splitlines()[-1])
    assert result["output"] == "The sum of 2 and 3 is 5."
    # Only the interrupted request was sent again; the first request and the tool were replayed.
    assert _lines(tmp_path / "ledger", "resume") == ["model"]
    assert result["replay"]["replayed_model_requests"] == 1
    assert result["replay"]["replayed_tool_calls"] == 1
    assert result["replay"]["executed_model_requests"] == 1
    assert result["replay"]["executed_tool_calls"] == 0

    events = _events(tmp_path / "events", "resume")
    flags = [e["replayed"] for e in events]
    first_live = flags.index(False)
    assert first_live > 0 and all(flags[:first_live]) and not any(flags[first_live:])
    assert [e["type"] for e in events[:first_live]] == [
        "PartStartEvent",
        "PartEndEvent",
        "FunctionToolCallEvent",
        "FunctionToolResultEvent",
    ]
    assert events[first_live - 1]["text"] == 5  # the journaled tool result
    live_deltas = [e["text"] for e in events[first_live:] if e["type"] == "PartDeltaEvent"]
    assert live_deltas == ["sum ", "of 2 and 3 ", "is ", "5."]
    assert events[-1]["type"] == "AgentRunResultEvent"
