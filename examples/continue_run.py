"""The seed's `continue_run_async` flow, offline, end to end.

    .venv/bin/python examples/continue_run.py

1. A run fails mid-way (a simulated network outage in a tool); the same agent recovers it with the
   run id from `agent._agent_run_output`: the journaled model request and tool call are replayed,
   not paid for or run again.
2. Another run fails; a NEW process with a NEW agent resumes it by run id from the SQLite file.
3. A tool needs a human approval: the run pauses, then continues with the decision.

The model is perdure's offline `perdure:scripted` stand-in (deterministic, no API key). Replace it
with e.g. `"openai/gpt-4o-mini"` for the real thing; nothing else changes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from perdure import Agent, Task, tool
from perdure.agent import AgentRunOutput
from perdure.db import SqliteDatabase

OUTAGE_ENV = "DEMO_OUTAGE"
"""While set, `compute_total` fails like a flaky network call (the child process runs without it)."""


@tool
def fetch_data(source: str) -> dict[str, Any]:
    """Fetch the rows of a data source."""
    print(f"    [tool] fetch_data({source!r})")
    return {"source": source, "rows": [3, 4, 7]}


@tool
def compute_total(data: dict[str, Any]) -> int:
    """Add up the fetched rows."""
    if os.environ.get(OUTAGE_ENV):
        print("    [tool] compute_total: connection reset by peer")
        raise ConnectionError("compute service: connection reset by peer")
    print("    [tool] compute_total(...)")
    return sum(data.get("rows") or [])


@tool(requires_approval=True)
def send_report(total: int) -> str:
    """Email the total to the finance team (a human approves every email)."""
    print(f"    [tool] send_report({total})")
    return f"report with total {total} sent"


PROMPT = "Fetch the data from 'sales.csv', then compute the total."
TOOLS = [fetch_data, compute_total]


def show(result: AgentRunOutput) -> None:
    replay = result.replay
    print(f"    run_id={result.run_id} status={result.status.value} output={result.output!r}")
    print(
        f"    model requests paid in total: {result.usage.requests}; this attempt replayed "
        f"{replay.replayed_model_requests} request(s) and {replay.replayed_tool_calls} tool call(s) "
        f"from the journal ({replay.tokens_saved} tokens saved)"
    )


async def recover_same_agent(db_file: str) -> None:
    print("\n1. error, then continue_run_async(run_id=...) with the same agent")
    db = SqliteDatabase(db_file=db_file, session_id="session_1", user_id="user_1")
    agent = Agent("perdure:scripted", db=db, retry=1)
    task = Task(PROMPT, tools=TOOLS)
    os.environ[OUTAGE_ENV] = "1"
    try:
        result = await agent.do_async(task, return_output=True)
    except Exception as e:
        print(f"    Error caught: {e}")
        os.environ.pop(OUTAGE_ENV)  # the network is back
        agent_output = agent._agent_run_output
        assert agent_output is not None and agent_output.run_id is not None
        print(f"    Recovering with run_id: {agent_output.run_id}")
        result = await agent.continue_run_async(run_id=agent_output.run_id, return_output=True)
    show(result)


async def recover_in_new_process(db_file: str) -> None:
    print("\n2. error, then a NEW agent in a NEW process continues the run by id")
    db = SqliteDatabase(db_file=db_file, session_id="session_1", user_id="user_1")
    agent = Agent("perdure:scripted", db=db, retry=1)
    os.environ[OUTAGE_ENV] = "1"
    try:
        await agent.do_async(Task(PROMPT, tools=TOOLS), return_output=True)
    except Exception as e:
        print(f"    Error caught: {e}")
    finally:
        os.environ.pop(OUTAGE_ENV, None)
    run_id = agent._agent_run_output.run_id if agent._agent_run_output else None
    assert run_id is not None
    print(f"    starting: python {Path(__file__).name} --continue {run_id}")
    subprocess.run([sys.executable, __file__, "--continue", db_file, run_id], check=True)


def continue_in_this_process(db_file: str, run_id: str) -> None:
    """What the new process does: a new database handle, a new agent, the run id."""
    print(f"    [new process {os.getpid()}] continuing {run_id}")
    new_db = SqliteDatabase(db_file=db_file, session_id="session_1", user_id="user_1")
    new_agent = Agent("perdure:scripted", db=new_db, retry=1)
    result = new_agent.continue_run(run_id=run_id, return_output=True)
    show(result)


async def approve(db_file: str) -> None:
    print("\n3. a tool that needs approval pauses the run; continue_run_async(approvals=...)")
    db = SqliteDatabase(db_file=db_file, session_id="session_1", user_id="user_1")
    agent = Agent("perdure:scripted", db=db)
    task = Task(f"{PROMPT} Then send_report with the total.", tools=[*TOOLS, send_report])
    result = await agent.do_async(task, return_output=True)
    assert result.paused and result.pending is not None
    for call in result.pending.calls:
        print(f"    waiting for approval: {call.tool_name}({call.args}) [call {call.tool_call_id}]")
    decisions = {call.tool_call_id: True for call in result.pending.calls}
    result = await agent.continue_run_async(task=task, approvals=decisions, return_output=True)
    show(result)
    print(f"\n    runs of session_1: {[r['status'] for r in db.list_runs()]}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db_file = str(Path(tmp) / "durable.db")
        await recover_same_agent(db_file)
        await recover_in_new_process(db_file)
        await approve(db_file)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--continue":
        continue_in_this_process(sys.argv[2], sys.argv[3])
    else:
        asyncio.run(main())
