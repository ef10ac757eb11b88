"""A multi-tool durable agent run in a subprocess that kills itself at a chosen point.

Used by the crash tests: `python tests/support/crash_app.py start|resume STORAGE_URL EXECUTION_ID LEDGER`.
Every model request and every tool side effect appends one line to the LEDGER file (fsync'd before
the kill can happen), so the parent test can count exactly what ran in which process.

Crash points are perdure's named fault points, armed with `PERDURE_FAULT` (see `perdure._faults`):
- `inside_model_request:N`               model request N of this process answered, not journaled;
- `after_tool_side_effect@TOOL`          after TOOL's side effect (the tool passes this point),
                                         before its result is journaled;
- `before_tool_call@TOOL`                when TOOL starts, before its side effect;
- `before_tool_call@TOOL:raise:ConnectionError`  TOOL fails (no side effect): the process exits 1.
`CALLS_PER_RESPONSE` puts several tool calls into one model response; `SLOW_TOOLS` slows each tool.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from perdure import Agent, DurableExecution, Task, _faults, tool
from perdure.models import ScriptedModel
from perdure.storage import storage_from_url

PROMPT = "Fetch the data from 'database.csv', validate it, transform it and store the results."
LEDGER = os.environ.get("LEDGER", "")
PHASE = os.environ.get("PHASE", "")


def _ledger(event: str) -> None:
    with open(LEDGER, "a") as fh:
        fh.write(f"{PHASE} {event}\n")
        fh.flush()
        os.fsync(fh.fileno())


def _tool_effect(name: str) -> None:
    time.sleep(float(os.environ.get("SLOW_TOOLS", "0")))
    _ledger(f"tool {name}")
    _faults.point("after_tool_side_effect", name)


@tool
def fetch_data(source: str) -> dict[str, Any]:
    """Fetch records from a data source."""
    _tool_effect("fetch_data")
    return {"source": source, "rows": [1, 2, 3]}


@tool
def validate_data(data: dict[str, Any]) -> bool:
    """Check that fetched data has rows."""
    _tool_effect("validate_data")
    return bool(data.get("rows", True))


@tool
def transform_data(data: dict[str, Any]) -> dict[str, Any]:
    """Double every row."""
    _tool_effect("transform_data")
    rows = data.get("rows") or [1, 2, 3]
    return {"rows": [r * 2 for r in rows]}


@tool
def store_results(data: dict[str, Any]) -> str:
    """Store transformed rows and return the storage id."""
    _tool_effect("store_results")
    return f"stored-{len(data.get('rows') or [])}"


TOOLS = [fetch_data, validate_data, transform_data, store_results]


def _model() -> ScriptedModel:
    def on_request(n: int) -> None:
        _ledger(f"model {n}")

    return ScriptedModel(
        calls_per_response=int(os.environ.get("CALLS_PER_RESPONSE", "1")), on_request=on_request
    )


def main(argv: list[str]) -> int:
    mode, url, execution_id = argv[1], argv[2], argv[3]
    storage = storage_from_url(url)
    agent = Agent(_model(), name="CrashAgent")
    if mode == "start":
        durable = DurableExecution(storage, auto_cleanup=False, execution_id=execution_id)
        output = agent.do(Task(PROMPT, tools=TOOLS, durable_execution=durable))
    else:
        output = agent.continue_durable(execution_id, storage)
    info = DurableExecution.get_execution_info(execution_id, storage)
    assert info is not None
    print(json.dumps({"output": output, "replay": info["replay"], "status": info["status"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
