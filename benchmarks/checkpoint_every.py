"""What `DurableAgent(checkpoint_every_n_steps=N)` costs per unit on SQLite FULL, N = 1, 5, 20.

The same agent (a `FunctionModel` asking for one trivial tool call per response, 50 calls, 101
units) runs without durability and as a `DurableAgent` with N = 1, 5 and 20, in rotating order,
side by side in one process; each durable run gets a fresh database. Printed: the median run time,
the time added per unit over the plain run, and the ratio to N = 1. With N > 1 a crash can run up to
N - 1 finished units again (tested in tests/durable/test_durable_agent.py). Not a timed test.

    .venv/bin/python benchmarks/checkpoint_every.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from perdure.durable import DurableAgent
from perdure.storage import SQLiteDurableStorage

CALLS = 50
UNITS = 2 * CALLS + 1


def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """One `lookup` call per response, then the answer."""
    done = sum(1 for m in messages if isinstance(m, ModelResponse))
    if done < CALLS:
        return ModelResponse(parts=[ToolCallPart("lookup", {"i": done}, tool_call_id=f"c{done}")])
    return ModelResponse(parts=[TextPart(f"looked up {done}")])


def lookup(i: int) -> dict[str, Any]:
    """A small record."""
    return {"i": i, "name": f"item-{i}"}


async def main_async(reps: int) -> None:
    """Run the rotation and print the table."""
    limits = UsageLimits(request_limit=None)
    plain = Agent(FunctionModel(respond), tools=[lookup])
    timings: dict[str, list[float]] = {"plain": [], "N=1": [], "N=5": [], "N=20": []}
    with tempfile.TemporaryDirectory(prefix="perdure-every-") as tmp:
        counter = 0

        async def durable_run(n: int) -> None:
            nonlocal counter
            counter += 1
            storage = SQLiteDurableStorage(Path(tmp) / f"every-{counter}.db", synchronous="FULL")
            agent = DurableAgent(
                FunctionModel(respond),
                backend=storage,
                name="every",
                tools=[lookup],
                checkpoint_every_n_steps=n,
            )
            await agent.run("look everything up", usage_limits=limits)
            await storage.close_async()

        runners = {
            "plain": lambda: plain.run("look everything up", usage_limits=limits),
            "N=1": lambda: durable_run(1),
            "N=5": lambda: durable_run(5),
            "N=20": lambda: durable_run(20),
        }
        for runner in runners.values():
            await runner()  # warmup
        order = list(runners)
        for rep in range(reps):
            for name in order[rep % 4 :] + order[: rep % 4]:
                start = time.perf_counter()
                await runners[name]()
                timings[name].append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in timings.items()}
    print(f"DurableAgent on SQLite FULL, {CALLS} tool calls ({UNITS} units), median of {reps} runs")
    print(f"{'':8} {'run':>9} {'added per unit':>15} {'vs N=1':>8}")
    for name, value in med.items():
        added = (value - med["plain"]) / UNITS * 1e3
        ratio = "" if name == "plain" else f"{value / med['N=1']:.2f}x"
        print(f"{name:8} {value * 1e3:7.1f}ms {added:13.3f}ms {ratio:>8}")


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 repetitions instead of 15")
    args = parser.parse_args()
    asyncio.run(main_async(5 if args.quick else 15))


if __name__ == "__main__":
    main()
