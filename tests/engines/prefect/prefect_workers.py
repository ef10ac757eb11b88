"""Worker subprocesses of the Prefect engine tests (`prefect_app.py serve`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "prefect_app.py"


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `prefect_app.py serve` with the Prefect settings and ledger paths in `env`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(APP), "serve"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill a worker (SIGKILL) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
