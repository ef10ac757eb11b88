"""Fixtures of the Temporal engine tests: a real dev server per session, a worker per test.

Every test gets its own task queue (so a run left behind by another test is never picked up), its
own ledger and requests files, and `PERDURE_ENGINE=temporal` in its environment, set before
`support.temporal_app` is first imported so that its agents bind to Temporal.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from perdure.engines import forget_engines, get_engine
from support.temporal_server import temporal_address  # noqa: F401 - session fixture


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The ledger (one line per tool execution) and requests (one line per model request) files."""
    return {"ledger": tmp_path / "ledger.txt", "requests": tmp_path / "requests.txt"}


@pytest.fixture
def temporal_env(
    temporal_address: str,  # noqa: F811 - the session fixture imported above
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The settings of a Temporal test: engine, address, a fresh task queue; yields the task queue."""
    queue = f"perdure-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PERDURE_ENGINE", "temporal")
    monkeypatch.setenv("PERDURE_TEMPORAL_ADDRESS", temporal_address)
    monkeypatch.setenv("PERDURE_TEMPORAL_TASK_QUEUE", queue)
    monkeypatch.setenv("PERDURE_TEST_LEDGER", str(files["ledger"]))
    monkeypatch.setenv("PERDURE_TEST_REQUESTS", str(files["requests"]))
    forget_engines()
    yield queue
    forget_engines()


@pytest.fixture
def app(temporal_env: str) -> ModuleType:
    """`support.temporal_app`, imported with PERDURE_ENGINE=temporal (its agents are Temporal agents)."""
    return importlib.import_module("support.temporal_app")


@pytest.fixture
async def engine(app: ModuleType) -> AsyncIterator[Any]:
    """The process's Temporal engine (from settings), with a worker serving the test agents."""
    adapter = get_engine("temporal")  # a TemporalEngine
    serving = asyncio.ensure_future(adapter.serve(app.AGENTS))
    yield adapter
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await adapter.close()
