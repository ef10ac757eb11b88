"""Durable workflows: many agents and plain steps in one execution, journaled by position.

```python
from perdure import DurableExecution, step, workflow, sleep

@step
async def save(report: str) -> str: ...

@workflow
async def pipeline(topic: str) -> str:
    plan = await planner.run(f"Plan: {topic}")      # an agent with PerdureDurability
    await save(plan.output)
    await sleep(3600)                               # durable: survives restarts
    return (await reviewer.run(plan.output)).output

report = await DurableExecution(storage).run_workflow_async(pipeline, "solar")
```
"""

from __future__ import annotations

from ._define import Step, Workflow, step, workflow
from ._graph import run_graph
from ._primitives import now, random, save_state, sleep, sleep_until, state
from ._stateful import StatefulWorkflow

__all__ = [
    "StatefulWorkflow",
    "Step",
    "Workflow",
    "now",
    "random",
    "run_graph",
    "save_state",
    "sleep",
    "sleep_until",
    "state",
    "step",
    "workflow",
]
