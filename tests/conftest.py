"""Fixtures shared by every suite: the `storage` / `reopen` backends and the session servers.

The backend registry and helpers are `support.storages`; the servers are `support.server_redis`
and `support.server_postgres` (their session fixtures are registered here by importing them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure.settings import reset_settings
from perdure.storage import DurableExecutionStorage
from support.server_postgres import postgres_dsn  # noqa: F401 - session fixture
from support.server_redis import redis_url  # noqa: F401 - session fixture
from support.storages import BACKENDS, PERSISTENT, Factory, make_factory


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Each test reads perdure's settings from its own environment and directory (they are cached)."""
    reset_settings()
    yield
    reset_settings()


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DurableExecutionStorage]:
    store = make_factory(request.param, tmp_path, request)()
    yield store
    store.close()


@pytest.fixture(params=PERSISTENT)
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory that opens the same persistent storage again, as a new process would."""
    return make_factory(request.param, tmp_path, request)
