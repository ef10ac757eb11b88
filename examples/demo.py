"""`make demo`: a durable agent run that is killed, fails, and resumes in new processes.

1. A child process starts a four-tool agent run on embedded SQLite and is SIGKILLed while its
   fourth model request is in flight.
2. The saved checkpoint is shown: last step, status, journal.
3. A second process resumes it; the journal replays the finished steps, then a tool fails with a
   downstream outage: the checkpoint records the failed step and its error.
4. A third process resumes again and completes. The demo prints what each process replayed from
   the journal and what it executed, against an uninterrupted run.
Offline: the model is perdure's scripted stand-in unless PERDURE_MODEL names a real one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from perdure.durable import DurableExecution, SQLiteDurableStorage  # noqa: E402

STATE = HERE.parent / "demo_state"
DB = STATE / "executions.db"
EXECUTION_ID = "demo-" + os.urandom(4).hex()


def run_child(mode: str, crash: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DEMO_CRASH": crash,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "src")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import demo_agent; demo_agent.main({mode!r}, {str(DB)!r}, {EXECUTION_ID!r})",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if not line.startswith("RESULT "):
            print(line)
    return proc


def show_checkpoint(storage: SQLiteDurableStorage) -> dict[str, Any]:
    info = DurableExecution.get_execution_info(EXECUTION_ID, storage)
    assert info is not None, "no checkpoint was saved"
    print(f"    status     : {info['status']}")
    print(f"    step       : {info['step_index']} ({info['step_name']})")
    print(f"    error      : {info['error'] or '-'}")
    steps = storage.load_steps(EXECUTION_ID)
    print(f"    journal    : {len(steps)} steps: " + ", ".join(s.name for s in steps))
    return info


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def main() -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    storage = SQLiteDurableStorage(db_path=str(DB), table_name="durable_executions")
    print(f"perdure demo: execution {EXECUTION_ID} on SQLite {DB.relative_to(HERE.parent)}")

    banner("1. start the run; the process is killed (SIGKILL) during model request 4")
    first = run_child("start", crash="kill-during-model-request:4")
    print(f"    child exit code: {first.returncode} (-9 = killed by SIGKILL)")
    if first.returncode != -9:
        print(first.stderr)
        return 1

    banner("2. the checkpoint the killed process left behind")
    show_checkpoint(storage)

    banner("3. resume in a new process; store_results hits a downstream outage")
    second = run_child("resume", crash="fail-tool:store_results")
    print(f"    child exit code: {second.returncode}; error: {second.stderr.strip().splitlines()[-1]}")
    info = show_checkpoint(storage)
    replay2 = info["replay"]

    banner("4. resume again in a new process; it completes")
    third = run_child("resume")
    if third.returncode != 0:
        print(third.stderr)
        return 1
    output = json.loads(next(line for line in third.stdout.splitlines() if line.startswith("RESULT "))[7:])
    info = show_checkpoint(storage)
    replay3 = info["replay"]
    print(f"    output     : {output}")

    banner("what the journal saved")
    rows = [
        ("process 2 (resume after kill)", replay2),
        ("process 3 (resume after failure)", replay3),
    ]
    print(f"    {'':34} {'model requests':>22} {'tool calls':>20} {'tokens saved':>13}")
    print(f"    {'':34} {'replayed / executed':>22} {'replayed / executed':>20}")
    for label, r in rows:
        models = f"{r['replayed_model_requests']} / {r['executed_model_requests']}"
        tools = f"{r['replayed_tool_calls']} / {r['executed_tool_calls']}"
        print(f"    {label:34} {models:>22} {tools:>20} {r['tokens_saved']:>13}")
    usage = info["usage"]
    outputs = first.stdout + second.stdout + third.stdout
    sent = len(re.findall(r"model request \d+ sent", outputs))  # includes the one lost at the kill
    tool_runs = outputs.count(" runs")
    print(
        f"\n    Journaled in total: {usage['requests']} model requests and {usage['tool_calls']} tool calls, "
        f"what one uninterrupted run needs."
    )
    print(
        f"    Sent across the three processes: {sent} model requests and {tool_runs} successful tool runs. "
        f"The {sent - usage['requests']} extra request(s) were in flight when the process was killed; "
        f"no journaled request was sent again and no journaled tool ran again."
    )
    stats = storage.get_stats()
    print(f"\n    storage stats: {stats}")
    query = "select execution_id, status from durable_executions"
    print(f"    inspect it: sqlite3 {DB.relative_to(HERE.parent)} '{query}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
