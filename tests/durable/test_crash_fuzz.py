"""Crash fuzzing in CI: kill -9 durable executions at random points on every backend.

Runs `benchmarks/crash_fuzz.py` (children forked from a warm server, see its docstring) with at
least 50 kills on SQLite and on files, fewer on the server backends, and requires zero invariant
violations: every execution completes with the uninterrupted run's output, every idempotent and
non-idempotent call takes effect exactly once, journals are well formed, and resumed processes
only run units that were not journaled. One small run starts a new interpreter per process, to
check that the fork server changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))

import crash_fuzz
import crash_fuzz_app
from perdure.storage import storage_from_url

pytestmark = pytest.mark.crash


def _fuzz(backend: str, kills: int, seed: int, workdir: Path, url: str | None = None) -> crash_fuzz.Summary:
    config = crash_fuzz.Config(backend=backend, kills=kills, seed=seed, url=url, workdir=workdir)
    summary = crash_fuzz.run_fuzz(config)
    print(summary.render())
    assert summary.violations == [], summary.render()
    assert summary.total_kills >= kills
    # Most kills are followed by a resume (one that struck before the execution's head existed is
    # followed by a new start instead).
    assert summary.resumes > summary.total_kills // 2
    return summary


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_fifty_kills_without_a_violation(backend: str, tmp_path: Path) -> None:
    summary = _fuzz(backend, 50, 20261122, tmp_path)
    assert summary.executions >= 5
    assert len(summary.kills) >= 8, summary.kills  # many different kill points fired
    assert sum(summary.resolutions.values()) >= 1  # the operator resolved interrupted e-mails


def test_redis_kills_without_a_violation(redis_url: str, tmp_path: Path) -> None:
    _fuzz("redis", 15, 7, tmp_path, url=redis_url)


def test_postgres_kills_without_a_violation(postgres_dsn: str, tmp_path: Path) -> None:
    _fuzz("postgres", 15, 7, tmp_path, url=postgres_dsn)


def test_command_line_with_a_new_interpreter_per_process(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(BENCHMARKS / "crash_fuzz.py"),
        "--backend", "sqlite",
        "--kills", "2",
        "--seed", "5",
        "--spawn", "exec",
        "--workdir", str(tmp_path),
        "--json",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["violations"] == [] and summary["total_kills"] >= 2 and summary["spawn"] == "exec"


@pytest.mark.parametrize(
    ("mutant", "plan", "expected"),
    [
        ("email-idempotent", {"kind": "nonidem-after", "n": 1}, "e-mail call"),
        ("no-dedup", {"kind": "idem-after", "n": 1}, "payment call"),
    ],
)
def test_the_harness_catches_a_double_effect(
    mutant: str, plan: dict[str, object], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sanity check of the checker: a broken contract must show up as a violation."""
    monkeypatch.setenv(crash_fuzz_app.MUTANT_ENV, mutant)
    config = crash_fuzz.Config(backend="sqlite", seed=1, workdir=tmp_path, script=[plan])
    summary = crash_fuzz.run_fuzz(config)
    assert summary.total_kills == 1
    assert any(expected in v and "took effect 2 times" in v for v in summary.violations), summary.render()


def test_journaled_resolution_survives_a_crash(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    launcher = crash_fuzz.ForkLauncher("sqlite", tmp_path / "processes.log")
    storage = storage_from_url(url)

    def job(mode: str, plan: dict[str, object] | None = None, **extra: object) -> crash_fuzz_app.Job:
        return crash_fuzz_app.Job(
            url=url,
            backend="sqlite",
            execution_id="decision-1",
            ledgers=str(tmp_path / "ledgers"),
            proc=mode,
            mode=mode,
            plan=plan,
            **extra,  # type: ignore[arg-type]
        )

    try:
        # The e-mail was sent, the process died before journaling it: the resume pauses.
        assert launcher.run(job("start", {"kind": "nonidem-after", "n": 1})).killed
        paused = launcher.run(job("resume")).result
        assert paused is not None and paused["status"] == "paused"
        head = storage.load_state("decision-1")
        assert head is not None and head.pending is not None
        call = head.pending.calls[0]
        done = {call.tool_call_id: {"action": "done", "result": crash_fuzz_app.email_result(**call.args)}}
        # The operator's resume dies right after journaling the decision (its first append).
        assert launcher.run(job("resume", {"kind": "append-after", "n": 1}, resolutions=done)).killed
        again = launcher.run(job("resume")).result
    finally:
        launcher.close()
        storage.close()
    assert again is not None and again["status"] == "completed", again
