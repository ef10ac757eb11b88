"""How long resuming an execution takes as its journal grows: is it linear in history?

Run it with ``python benchmarks/resume_time.py`` (sizes 1,000 and 5,000 journaled units) or
``--quick`` (250 and 1,000); ``--profile`` adds a cProfile of the largest resume.

An agent whose ``FunctionModel`` asks for one tool call per response (``N`` responses, so ``2N``
journaled units: model request + tool call) runs durably on SQLite (``synchronous=NORMAL``); its
final model request raises once (the "crash at the end"), so the execution fails with every unit
journaled. The script then times ``DurableExecution.resume_agent_async`` (replay of all ``2N``
units plus the one live final request), and the same agent run plainly (no durability) for the
same ``N``, side by side. The model answers from ``len(messages)`` (O(1) per request), so any
growth comes from the frameworks, not from the benchmark.

Benchmarks are not tests: the exit code is 0 whatever the figures say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.storage.sqlite import SQLiteDurableStorage

GOAL_SECONDS = 3.0
"""Resume of a 5,000-unit execution, per the issue."""


def make_agent(tool_calls: int, durable: bool, crash: list[bool]) -> Agent[None, str]:
    """`tool_calls` responses with one `lookup` call each, then text; the text raises while `crash[0]`."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = len(messages) // 2  # request, response, request, ...: responses so far
        if done < tool_calls:
            return ModelResponse(parts=[ToolCallPart("lookup", {"i": done}, tool_call_id=f"call-{done}")])
        if crash[0]:
            raise RuntimeError("simulated crash before the final answer")
        return ModelResponse(parts=[TextPart(f"looked up {done} items")])

    def lookup(i: int) -> dict[str, Any]:
        """Return a small record."""
        return {"i": i, "name": f"item-{i}", "ok": True}

    caps: list[Any] = [PerdureDurability()] if durable else []
    return Agent(FunctionModel(respond), name="resume-bench", tools=[lookup], capabilities=caps)


async def measure(tool_calls: int, directory: Path, profile: bool) -> tuple[float, float, int, str]:
    """(resume seconds, plain-run seconds, journaled units, profile text)."""
    limits = UsageLimits(request_limit=None)
    crash = [True]
    agent = make_agent(tool_calls, durable=True, crash=crash)
    storage = SQLiteDurableStorage(directory / f"resume-{tool_calls}.db", synchronous="NORMAL")
    execution = DurableExecution(storage, auto_cleanup=False)
    with contextlib.suppress(RuntimeError):  # the simulated crash at the final request
        await execution.run_agent_async(agent, "look everything up", usage_limits=limits)
    head = await execution.load_head_async()
    units = head.next_seq
    crash[0] = False
    gc.collect()
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = await DurableExecution(
        storage, execution_id=execution.execution_id, auto_cleanup=False
    ).resume_agent_async(agent, usage_limits=limits)
    if profiler:
        profiler.disable()
    resume = time.perf_counter() - start
    if result.output != f"looked up {tool_calls} items" or result.replay.replayed_units != units:
        raise RuntimeError(
            f"resume answered {result.output!r} after replaying {result.replay.replayed_units}"
        )
    await storage.close_async()
    plain = make_agent(tool_calls, durable=False, crash=[False])
    gc.collect()
    start = time.perf_counter()
    await plain.run("look everything up", usage_limits=limits)
    plain_seconds = time.perf_counter() - start
    text = ""
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats(30)
        text = out.getvalue()
    return resume, plain_seconds, units, text


async def main_async(sizes: list[int], profile: bool) -> str:
    lines = ["", "resume time vs journaled history (SQLite NORMAL; one tool call per model response)", ""]
    lines.append(
        f"{'tool calls':>10}  {'units':>6}  {'resume s':>9}  {'ms/unit':>8}  "
        f"{'plain run s':>11}  {'ms/unit':>8}"
    )
    rows = []
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="perdure-resume-") as tmp:
        for n in sizes:
            print(f"measuring {n} tool calls ...", file=sys.stderr, flush=True)
            resume, plain, units, text = await measure(n, Path(tmp), profile and n == sizes[-1])
            profile_text = text or profile_text
            rows.append((n, units, resume, plain))
            lines.append(
                f"{n:>10}  {units:>6}  {resume:>9.2f}  {resume / units * 1e3:>8.3f}  {plain:>11.2f}  "
                f"{plain / units * 1e3:>8.3f}"
            )
    (_, u0, r0, p0), (_, u1, r1, p1) = rows[0], rows[-1]
    growth = (r1 / u1) / (r0 / u0)
    plain_growth = (p1 / u1) / (p0 / u0)
    lines += [
        "",
        f"per-unit resume time, {u1} units over {u0} units: {growth:.2f}x (1.0 = linear; "
        f"{u1 / u0:.1f} = quadratic); plain pydantic-ai run: {plain_growth:.2f}x",
    ]
    if u1 >= 5_000:
        lines.append(
            f"goal: resume of the largest execution <= {GOAL_SECONDS} s: "
            f"{'PASS' if r1 <= GOAL_SECONDS else 'MISS'}"
        )
    if profile_text:
        lines += ["", f"cProfile of the resume of {u1} units:", profile_text]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="250 and 1,000 tool calls")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest resume")
    parser.add_argument("--sizes", type=int, nargs="*", help="tool-call counts (default 500 2500)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([125, 500] if args.quick else [500, 2500])
    print(asyncio.run(main_async(sizes, args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
