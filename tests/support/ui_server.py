"""The dashboard for browser tests: uvicorn in a thread on 127.0.0.1, and Debian's Chromium.

`DashboardServer(storage_url, ...)` serves `perdure.ui.create_app` from a real uvicorn server on a free
port in a background thread (its own event loop, as `perdure ui` runs it), so actions started from
the browser (approvals) run in that server, with the agents of `support.ui_app`.

`chromium_executable()` is Debian's `/usr/bin/chromium`, installed with apt-get when missing and
running as root (as the Redis and PostgreSQL fixtures install their servers). Playwright drives it
with `executable_path=` and never downloads a browser. Locally a missing browser skips the browser
tests with the reason; with `CI=true` it fails them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvicorn

from perdure.ui import create_app

__all__ = ["CHROMIUM_ARGS", "DashboardServer", "chromium_executable", "free_port", "run_async", "unavailable"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
"""As the machine notes say: without the background-networking flags Chromium keeps trying to reach
Google's hosts, which this closed network refuses."""


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must run the browser tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"chromium unavailable in CI: {reason}")
    pytest.skip(f"chromium unavailable: {reason}")


def chromium_executable() -> str:
    """Path of Debian's chromium, installing the package first when missing and running as root."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install chromium failed: {done.stderr.strip()[-500:]}")
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError("chromium is still missing after apt-get install")
    return CHROMIUM


T = TypeVar("T")


def run_async(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(work())` in a thread of its own: Playwright's sync API keeps a loop in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DashboardServer:
    """`perdure.ui` served by uvicorn in a background thread on 127.0.0.1:<free port>."""

    def __init__(self, storage_url: str, **options: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(storage_url, **options)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="perdure-ui-test", daemon=True)

    def __enter__(self) -> DashboardServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
