"""`append_steps`: what is specific to each backend's batch write (the contract is in the kit, `batch.*`).

SQLite commits a batch once; the file backend appends it with one write and one fsync before the
head, so a crash leaves the journal up to one batch ahead of the head (within
`journal_may_lead_head`, which the engine's journal check reconciles) and a torn batch keeps its
complete lines; the file backend refuses batches beyond that window. Redis runs one script per batch
and treats a retried batch whose reply was lost as done.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from perdure import _faults
from perdure.durable._prechecks import check_journal
from perdure.errors import StepConflictError, UserError
from perdure.records import ExecutionRecord, StepKind, StepRecord
from perdure.storage import DurableExecutionStorage, FileDurableStorage, SQLiteDurableStorage
from perdure.storage.file import JOURNAL_FILE
from support.paths import SRC


def _head(execution_id: str, next_seq: int = 0, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, next_seq=next_seq, **fields)


def _steps(execution_id: str, first: int, count: int, size: int = 40) -> list[StepRecord]:
    return [
        StepRecord(
            execution_id=execution_id,
            seq=seq,
            kind=StepKind.TOOL_CALL,
            name=f"tool:t{seq}",
            key=f"tool:call-{seq}",
            result={"seq": seq, "text": "x" * (size + 37 * seq)},  # lines of different lengths
        )
        for seq in range(first, first + count)
    ]


async def _started(store: DurableExecutionStorage, execution_id: str, steps: int) -> ExecutionRecord:
    """A new run with `steps` entries journaled in one batch; returns its head."""
    record = _head(execution_id)
    await store.save_state_async(record)
    if steps:
        record = _head(execution_id, steps)
        await store.append_steps_async(record, _steps(execution_id, 0, steps))
    return record


# ---- SQLite: one transaction, one commit -----------------------------------------------------------


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_sqlite_commits_a_batch_once(tmp_path: Path, synchronous: str) -> None:
    store = SQLiteDurableStorage(tmp_path / "runs.db", synchronous=synchronous)
    await store.save_state_async(_head("e"))
    with _faults.armed("before_commit", action="raise", nth=10**9) as commits:  # counts, never fires
        await store.append_steps_async(_head("e", 20), _steps("e", 0, 20))
        assert commits.hits == 1
        await store.append_step_async(_head("e", 21), _steps("e", 20, 1)[0])
        assert commits.hits == 2
    assert [s.seq for s in await store.load_steps_async("e")] == list(range(21))
    await store.close_async()


async def test_sqlite_failed_commit_writes_nothing_of_the_batch(tmp_path: Path) -> None:
    store = SQLiteDurableStorage(tmp_path / "runs.db")
    last = await _started(store, "e", 2)
    with _faults.armed("before_commit", action="raise:OSError"), pytest.raises(OSError):
        await store.append_steps_async(_head("e", 6), _steps("e", 2, 4))
    assert [s.seq for s in await store.load_steps_async("e")] == [0, 1]
    assert (await store.load_state_async("e")) == last
    await store.close_async()


async def test_sql_conflict_names_the_journaled_seq(tmp_path: Path) -> None:
    store = SQLiteDurableStorage(tmp_path / "runs.db")
    await _started(store, "e", 1)
    await store.append_step_async(_head("e", 4), _steps("e", 3, 1)[0])  # SQLite stores the gap
    with pytest.raises(StepConflictError) as info:
        await store.append_steps_async(_head("e", 5), _steps("e", 1, 4))
    assert (info.value.execution_id, info.value.seq) == ("e", 3)
    await store.close_async()


# ---- the file backend: one write, one fsync, then the head -----------------------------------------


def test_file_backend_bounds_a_batch_by_its_crash_window(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    assert store.max_batch == store.journal_may_lead_head == 64
    first = _head("e")
    store.save_state(first)
    with pytest.raises(UserError, match="at most 64 per batch"):
        store.append_steps(_head("e", 65), _steps("e", 0, 65, size=1))
    assert store.load_steps("e") == [] and store.load_state("e") == first
    store.append_steps(_head("e", 64), _steps("e", 0, 64, size=1))
    assert len(store.load_steps("e")) == 64


async def test_file_batch_is_one_write_and_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileDurableStorage(tmp_path / "states")
    await _started(store, "e", 1)
    journal = tmp_path / "states" / "e" / JOURNAL_FILE
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with _faults.armed("before_journal_line", action="raise", nth=10**9) as writes:
        await store.append_steps_async(_head("e", 21), _steps("e", 1, 20))
    assert writes.hits == 1  # one write of the 20 lines
    assert synced.count(journal.stat().st_ino) == 1  # and one fsync of the journal
    assert len(journal.read_bytes().splitlines()) == 21


async def test_file_crash_before_the_head_leaves_the_journal_one_batch_ahead(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    await _started(store, "e", 2)
    with _faults.armed("before_head_replace", action="raise") as crash, pytest.raises(_faults.FaultInjected):
        await store.append_steps_async(_head("e", 7), _steps("e", 2, 5))
    assert crash.fired

    reopened = FileDurableStorage(tmp_path / "states")
    head = await reopened.load_state_async("e")
    journal = await reopened.load_steps_async("e")
    assert head is not None and head.next_seq == 2 and len(journal) == 7  # every entry of the batch kept
    resumed = check_journal(reopened, head, journal)  # the engine resumes from the journal
    assert resumed.next_seq == 7 and resumed.step_index == 6
    await reopened.append_steps_async(resumed.model_copy(update={"next_seq": 9}), _steps("e", 7, 2))
    assert [s.seq for s in await reopened.load_steps_async("e")] == list(range(9))


def test_a_torn_batch_keeps_its_complete_lines_and_the_next_append_cuts_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "states"
    store = FileDurableStorage(root)
    store.save_state(_head("e"))
    script = textwrap.dedent(
        """
        import sys
        from perdure.records import ExecutionRecord, StepKind, StepRecord
        from perdure.storage import FileDurableStorage

        def steps(first, count):
            return [
                StepRecord(execution_id="e", seq=seq, kind=StepKind.TOOL_CALL, name=f"tool:t{seq}",
                           key=f"tool:call-{seq}", result={"seq": seq, "text": "x" * (40 + 37 * seq)})
                for seq in range(first, first + count)
            ]

        store = FileDurableStorage(sys.argv[1])
        store.append_steps(ExecutionRecord(execution_id="e", next_seq=2), steps(0, 2))
        store.append_steps(ExecutionRecord(execution_id="e", next_seq=6), steps(2, 4))  # torn: killed
        print("not killed")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "PERDURE_FAULT": "before_journal_line:2:torn"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -9, done.stdout + done.stderr  # SIGKILL'd halfway through the batch's write

    journal = root / "e" / JOURNAL_FILE
    lines = journal.read_bytes().split(b"\n")
    complete = len(lines) - 1 - 2  # complete lines of the batch after the first batch's two
    assert 0 < complete < 4 and lines[-1]  # a prefix of the batch, its last line torn

    head = store.load_state("e")
    entries = store.load_steps("e")  # the torn line is ignored
    assert head is not None and head.next_seq == 2 and len(entries) == 2 + complete
    assert [s.result for s in entries[2:]] == [s.result for s in _steps("e", 2, complete)]
    resumed = check_journal(store, head, entries)
    assert resumed.next_seq == 2 + complete
    nxt = resumed.next_seq
    store.append_steps(resumed.model_copy(update={"next_seq": nxt + 2}), _steps("e", nxt, 2))  # cuts the tear
    assert [s.seq for s in store.load_steps("e")] == list(range(nxt + 2))
    assert journal.read_bytes().endswith(b"\n")
