"""Fixtures of the DBOS engine tests: a SQLite system database per test and the engine on it.

DBOS is an extra: locally the suite is skipped when it is not installed; with `CI=true` it fails,
because CI must exercise every engine.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

if importlib.util.find_spec("dbos") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(
            "The dbos package is missing: CI must run the DBOS engine tests (install perdure[dbos])."
        )
    pytest.skip("dbos is not installed (pip install 'perdure[dbos]')", allow_module_level=True)

from perdure.engines import EngineOptions, forget_engines, get_engine
from perdure.engines.dbos import DBOSEngine
from perdure.settings import reset_settings


@pytest.fixture
def dbos_url(tmp_path: Path) -> str:
    """A fresh SQLite system database for this test."""
    return f"sqlite:///{tmp_path / 'dbos.sqlite'}"


@pytest.fixture
def dbos_env(monkeypatch: pytest.MonkeyPatch, dbos_url: str) -> Iterator[str]:
    """`PERDURE_ENGINE=dbos` and the test's database, as a user's environment would set them."""
    monkeypatch.setenv("PERDURE_ENGINE", "dbos")
    monkeypatch.setenv("PERDURE_DBOS_DATABASE_URL", dbos_url)
    reset_settings()
    forget_engines()
    yield dbos_url
    forget_engines()


@pytest.fixture
async def engine(dbos_env: str) -> AsyncIterator[DBOSEngine]:
    """The process's DBOS engine on the test's database (closed, i.e. `DBOS.destroy`, afterwards)."""
    adapter = get_engine("dbos")
    assert isinstance(adapter, DBOSEngine)
    assert adapter.options == EngineOptions.from_settings()
    yield adapter
    await adapter.close()
