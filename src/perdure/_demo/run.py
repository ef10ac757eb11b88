"""The demo's parent process: start, kill, resume and finish one run, and print what it cost.

1. A child process starts a four-tool agent run on embedded SQLite and is SIGKILLed while its
   fourth model request is in flight.
2. The saved checkpoint is shown: last step, status, journal.
3. A second process resumes it; the journal replays the finished steps, then a tool fails with a
   downstream outage: the checkpoint records the failed step and its error.
4. A third process resumes again and completes. The demo prints what each process replayed from
   the journal and what it executed, against an uninterrupted run.

Each child is `python -m perdure._demo.child` with this interpreter and the `perdure` this process
imported, so the demo runs the same from a source checkout, an installed wheel, and any current
directory.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import perdure
from perdure.durable import DurableExecution, SQLiteDurableStorage

from .agent import TABLE

__all__ = ["DB_NAME", "new_execution_id", "run_demo"]

DB_NAME = "executions.db"
"""The SQLite file the demo writes in its state directory."""
CHILD_TIMEOUT = 300.0
"""Seconds one child process may take (the offline demo needs a few)."""


def new_execution_id() -> str:
    """A fresh id for the demo's execution, so a reused state directory never mixes runs."""
    return "demo-" + os.urandom(4).hex()


def _shown(path: Path) -> str:
    """`path` relative to the current directory when it is inside it (as `make demo` prints it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _child_env(crash: str) -> dict[str, str]:
    """The child's environment: the crash it should stage, and the `perdure` this process runs."""
    env = {**os.environ, "DEMO_CRASH": crash}
    root = str(Path(perdure.__file__).resolve().parent.parent)
    installed = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in installed:  # a source checkout (or PYTHONPATH): the child must import it too
        env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH", "")] if p)
    return env


class _Demo:
    def __init__(self, db: Path, execution_id: str, echo: Callable[[str], None]) -> None:
        self.db = db
        self.execution_id = execution_id
        self.echo = echo
        self.storage = SQLiteDurableStorage(db_path=str(db), table_name=TABLE)

    def child(self, mode: str, crash: str = "") -> subprocess.CompletedProcess[str]:
        # -P: a module in the current directory cannot shadow one the child imports.
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "perdure._demo.child", mode, str(self.db), self.execution_id],
            env=_child_env(crash),
            capture_output=True,
            text=True,
            check=False,
            timeout=CHILD_TIMEOUT,
        )
        for line in proc.stdout.splitlines():
            if not line.startswith("RESULT "):
                self.echo(line)
        return proc

    def checkpoint(self) -> dict[str, Any]:
        info = DurableExecution.get_execution_info(self.execution_id, self.storage)
        if info is None:
            raise RuntimeError(f"no checkpoint was saved for {self.execution_id}")
        self.echo(f"    status     : {info['status']}")
        self.echo(f"    step       : {info['step_index']} ({info['step_name']})")
        self.echo(f"    error      : {info['error'] or '-'}")
        steps = self.storage.load_steps(self.execution_id)
        self.echo(f"    journal    : {len(steps)} steps: " + ", ".join(s.name for s in steps))
        return info

    def banner(self, text: str) -> None:
        self.echo(f"\n=== {text} ===")

    def unexpected(self, what: str, proc: subprocess.CompletedProcess[str]) -> int:
        self.echo(f"    {what}; exit code {proc.returncode}")
        if proc.stderr.strip():
            self.echo(proc.stderr.rstrip())
        if os.environ.get("PERDURE_MODEL"):
            self.echo("    (PERDURE_MODEL is set: the staged SIGKILL needs the offline stand-in model)")
        return 1


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "-"


def run_demo(
    state_dir: Path,
    *,
    execution_id: str | None = None,
    inspect_hint: bool = True,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Run the crash-and-resume demo with its SQLite database in `state_dir`; return the exit code.

    Args:
        state_dir: An existing directory; the demo writes `executions.db` there (an existing one is
            reused: the demo adds one execution with a fresh id).
        execution_id: The demo execution's id; a fresh `demo-<hex>` by default.
        inspect_hint: End with the `sqlite3` command that shows the database (off when the caller
            removes the directory afterwards).
        echo: Prints one line; `print` (flushed) by default.

    Returns:
        0 when the three processes behaved as staged, 1 otherwise (after printing why).

    """
    out = echo or (lambda line: print(line, flush=True))
    demo = _Demo(state_dir.resolve() / DB_NAME, execution_id or new_execution_id(), out)
    try:
        return _run(demo, inspect_hint)
    finally:
        demo.storage.close()


def _run(demo: _Demo, inspect_hint: bool) -> int:
    out, db = demo.echo, demo.db
    out(f"perdure demo: execution {demo.execution_id} on SQLite {_shown(db)}")

    demo.banner("1. start the run; the process is killed (SIGKILL) during model request 4")
    first = demo.child("start", crash="kill-during-model-request:4")
    out(f"    child exit code: {first.returncode} (-9 = killed by SIGKILL)")
    if first.returncode != -9:
        return demo.unexpected("the first process was not killed", first)

    demo.banner("2. the checkpoint the killed process left behind")
    demo.checkpoint()

    demo.banner("3. resume in a new process; store_results hits a downstream outage")
    second = demo.child("resume", crash="fail-tool:store_results")
    out(f"    child exit code: {second.returncode}; error: {_last_line(second.stderr)}")
    if second.returncode == 0:
        return demo.unexpected("the second process did not fail", second)
    info = demo.checkpoint()
    replay2 = info["replay"]

    demo.banner("4. resume again in a new process; it completes")
    third = demo.child("resume")
    results = [line[7:] for line in third.stdout.splitlines() if line.startswith("RESULT ")]
    if third.returncode != 0 or not results:
        return demo.unexpected("the third process did not complete", third)
    output = json.loads(results[0])
    info = demo.checkpoint()
    replay3 = info["replay"]
    out(f"    output     : {output}")

    demo.banner("what the journal saved")
    rows = [
        ("process 2 (resume after kill)", replay2),
        ("process 3 (resume after failure)", replay3),
    ]
    out(f"    {'':34} {'model requests':>22} {'tool calls':>20} {'tokens saved':>13}")
    out(f"    {'':34} {'replayed / executed':>22} {'replayed / executed':>20}")
    for label, r in rows:
        models = f"{r['replayed_model_requests']} / {r['executed_model_requests']}"
        tools = f"{r['replayed_tool_calls']} / {r['executed_tool_calls']}"
        out(f"    {label:34} {models:>22} {tools:>20} {r['tokens_saved']:>13}")
    usage = info["usage"]
    outputs = first.stdout + second.stdout + third.stdout
    sent = len(re.findall(r"model request \d+ sent", outputs))  # includes the one lost at the kill
    tool_runs = outputs.count(" runs")
    out(
        f"\n    Journaled in total: {usage['requests']} model requests and {usage['tool_calls']} tool calls, "
        f"what one uninterrupted run needs."
    )
    out(
        f"    Sent across the three processes: {sent} model requests and {tool_runs} successful tool runs. "
        f"The {sent - usage['requests']} extra request(s) were in flight when the process was killed; "
        f"no journaled request was sent again and no journaled tool ran again."
    )
    out(f"\n    storage stats: {demo.storage.get_stats()}")
    if inspect_hint:
        query = f"select execution_id, status from {TABLE}"
        out(f"    inspect it: sqlite3 {_shown(db)} '{query}'")
    return 0
