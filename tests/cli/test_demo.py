"""`perdure demo`: the crash-and-resume demo of `make demo`, run from outside the repository.

The command runs as a real process (`python -m perdure.cli demo`) in a directory that is not the
repository, with only `src` on `PYTHONPATH`, the way an installed wheel runs it: its children are
`python -m perdure._demo.child`, so nothing may depend on the current directory or on `examples/`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perdure.cli import EXIT_USAGE, app
from perdure.durable import DurableExecution, SQLiteDurableStorage
from support.paths import SRC

pytestmark = pytest.mark.crash


def run_demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Offline whatever the developer's shell holds: no real model, no configured storage.
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("PERDURE_") and not k.endswith("_API_KEY")
    }
    proc = subprocess.run(
        [sys.executable, "-m", "perdure.cli", "demo", *args],
        env={**clean, "PYTHONPATH": str(SRC), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def sections(out: str) -> dict[str, str]:
    """The demo's output by banner: `1.`, `2.`, `3.`, `4.` and `what the journal saved`."""
    parts = re.split(r"^=== (.+?) ===$", out, flags=re.M)
    return {title.split(" ", 1)[0]: body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_demo_kills_fails_and_resumes_without_paying_twice(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = tmp_path / "state"
    out = run_demo("--state-dir", str(state), cwd=elsewhere).stdout

    assert f"state directory: {state.resolve()}" in out
    execution_id = re.search(r"^perdure demo: execution (demo-[0-9a-f]{8}) on SQLite ", out, re.M)
    assert execution_id is not None, out
    parts = sections(out)
    assert set(parts) == {"1.", "2.", "3.", "4.", "what"}

    # 1. the first process runs three tools and is SIGKILLed while model request 4 is in flight
    assert "model request 4 sent" in parts["1."]
    assert "SIGKILL while the model request is in flight" in parts["1."]
    assert "child exit code: -9" in parts["1."]
    assert "journal    : 6 steps:" in parts["2."]
    # 3. the second replays those, sends one new request, and the warehouse fails
    assert "tool store_results raises: warehouse unavailable" in parts["3."]
    assert "status     : failed" in parts["3."]
    assert "error      : ConnectionError: warehouse unavailable (HTTP 503)" in parts["3."]
    # 4. the third retries the failed tool, asks the model once more, and completes
    assert "status     : completed" in parts["4."]
    assert 'store_results -> "load-2-rows"' in parts["4."]

    # Three processes, each tool's side effect exactly once across them.
    pids = {int(pid) for pid in re.findall(r"^    \[(\d+)\] ", out, re.M)}
    assert len(pids) == 3
    for tool in ("fetch_data('orders.csv')", "validate_data", "transform_data", "store_results"):
        assert len(re.findall(rf"\] tool {re.escape(tool)} runs", out)) == 1, tool

    # The figures: replayed / executed per resuming process.
    rows = {
        label: tuple(int(n) for n in numbers)
        for label, *numbers in re.findall(
            r"^    process (\d) \(.+?\)\s+(\d+) / (\d+)\s+(\d+) / (\d+)\s+(\d+)$", parts["what"], re.M
        )
    }
    assert set(rows) == {"2", "3"}, parts["what"]
    # model requests replayed, executed; tool calls replayed, executed; tokens saved
    assert rows["2"][:4] == (3, 1, 3, 0)
    assert rows["3"][:4] == (4, 1, 3, 1)
    assert rows["2"][4] > 0 and rows["3"][4] > rows["2"][4]
    assert "Journaled in total: 5 model requests and 4 tool calls" in out
    assert (
        "Sent across the three processes: 6 model requests and 4 successful tool runs. "
        "The 1 extra request(s) were in flight when the process was killed" in out
    )
    assert "    or: perdure show --storage sqlite:///" in out

    # The state is where it said, kept, and holds the completed execution.
    storage = SQLiteDurableStorage(db_path=str(state / "executions.db"), table_name="durable_executions")
    try:
        info = DurableExecution.get_execution_info(execution_id.group(1), storage)
    finally:
        storage.close()
    assert info is not None and info["status"] == "completed"
    assert info["usage"]["requests"] == 5 and info["usage"]["tool_calls"] == 4
    assert not any(elsewhere.iterdir())  # nothing written to the current directory


def test_demo_default_state_is_a_temporary_directory_removed_at_the_end(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = run_demo(cwd=tmp_path, env={"TMPDIR": str(tmp)}).stdout
    shown = re.search(
        r"^state directory: (.+) \(temporary: removed at the end, --keep keeps it\)$", out, re.M
    )
    assert shown is not None, out
    assert Path(shown.group(1)).parent == tmp.resolve()
    assert "inspect it:" not in out  # nothing left to inspect
    assert f"removed {shown.group(1)} (--keep or --state-dir keeps the state)" in out
    assert list(tmp.iterdir()) == []


def test_demo_state_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(app, ["demo", "--state-dir", str(blocker)])
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith(f"error: cannot use --state-dir {blocker.resolve()}: ")
