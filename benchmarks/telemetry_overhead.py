"""What perdure's OpenTelemetry spans cost per durable unit, measured side by side in one process.

Run it with ``python benchmarks/telemetry_overhead.py`` (about a minute) or ``--quick``.

One workload: a pydantic-ai agent of 50 tool calls (a ``FunctionModel`` asks for one tool call per
response, then answers text: 101 durable units per run) with ``PerdureDurability``, run by
``DurableExecution.run_agent_async`` on a fresh ``SQLiteDurableStorage`` in a temporary directory
(``synchronous=NORMAL``, so that fsync jitter does not hide CPU costs), then on
``InMemoryDurableStorage`` (no I/O at all: the relative cost is the largest there).
The variants, interleaved run by run in an order that rotates each round, so drift hits all alike:

* ``off``: telemetry off (no listener: the engine builds no events);
* ``events``: a no-op ``perdure.events.add_listener`` (what building the events costs);
* ``otel``: ``perdure.telemetry.instrument(provider)``, an SDK ``TracerProvider`` whose
  ``SimpleSpanProcessor`` hands every span to an exporter that drops it (span building and
  processing, in line, without any I/O);
* ``pai``: pydantic-ai's own instrumentation on the same provider, perdure's off;
* ``pai+otel``: both.

The table shows each variant's median run time, its ratio to ``off`` (or to ``pai`` for
``pai+otel``) as the median of the ratios paired within each round (and their spread), and the
added time per unit (median of the paired differences). Then the span path alone: the listener fed
prebuilt started/completed events, beside a bare SDK span with as many attributes (the floor):
the cost without the run's noise. Benchmarks are not tests: the exit code is always 0.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.usage import UsageLimits

from perdure import DurableExecution, PerdureDurability
from perdure.durable import DurableExecutionStorage, InMemoryDurableStorage, SQLiteDurableStorage
from perdure.events import add_listener
from perdure.telemetry import instrument

TOOL_CALLS = 50
UNITS = 2 * TOOL_CALLS + 1  # a model request per tool call, one tool call each, a final answer


class DroppingExporter(SpanExporter):
    """Counts the spans it is given and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def make_agent() -> Agent[None, str]:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < TOOL_CALLS:
            return ModelResponse(parts=[ToolCallPart("fetch", {"n": done}, tool_call_id=f"c{done}")])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(respond), name="bench", capabilities=[PerdureDurability()])

    @agent.tool_plain
    def fetch(n: int) -> dict[str, int]:
        return {"n": n, "square": n * n}

    return agent


async def one_run(agent: Agent[None, str], directory: Path, index: int, backend: str) -> float:
    storage: DurableExecutionStorage
    if backend == "memory":
        storage = InMemoryDurableStorage()
    else:
        storage = SQLiteDurableStorage(db_path=str(directory / f"run{index}.db"), synchronous="NORMAL")
    durable = DurableExecution(storage, auto_cleanup=False)
    started = time.perf_counter()
    result = await durable.run_agent_async(agent, "go", usage_limits=UsageLimits(request_limit=None))
    elapsed = time.perf_counter() - started
    assert result.output == "done"
    return elapsed


def variants(provider: TracerProvider) -> dict[str, Callable[[], Callable[[], None]]]:
    """Each variant's setup, returning its teardown."""

    def off() -> Callable[[], None]:
        return lambda: None

    def events() -> Callable[[], None]:
        return add_listener(lambda event: None)

    def otel() -> Callable[[], None]:
        return instrument(provider).uninstrument

    def pai() -> Callable[[], None]:
        Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
        return lambda: Agent.instrument_all(False)

    def both() -> Callable[[], None]:
        undo_pai, undo_otel = pai(), otel()

        def undo() -> None:
            undo_otel()
            undo_pai()

        return undo

    return {"off": off, "events": events, "otel": otel, "pai": pai, "pai+otel": both}


async def measure(backend: str, rounds: int, warmup: int) -> None:
    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setups = variants(provider)
    names = list(setups)
    times: dict[str, list[float]] = {name: [] for name in names}
    agent = make_agent()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        index = 0
        for round_ in range(warmup + rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                teardown = setups[name]()
                try:
                    index += 1
                    elapsed = await one_run(agent, directory, index, backend)
                finally:
                    teardown()
                if round_ >= warmup:
                    times[name].append(elapsed)
    baseline = {"off": "off", "events": "off", "otel": "off", "pai": "off", "pai+otel": "pai"}
    print(f"\n{TOOL_CALLS}-tool agent run, {UNITS} durable units per run, {backend}, {rounds} rounds")
    print(f"{'variant':<10} {'run ms':>8} {'vs':>4} {'ratio':>6} {'spread':>13} {'added us/unit':>14}")
    for name in names:
        base = baseline[name]
        # One paired ratio per round (both measured within it): drift between rounds cancels out.
        ratios = [mine / theirs for mine, theirs in zip(times[name], times[base], strict=True)]
        added = [(mine - theirs) / UNITS * 1e6 for mine, theirs in zip(times[name], times[base], strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(
            f"{name:<10} {statistics.median(times[name]) * 1e3:8.1f} {base:>4} "
            f"{statistics.median(ratios):6.3f} {spread:>13} {statistics.median(added):14.1f}"
        )
    print(f"spans exported (dropped): {exporter.spans}")


def span_path(units: int) -> None:
    """The listener's own cost per unit: a started and a completed event, built once, delivered.

    Beside it, the floor: the same provider making a bare span with as many attributes (9 at the
    start, 4 at the end), no context attached. Both are timed alternately, best of 5 each.
    """
    from perdure.events import UnitCompleted, UnitStarted

    started = UnitStarted(execution_id="x", step_name="tool:fetch", unit_kind="tool_call", unit_key="k")
    completed = UnitCompleted(execution_id="x", step_name="tool:fetch", unit_kind="tool_call", unit_key="k")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(DroppingExporter()))
    tracer = provider.get_tracer("floor")
    at_start = {f"perdure.a{i}": i for i in range(9)}
    at_end = {f"perdure.b{i}": i for i in range(4)}

    def perdure_spans(handle: Any) -> None:
        for _ in range(units):
            handle._on_event(started)
            handle._on_event(completed)

    def bare_spans() -> None:
        for _ in range(units):
            span = tracer.start_span("perdure tool:fetch", attributes=at_start)
            span.set_attributes(at_end)
            span.end()

    def best(run: Callable[[], None]) -> float:
        began = time.perf_counter()
        run()
        return (time.perf_counter() - began) / units * 1e6

    sdk = instrument(provider)
    costs: dict[str, float] = {"perdure, SDK": float("inf"), "bare SDK span": float("inf")}
    for _ in range(5):
        costs["perdure, SDK"] = min(costs["perdure, SDK"], best(lambda: perdure_spans(sdk)))
        costs["bare SDK span"] = min(costs["bare SDK span"], best(bare_spans))
    sdk.uninstrument()
    api_only = instrument(None)  # no SDK provider set: the API's no-op tracer
    costs["perdure, API no-op"] = min(best(lambda: perdure_spans(api_only)) for _ in range(5))
    api_only.uninstrument()
    print(f"\nspan path alone (events prebuilt, best of 5 x {units} units):")
    for label, cost in costs.items():
        print(f"  {label:<20} {cost:7.1f} us/unit")
    print(f"  perdure / bare SDK   {costs['perdure, SDK'] / costs['bare SDK span']:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--storage", choices=["sqlite", "memory", "both"], default="both")
    args: Any = parser.parse_args()
    for backend in ("sqlite", "memory") if args.storage == "both" else (args.storage,):
        asyncio.run(measure(backend, rounds=8 if args.quick else 30, warmup=2))
    span_path(2_000 if args.quick else 20_000)
