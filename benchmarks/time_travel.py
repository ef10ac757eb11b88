"""What time travel costs: forking a 1,000-step prefix, rewinding, listing checkpoints.

A fork copies the journal prefix into a new execution, one storage write per entry (the storage
contract has no bulk copy; each write is the same fenced append a run makes), so its cost is the
prefix length times one append. This prints that cost next to the cost of running the same number
of units in the first place, side by side in one run, on SQLite FULL and NORMAL. Not a timed test.

    .venv/bin/python benchmarks/time_travel.py [--steps 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import perdure
from perdure import DurableExecution, step, workflow
from perdure.storage import SQLiteDurableStorage


@step
async def unit(i: int) -> str:
    """A trivial step returning ~100 B."""
    return f"{i:06d}" + "x" * 94


@workflow(name="time-travel-bench")
async def many(n: int) -> int:
    """`n` trivial steps."""
    for i in range(n):
        await unit(i)
    return n


async def measure(synchronous: str, steps: int, reps: int) -> dict[str, float]:
    """Median seconds of: the original run, a fork of its whole prefix, a rewind, a checkpoint listing."""
    figures: dict[str, list[float]] = {"run": [], "fork": [], "rewind": [], "list": []}
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="perdure-tt-") as tmp:
            storage = SQLiteDurableStorage(Path(tmp) / "tt.db", synchronous=synchronous)
            durable = DurableExecution(storage, auto_cleanup=False, execution_id=f"tt-{rep}")
            start = time.perf_counter()
            await durable.run_workflow_async(many, steps)
            figures["run"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await DurableExecution.fork_async(durable.execution_id, storage, at_step=steps - 1)
            figures["fork"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await DurableExecution.rewind_async(durable.execution_id, storage, to_step=steps // 2)
            figures["rewind"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await perdure.durable.checkpoints.list_checkpoints_async(durable.execution_id, storage)
            figures["list"].append(time.perf_counter() - start)
            await storage.close_async()
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    reps = 1 if args.quick else 3
    print(f"time travel on SQLite, {args.steps}-step workflow, median of {reps}")
    print(f"{'sync':8} {'run':>10} {'fork':>10} {'fork/run':>9} {'rewind':>9} {'list':>9}  per step (fork)")
    for synchronous in ("FULL", "NORMAL"):
        f = asyncio.run(measure(synchronous, args.steps, reps))
        print(
            f"{synchronous:8} {f['run'] * 1e3:8.0f}ms {f['fork'] * 1e3:8.0f}ms {f['fork'] / f['run']:8.2f}x "
            f"{f['rewind'] * 1e3:7.1f}ms {f['list'] * 1e3:7.1f}ms  {f['fork'] / args.steps * 1e3:.3f} ms"
        )


if __name__ == "__main__":
    main()
