"""Watch durable runs from another process: live events, a summary of each run, and an alert.

`python examples/monitor.py` (offline, embedded SQLite, about 5 seconds):

1. starts a worker process (this file with `worker`) that runs three agent executions at once:
   `report-north` and `report-south` complete, `report-east` fails in its second tool call;
2. prints their events live from `perdure.watch`, reading the SQLite store as the worker writes it;
3. prints `perdure.execution_summary` of each: status, units, progress, tokens, time;
4. evaluates the rule "one failed execution within 10 minutes" with `perdure.monitor` and prints
   the alert it fired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from pydantic_ai import Agent as PydanticAgent  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402

import perdure  # noqa: E402
from perdure import Alert, AlertRule, DurableExecution, PerdureDurability  # noqa: E402
from perdure.storage import SQLiteDurableStorage  # noqa: E402

REGIONS = ["north", "east", "south"]
BROKEN_REGION = "east"
STEPS = ["fetch_sales", "summarize"]


def build_agent(region: str) -> PydanticAgent[None, str]:
    """An agent that calls `fetch_sales` then `summarize` for its region, then answers."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart))
        if done < len(STEPS):
            return ModelResponse(parts=[ToolCallPart(STEPS[done], {"region": region})])
        return ModelResponse(parts=[TextPart(f"report for {region} ready")])

    async def fetch_sales(region: str) -> dict[str, int]:
        """Fetch the region's sales."""
        await asyncio.sleep(0.3)
        return {"units": len(region) * 100}

    async def summarize(region: str) -> str:
        """Summarize the region's sales."""
        await asyncio.sleep(0.3)
        if region == BROKEN_REGION:
            raise ConnectionError(f"the {region} warehouse API is down")
        return f"{region}: all good"

    return PydanticAgent(
        FunctionModel(respond),
        name="sales-report",
        tools=[fetch_sales, summarize],
        capabilities=[PerdureDurability()],
    )


async def worker(db: str) -> None:
    """The worker process: run the three executions concurrently, keeping their records."""
    storage = SQLiteDurableStorage(db)

    async def run(region: str) -> None:
        durable = DurableExecution(storage, execution_id=f"report-{region}", auto_cleanup=False)
        with contextlib.suppress(ConnectionError):  # recorded as failed; the monitor reports it
            await durable.run_agent_async(build_agent(region), f"Sales report for {region}", expected_steps=5)

    await asyncio.gather(*(run(region) for region in REGIONS))
    await storage.close_async()


async def main() -> None:
    db = str(Path(tempfile.mkdtemp(prefix="perdure-monitor-")) / "runs.db")
    storage = SQLiteDurableStorage(db)

    print(f"== live events from perdure.watch (store: {db})")
    ended: set[str] = set()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    async with perdure.watch(storage=storage) as events:
        child = subprocess.Popen([sys.executable, __file__, "worker", db], env=env)
        async for event in events:
            where = event.step_name or ""
            extra = f" {event.error_type}: {event.error_message}" if event.error_type else ""
            print(f"  {event.execution_id:<13} {event.kind:<20} {where}{extra}")
            if event.kind in ("execution_completed", "execution_failed"):
                ended.add(event.execution_id)
                if len(ended) == len(REGIONS):
                    break
    await asyncio.to_thread(child.wait)

    print("\n== execution_summary")
    for region in REGIONS:
        s = await perdure.execution_summary_async(f"report-{region}", storage)
        print(
            f"  {s.execution_id:<13} {s.status.value:<9} {s.completed_units}/{s.total_units} units "
            f"({s.progress:.0f}%), {s.model_requests} requests, {s.total_tokens} tokens, "
            f"{s.time_spent:.1f}s in units"
        )

    print("\n== alerts")
    fired: list[Alert] = []
    rule = AlertRule(status="failed", threshold=1, window=timedelta(minutes=10), notify=fired.append)
    await perdure.monitor(storage, [rule], iterations=1)
    for alert in fired:
        ids = ", ".join(alert.execution_ids)
        print(f"  ALERT {alert.rule.name}: {alert.count} execution(s) {rule.status.value}: {ids}")
    await storage.close_async()
    if len(fired) != 1:
        raise SystemExit("expected exactly one alert")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="  (log) %(message)s")
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker(sys.argv[2]))
    else:
        asyncio.run(main())
