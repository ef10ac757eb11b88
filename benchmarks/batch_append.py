"""What batching journal writes saves: per-unit cost of `append_steps` at batch sizes 1, 5 and 20.

Run it with ``python benchmarks/batch_append.py`` (about 30 s) or ``--quick`` (about 10 s).

Method
------
The engine's ``checkpoint_every_n_steps=N`` journals N units with one ``append_steps_async`` (one
transaction, one fsync) instead of N ``append_step_async`` calls. This script measures what that
saves at the storage layer, on the backends where a write costs a disk sync:

* ``SQLiteDurableStorage`` with ``synchronous=FULL`` (a WAL sync per commit) and ``NORMAL`` (no
  sync per commit, only at checkpoints), and ``FileDurableStorage`` with ``fsync=True`` (journal
  fsync, head fsync and directory fsync per write);
* each measurement appends 1,000 journal entries of about 500 bytes (encoded) to one execution of
  a fresh store in a temporary directory, after 20 untimed warmup entries; batch size 1 is
  ``append_step_async`` (today's path), sizes 5 and 20 are ``append_steps_async`` with the head
  after each batch's last entry. Entries and heads are built before the clock starts, so only the
  storage write is timed (``time.perf_counter``);
* this machine is shared, so absolute times drift: every repetition runs the three batch sizes of
  a backend back to back (their order rotating from one repetition to the next) and yields one
  paired ratio "batch 1 / batch N" per size. The table shows the median per-unit time, the median
  ratio over the repetitions and, as "spread", the smallest and largest ratio.

Benchmarks are not tests: nothing is asserted and the exit code is always 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from perdure.codec import encode_step
from perdure.records import ExecutionRecord, StepKind, StepRecord, TaskSnapshot
from perdure.storage.base import DurableExecutionStorage
from perdure.storage.file import FileDurableStorage
from perdure.storage.sqlite import SQLiteDurableStorage

BATCH_SIZES = (1, 5, 20)
ENTRIES = 1000
WARMUP = 20
ENTRY_BYTES = 500


@dataclass(frozen=True)
class Settings:
    """Repetition counts; `--quick` shrinks them."""

    quick: bool
    reps: int
    entries: int


@dataclass(frozen=True)
class Backend:
    """One storage configuration under test."""

    label: str
    open: Callable[[Path], DurableExecutionStorage]


BACKENDS = (
    Backend("SQLite FULL", lambda root: SQLiteDurableStorage(root / "bench.db", synchronous="FULL")),
    Backend("SQLite NORMAL", lambda root: SQLiteDurableStorage(root / "bench.db", synchronous="NORMAL")),
    Backend("file, fsync", lambda root: FileDurableStorage(root / "states", fsync=True)),
)


@dataclass
class Result:
    """Per-unit times (seconds) by batch size, one per repetition, and the paired ratios."""

    per_unit: dict[int, list[float]] = field(default_factory=lambda: {size: [] for size in BATCH_SIZES})
    ratio: dict[int, list[float]] = field(default_factory=lambda: {size: [] for size in BATCH_SIZES})


# ---- records -------------------------------------------------------------------------------------


def _entry(seq: int, text: str) -> StepRecord:
    return StepRecord(
        execution_id="bench",
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name="tool:lookup",
        key=f"tool:lookup/call-{seq}",
        result={"status": "ok", "seq": seq, "text": text},
    )


def _filler() -> str:
    """Result text that makes an encoded entry about `ENTRY_BYTES` long."""
    bare = len(encode_step(_entry(500, "")))
    return "x" * max(ENTRY_BYTES - bare, 0)


def _head(next_seq: int) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id="bench",
        task=TaskSnapshot(description="benchmark"),
        attempts=1,
        next_seq=next_seq,
        step_index=next_seq - 1,
        step_name="tool:lookup" if next_seq else "",
    )


def _plan(first: int, count: int, size: int, text: str) -> list[tuple[ExecutionRecord, list[StepRecord]]]:
    """The writes appending seqs `first`.. `first + count - 1` in batches of `size`, built up front."""
    writes = []
    for start in range(first, first + count, size):
        end = min(start + size, first + count)
        writes.append((_head(end), [_entry(seq, text) for seq in range(start, end)]))
    return writes


async def _write(
    storage: DurableExecutionStorage, writes: list[tuple[ExecutionRecord, list[StepRecord]]]
) -> None:
    for head, steps in writes:
        if len(steps) == 1:
            await storage.append_step_async(head, steps[0])  # the path a batch of 1 takes today
        else:
            await storage.append_steps_async(head, steps)


# ---- measurement ---------------------------------------------------------------------------------


async def _one(backend: Backend, size: int, entries: int, text: str) -> float:
    """Seconds per appended entry: `entries` entries in batches of `size` on a fresh store."""
    with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
        storage = backend.open(Path(tmp))
        await storage.save_state_async(_head(0))
        await _write(storage, _plan(0, WARMUP, size, text))
        timed = _plan(WARMUP, entries, size, text)
        started = time.perf_counter()
        await _write(storage, timed)
        elapsed = time.perf_counter() - started
        await storage.close_async()
    return elapsed / entries


async def _measure(backend: Backend, settings: Settings, text: str) -> Result:
    result = Result()
    for rep in range(settings.reps):
        shift = rep % len(BATCH_SIZES)
        order = BATCH_SIZES[shift:] + BATCH_SIZES[:shift]  # rotate so drift hits every size alike
        times = {size: await _one(backend, size, settings.entries, text) for size in order}
        for size in BATCH_SIZES:
            result.per_unit[size].append(times[size])
            result.ratio[size].append(times[1] / times[size])
    return result


# ---- output --------------------------------------------------------------------------------------


def _micros(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"


def render(results: dict[str, Result], settings: Settings, elapsed: float, entry_bytes: int) -> str:
    """The result table: per-unit median and the paired speed-up over batch size 1."""
    lines = [
        "",
        f"perdure batched journal writes: {settings.entries:,} entries of ~{entry_bytes} B per measurement, "
        f"{settings.reps} repetitions ({'--quick' if settings.quick else 'full'}, {elapsed:.0f} s)",
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; median over repetitions, spread = min-max of the "
        f"paired ratios",
        "",
    ]
    header = ("backend", "batch", "per unit", "writes/1000", "vs batch 1", "spread")
    rows = [header]
    for label, result in results.items():
        for size in BATCH_SIZES:
            ratios = result.ratio[size]
            rows.append(
                (
                    label,
                    str(size),
                    _micros(statistics.median(result.per_unit[size])),
                    str(-(-settings.entries // size)),
                    f"{statistics.median(ratios):.1f}x faster" if size != 1 else "1.0x",
                    f"{min(ratios):.1f}-{max(ratios):.1f}x" if size != 1 and len(ratios) > 1 else "",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3, 4}
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        "per unit = wall time of the timed appends / entries; writes/1000 = storage writes (commits, or",
        "journal write + fsync + head replace) for 1,000 entries; vs batch 1 = per-unit time at batch 1",
        "divided by that at this batch size, paired within each repetition.",
    ]
    return "\n".join(lines)


async def main_async(settings: Settings) -> str:
    """Run every measurement and return the rendered report."""
    started = time.perf_counter()
    text = _filler()
    entry_bytes = len(encode_step(_entry(500, text)))
    results: dict[str, Result] = {}
    for backend in BACKENDS:
        t0 = time.perf_counter()
        print(f"running {backend.label} ...", file=sys.stderr, flush=True)
        results[backend.label] = await _measure(backend, settings, text)
        print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return render(results, settings, time.perf_counter() - started, entry_bytes)


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0 (benchmarks are not tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    settings = Settings(True, 3, ENTRIES) if args.quick else Settings(False, 7, ENTRIES)
    print(asyncio.run(main_async(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
