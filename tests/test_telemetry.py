"""OpenTelemetry spans of durable executions (`perdure.telemetry`), read from an in-memory exporter."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings

from perdure import DurableExecution, PerdureDurability, RetryPolicy, step, workflow
from perdure.durable import SQLiteDurableStorage
from perdure.events import _bus, _derive
from perdure.telemetry import Instrumentation, attempt_span, instrument, is_instrumented

FAIL: set[str] = set()
RUNS: list[str] = []
FLAKY = {"left": 0}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    FAIL.clear()
    RUNS.clear()
    FLAKY["left"] = 0
    yield
    Agent.instrument_all(False)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def telemetry(provider: TracerProvider) -> Iterator[Instrumentation]:
    with instrument(provider) as handle:
        yield handle
    assert not is_instrumented()


@pytest.fixture
def durable(tmp_path: Path) -> DurableExecution:
    return DurableExecution(SQLiteDurableStorage(db_path=str(tmp_path / "runs.db")), auto_cleanup=False)


def _two_tools(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("lookup", {"q": "a"}, tool_call_id="call-a"),
                ToolCallPart("store", {"q": "b"}, tool_call_id="call-b"),
            ]
        )
    return ModelResponse(parts=[TextPart("done")])


def lookup(q: str) -> str:
    """Look something up."""
    RUNS.append("lookup")
    return q.upper()


def store(q: str) -> str:
    """Store something."""
    RUNS.append("store")
    if "store" in FAIL:
        raise OSError("disk full")
    if FLAKY["left"]:
        FLAKY["left"] -= 1
        raise ConnectionError("reset by peer")
    return "stored"


def _agent(*, retry: RetryPolicy | None = None) -> Agent[None, str]:
    store_tool = Tool(store, metadata={"perdure": {"retry": retry}} if retry else None)
    return Agent(
        FunctionModel(_two_tools),
        name="clerk",
        tools=[lookup, store_tool],
        capabilities=[PerdureDurability()],
    )


def _perdure(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _parent(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next((other for other in spans if other.context.span_id == span.parent.span_id), None)


def test_a_span_per_attempt_and_per_unit_with_attributes(
    telemetry: Instrumentation, exporter: InMemorySpanExporter, durable: DurableExecution
) -> None:
    assert durable.run_agent(_agent(), "go").output == "done"
    spans = exporter.get_finished_spans()
    assert sorted(span.name for span in spans) == [
        "perdure attempt clerk",
        "perdure model_request",
        "perdure model_request",
        "perdure tool:lookup",
        "perdure tool:store",
    ]
    (attempt,) = _perdure(spans, "perdure attempt clerk")
    assert _attrs(attempt) | {"perdure.tokens.input": 0, "perdure.tokens.output": 0} == {
        "perdure.execution_id": durable.execution_id,
        "perdure.name": "clerk",
        "perdure.attempt": 1,
        "perdure.status": "completed",
        "perdure.step_index": 3,
        "perdure.tokens.input": 0,
        "perdure.tokens.output": 0,
        "perdure.replayed_units": 0,
        "perdure.tokens_saved": 0,
    }
    assert attempt.status.status_code is StatusCode.OK and attempt.parent is None

    first, second = sorted(_perdure(spans, "perdure model_request"), key=lambda s: s.start_time or 0)
    assert _attrs(first)["perdure.tokens.input"] > 0 and _attrs(first)["perdure.tokens.output"] > 0
    assert _attrs(attempt)["perdure.tokens.input"] == sum(
        _attrs(s)["perdure.tokens.input"] for s in (first, second)
    )
    (tool,) = _perdure(spans, "perdure tool:lookup")
    assert _attrs(tool) == {
        "perdure.execution_id": durable.execution_id,
        "perdure.name": "clerk",
        "perdure.step_index": 1,
        "perdure.step_name": "tool:lookup",
        "perdure.unit_kind": "tool_call",
        "perdure.unit_key": _attrs(tool)["perdure.unit_key"],
        "perdure.replayed": False,
        "perdure.attempt": 1,
        "perdure.tokens.input": 0,
        "perdure.tokens.output": 0,
        "perdure.tool_name": "lookup",
        "perdure.tool_call_id": "call-a",
    }
    assert "call-a" in _attrs(tool)["perdure.unit_key"]
    # Without pydantic-ai's instrumentation every unit is a child of the attempt.
    for span in spans:
        if span is not attempt:
            assert span.parent is not None and span.parent.span_id == attempt.context.span_id
            assert span.context.trace_id == attempt.context.trace_id


def test_units_nest_under_pydantic_ai_spans(
    telemetry: Instrumentation,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    durable: DurableExecution,
) -> None:
    Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
    durable.run_agent(_agent(), "go")
    spans = exporter.get_finished_spans()
    (attempt,) = _perdure(spans, "perdure attempt clerk")
    (agent_run,) = [span for span in spans if span.name.startswith("invoke_agent")]
    assert _parent(agent_run, spans) is attempt
    for unit in _perdure(spans, "perdure model_request"):
        model_span = _parent(unit, spans)
        assert model_span is not None and model_span.name.startswith("chat ")
        assert _parent(model_span, spans) is agent_run
    for tool in ("lookup", "store"):
        (unit,) = _perdure(spans, f"perdure tool:{tool}")
        tool_span = _parent(unit, spans)
        assert tool_span is not None and tool_span.name == f"execute_tool {tool}"
        assert _parent(tool_span, spans) is agent_run
    assert len({span.context.trace_id for span in spans}) == 1


def test_resume_after_a_failure_replays_units_in_a_second_attempt(
    telemetry: Instrumentation,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    durable: DurableExecution,
) -> None:
    Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
    agent = _agent()
    FAIL.add("store")
    with pytest.raises(OSError, match="disk full"):
        durable.run_agent(agent, "go")
    failed_spans = exporter.get_finished_spans()
    (store_span,) = _perdure(failed_spans, "perdure tool:store")
    assert store_span.status.status_code is StatusCode.ERROR
    assert store_span.status.description == "OSError: disk full"
    (exception,) = [event for event in store_span.events if event.name == "exception"]
    assert dict(exception.attributes or {})["exception.type"] == "OSError"
    assert "Traceback" in str(dict(exception.attributes or {})["exception.stacktrace"])
    (first,) = _perdure(failed_spans, "perdure attempt clerk")
    assert first.status.status_code is StatusCode.ERROR
    assert _attrs(first)["perdure.status"] == "failed" and _attrs(first)["perdure.attempt"] == 1

    exporter.clear()
    FAIL.clear()
    assert durable.resume_agent(agent).output == "done"
    assert RUNS == ["lookup", "store", "store"]
    spans = exporter.get_finished_spans()
    (second,) = _perdure(spans, "perdure attempt clerk")
    assert _attrs(second)["perdure.attempt"] == 2 and _attrs(second)["perdure.status"] == "completed"
    assert _attrs(second)["perdure.replayed_units"] == 2 and _attrs(second)["perdure.tokens_saved"] > 0
    assert second.context.trace_id != first.context.trace_id
    replayed = [span for span in spans if _attrs(span).get("perdure.replayed")]
    assert sorted(span.name for span in replayed) == ["perdure model_request", "perdure tool:lookup"]
    for span in replayed:
        # pydantic-ai never exports the spans of replayed work: the attempt is the parent.
        assert _parent(span, spans) is second
        assert span.start_time == span.end_time
    (model_replayed,) = [span for span in replayed if span.name == "perdure model_request"]
    assert _attrs(model_replayed)["perdure.tokens.input"] > 0
    (store_again,) = _perdure(spans, "perdure tool:store")
    assert not _attrs(store_again)["perdure.replayed"]
    assert store_again.status.status_code is StatusCode.UNSET
    tool_span = _parent(store_again, spans)
    assert tool_span is not None and tool_span.name == "execute_tool store"
    # Every parent of the second attempt's spans is exported: nothing dangles.
    assert all(span.parent is None or _parent(span, spans) is not None for span in spans)


def test_retried_tries_are_span_events(
    telemetry: Instrumentation, exporter: InMemorySpanExporter, durable: DurableExecution
) -> None:
    FLAKY["left"] = 2
    agent = _agent(retry=RetryPolicy(max_retries=3, retry_delay=0, jitter=0))
    assert durable.run_agent(agent, "go").output == "done"
    (unit,) = _perdure(exporter.get_finished_spans(), "perdure tool:store")
    retries = [event for event in unit.events if event.name == "perdure.retry"]
    assert [dict(event.attributes or {})["perdure.attempt"] for event in retries] == [1, 2]
    assert dict(retries[0].attributes or {})["exception.type"] == "ConnectionError"
    assert _attrs(unit)["perdure.attempt"] == 3
    assert unit.status.status_code is StatusCode.UNSET


@step
async def ask(text: str) -> str:
    """A step that runs an agent, and fails after it when asked to."""
    output = (await _agent().run(text)).output
    if "ask" in FAIL:
        raise RuntimeError("step failed after its agent ran")
    return output


@workflow(name="telemetry-steps")
async def two_asks() -> list[str]:
    return [await ask("a"), await ask("b")]


async def test_workflow_steps_hold_their_agents_spans(
    telemetry: Instrumentation,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    durable: DurableExecution,
) -> None:
    Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
    FAIL.add("ask")
    with pytest.raises(RuntimeError, match="after its agent"):
        await durable.run_workflow_async(two_asks)
    (step_span,) = _perdure(exporter.get_finished_spans(), "perdure step:ask")
    assert step_span.status.status_code is StatusCode.ERROR
    assert _attrs(step_span)["perdure.unit_kind"] == "step"
    exporter.clear()
    FAIL.clear()
    assert await durable.resume_workflow_async() == ["done", "done"]
    spans = exporter.get_finished_spans()
    (attempt,) = _perdure(spans, "perdure attempt telemetry-steps")
    first, second = sorted(_perdure(spans, "perdure step:ask"), key=lambda s: s.start_time or 0)
    assert _parent(first, spans) is attempt and _parent(second, spans) is attempt
    # The first step runs again; its agent's units are replayed under it, the second's run live.
    in_first = [span for span in spans if _parent(span, spans) is first]
    assert {span.name for span in in_first} == {
        "perdure model_request",
        "perdure tool:lookup",
        "perdure tool:store",
    }
    assert all(_attrs(span)["perdure.replayed"] for span in in_first)
    (agent_run,) = [span for span in spans if span.name.startswith("invoke_agent")]
    assert _parent(agent_run, spans) is second


def test_off_means_no_spans_and_no_events(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    durable: DurableExecution,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = instrument(provider)
    handle.uninstrument()
    handle.uninstrument()  # idempotent
    assert not is_instrumented() and not handle.active

    def built(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an event was built with nobody listening")

    for name in ("unit_started", "unit_done", "unit_failed", "attempt_started", "execution_ended"):
        monkeypatch.setattr(_derive, name, built)
    assert not _bus.Emitter().active
    FAIL.add("store")
    with pytest.raises(OSError):
        durable.run_agent(_agent(), "go")
    FAIL.clear()
    assert durable.resume_agent(_agent()).output == "done"
    assert exporter.get_finished_spans() == ()


def test_instrument_replaces_and_can_skip_replayed_units(
    provider: TracerProvider, exporter: InMemorySpanExporter, durable: DurableExecution
) -> None:
    first = instrument(provider)
    second = instrument(provider, replayed_units=False)
    try:
        assert not first.active and second.active and is_instrumented()
        FAIL.add("store")
        with pytest.raises(OSError):
            durable.run_agent(_agent(), "go")
        exporter.clear()
        FAIL.clear()
        durable.resume_agent(_agent())
        names = sorted(span.name for span in exporter.get_finished_spans())
        assert names == ["perdure attempt clerk", "perdure model_request", "perdure tool:store"]
    finally:
        second.uninstrument()


def test_attempt_span_is_a_no_op_when_off() -> None:
    span = attempt_span(object())  # type: ignore[arg-type]
    with span:
        pass
    span.end()


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"perdure\[otel\]"):
        instrument()
    assert not is_instrumented()
