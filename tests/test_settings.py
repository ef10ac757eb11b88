"""perdure.settings: sources and precedence, validation, `perdure config`, and where settings apply."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perdure import DurableExecution
from perdure._tokens import create_resume_token, secret_key, verify_resume_token
from perdure.cli import app
from perdure.codec import JSON_ZSTD
from perdure.errors import UserError
from perdure.records import ExecutionRecord, ExecutionStatus
from perdure.settings import describe, load_settings, settings
from perdure.storage import storage_from_url
from perdure.storage.sqlite import SQLiteDurableStorage

ENV_NAMES = (
    "PERDURE_STORAGE_URL",
    "PERDURE_STORAGE",
    "PERDURE_COMPRESSION",
    "PERDURE_COMPRESSION_MIN_BYTES",
    "PERDURE_RETENTION_DAYS",
    "PERDURE_RETENTION_KEEP",
    "PERDURE_TTL",
    "PERDURE_SECRET_KEY",
    "PERDURE_LEASE_TTL",
    "PERDURE_LOG_LEVEL",
)
KEY = "k" * 32


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in an empty directory with none of perdure's variables set."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_pyproject(tmp_path: Path, body: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "app"\n\n[tool.perdure]\n{body}\n')


def source_of(name: str, **arguments: object) -> tuple[object, str]:
    loaded = load_settings(**arguments)
    return getattr(loaded, name), loaded.origins[name]


# ---- sources and precedence ----------------------------------------------------------------------


def test_defaults() -> None:
    loaded = load_settings()
    assert loaded.storage_url is None
    assert loaded.compression == "none"
    assert loaded.compression_min_bytes == 1024
    assert loaded.retention_days is None and loaded.ttl is None and loaded.secret_key is None
    assert loaded.retention_keep == ()
    assert loaded.lease_ttl == 30.0
    assert loaded.log_level is None
    assert set(loaded.origins.values()) == {"default"}


def test_precedence_argument_env_perdure_toml_pyproject_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert source_of("lease_ttl") == (30.0, "default")
    write_pyproject(tmp_path, "lease_ttl = 11")
    assert source_of("lease_ttl") == (11.0, "pyproject.toml")
    (tmp_path / "perdure.toml").write_text("lease_ttl = 12\n")
    assert source_of("lease_ttl") == (12.0, "perdure.toml")
    monkeypatch.setenv("PERDURE_LEASE_TTL", "13")
    assert source_of("lease_ttl") == (13.0, "environment")
    assert source_of("lease_ttl", lease_ttl=14) == (14.0, "argument")


def test_sources_combine_per_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pyproject(tmp_path, 'log_level = "debug"\nretention_days = 30')
    (tmp_path / "perdure.toml").write_text('storage_url = "sqlite:///app.db"\nretention_days = 7\n')
    monkeypatch.setenv("PERDURE_TTL", "3600")
    loaded = load_settings()
    assert (loaded.log_level, loaded.retention_days, loaded.ttl) == ("DEBUG", 7, 3600)
    assert loaded.storage_url == "sqlite:///app.db"
    assert loaded.origins["log_level"] == "pyproject.toml"
    assert loaded.origins["retention_days"] == "perdure.toml"
    assert loaded.origins["ttl"] == "environment"
    assert loaded.origins["lease_ttl"] == "default"


def test_settings_is_cached_until_reloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    first = settings()
    monkeypatch.setenv("PERDURE_LEASE_TTL", "5")
    assert settings() is first and first.lease_ttl == 30.0
    assert settings(reload=True).lease_ttl == 5.0
    assert settings().lease_ttl == 5.0


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("PERDURE_COMPRESSION", "gzip", "'zstd' or 'none'"),
        ("PERDURE_COMPRESSION_MIN_BYTES", "-1", "greater than or equal to 0"),
        ("PERDURE_RETENTION_DAYS", "0", "greater than 0"),
        ("PERDURE_RETENTION_KEEP", "failed,finished", "unknown status 'finished'"),
        ("PERDURE_TTL", "-5", "greater than 0"),
        ("PERDURE_LEASE_TTL", "soon", "valid number"),
        ("PERDURE_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("PERDURE_SECRET_KEY", "short", "at least 16 bytes"),
        ("PERDURE_STORAGE_URL", "durable.db", "storage URL"),
    ],
)
def test_invalid_environment_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as caught:
        settings(reload=True)
    message = str(caught.value)
    assert name in message and "from environment" in message and needle in message
    if name == "PERDURE_SECRET_KEY":
        assert value not in message  # never echo a secret, even a bad one


def test_invalid_file_value_and_unknown_key_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "perdure.toml").write_text("lease_ttl = -1\n")
    with pytest.raises(UserError, match=r"PERDURE_LEASE_TTL \(lease_ttl, from perdure.toml\)"):
        load_settings()
    (tmp_path / "perdure.toml").write_text('storge_url = "sqlite:///x.db"\n')
    with pytest.raises(UserError, match=r"unknown setting 'storge_url' in perdure\.toml"):
        load_settings()
    (tmp_path / "perdure.toml").write_text("lease_ttl = \n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_settings()


def test_retention_keep_from_environment_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Comma-separated in the environment, a string or a list in TOML; normalised, sorted, unique."""
    monkeypatch.setenv("PERDURE_RETENTION_KEEP", " Failed, paused,failed ")
    loaded = load_settings()
    assert loaded.retention_keep == ("failed", "paused")
    assert loaded.origins["retention_keep"] == "environment"
    row = next(r for r in describe(loaded) if r.name == "retention_keep")
    assert (row.env, row.value, row.source) == ("PERDURE_RETENTION_KEEP", "failed,paused", "environment")
    monkeypatch.delenv("PERDURE_RETENTION_KEEP")
    (tmp_path / "perdure.toml").write_text('retention_keep = ["cancelled", "failed"]\n')
    assert load_settings().retention_keep == ("cancelled", "failed")
    write_pyproject(tmp_path, 'retention_keep = "completed"')
    (tmp_path / "perdure.toml").unlink()
    assert load_settings().retention_keep == ("completed",)
    assert load_settings(retention_keep=[]).retention_keep == ()
    unset = next(r for r in describe(load_settings(retention_keep="")) if r.name == "retention_keep")
    assert unset.value is None
    (tmp_path / "perdure.toml").write_text("retention_keep = 3\n")
    with pytest.raises(UserError, match=r"PERDURE_RETENTION_KEEP \(retention_keep, from perdure.toml\)"):
        load_settings()


def test_retention_keep_is_the_default_of_every_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cleanup_old_executions()` without keep_statuses keeps what PERDURE_RETENTION_KEEP names."""
    store = SQLiteDurableStorage(tmp_path / "keep.db")
    old = datetime.now(UTC) - timedelta(days=30)
    for status in (ExecutionStatus.FAILED, ExecutionStatus.PAUSED, ExecutionStatus.COMPLETED):
        store.save_state(
            ExecutionRecord(execution_id=f"old-{status.value}", status=status, updated_at=old, created_at=old)
        )
    monkeypatch.setenv("PERDURE_RETENTION_KEEP", "failed,paused")
    settings(reload=True)
    assert store.count_old_executions(7) == 1
    assert store.cleanup_old_executions(7) == 1
    assert {h.execution_id for h in store.list_executions()} == {"old-failed", "old-paused"}
    assert store.cleanup_old_executions(7, keep_statuses=["paused"]) == 1  # an argument wins
    assert {h.execution_id for h in store.list_executions()} == {"old-paused"}
    store.close()


def test_compression_values_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_COMPRESSION", "ZSTD")
    monkeypatch.setenv("PERDURE_COMPRESSION_MIN_BYTES", "100")
    loaded = load_settings()
    assert loaded.compression == "zstd"
    assert loaded.codec_options() == {"compress_above": 99}


# ---- describe and `perdure config` ---------------------------------------------------------------


def test_describe_masks_secrets_and_url_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_SECRET_KEY", KEY)
    monkeypatch.setenv("PERDURE_STORAGE_URL", "redis://:hunter2hunter2@cache:6379/0")
    rows = {row.name: row for row in describe(load_settings())}
    assert rows["secret_key"].value == "********" and rows["secret_key"].source == "environment"
    assert rows["storage_url"].value == "redis://:***@cache:6379/0"
    assert rows["ttl"].value is None and rows["ttl"].env == "PERDURE_TTL"


def test_config_command_prints_sources_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_SECRET_KEY", KEY)
    (tmp_path / "perdure.toml").write_text('storage_url = "postgresql://app:s3cretpass@db/app"\n')
    write_pyproject(tmp_path, "retention_days = 14")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert KEY not in result.output and "s3cretpass" not in result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert table["PERDURE_SECRET_KEY"] == ["environment", "********"]
    assert table["PERDURE_STORAGE_URL"] == ["perdure.toml", "postgresql://app:***@db/app"]
    assert table["PERDURE_RETENTION_DAYS"] == ["pyproject.toml", "14"]
    assert table["PERDURE_LEASE_TTL"] == ["default", "30"]

    result = CliRunner().invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert KEY not in result.output
    assert data["secret_key"] == {"env": "PERDURE_SECRET_KEY", "value": "********", "source": "environment"}
    assert data["log_level"]["value"] is None


def test_invalid_setting_fails_every_command_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_LEASE_TTL", "0")
    for args in (["config"], ["list", "--storage", "memory://"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        assert "PERDURE_LEASE_TTL" in result.output


# ---- where the settings apply --------------------------------------------------------------------


def test_durable_execution_uses_storage_url_and_lease_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_STORAGE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    (tmp_path / "perdure.toml").write_text("lease_ttl = 7\n")
    durable = DurableExecution()
    try:
        assert isinstance(durable.storage, SQLiteDurableStorage)
        assert durable.lease_ttl == 7.0
        # Explicit arguments win over the settings.
        explicit = DurableExecution(storage_from_url("memory://"), lease_ttl=3)
        assert type(explicit.storage).__name__ == "InMemoryDurableStorage" and explicit.lease_ttl == 3.0
    finally:
        durable.storage.close()


def test_durable_execution_defaults_to_memory_without_setting() -> None:
    assert type(DurableExecution().storage).__name__ == "InMemoryDurableStorage"


def test_cli_uses_storage_url_without_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    store = storage_from_url(url)
    store.save_state(ExecutionRecord(execution_id="exec-from-settings", agent_name="support"))
    store.close()
    runner = CliRunner()
    missing = runner.invoke(app, ["list", "--json"])
    assert missing.exit_code == 2 and "PERDURE_STORAGE_URL" in missing.output
    (tmp_path / "perdure.toml").write_text(f'storage_url = "{url}"\n')
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["executions"]
    assert [row["execution_id"] for row in listed] == ["exec-from-settings"]
    shown = runner.invoke(app, ["show", "exec-from-settings", "--json"])
    assert shown.exit_code == 0, shown.output
    # --storage still wins.
    other = runner.invoke(app, ["stats", "--json", "--storage", "memory://"])
    assert other.exit_code == 0 and json.loads(other.output)["total_executions"] == 0


def test_compression_setting_is_the_default_codec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("zstandard")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert getattr(storage_from_url(url), "codec").compress_above is None  # noqa: B009
    monkeypatch.setenv("PERDURE_COMPRESSION", "zstd")
    monkeypatch.setenv("PERDURE_COMPRESSION_MIN_BYTES", "10")
    settings(reload=True)
    store = storage_from_url(url)
    try:
        assert store.codec.compress_above == 9  # type: ignore[attr-defined]
        assert store.codec.encode(b"x" * 10)[0] == JSON_ZSTD  # type: ignore[attr-defined]
    finally:
        store.close()


def test_secret_key_from_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "perdure.toml").write_text(f'secret_key = "{KEY}"\n')
    assert secret_key() == KEY.encode()
    token = create_resume_token("exec-1")
    assert verify_resume_token(token, key=KEY).execution_id == "exec-1"
    monkeypatch.setenv("PERDURE_SECRET_KEY", "e" * 20)  # the environment still wins, read at once
    assert secret_key() == b"e" * 20


def test_log_level_applied_by_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("perdure")
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setenv("PERDURE_LOG_LEVEL", "error")
    assert CliRunner().invoke(app, ["config"]).exit_code == 0
    assert logger.level == logging.ERROR
