"""`perdure cleanup` on a real SQLite storage: batches, leased executions kept, summary, exit codes.

Also the retention options of `perdure worker` (`--retention-days`, `--cleanup-every`,
`--retention-keep`) reaching `Worker`, and `Worker(retention_keep=...)` itself.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from perdure import cli
from perdure.cli import EXIT_STORAGE_NOT_FOUND, EXIT_USAGE, app
from perdure.cli._cleanup import _clean, parse_age
from perdure.durable.recovery import RecoveryReport
from perdure.durable.worker import Worker
from perdure.errors import UserError
from perdure.records import ExecutionRecord, ExecutionStatus
from perdure.storage import SQLiteDurableStorage, storage_from_url
from support import worker_app

runner = CliRunner()


def _fill(path: Path) -> str:
    """7 old completed executions, 1 old running (leased), 2 recent ones; the storage URL."""
    store = SQLiteDurableStorage(path)
    now = datetime.now(UTC)
    for i in range(7):
        when = now - timedelta(days=10 + i)
        store.save_state(
            ExecutionRecord(
                execution_id=f"old-{i}", status=ExecutionStatus.COMPLETED, updated_at=when, created_at=when
            )
        )
    when = now - timedelta(days=20)
    store.save_state(ExecutionRecord(execution_id="old-running", updated_at=when, created_at=when))
    store.acquire_lease("old-running", "a-worker", 60)
    for i in range(2):
        when = now - timedelta(hours=2)
        store.save_state(ExecutionRecord(execution_id=f"recent-{i}", updated_at=when, created_at=when))
    store.close()
    return f"sqlite:///{path}"


def _left(path: Path) -> set[str]:
    store = SQLiteDurableStorage(path)
    try:
        return {h.execution_id for h in store.list_executions()}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("text", "days"), [("7d", 7), ("12h", 0.5), ("30m", 30 / 1440), ("3", 3), (" 1.5D ", 1.5)]
)
def test_parse_age(text: str, days: float) -> None:
    assert parse_age(text) == pytest.approx(days)


def test_cleanup_deletes_old_executions_in_batches_and_keeps_running_ones(tmp_path: Path) -> None:
    url = _fill(tmp_path / "c.db")
    result = runner.invoke(app, ["cleanup", "--storage", url, "--older-than", "7d", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("deleted 7 of 8 execution(s) older than 7d")
    assert "1 running kept" in lines[-1]
    assert all(len(line) <= 80 for line in lines)
    assert _left(tmp_path / "c.db") == {"old-running", "recent-0", "recent-1"}

    # 1h: the recent ones go too; the running one still stays.
    result = runner.invoke(app, ["cleanup", "--storage", url, "--older-than", "1h", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["deleted"], data["old"], data["running_skipped"]) == (2, 3, 1)
    assert data["older_than_days"] == pytest.approx(1 / 24)
    assert _left(tmp_path / "c.db") == {"old-running"}


def test_cleanup_defaults_to_the_retention_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _fill(tmp_path / "d.db")
    monkeypatch.setenv("PERDURE_STORAGE_URL", url)
    monkeypatch.setenv("PERDURE_RETENTION_DAYS", "14")
    result = runner.invoke(app, ["cleanup", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 3  # old-4 .. old-6 (14 to 16 days old)
    assert len(_left(tmp_path / "d.db")) == 7


def test_cleanup_usage_errors_and_missing_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    result = runner.invoke(app, ["cleanup", "--storage", url, "--older-than", "7x"])
    assert result.exit_code == EXIT_USAGE
    assert "--older-than" in result.stderr
    result = runner.invoke(app, ["cleanup", "--storage", url])
    assert result.exit_code == EXIT_STORAGE_NOT_FOUND, result.output
    assert not (tmp_path / "missing.db").exists()


# ---- statuses to keep -----------------------------------------------------------------------------


def _fill_statuses(path: Path) -> str:
    """One old execution per status but success, all 30 days old; the storage URL."""
    store = SQLiteDurableStorage(path)
    when = datetime.now(UTC) - timedelta(days=30)
    for status in (
        ExecutionStatus.FAILED,
        ExecutionStatus.PAUSED,
        ExecutionStatus.COMPLETED,
        ExecutionStatus.CANCELLED,
    ):
        store.save_state(
            ExecutionRecord(
                execution_id=f"old-{status.value}", status=status, updated_at=when, created_at=when
            )
        )
    store.close()
    return f"sqlite:///{path}"


def test_cleanup_keep_status_is_repeatable_and_comma_separated(tmp_path: Path) -> None:
    url = _fill_statuses(tmp_path / "k.db")
    base = ["cleanup", "--storage", url, "--older-than", "7d", "--json"]
    result = runner.invoke(app, [*base, "--keep-status", "failed", "--keep-status", "PAUSED,cancelled"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["keep_statuses"] == ["cancelled", "failed", "paused"]
    assert (data["deleted"], data["old"], data["running_skipped"]) == (1, 1, 0)
    assert _left(tmp_path / "k.db") == {"old-failed", "old-paused", "old-cancelled"}
    result = runner.invoke(app, [*base, "--keep-status", "failed"])
    assert json.loads(result.stdout)["deleted"] == 2
    assert _left(tmp_path / "k.db") == {"old-failed"}


def test_cleanup_keep_status_defaults_to_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _fill_statuses(tmp_path / "s.db")
    monkeypatch.setenv("PERDURE_RETENTION_KEEP", "failed,paused")
    result = runner.invoke(app, ["cleanup", "--storage", url, "--older-than", "7d"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("deleted 2 of 2 execution(s) older than 7d")
    assert _left(tmp_path / "s.db") == {"old-failed", "old-paused"}


def test_cleanup_unknown_keep_status_is_a_usage_error(tmp_path: Path) -> None:
    url = _fill_statuses(tmp_path / "u.db")
    result = runner.invoke(app, ["cleanup", "--storage", url, "--keep-status", "failed,done"])
    assert result.exit_code == EXIT_USAGE
    assert "--keep-status" in result.stderr and "'done'" in result.stderr
    assert len(_left(tmp_path / "u.db")) == 4  # nothing touched


def test_cleanup_progress_counts_every_batch(tmp_path: Path) -> None:
    """Batches of 2 over 7 old executions: the bar's total is the count, and it reaches it."""
    _fill(tmp_path / "p.db")
    store = SQLiteDurableStorage(tmp_path / "p.db")
    calls: list[int] = []
    original = store.cleanup_old_executions_async

    async def counting(*args: Any, **kwargs: Any) -> int:
        done = await original(*args, **kwargs)
        calls.append(done)
        return done

    store.cleanup_old_executions_async = counting  # type: ignore[method-assign]
    with Progress(console=Console(file=io.StringIO())) as progress:
        result = asyncio.run(_clean(store, 7.0, frozenset(), 2, progress))
        (task,) = progress.tasks
        assert (task.total, task.completed) == (8, 7)
    store.close()
    assert calls == [2, 2, 2, 1]
    assert (result["old"], result["deleted"], result["running_skipped"]) == (8, 7, 1)


# ---- the worker's retention options ---------------------------------------------------------------


class RecordingWorker:
    """Stands in for `perdure.cli.Worker`: records its keyword arguments, recovers nothing."""

    created: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, storage: Any, resolver: Any, **kwargs: Any) -> None:
        RecordingWorker.created.append(kwargs)

    async def run_async(self, *, once: bool = False, handle_signals: bool = False) -> RecoveryReport:
        return RecoveryReport()


def test_worker_retention_flags_reach_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _fill_statuses(tmp_path / "w.db")
    RecordingWorker.created = []
    monkeypatch.setattr(cli, "Worker", RecordingWorker)
    base = ["worker", "--storage", url, "--app", "support.worker_app:agent", "--once"]
    flags = ["--retention-days", "30", "--cleanup-every", "120", "--retention-keep", "failed"]
    result = runner.invoke(app, [*base, *flags, "--retention-keep", "paused,CANCELLED"])
    assert result.exit_code == 0, result.output
    made = RecordingWorker.created[-1]
    assert (made["retention_days"], made["cleanup_every"]) == (30, 120)
    assert made["retention_keep"] == frozenset({"failed", "paused", "cancelled"})

    # Without flags: the settings (retention off when PERDURE_RETENTION_DAYS is unset), one hour.
    monkeypatch.setenv("PERDURE_RETENTION_KEEP", "completed")
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    made = RecordingWorker.created[-1]
    assert (made["retention_days"], made["cleanup_every"]) == (None, 3600)
    assert made["retention_keep"] == frozenset({"completed"})
    monkeypatch.setenv("PERDURE_RETENTION_DAYS", "14")
    result = runner.invoke(app, base)
    assert RecordingWorker.created[-1]["retention_days"] == 14

    bad = runner.invoke(app, [*base, "--retention-keep", "failed,gone"])
    assert bad.exit_code == EXIT_USAGE
    assert "--retention-keep" in bad.stderr and "'gone'" in bad.stderr
    assert len(_left(tmp_path / "w.db")) == 4  # the fake worker deleted nothing


async def test_worker_retention_keep_spares_those_statuses(tmp_path: Path) -> None:
    """`Worker(retention_keep=...)`: the scheduled cleanup never deletes executions with those statuses."""
    url = _fill_statuses(tmp_path / "wk.db")
    storage = storage_from_url(url)
    worker = Worker(
        storage, worker_app.agent, poll_interval=0.05, retention_days=7, retention_keep=["failed", "paused"]
    )
    assert worker.retention_keep == frozenset({"failed", "paused"})
    await worker.run_async(once=True)
    assert worker.cleaned == 2
    assert {h.execution_id for h in await storage.list_executions_async()} == {"old-failed", "old-paused"}
    with pytest.raises(UserError, match="'finished'"):
        Worker(storage, worker_app.agent, retention_days=7, retention_keep="finished")
    assert Worker(storage, worker_app.agent).retention_keep is None  # the setting, read at each cleanup
    storage.close()


async def test_worker_expires_completed_executions_after_the_ttl(tmp_path: Path) -> None:
    """`Worker(completed_ttl=...)` (`PERDURE_TTL` for `perdure worker`): completed ones only, when old."""
    url = _fill_statuses(tmp_path / "ttl.db")
    storage = storage_from_url(url)
    fresh = ExecutionRecord(execution_id="new-completed", status=ExecutionStatus.COMPLETED)
    await storage.save_state_async(fresh)
    worker = Worker(storage, worker_app.agent, poll_interval=0.05, completed_ttl=3600)
    await worker.run_async(once=True)
    assert worker.cleaned == 1
    left = {h.execution_id for h in await storage.list_executions_async()}
    assert left == {"old-failed", "old-paused", "old-cancelled", "new-completed"}
    with pytest.raises(UserError, match="completed_ttl"):
        Worker(storage, worker_app.agent, completed_ttl=0)
    storage.close()


def test_worker_cli_passes_perdure_ttl_as_completed_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _fill_statuses(tmp_path / "ttl-cli.db")
    RecordingWorker.created = []
    monkeypatch.setattr(cli, "Worker", RecordingWorker)
    monkeypatch.setenv("PERDURE_TTL", "86400")
    base = ["worker", "--storage", url, "--app", "support.worker_app:agent", "--once"]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert RecordingWorker.created[-1]["completed_ttl"] == 86400
