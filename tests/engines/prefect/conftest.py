"""A Prefect server for the Prefect engine tests, started once per session.

`prefect server start` (SQLite under a session temp dir, no UI, analytics off, loopback only) runs
as a subprocess; the test process talks to it through `prefect.settings.temporary_settings`, and
worker subprocesses get the same `PREFECT_API_URL` / `PREFECT_HOME` in their environment, so they
share the API and the task result storage. Without the `prefect` package (the `perdure[prefect]`
extra) the tests skip locally and fail with `CI=true`: CI must exercise every engine.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

START_TIMEOUT = 90.0
# `import prefect` starts Prefect's SDK analytics unless this is set: the tests talk to loopback only.
os.environ.setdefault("DO_NOT_TRACK", "1")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the prefect engine is unavailable in CI: {reason}")
    pytest.skip(f"prefect engine unavailable: {reason}")


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """Prefect settings of the server, the test process and the workers (offline, loopback only)."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",  # Prefect's client-side analytics
    }


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment of a running Prefect server (`PREFECT_API_URL`, `PREFECT_HOME`, ...)."""
    if importlib.util.find_spec("prefect") is None:
        _unavailable("the 'prefect' package is not installed (pip install 'perdure[prefect]')")
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **prefect_env(home, api_url)}
    env.pop("PREFECT_API_URL")  # the server itself must not talk to a server
    log = (home / "server.log").open("w")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--no-ui", "--analytics-off"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(api_url):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.close()
            _unavailable(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DO_NOT_TRACK", "1")
            yield prefect_env(home, api_url)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def prefect_settings(prefect_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """This test process talks to the session's Prefect server; yields the workers' environment."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_LOGGING_LEVEL,
        temporary_settings,
    )

    from perdure.engines import forget_engines

    updates = {
        PREFECT_API_URL: prefect_server["PREFECT_API_URL"],
        PREFECT_HOME: prefect_server["PREFECT_HOME"],
        PREFECT_LOCAL_STORAGE_PATH: prefect_server["PREFECT_LOCAL_STORAGE_PATH"],
        PREFECT_LOGGING_LEVEL: "WARNING",
    }
    forget_engines()
    with temporary_settings(updates=updates):
        yield prefect_server
    forget_engines()
