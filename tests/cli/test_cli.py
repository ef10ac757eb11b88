"""The `perdure` CLI: untrusted storage text, one-line errors and exit codes, `--app`, worker options.

Most tests run the typer app in-process (`CliRunner`) against a fake storage that returns crafted
records, so they do not depend on a backend; the ones where the real process's exit code and stdio
matter run `python -m perdure.cli` (redis/postgres URLs on a closed port need no server).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic_ai import Agent as PydanticAgent
from typer.testing import CliRunner

import perdure.cli as cli
from perdure import Agent
from perdure.cli import app, build_resolver, safe_text, summarize_report
from perdure.durable.recovery import RecoveryReport
from perdure.errors import ExecutionNotFoundError, StorageNotFoundError, StorageUnavailableError
from perdure.models import ScriptedModel
from perdure.records import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    PendingCall,
    PendingDecision,
    StepKind,
    StepRecord,
    TaskSnapshot,
    ToolRef,
)
from perdure.storage import ExecutionPage, ExecutionQuery
from perdure.storage._query import page_of
from support import worker_app
from support.paths import SRC, TESTS

EVIL_ERROR = "[/bold] \x1b]52;c;ZXZpbA==\x07 \x1b[31mred"
EVIL_TASK = "Summarize [link=file:///etc/passwd]x[/link] please \x1b[2J\r\x9d0;pwned\x9c café"
FORBIDDEN = [b"\x1b", b"\x07", b"\r", b"\xc2\x9d", b"\xc2\x9c", b"\xe2\x80\xae"]  # ESC BEL CR OSC ST RLO

runner = CliRunner()

# Targets for `--app test_cli:...` (pytest puts tests/cli on sys.path; tests/ is there for support.*).
AN_INT = 42
A_STRING = "support.worker_app:agent"
NOT_DURABLE = PydanticAgent(ScriptedModel(), name="plain")
SAME_NAME = Agent(ScriptedModel(), name="worker-app")
UNNAMED = Agent(ScriptedModel())
AGENT_LIST = [worker_app.agent, worker_app.pydantic_agent]
AGENT_TUPLE = (worker_app.agent,)
BAD_DICT = {"x": 1}


# ---- a fake storage returning crafted records -------------------------------------------------------


class FakeStorage:
    """Just what the CLI reads; `fail` makes every read raise it."""

    backend_name = "fake"

    def not_found_error(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(execution_id, backend=self.backend_name, where="(fake)")

    def __init__(
        self,
        heads: list[ExecutionRecord] | None = None,
        steps: dict[str, list[StepRecord]] | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.heads = heads or []
        self.steps = steps or {}
        self.fail = fail
        self.closed = False

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def list_executions_async(
        self, status: Any = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        self._check()
        heads = [h for h in self.heads if status is None or h.status == status]
        return heads if limit is None else heads[:limit]

    async def query_executions_async(self, query: ExecutionQuery) -> ExecutionPage:
        self._check()
        return page_of(self.heads, query)

    async def count_executions_async(self, query: ExecutionQuery) -> int:
        self._check()
        return sum(1 for head in self.heads if query.matches(head))

    async def get_stats_async(self) -> dict[str, Any]:
        self._check()
        by_status = {s.value: 0 for s in ExecutionStatus}
        for head in self.heads:
            by_status[head.status.value] += 1
        return {"backend": "fake\x1b[31m", "total_executions": len(self.heads), "by_status": by_status}

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        self._check()
        return next((h for h in self.heads if h.execution_id == execution_id), None)

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        self._check()
        return self.steps.get(execution_id, [])

    async def close_async(self) -> None:
        self.closed = True


EVIL_ID = "evil-\x1b[31m-[bold]x\x9d"


def evil_head(execution_id: str = EVIL_ID) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=execution_id,
        status=ExecutionStatus.PAUSED,
        step_index=0,
        step_name="tool:\x1b[1mcharge[/]",
        error=ErrorInfo(type="ValueError\x07", message=EVIL_ERROR),
        task=TaskSnapshot(
            description=EVIL_TASK,
            agent_name="agent-\x1b]0;title\x07",
            tools=[ToolRef(name="tool-\x1b[5m[blink]")],
        ),
        pending=PendingDecision(
            kind="approval", calls=[PendingCall(tool_call_id="c\x1b[8m", tool_name="pay\u202e[/i]")]
        ),
        lease_owner="owner-\x1b[7m\r[i]",
        next_seq=1,
    )


def evil_step(execution_id: str = EVIL_ID) -> StepRecord:
    return StepRecord(
        execution_id=execution_id, seq=0, kind=StepKind.TOOL_CALL, name="tool:\x1b[1m[red]x", key="tool:\x07"
    )


@pytest.fixture
def use_storage(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`use_storage(store)`: every `--storage` URL opens `store`."""

    def install(store: Any) -> Any:
        monkeypatch.setattr(cli, "storage_from_url", lambda url, **_: store)
        return store

    return install


def assert_clean(data: bytes) -> None:
    for seq in FORBIDDEN:
        assert seq not in data, f"raw {seq!r} reached the output: {data!r}"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def perdure_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "perdure.cli", *args],
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
        cwd=TESTS,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


# ---- 1. everything from storage is escaped ---------------------------------------------------------


def test_safe_text_escapes_control_characters_only() -> None:
    assert safe_text(EVIL_ERROR) == "[/bold] \\x1b]52;c;ZXZpbA==\\x07 \\x1b[31mred"
    assert safe_text("a\nb\tc\rd\x00\x7f\x9d\u202e\ud800") == "a\\nb\\tc\\rd\\x00\\x7f\\x9d\\u202e\\ud800"
    assert safe_text("café ünïcode 日本 [link=x]") == "café ünïcode 日本 [link=x]"
    assert safe_text(12) == "12"


def test_list_show_stats_print_storage_text_literally(use_storage: Any) -> None:
    plain = evil_head("20261130123456-a1b2c3d4")
    use_storage(FakeStorage([evil_head(), plain], {EVIL_ID: [evil_step()]}))

    listed = runner.invoke(app, ["list", "-s", "x://"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output  # before: MarkupError on "[/bold]"
    assert_clean(listed.stdout_bytes)
    assert "[/bold]" in listed.stdout and "\\x1b]52;c;ZXZpbA==\\x07" in listed.stdout
    assert "evil-\\x1b[31m-[bold]x\\x9d" in listed.stdout
    assert "owner-\\x1b[7m\\r[i]" in listed.stdout

    shown = runner.invoke(app, ["show", "-s", "x://", EVIL_ID], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert_clean(shown.stdout_bytes)
    out = shown.stdout
    for literal in (
        "[link=file:///etc/passwd]x[/link]",
        "[/bold]",
        "agent-\\x1b]0;title\\x07",
        "tool-\\x1b[5m[blink]",
        "pay\\u202e[/i]",
        "tool:\\x1b[1m[red]x",
        "café",
    ):
        assert literal in out, literal
    steps = runner.invoke(app, ["steps", "-s", "x://", EVIL_ID], env={"COLUMNS": "300"})
    assert steps.exit_code == 0, steps.output
    assert_clean(steps.stdout_bytes)
    assert "tool:\\x07" in steps.stdout  # the entry's key (`show` leaves keys to `steps`)

    stats = runner.invoke(app, ["stats", "-s", "x://"])
    assert stats.exit_code == 0, stats.output
    assert_clean(stats.stdout_bytes)
    assert "fake\\x1b[31m" in stats.stdout


def test_json_output_is_exact_and_inert(use_storage: Any) -> None:
    use_storage(FakeStorage([evil_head()], {EVIL_ID: [evil_step()]}))
    listed = runner.invoke(app, ["list", "-s", "x://", "--json"])
    assert listed.exit_code == 0, listed.output
    assert_clean(listed.stdout_bytes)
    rows = json.loads(listed.stdout)["executions"]
    assert rows[0]["execution_id"] == EVIL_ID and EVIL_ERROR in rows[0]["error"]
    shown = runner.invoke(app, ["show", "-s", "x://", EVIL_ID, "--json"])
    assert shown.exit_code == 0, shown.output
    assert_clean(shown.stdout_bytes)
    data = json.loads(shown.stdout)
    assert data["head"]["task"]["description"] == EVIL_TASK  # exact, control characters included
    assert data["head"]["pending"]["calls"][0]["tool_name"] == "pay\u202e[/i]"
    assert "café" in shown.stdout  # non-ASCII stays readable
    assert "\\u009d" in shown.stdout and "\\u202e" in shown.stdout


def test_sqlite_record_with_markup_and_escapes_in_a_real_process(tmp_path: Path) -> None:
    from perdure.storage import storage_from_url

    url = f"sqlite:///{tmp_path / 'evil.db'}"
    store = storage_from_url(url)
    head = evil_head("20261130123456-a1b2c3d4").model_copy(
        update={"status": ExecutionStatus.FAILED, "lease_owner": None, "pending": None}
    )
    store.save_state(head)
    store.close()
    for args in (["list"], ["show", head.execution_id]):
        done = perdure_process(*args, "-s", url, env={"COLUMNS": "250"})
        assert done.returncode == 0, done.stderr.decode()
        assert_clean(done.stdout)
        out = done.stdout.decode()
        assert "[/bold]" in out and "\\x1b]52;c;ZXZpbA==\\x07" in out
    assert "[link=file:///etc/passwd]x[/link]" in out


def test_worker_log_lines_are_escaped() -> None:
    formatter = cli._SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "perdure", logging.ERROR, __file__, 1, "[%s] failed: %s", (EVIL_ID, EVIL_ERROR), None
    )
    line = formatter.format(record)
    assert "\x1b" not in line and "\x07" not in line and "\x9d" not in line
    assert "\\x1b]52;c;ZXZpbA==\\x07" in line
    try:
        raise ValueError("bad\x1b[2Jthing")
    except ValueError:
        record = logging.LogRecord("perdure", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    text = formatter.format(record)
    assert "\x1b" not in text and "Traceback" in text and "\n" in text


# ---- 2. one-line errors, --debug, exit codes -----------------------------------------------------


def test_runtime_error_is_one_line_unless_debug(use_storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    use_storage(FakeStorage(fail=StorageUnavailableError("redis", "connection \x1b[31mrefused")))
    result = runner.invoke(app, ["list", "-s", "x://"])
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "redis storage is unavailable" in line and "\\x1b[31m" in line

    debug = runner.invoke(app, ["--debug", "list", "-s", "x://"])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "\x1b" not in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")
    env_debug = runner.invoke(app, ["stats", "-s", "x://"], env={"PERDURE_DEBUG": "1"})
    assert env_debug.exit_code == 1 and "Traceback" in env_debug.stderr

    use_storage(FakeStorage(fail=OSError(5, "Input/output error")))
    other = runner.invoke(app, ["show", "-s", "x://", "some-id"])
    assert other.exit_code == 1
    assert "OSError" in one_error_line(other.stderr)


def test_missing_storage_is_exit_3(use_storage: Any) -> None:
    use_storage(FakeStorage(fail=StorageNotFoundError("sqlite", "typo.db")))
    for args in (["list"], ["stats"], ["show", "x"]):
        result = runner.invoke(app, [*args, "-s", "x://"])
        assert result.exit_code == 3, result.output
        assert "No sqlite storage at typo.db" in one_error_line(result.stderr)


def test_list_of_a_sqlite_typo_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perdure.storage.sqlite as sqlite_backend

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["list", "-s", "sqlite:///typo.db"])
    if "StorageNotFoundError" not in inspect.getsource(sqlite_backend) and result.exit_code != 3:
        pytest.xfail("sqlite backend does not raise StorageNotFoundError for a missing database yet")
    assert result.exit_code == 3, result.output
    one_error_line(result.stderr)
    assert not (tmp_path / "typo.db").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_unreachable_server_list_is_one_line(kind: str) -> None:
    port = closed_port()
    url = (
        f"redis://127.0.0.1:{port}/0"
        if kind == "redis"
        else f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=1"
    )
    result = runner.invoke(app, ["list", "-s", url])
    assert result.exit_code == 1
    assert "unavailable" in one_error_line(result.stderr)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_worker_once_exits_1_when_storage_unreachable(kind: str) -> None:
    port = closed_port()
    url = (
        f"redis://127.0.0.1:{port}/0"
        if kind == "redis"
        else f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=1"
    )
    done = perdure_process("worker", "-s", url, "--app", "support.worker_app:resolve", "--once")
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr  # before: 0, the failed listing was only logged
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unavailable" in lines[0], stderr


def test_long_running_worker_survives_unreachable_storage() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "perdure.cli",
            "worker",
            "-s",
            url,
            "--app",
            "support.worker_app:resolve",
            "--poll-interval",
            "0.2",
        ],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "unreachable at start-up" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(30), "".join(lines)
        time.sleep(0.5)  # a few polls against the dead storage
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert "Traceback" not in "".join(lines)


def test_usage_errors_exit_2(use_storage: Any) -> None:
    bad_url = runner.invoke(app, ["list", "-s", "nope://x"])
    assert bad_url.exit_code == 2
    assert "Unsupported storage URL scheme" in one_error_line(bad_url.stderr)
    assert runner.invoke(app, ["list", "-s", "x://", "--bogus"]).exit_code == 2
    bad_level = runner.invoke(
        app, ["worker", "-s", "x://", "--app", "support.worker_app:agent", "--log-level", "LOUD"]
    )
    assert bad_level.exit_code == 2 and "--log-level" in one_error_line(bad_level.stderr)


def test_show_missing_execution(use_storage: Any) -> None:
    use_storage(FakeStorage([]))
    result = runner.invoke(app, ["show", "-s", "x://", "nope\x1b"])
    assert result.exit_code == 3  # not found
    assert "not found" in one_error_line(result.stderr) and "\x1b" not in result.stderr


# ---- 3. --app ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("os:path", "module"),
        ("test_cli:AN_INT", "int 42"),
        ("test_cli:A_STRING", "str"),
        ("perdure:Agent", "the class Agent"),
        ("test_cli:BAD_DICT", "expected an agent, got int"),
        ("test_cli:NOT_DURABLE", "PerdureDurability"),
        ("test_cli:nothing_here", "cannot import"),
        ("no_such_module_xyz:agent", "cannot import"),
        ("no-colon", "module:attribute"),
    ],
)
def test_app_that_is_not_an_agent_is_a_usage_error(ref: str, expected: str, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    result = runner.invoke(app, ["worker", "-s", f"sqlite:///{db}", "--app", ref, "--once"])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert expected in line, line
    if "accepted" in line:
        assert "perdure Agent" in line and "PerdureDurability" in line and "callable" in line
    assert not db.exists()  # validated before connecting


def test_build_resolver_accepts_agents_lists_dicts_and_callables() -> None:
    assert build_resolver(["support.worker_app:agent"]) is worker_app.agent
    assert build_resolver(["support.worker_app:pydantic_agent"]) is worker_app.pydantic_agent
    assert build_resolver(["support.worker_app:resolve"]) is worker_app.resolve  # callable: unchanged
    both = {"worker-app": worker_app.agent, "pyd-app": worker_app.pydantic_agent}
    assert build_resolver(["support.worker_app:agent", "support.worker_app:pydantic_agent"]) == both
    assert build_resolver(["test_cli:AGENT_LIST"]) == both
    assert build_resolver(["test_cli:AGENT_TUPLE"]) == {"worker-app": worker_app.agent}
    assert build_resolver(["support.worker_app:agents_by_name"]) == both
    # The same agent named twice (dict + the agent itself) is fine.
    assert build_resolver(["support.worker_app:agents_by_name", "support.worker_app:agent"]) == both


@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        (["support.worker_app:agent", "test_cli:SAME_NAME"], "two different agents are named 'worker-app'"),
        (
            ["support.worker_app:resolve", "support.worker_app:agent"],
            "callable resolver must be the only --app",
        ),
        (["support.worker_app:agent", "test_cli:UNNAMED"], "has no name"),
    ],
)
def test_conflicting_apps_are_usage_errors(refs: list[str], expected: str) -> None:
    args = ["worker", "-s", "x://", "--once"]
    for ref in refs:
        args += ["--app", ref]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result.stderr)


# ---- 4. --allow-changes, 5. the --once summary ----------------------------------------------------


class FakeWorker:
    created: ClassVar[list[dict[str, Any]]] = []
    report: ClassVar[RecoveryReport] = RecoveryReport()

    def __init__(self, storage: Any, resolver: Any, **kwargs: Any) -> None:
        FakeWorker.created.append({"resolver": resolver, **kwargs})

    async def run_async(self, *, once: bool = False, handle_signals: bool = False) -> RecoveryReport:
        return FakeWorker.report


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch, use_storage: Any) -> type[FakeWorker]:
    FakeWorker.created = []
    FakeWorker.report = RecoveryReport()
    monkeypatch.setattr(cli, "Worker", FakeWorker)
    use_storage(FakeStorage([]))
    return FakeWorker


def test_allow_changes_reach_the_worker(fake_worker: type[FakeWorker]) -> None:
    base = ["worker", "-s", "x://", "--app", "support.worker_app:agent", "--once"]
    result = runner.invoke(app, [*base, "--allow-changes", "tools,instructions", "--allow-changes", "prompt"])
    assert result.exit_code == 0, result.output
    assert fake_worker.created[-1]["options"].allow_changes == frozenset({"tools", "instructions", "prompt"})
    result = runner.invoke(app, base)
    assert fake_worker.created[-1]["options"].allow_changes == frozenset()

    bad = runner.invoke(app, [*base, "--allow-changes", "tools,model"])
    assert bad.exit_code == 2
    line = one_error_line(bad.stderr)
    assert "'model'" in line and "tools, output, instructions, prompt" in line


def test_summarize_report_names_agents_not_served() -> None:
    report = RecoveryReport(
        recovered=["a", "b", "c"],
        skipped={"d": "leased"},
        not_served={"e": "support", "f": "billing", "g": "billing", "h": "evil\x1b[31m"},
    )
    assert summarize_report(report) == (
        "recovered 3, paused 0, failed 0, skipped 1, not served 4 (agents: billing, evil\\x1b[31m, support)"
    )
    assert summarize_report(RecoveryReport()) == "recovered 0, paused 0, failed 0, skipped 0, not served 0"


def test_worker_once_prints_the_summary(fake_worker: type[FakeWorker]) -> None:
    fake_worker.report = RecoveryReport(recovered=["a"], not_served={"b": "billing"})
    result = runner.invoke(app, ["worker", "-s", "x://", "--app", "support.worker_app:agent", "--once"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "recovered 1, paused 0, failed 0, skipped 0, not served 1 (agents: billing)"
    )
    fake_worker.report = RecoveryReport(failed={"a": "boom"})
    result = runner.invoke(app, ["worker", "-s", "x://", "--app", "support.worker_app:agent", "--once"])
    assert result.exit_code == 1 and "failed 1" in result.stderr


# ---- 6. ids are never truncated ------------------------------------------------------------------


def test_list_never_truncates_execution_ids_in_80_columns(use_storage: Any) -> None:
    heads = [
        ExecutionRecord(
            execution_id=f"2026113012345{i}-a1b2c3d{i}",
            step_index=12,
            step_name="tool:charge_the_customer_card_for_the_order",
            attempts=3,
            lease_owner=f"host-{i}.example.internal:12345:abcdef#123456",
            error=ErrorInfo(type="ValueError", message="something went wrong " * 5),
        )
        for i in range(5)
    ]
    use_storage(FakeStorage(heads))
    for columns in ("80", "60"):
        result = runner.invoke(app, ["list", "-s", "x://"], env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.stdout.splitlines()) <= int(columns)
        for head in heads:
            assert head.execution_id in result.stdout, result.stdout


def test_worker_once_end_to_end_with_several_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pass: two agents given by two `--app`, matched by name; the summary ends stderr."""
    import asyncio

    from perdure.storage import storage_from_url

    monkeypatch.setenv("WORKER_LEDGER_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    store = storage_from_url(url)

    async def interrupt() -> None:
        await worker_app.interrupt(store, "e2e-facade", "charge", facade=True)
        await worker_app.interrupt(store, "e2e-pydantic", "notify", facade=False)

    asyncio.run(interrupt())
    store.close()
    done = perdure_process(
        "worker",
        "-s",
        url,
        "--app",
        "support.worker_app:agent",
        "--app",
        "support.worker_app:pydantic_agent",
        "--allow-changes",
        "tools",
        "--once",
        "--log-level",
        "WARNING",
        env={"WORKER_LEDGER_DIR": str(tmp_path)},
    )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert stderr.strip().splitlines()[-1].startswith("recovered 2, paused 0, failed 0"), stderr
    store = storage_from_url(url)
    assert {h.status for h in store.list_executions()} == {ExecutionStatus.COMPLETED}
    store.close()
