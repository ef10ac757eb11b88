"""`perdure ui` as a real process: the bind rule, the token, the banner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.ui_server import free_port

TOKEN = "tok-cli-0d9e4b2a"


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PERDURE_UI_TOKEN", "PERDURE_STORAGE", "PERDURE_APP")
    }
    return env | extra


def _ui(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "perdure.cli", "ui", *args]


def test_a_non_local_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        done = subprocess.run(
            _ui(
                "--storage",
                f"sqlite:///{tmp_path / 'x.db'}",
                "--host",
                host,
                "--port",
                str(free_port()),
                env=_env(),
            ),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "needs an access token" in done.stderr and "--token" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()  # refused before opening anything


def test_with_a_token_it_serves_any_address_and_never_prints_the_token(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'ui.db'}"
    subprocess.run(
        [sys.executable, "-m", "support.ui_app", url], check=True, timeout=120, cwd=Path(__file__).parents[1]
    )
    process = subprocess.Popen(
        _ui("--storage", url, "--host", "0.0.0.0", "--port", str(port), env=_env()),
        env=_env(PERDURE_UI_TOKEN=TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                refused = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert refused.status_code == 401
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            page = client.get(f"/?token={TOKEN}", follow_redirects=True)
            assert page.status_code == 200 and "ui-banker" in page.text and TOKEN not in page.text
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "token required" in stderr and TOKEN not in stderr


def test_a_missing_extra_or_bad_storage_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        _ui("--storage", "nosuch://x", "--port", str(free_port()), env=_env()),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.startswith("error:")
