"""Fixtures of the dashboard tests: a populated SQLite storage, the dashboard, Chromium and its pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure.storage import SQLiteDurableStorage
from support import ui_app
from support.ui_server import CHROMIUM_ARGS, DashboardServer, chromium_executable, run_async, unavailable

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
"""Screenshots of the pages (ignored by git; the README's are copies in docs/screenshots)."""


@pytest.fixture
def populated(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A SQLite storage with the executions of `support.ui_app`; its URL and their ids."""
    path = tmp_path / "ui.db"

    async def fill() -> dict[str, str]:
        storage = SQLiteDurableStorage(path)
        try:
            await ui_app.populate_history(storage)
            return await ui_app.populate(storage)
        finally:
            await storage.close_async()

    ids = run_async(fill)
    return f"sqlite:///{path}", ids


@pytest.fixture
def dashboard(populated: tuple[str, dict[str, str]]) -> Iterator[DashboardServer]:
    url, _ = populated
    ui_app.transfers.clear()
    with DashboardServer(url, resolver=ui_app.AGENTS) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module: Playwright's sync API keeps an event loop running in this thread until
    it stops, which would break `asyncio.run` in every test after it (hence not session-scoped)."""
    try:
        executable = chromium_executable()
    except RuntimeError as exc:
        unavailable(str(exc))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
