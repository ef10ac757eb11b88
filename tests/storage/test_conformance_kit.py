"""The conformance kit itself (`perdure.testing`): it catches broken backends and names what they break.

Each broken backend below is the in-memory storage with one deliberate bug; the kit must report the
property that bug breaks, by name, with a message saying which call returned what. The kit's report,
its selection of properties, its timeout, its hooks, its sync form and its pytest form are tested
here too. The built-in backends pass it in `test_storage_conformance.py` / `test_lease_conformance.py`,
the README's custom backend in `test_readme.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from perdure.codec import encode_head, encode_step
from perdure.errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    SerializationError,
    StepConflictError,
    UserError,
)
from perdure.records import ExecutionRecord, StepKind, StepRecord
from perdure.storage import DurableExecutionStorage, InMemoryDurableStorage, SQLiteDurableStorage
from perdure.testing import PROPERTIES, ConformanceReport, PropertyResult, check_storage, check_storage_sync
from support.paths import ROOT

TTL = 0.1  # the in-memory backend needs no slack: keep these runs short


def put_raw_head(store: DurableExecutionStorage, execution_id: str, payload: bytes) -> None:
    store._put_raw_head(execution_id, payload)  # type: ignore[attr-defined]


# ---- deliberately broken backends -------------------------------------------------------------------


class DropsHeadUpdate(InMemoryDurableStorage):
    """Appends the journal entry of a step but keeps the old head."""

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        with self._lock:
            self._writable(record, create=False)
            self._fence(record)
            journal = self._journals.setdefault(step.execution_id, [])
            if step.seq != len(journal):
                raise StepConflictError(step.execution_id, step.seq)
            journal.append(encode_step(step))


class IgnoresFencing(InMemoryDurableStorage):
    """Lets anyone write while another worker holds the lease."""

    def _fence(self, record: ExecutionRecord) -> None:
        return None


class OverwritesJournaledSeq(InMemoryDurableStorage):
    """Replaces a journaled entry instead of refusing the second writer."""

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        with self._lock:
            journal = self._journals.get(step.execution_id)
            if journal is not None and step.seq < len(journal):
                journal[step.seq] = encode_step(step)
                return
        await super().append_step_async(record, step)


class ForgetsDeletes(InMemoryDurableStorage):
    """Deletes without a tombstone: a late write of the deleted execution re-creates it."""

    def _delete(self, execution_id: str, *, force: bool, now: datetime) -> bool:
        deleted = super()._delete(execution_id, force=force, now=now)
        self._tombstones.pop(execution_id, None)
        return deleted


class LeasesNeverExpire(InMemoryDurableStorage):
    """Refuses another owner even after the lease expired: a dead worker's executions are stuck."""

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        lease = self._leases.get(execution_id)
        if lease is not None and lease[0] not in (owner, steal_from):
            raise ExecutionLeasedError(execution_id, lease[0], lease[1])
        return await super().acquire_lease_async(execution_id, owner, ttl_seconds, steal_from=steal_from)


class ListsOldestFirst(InMemoryDurableStorage):
    async def list_executions_async(
        self, status: object = None, limit: int | None = None
    ) -> list[ExecutionRecord]:
        heads = await super().list_executions_async(status, None)  # type: ignore[arg-type]
        heads.reverse()
        return heads if limit is None else heads[:limit]


class FailsOnDamagedHeads(InMemoryDurableStorage):
    """Lets a damaged head break list and stats instead of skipping it."""

    async def _iter_heads_async(self) -> list[ExecutionRecord]:
        heads = list(await super()._iter_heads_async())
        if len(heads) != len(self._heads):
            raise CorruptRecordError("?", "a head could not be decoded")
        return heads


class HangsOnStats(InMemoryDurableStorage):
    async def get_stats_async(self) -> dict[str, object]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class CrashesOnRelease(InMemoryDurableStorage):
    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        return {}[execution_id]  # type: ignore[no-any-return]  # a KeyError the contract does not allow


class WritesFirstEntryOnly(InMemoryDurableStorage):
    """Journals only the first entry of a batch (with the batch's head)."""

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        await self.append_step_async(record, steps[0])


class EncodesWhileWriting(InMemoryDurableStorage):
    """Encodes and appends entry by entry under the lock: an unstorable entry leaves those before it."""

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        batch = self._batch(record, steps)
        with self._lock:
            self._writable(record, create=False)
            self._fence(record)
            journal = self._journals.setdefault(record.execution_id, [])
            if batch[0].seq != len(journal):
                raise StepConflictError(record.execution_id, batch[0].seq)
            for step in batch:
                journal.append(encode_step(step))
            self._heads[record.execution_id] = encode_head(record)


class CreatesOnBatch(InMemoryDurableStorage):
    """Lets a batch create a missing head (and, through the tombstone check it skips, a deleted one)."""

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        with self._lock:
            self._heads.setdefault(record.execution_id, encode_head(record))
            self._tombstones.pop(record.execution_id, None)
        await super().append_steps_async(record, steps)


class LoopingSQLite(SQLiteDurableStorage):
    """Claims atomic batches but appends entry by entry (the base default): not one transaction."""

    atomic_batches = True
    append_steps_async = DurableExecutionStorage.append_steps_async  # type: ignore[assignment]


class DefaultBatchesMemory(InMemoryDurableStorage):
    """A custom backend that keeps the base class's `append_steps_async` (entry by entry)."""

    atomic_batches = False
    append_steps_async = DurableExecutionStorage.append_steps_async  # type: ignore[assignment]


class DefaultBatchesSQLite(SQLiteDurableStorage):
    """The same on a backend that accepts a journal with a gap (where a batch can fail at its 2nd seq)."""

    atomic_batches = False
    append_steps_async = DurableExecutionStorage.append_steps_async  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("backend", "prop", "says"),
    [
        (DropsHeadUpdate, "step.atomic_head_and_journal", "head update of the step was lost"),
        (
            IgnoresFencing,
            "lease.fencing",
            "append_step_async by 'w0' while 'w1' holds an unexpired lease returned",
        ),
        (OverwritesJournaledSeq, "step.seq_conflict", "expected it to raise StepConflictError"),
        (
            ForgetsDeletes,
            "delete.no_recreation",
            "after delete_state_async returned None; expected it to raise",
        ),
        (
            LeasesNeverExpire,
            "lease.steal_on_expiry",
            "by another owner after the lease expired raised ExecutionLeasedError",
        ),
        (ListsOldestFirst, "list.filter_order_limit", "list_executions_async() order"),
        (FailsOnDamagedHeads, "corrupt_record.skipped_by_list_and_stats", "raised CorruptRecordError"),
        (CrashesOnRelease, "lease.release", "raised KeyError: 'exec-l' (at _leases.py:"),
        (WritesFirstEntryOnly, "batch.head_and_entries", "(entries of the batch were lost)"),
        (WritesFirstEntryOnly, "batch.order", "seqs returned by load_steps_async after a batch of seqs 0..1"),
        (
            EncodesWhileWriting,
            "batch.refused_writes_nothing",
            "a batch whose second entry cannot be encoded: the journal holds seqs [0, 1, 2], expected "
            "[0, 1] (entries [2] of the refused batch were written)",
        ),
        (CreatesOnBatch, "batch.never_creates", "append_steps_async of an execution without a head returned"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
async def test_a_broken_backend_fails_the_property_it_breaks(
    backend: type[InMemoryDurableStorage], prop: str, says: str
) -> None:
    group = prop.split(".")[0] + ".*"
    report = await check_storage(backend, raw_writer=put_raw_head, only=[group], lease_ttl=TTL)
    assert prop in report.failed, report
    assert says in report[prop].message, report[prop].message
    with pytest.raises(AssertionError) as info:
        report.raise_for_failures()
    for name in report.failed:
        assert name in str(info.value)
    assert report[prop].message in str(info.value)


async def test_a_batch_that_is_not_one_transaction_fails_atomicity(tmp_path: Path) -> None:
    """On a backend that stores a gap, a batch can fail at its 2nd seq: only one write rolls back the 1st."""
    counter = itertools.count()
    report = await check_storage(lambda: LoopingSQLite(tmp_path / f"{next(counter)}.db"), only=["batch.*"])
    assert report.failed == ("batch.refused_writes_nothing",), report
    assert report["batch.refused_writes_nothing"].message == (
        "a batch refused at its second seq (2, journaled) wrote its first entry: the journal reads as seqs "
        "[0, 1, 2] (atomic_batches is True: a refused batch writes nothing)"
    )


async def test_the_default_batch_of_a_custom_backend_passes(tmp_path: Path) -> None:
    """The base class's `append_steps_async` keeps the contract, entry by entry (`atomic_batches` False)."""
    report = await check_storage(DefaultBatchesMemory, only=["batch.*", "sync_twins.*"], lease_ttl=TTL)
    assert report.ok and report.skipped == ("batch.survives_reopen",), report
    counter = itertools.count()
    on_sqlite = await check_storage(
        lambda: DefaultBatchesSQLite(tmp_path / f"{next(counter)}.db"), only=["batch.*"]
    )
    assert on_sqlite.ok, on_sqlite


async def test_the_default_batch_writes_each_entry_with_a_head_that_counts_it() -> None:
    store = DefaultBatchesMemory()
    writes: list[tuple[int, int, str]] = []
    single = InMemoryDurableStorage.append_step_async

    async def spy(record: ExecutionRecord, step: StepRecord) -> None:
        writes.append((step.seq, record.next_seq, record.step_name))
        await single(store, record, step)

    store.append_step_async = spy  # type: ignore[method-assign]
    await store.save_state_async(ExecutionRecord(execution_id="e"))
    final = ExecutionRecord(execution_id="e", next_seq=3, step_name="last")
    steps = [
        StepRecord(execution_id="e", seq=seq, kind=StepKind.TOOL_CALL, name="t", key=f"k{seq}")
        for seq in range(3)
    ]
    await store.append_steps_async(final, steps)
    assert writes == [(0, 1, "last"), (1, 2, "last"), (2, 3, "last")]
    assert await store.load_state_async("e") == final
    # Checked and encoded before the first write: a malformed batch or an unstorable value writes nothing.
    unstorable = StepRecord(
        execution_id="e", seq=4, kind=StepKind.TOOL_CALL, name="t", key="k", result={"x": float("nan")}
    )
    for bad in ([steps[0].model_copy(update={"seq": 3}), unstorable], []):
        with pytest.raises((SerializationError, UserError)):
            await store.append_steps_async(final.model_copy(update={"next_seq": 5}), bad)
    assert len(writes) == 3 and len(await store.load_steps_async("e")) == 3


def test_batches_longer_than_max_batch_are_refused() -> None:
    class Bounded(InMemoryDurableStorage):
        max_batch = 2

    store = Bounded()
    store.save_state(ExecutionRecord(execution_id="e"))
    steps = [
        StepRecord(execution_id="e", seq=seq, kind=StepKind.TOOL_CALL, name="t", key=f"k{seq}")
        for seq in range(3)
    ]
    with pytest.raises(UserError, match="takes at most 2 per batch"):
        store.append_steps(ExecutionRecord(execution_id="e", next_seq=3), steps)
    assert store.load_steps("e") == []
    store.append_steps(ExecutionRecord(execution_id="e", next_seq=2), steps[:2])
    assert [s.seq for s in store.load_steps("e")] == [0, 1]


async def test_the_whole_kit_names_exactly_the_broken_property() -> None:
    report = await check_storage(IgnoresFencing, raw_writer=put_raw_head, lease_ttl=TTL)
    # Unfenced batches break the batch property too (a batch by 'w0' under 'w1's lease went through).
    assert report.failed == ("batch.refused_writes_nothing", "lease.fencing"), report
    assert set(report.skipped) == {
        "step.second_writer_conflicts",
        "batch.survives_reopen",
        "lease.survives_reopen",
        "persistence.reopen",
        "cancel.seen_by_another_instance",
    }
    assert len(report.results) == len(PROPERTIES) and not report.ok
    assert report.summary() == (
        f"IgnoresFencing: {len(PROPERTIES) - 7} of {len(PROPERTIES)} properties passed, "
        f"2 failed (batch.refused_writes_nothing, lease.fencing), 5 skipped"
    )
    assert report["batch.refused_writes_nothing"].message.startswith(
        "append_steps_async by 'w0' while 'w1' holds an unexpired lease returned None"
    )
    message = report["lease.fencing"].message
    assert message.startswith("append_step_async by 'w0' while 'w1' holds an unexpired lease returned None")

    dropping = await check_storage(DropsHeadUpdate, raw_writer=put_raw_head, lease_ttl=TTL)
    assert "step.atomic_head_and_journal" in dropping.failed
    assert "next_seq got 0, expected 1" in dropping["step.atomic_head_and_journal"].message
    assert "lease.acquire" in dropping.passed  # unrelated properties still pass: every property runs


async def test_a_sound_backend_passes_and_hooks_unlock_the_rest() -> None:
    shared: dict[int, InMemoryDurableStorage] = {}

    def reopen(store: DurableExecutionStorage) -> DurableExecutionStorage | None:
        return shared.get(id(store))  # None: cannot be opened twice -> skipped, saying why

    report = await check_storage(InMemoryDurableStorage, lease_ttl=TTL, reopen=reopen)
    assert report.ok and not report.failed
    assert set(report.skipped) == {
        "corrupt_record.skipped_by_list_and_stats",
        "newer_schema.skipped_by_list_and_stats",
        "step.second_writer_conflicts",
        "batch.survives_reopen",
        "lease.survives_reopen",
        "persistence.reopen",
        "cancel.seen_by_another_instance",
    }
    assert "needs raw_writer=" in report["corrupt_record.skipped_by_list_and_stats"].message
    assert "reopen() returned None" in report["persistence.reopen"].message
    assert report.passed == tuple(n for n in PROPERTIES if n not in report.skipped)
    with_raw = await check_storage(
        InMemoryDurableStorage, raw_writer=put_raw_head, only=["*_record.*", "newer*"]
    )
    assert with_raw.summary() == "InMemoryDurableStorage: all 2 properties passed"
    with_raw.raise_for_failures()  # nothing failed: no error


async def test_async_factory_and_async_hooks() -> None:
    async def factory() -> DurableExecutionStorage:
        return InMemoryDurableStorage()

    async def raw_writer(store: DurableExecutionStorage, execution_id: str, payload: bytes) -> None:
        put_raw_head(store, execution_id, payload)

    report = await check_storage(factory, raw_writer=raw_writer, only=["corrupt_record.*", "head.*"])
    assert report.ok and len(report.passed) == 4, report


async def test_factory_mistakes_are_named() -> None:
    shared = InMemoryDurableStorage()
    reused = await check_storage(lambda: shared, only=["head.*", "stats.shape"])
    assert "head.save_load_roundtrip" in reused.passed  # the first property gets an empty storage
    assert "fresh, empty storage each call" in reused["stats.shape"].message

    def not_a_storage() -> DurableExecutionStorage:
        return {}  # type: ignore[return-value]

    wrong = await check_storage(not_a_storage, only=["head.*"])
    assert wrong.failed == tuple(n for n in PROPERTIES if n.startswith("head."))
    assert (
        "the factory returned dict, not a DurableExecutionStorage"
        in wrong["head.load_unknown_is_none"].message
    )

    def broken() -> DurableExecutionStorage:
        raise ConnectionRefusedError("no server")

    refused = await check_storage(broken, only=["stats.shape"])
    assert refused["stats.shape"].message.startswith("raised ConnectionRefusedError: no server")
    assert "Traceback" in refused["stats.shape"].details


async def test_a_hanging_call_times_out_and_the_rest_still_runs() -> None:
    report = await check_storage(HangsOnStats, only=["stats.shape", "head.load_unknown_is_none"], timeout=0.3)
    assert report.failed == ("stats.shape",)
    assert report.passed == ("head.load_unknown_is_none",)
    result = report["stats.shape"]
    assert result.message.startswith("did not finish within 0.3s (at _storage.py:")
    assert "get_stats_async" in result.message
    assert result.seconds < 2


async def test_selection_and_arguments_are_checked() -> None:
    with pytest.raises(UserError, match=r"only='leases\.\*' matches no conformance property"):
        await check_storage(InMemoryDurableStorage, only=["leases.*"])
    with pytest.raises(UserError, match="skip='nope'"):
        await check_storage(InMemoryDurableStorage, skip=["nope"])
    with pytest.raises(UserError, match="lease_ttl"):
        await check_storage(InMemoryDurableStorage, lease_ttl=0)
    report = await check_storage(InMemoryDurableStorage, only=["delete.*"], skip=["delete.leased*"])
    assert report.passed == ("delete.removes_head_and_journal", "delete.no_recreation")


def test_sync_form_outside_and_inside_a_running_loop() -> None:
    report = check_storage_sync(InMemoryDurableStorage, only=["sync_twins.*", "step.seq_conflict"])
    assert report.ok and len(report.passed) == 3, report

    async def inside() -> ConformanceReport:
        return check_storage_sync(InMemoryDurableStorage, only=["sync_twins.inside_running_loop"])

    assert asyncio.run(inside()).passed == ("sync_twins.inside_running_loop",)


def test_results_print_one_line_each() -> None:
    assert str(PropertyResult("lease.renew", "failed", "renew_lease_async returned 1")) == (
        "FAILED lease.renew: renew_lease_async returned 1"
    )
    assert str(PropertyResult("lease.renew", "passed")) == "PASSED lease.renew"
    report = ConformanceReport(
        "X", (PropertyResult("a.b", "passed"), PropertyResult("c.d", "skipped", "why"))
    )
    assert str(report) == "X: 1 of 2 properties passed, 1 skipped\n  SKIPPED c.d: why"
    with pytest.raises(KeyError):
        report["e.f"]


def test_pytest_form_and_import_without_pytest(tmp_path: Path) -> None:
    """`pytest_suite` gives one test id per property; `import perdure.testing` does not import pytest."""
    no_pytest = "import sys, perdure.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", no_pytest], check=True, timeout=60)
    (tmp_path / "test_user_backend.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from perdure.storage import InMemoryDurableStorage
            from perdure.testing import pytest_suite

            class IgnoresFencing(InMemoryDurableStorage):
                def _fence(self, record):
                    return None

            @pytest.fixture
            def make_storage():
                return IgnoresFencing

            test_sound = pytest_suite(InMemoryDurableStorage, only=["head.*", "corrupt_record.*"])
            test_fixture = pytest_suite("make_storage", only=["lease.fencing", "stats.shape"], lease_ttl=0.1)
            test_known_bug = pytest_suite(
                IgnoresFencing, only=["lease.fencing"], xfail={"lease.fencing": "not done yet"}, lease_ttl=0.1
            )
            """
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-c",
            "/dev/null",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    for line in (
        "test_sound[head.save_load_roundtrip] PASSED",
        "test_sound[head.large_values_roundtrip] PASSED",
        "test_sound[corrupt_record.skipped_by_list_and_stats] SKIPPED",
        "test_fixture[lease.fencing] FAILED",
        "test_fixture[stats.shape] PASSED",
        "test_known_bug[lease.fencing] XFAIL",
    ):
        assert line in out, out
    assert "corrupt_record.skipped_by_list_and_stats: needs raw_writer=" in out
    assert "lease.fencing: append_step_async by 'w0' while 'w1' holds an unexpired lease" in out
    assert "1 failed, 4 passed, 1 skipped, 1 xfailed" in out, out


def test_readme_lists_every_property() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Writing a custom backend", 1)[1].split("\n## ", 1)[0]
    assert [name for name in PROPERTIES if f"`{name}`" not in section] == []
    assert f"The {len(PROPERTIES)} properties" in section
