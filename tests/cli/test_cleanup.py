"""`perdure cleanup` on a real SQLite storage: batches, leased executions kept, summary, exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perdure.cli import EXIT_STORAGE_NOT_FOUND, EXIT_USAGE, app
from perdure.cli._cleanup import parse_age
from perdure.records import ExecutionRecord, ExecutionStatus
from perdure.storage import SQLiteDurableStorage

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
