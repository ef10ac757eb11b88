"""A durable workflow of three agents, a step and a sleep, run in a subprocess that kills itself.

Used by the workflow crash tests (`tests/workflows/test_workflow_crash.py`), started as
`python -c "import sys; from support import workflow_app; sys.exit(workflow_app.main([...]))"`
with `main(["workflow_app", "start"|"resume", STORAGE_URL, EXECUTION_ID])`.

The workflow `crash_pipeline(topic)` runs, in this order:

1. agent `planner`  (tools `gather_sources`, `draft_outline`),
2. agent `executor` (tools `run_analysis`, `compile_results`),
3. the sync step `archive` (a side effect),
4. `sleep(SLEEP_SECONDS)` (env, default 1.5),
5. agent `reviewer` (tools `check_facts`, `grade_report`).

Each agent has a deterministic `FunctionModel`: its first two responses each call one of its tools,
the third answers with text built from the tool results. Every model request, tool body and step
body appends one line `"<PHASE> <event>"` to the LEDGER file (fsync'd before any kill can happen),
the events being `model <agent> <n>` (the agent's n-th request of its run), `tool <name>` and
`step archive`, so the parent test can count exactly what ran in which process.

Crash points are perdure's named fault points, armed with `PERDURE_FAULT` (see `perdure._faults`),
e.g. `inside_model_request:4` (the executor's first request), `after_tool_call@run_analysis`,
`after_step:1` (`archive` is the first step-kind unit; the targeted `after_step@step:archive` cannot
be written in `PERDURE_FAULT` because its ':' splits the fields), `before_sleep_wait`.

`main` prints one JSON line: the workflow's `output`, the execution's `status` and `replay` stats,
`slept` (seconds this process actually waited in the workflow's `sleep`) and `finished_at` (wall
clock, `time.time()`, when the workflow returned).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import DurableExecution, PerdureDurability, sleep, step, workflow
from perdure.storage import storage_from_url

LEDGER = os.environ.get("LEDGER", "")
PHASE = os.environ.get("PHASE", "")
SLEEP_SECONDS = float(os.environ.get("SLEEP_SECONDS", "1.5"))
WORKFLOW_NAME = "crash_pipeline"

AGENT_TOOLS: dict[str, tuple[str, str]] = {
    "planner": ("gather_sources", "draft_outline"),
    "executor": ("run_analysis", "compile_results"),
    "reviewer": ("check_facts", "grade_report"),
}
"""Each agent's two tools, called in this order (one per model response)."""

SLEPT: list[float] = []
"""Seconds this process waited in the workflow's `sleep` (not journaled: plain workflow code)."""


def _ledger(event: str) -> None:
    with open(LEDGER, "a") as fh:
        fh.write(f"{PHASE} {event}\n")
        fh.flush()
        os.fsync(fh.fileno())


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


def _tool_returns(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for message in messages
        for part in getattr(message, "parts", ())
        if isinstance(part, ToolReturnPart)
    ]


def _model(agent: str) -> FunctionModel:
    """A deterministic model: two tool calls (one per response), then a text answer."""
    first, second = AGENT_TOOLS[agent]

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        _ledger(f"model {agent} {done + 1}")
        returns = _tool_returns(messages)
        if done == 0:
            return ModelResponse(
                parts=[ToolCallPart(first, {"subject": agent}, tool_call_id=f"{agent}-call-1")]
            )
        if done == 1:
            return ModelResponse(
                parts=[ToolCallPart(second, {"previous": returns[-1]}, tool_call_id=f"{agent}-call-2")]
            )
        return ModelResponse(parts=[TextPart(f"{agent}: " + " + ".join(returns))])

    return FunctionModel(respond, model_name=f"scripted-{agent}")


# ---- tools: each body appends its event before returning ---------------------------------------


def gather_sources(subject: str) -> str:
    """List the sources for a subject."""
    _ledger("tool gather_sources")
    return f"sources[{subject}:{_digest('gather', subject)}]"


def draft_outline(previous: str) -> str:
    """Draft an outline from the sources."""
    _ledger("tool draft_outline")
    return f"outline[{_digest('outline', previous)}]"


def run_analysis(subject: str) -> str:
    """Run the analysis."""
    _ledger("tool run_analysis")
    return f"analysis[{subject}:{_digest('analysis', subject)}]"


def compile_results(previous: str) -> str:
    """Compile the analysis into results."""
    _ledger("tool compile_results")
    return f"results[{_digest('results', previous)}]"


def check_facts(subject: str) -> str:
    """Check the facts of the report."""
    _ledger("tool check_facts")
    return f"facts[{subject}:{_digest('facts', subject)}]"


def grade_report(previous: str) -> str:
    """Grade the report."""
    _ledger("tool grade_report")
    return f"grade[{_digest('grade', previous)}]"


def _agent(name: str, tools: list[Any]) -> Agent[None, str]:
    return Agent(_model(name), name=name, tools=tools, capabilities=[PerdureDurability()])


planner = _agent("planner", [gather_sources, draft_outline])
executor = _agent("executor", [run_analysis, compile_results])
reviewer = _agent("reviewer", [check_facts, grade_report])


class Receipt(BaseModel):
    """What the `archive` step returns (a model: a replayed step must give a `Receipt` back)."""

    archive_id: str
    size: int


@step
def archive(plan: str, results: str) -> Receipt:
    """The side effect between the agents: archive the plan and the results (sync: runs in a thread)."""
    _ledger("step archive")
    return Receipt(archive_id=f"archive-{_digest(plan, results)}", size=len(plan) + len(results))


class Report(BaseModel):
    """The workflow's output."""

    topic: str
    plan: str
    results: str
    archive_id: str
    size: int
    review: str


@workflow(name=WORKFLOW_NAME)
async def pipeline(topic: str) -> Report:
    """Plan, execute, archive, wait, review."""
    plan = await planner.run(f"Plan the report on {topic}.")
    results = await executor.run(f"Execute this plan: {plan.output}")
    receipt = await archive(plan.output, results.output)
    assert isinstance(receipt, Receipt), receipt
    started = time.monotonic()
    await sleep(SLEEP_SECONDS)
    SLEPT.append(time.monotonic() - started)
    review = await reviewer.run(f"Review archive {receipt.archive_id}: {results.output}")
    return Report(
        topic=topic,
        plan=plan.output,
        results=results.output,
        archive_id=receipt.archive_id,
        size=receipt.size,
        review=review.output,
    )


async def _main(mode: str, url: str, execution_id: str) -> dict[str, Any]:
    storage = storage_from_url(url)
    try:
        durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
        if mode == "start":
            output = await durable.run_workflow_async(pipeline, "solar power")
        elif mode == "resume":  # the workflow is found by its recorded name among the registered ones
            output = await durable.resume_workflow_async()
        else:
            raise SystemExit(f"unknown mode {mode!r} (start|resume)")
        finished_at = time.time()
        info = await DurableExecution.get_execution_info_async(execution_id, storage)
        assert info is not None
        return {
            "output": output.model_dump(mode="json"),
            "status": info["status"],
            "replay": info["replay"],
            "slept": sum(SLEPT),
            "finished_at": finished_at,
        }
    finally:
        await storage.close_async()


def main(argv: list[str]) -> int:
    """`main(["workflow_app", "start"|"resume", URL, EXECUTION_ID])`: run, print the result as JSON."""
    mode, url, execution_id = argv[1], argv[2], argv[3]
    result = asyncio.run(_main(mode, url, execution_id))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
