"""Directories of the repository, for tests that start subprocesses or read files."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""
SRC = ROOT / "src"
"""The package sources, put on subprocesses' `PYTHONPATH`."""
TESTS = ROOT / "tests"
"""The tests directory: on `sys.path`, so that `support.*` imports (and the cwd of worker processes)."""
BENCHMARKS = ROOT / "benchmarks"
"""The benchmarks, which hold the crash-fuzz harness."""
