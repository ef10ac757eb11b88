"""Choosing the engine: the setting, the capability argument, the errors of a wrong choice."""

from __future__ import annotations

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel
from typer.testing import CliRunner

from perdure.cli import app
from perdure.durable import DurableExecution, InMemoryDurableStorage, PerdureDurability
from perdure.engines import get_engine, resolve_engine_name
from perdure.errors import UserError
from perdure.settings import reset_settings


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PERDURE_ENGINE", raising=False)
    reset_settings()
    yield
    reset_settings()


def test_embedded_is_the_default_and_runs_on_perdures_journal() -> None:
    assert resolve_engine_name() == "embedded"
    agent = Agent(TestModel(), name="plain", capabilities=[PerdureDurability()])
    assert PerdureDurability.from_agent(agent) is not None
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    assert durable.engine_name == "embedded"
    attempt = durable.run_agent(agent, "hello")
    assert attempt.head.status == "completed"
    assert storage.load_state(durable.execution_id) is not None


def test_the_setting_is_read_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_ENGINE", " DBOS ")
    reset_settings()
    assert resolve_engine_name() == "dbos"
    assert resolve_engine_name("embedded") == "embedded"  # an argument wins over the setting


def test_an_unknown_engine_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"Unknown perdure engine 'kafka'.*embedded, temporal, dbos, prefect"):
        resolve_engine_name("kafka")
    with pytest.raises(UserError, match="Unknown perdure engine"):
        Agent(TestModel(), name="x", capabilities=[PerdureDurability(engine="kafka")])
    with pytest.raises(UserError, match="embedded engine has no adapter"):
        get_engine("embedded")


def test_an_engine_whose_package_is_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):
        return None if name == "temporalio" else real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=r"pip install 'perdure\[temporal\]'"):
        get_engine("temporal")
    with pytest.raises(UserError, match=r"perdure\[temporal\]"):
        Agent(TestModel(), name="x", capabilities=[PerdureDurability(engine="temporal")])


def test_cli_engine_options_are_checked() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["list", "--engine", "kafka"])
    assert result.exit_code == 2
    assert "Unknown perdure engine 'kafka'" in result.output
    result = runner.invoke(app, ["list", "--address", "127.0.0.1:7233"])
    assert result.exit_code == 2
    assert "--address: used only with --engine" in result.output
