"""The demo's agent: a four-tool data pipeline, made durable with perdure on embedded SQLite.

Run in child processes by `perdure._demo.run`, through `python -m perdure._demo.child start|resume
DB_PATH EXECUTION_ID`. `DEMO_CRASH` makes the child fail on purpose: `kill-during-model-request:N`
sends SIGKILL to itself while model request N is in flight (as `kill -9`, the OOM killer or a power
cut would), and `fail-tool:NAME` makes that tool raise, like a downstream outage.

The model is perdure's offline stand-in (`perdure:scripted`) unless `PERDURE_MODEL` names a real
one, e.g. `PERDURE_MODEL=openai/gpt-4o-mini` with `OPENAI_API_KEY` set. (A real model gets no
`on_request` hook, so the SIGKILL of the first process needs the stand-in.)
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from perdure import Agent, Task, tool
from perdure.durable import DurableExecution, SQLiteDurableStorage
from perdure.models import ScriptedModel

__all__ = ["PROMPT", "TABLE", "main"]

TABLE = "durable_executions"
"""The SQLite table of the demo's executions."""
PROMPT = (
    "Fetch the data from 'orders.csv', validate it, transform it to the reporting format "
    "and store the results."
)


def _crash() -> str:
    return os.environ.get("DEMO_CRASH", "")


def _log(event: str) -> None:
    print(f"    [{os.getpid()}] {event}", flush=True)


@tool
def fetch_data(source: str) -> dict[str, Any]:
    """Fetch rows from a data source."""
    _log(f"tool fetch_data({source!r}) runs")
    return {"source": source, "rows": [{"id": 1, "amount": 120}, {"id": 2, "amount": 80}]}


@tool
def validate_data(data: dict[str, Any]) -> bool:
    """Check that every row has an amount."""
    _log("tool validate_data runs")
    return all("amount" in row for row in data.get("rows", []))


@tool
def transform_data(data: dict[str, Any]) -> dict[str, Any]:
    """Convert amounts to cents."""
    _log("tool transform_data runs")
    return {"rows": [{"id": r["id"], "cents": r["amount"] * 100} for r in data.get("rows", [])]}


@tool
def store_results(data: dict[str, Any]) -> str:
    """Store rows in the warehouse; returns the load id."""
    if _crash() == "fail-tool:store_results":
        _log("tool store_results raises: warehouse unavailable")
        raise ConnectionError("warehouse unavailable (HTTP 503)")
    _log("tool store_results runs (writes to the warehouse)")
    return f"load-{len(data.get('rows', []))}-rows"


def _model() -> Any:
    configured = os.environ.get("PERDURE_MODEL")
    if configured:
        return configured

    def on_request(n: int) -> None:
        _log(f"model request {n} sent")
        if f"kill-during-model-request:{n}" == _crash():
            _log("SIGKILL while the model request is in flight")
            os.kill(os.getpid(), signal.SIGKILL)

    return ScriptedModel(on_request=on_request)


def main(mode: str, db_path: str, execution_id: str) -> None:
    """Start (`mode="start"`) or resume the demo's execution, then print `RESULT <output JSON>`."""
    storage = SQLiteDurableStorage(db_path=db_path, table_name=TABLE)
    agent = Agent(_model(), name="WorkflowAgent")
    if mode == "start":
        durable = DurableExecution(storage=storage, auto_cleanup=False, execution_id=execution_id)
        task = Task(
            PROMPT,
            tools=[fetch_data, validate_data, transform_data, store_results],
            durable_execution=durable,
        )
        output = agent.do(task)
    else:
        # A new process: tools are found again by their import paths recorded with the task.
        output = agent.continue_durable(execution_id, storage)
    print("RESULT " + json.dumps(output), flush=True)
