"""Batch properties: `append_steps` writes consecutive entries and their head as one write.

Each check documents its property in its docstring's first line (listed by `perdure.testing.PROPERTIES`)
and gets a fresh, empty storage. The contract is `DurableExecutionStorage.append_steps_async`.
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionNotFoundError,
    LeaseLostError,
    SerializationError,
    StepConflictError,
    UserError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from ..storage.base import DurableExecutionStorage
from ._checks import (
    ConformanceFailure,
    Subject,
    check,
    create,
    expect,
    expect_equal,
    expect_ok,
    expect_raises,
    full_record,
    head,
    invisible,
    step,
    unleased,
)

__all__: list[str] = []


def batch(execution_id: str, first: int, count: int, **fields: Any) -> list[StepRecord]:
    """`count` journal entries with consecutive seqs from `first`, of alternating kinds."""
    return [
        step(execution_id, seq, kind=StepKind.MODEL_REQUEST, name="model_request", tokens=seq)
        if seq % 2
        else step(execution_id, seq, **fields)
        for seq in range(first, first + count)
    ]


def _seqs(entries: list[StepRecord]) -> str:
    return f"{entries[0].seq}..{entries[-1].seq}" if len(entries) > 1 else str(entries[0].seq)


async def _unchanged(
    storage: DurableExecutionStorage,
    execution_id: str,
    last: ExecutionRecord | None,
    journal: list[StepRecord],
    why: str,
) -> None:
    """Fail unless head and journal are still `last` and `journal`: a refused batch wrote nothing."""
    after = await storage.load_steps_async(execution_id)
    if after != journal:
        written = [e.seq for e in after[len(journal) :]]
        raise ConformanceFailure(
            f"{why}: the journal holds seqs {[e.seq for e in after]}, expected {[e.seq for e in journal]}"
            + (f" (entries {written} of the refused batch were written)" if written else "")
        )
    expect_equal(await storage.load_state_async(execution_id), last, f"head after {why} (it must not change)")


@check("batch.head_and_entries")
async def _head_and_entries(s: Subject) -> None:
    """append_steps stores every entry of a batch and the batch's head together (all visible after it)."""
    storage = s.storage
    await storage.save_state_async(head("exec-a"))
    journal: list[StepRecord] = []
    for size in (3, 1, 5):
        entries = batch("exec-a", len(journal), size)
        record = head("exec-a", len(journal) + size, usage={"requests": len(journal) + size})
        await storage.append_steps_async(record, entries)
        journal += entries
        what = f"append_steps_async(head next_seq={record.next_seq}, entries seq {_seqs(entries)})"
        stored = await storage.load_steps_async("exec-a")
        if [e.seq for e in stored] != [e.seq for e in journal]:
            raise ConformanceFailure(
                f"journal after {what} holds seqs {[e.seq for e in stored]}, expected "
                f"{[e.seq for e in journal]} (entries of the batch were lost)"
            )
        for got, want in zip(stored, journal, strict=True):
            expect_equal(got, want, f"journal entry {want.seq} after {what} (an entry was changed)")
        expect_equal(
            await storage.load_state_async("exec-a"),
            record,
            f"load_state_async after {what} (the head of the batch was lost or changed)",
        )


@check("batch.order")
async def _order(s: Subject) -> None:
    """Batches, single appends and other executions' writes interleave: seqs 0..n-1, in order, intact."""
    storage = s.storage
    await create(storage, "exec-b", steps=1)
    await storage.save_state_async(head("exec-order"))
    expected: list[StepRecord] = []
    for size in (2, 1, 4, 1, 3):
        first = len(expected)
        if size == 1:
            entry = step("exec-order", first)
            await storage.append_step_async(head("exec-order", first + 1), entry)
            expected.append(entry)
            what = f"a single append of seq {first}"
        else:
            entries = batch("exec-order", first, size)
            await storage.append_steps_async(head("exec-order", first + size), entries)
            expected += entries
            what = f"a batch of seqs {_seqs(entries)}"
        expect_equal(
            [e.seq for e in await storage.load_steps_async("exec-order")],
            list(range(len(expected))),
            f"seqs returned by load_steps_async after {what}",
        )
        seq_b = len(await storage.load_steps_async("exec-b"))  # another execution writes in between
        await storage.append_steps_async(head("exec-b", seq_b + 2), batch("exec-b", seq_b, 2))
    journal = await storage.load_steps_async("exec-order")
    expect(
        all(e.execution_id == "exec-order" for e in journal),
        "load_steps_async returned another execution's entries",
    )
    for got, want in zip(journal, expected, strict=True):
        expect_equal(got, want, f"journal entry {want.seq} (batches and single appends interleaved)")
    expect_equal([e.seq for e in await storage.load_steps_async("exec-b")], list(range(11)), "seqs of exec-b")
    expect_equal(
        getattr(await storage.load_state_async("exec-b"), "next_seq", None), 11, "next_seq of exec-b"
    )


@check("batch.refused_writes_nothing")
async def _refused(s: Subject) -> None:
    """A refused batch (bad batch, journaled seq, unstorable entry, lease lost) raises and writes nothing.

    A conflict on a later seq of the batch (a backend that stores a journal with a gap, as SQL ones
    do) is checked on backends that declare `atomic_batches`; the default `append_steps_async`
    appends entry by entry and cannot roll back the entries before the conflict.
    """
    storage = s.storage
    last = await create(storage, "exec-r", steps=2)
    journal = await storage.load_steps_async("exec-r")
    malformed: list[tuple[str, list[StepRecord]]] = [
        ("an empty batch", []),
        ("a batch of seqs 2 and 4 (not consecutive)", [step("exec-r", 2), step("exec-r", 4)]),
        ("a batch of seqs 3 and 2 (out of order)", [step("exec-r", 3), step("exec-r", 2)]),
        ("a batch holding an entry of another execution", [step("exec-r", 2), step("exec-other", 3)]),
    ]
    for what, entries in malformed:
        await expect_raises(
            UserError, storage.append_steps_async(head("exec-r", 4), entries), f"append_steps_async of {what}"
        )
        await _unchanged(storage, "exec-r", last, journal, f"append_steps_async of {what}")
    # A batch that starts at a journaled seq.
    intruder = head("exec-r", 4, status=ExecutionStatus.FAILED)
    error = await expect_raises(
        StepConflictError,
        storage.append_steps_async(intruder, batch("exec-r", 1, 3, result={"other": True})),
        "append_steps_async of seqs 1..3 while seq 1 is journaled",
    )
    expect(
        getattr(error, "execution_id", None) == "exec-r" and getattr(error, "seq", None) in (1, 2, 3),
        f"StepConflictError names execution {getattr(error, 'execution_id', None)!r} seq "
        f"{getattr(error, 'seq', None)!r}; expected 'exec-r' and a seq of the batch (1)",
    )
    await _unchanged(storage, "exec-r", last, journal, "a conflicting batch (seqs 1..3, seq 1 journaled)")
    # A batch whose second entry cannot be stored: refused before the first one is written.
    unstorable = [step("exec-r", 2), step("exec-r", 3, {"value": float("nan")})]
    await expect_raises(
        SerializationError,
        storage.append_steps_async(head("exec-r", 4), unstorable),
        "append_steps_async of seqs 2..3 whose seq 3 holds NaN (no JSON form)",
    )
    await _unchanged(storage, "exec-r", last, journal, "a batch whose second entry cannot be encoded")
    # A batch fenced off by another worker's lease.
    await storage.acquire_lease_async("exec-r", "w1", 30)
    leased = await storage.load_state_async("exec-r")
    expect(leased is not None, "load_state_async('exec-r') returned None after acquire_lease_async")
    error = await expect_raises(
        LeaseLostError,
        storage.append_steps_async(head("exec-r", 4, lease_owner="w0"), batch("exec-r", 2, 2)),
        "append_steps_async by 'w0' while 'w1' holds an unexpired lease",
    )
    expect(
        getattr(error, "holder", None) == "w1",
        f"LeaseLostError names holder {getattr(error, 'holder', None)!r}, expected 'w1'",
    )
    await _unchanged(storage, "exec-r", leased, journal, "a batch fenced off by another worker's lease")
    # The holder's batch goes through after all that.
    done = head("exec-r", 4, lease_owner="w1")
    await expect_ok(
        storage.append_steps_async(done, batch("exec-r", 2, 2)), "append_steps_async by the holder 'w1'"
    )
    expect_equal(
        [e.seq for e in await storage.load_steps_async("exec-r")],
        [0, 1, 2, 3],
        "seqs after the holder's batch",
    )
    await _conflict_on_a_later_seq(s)


async def _conflict_on_a_later_seq(s: Subject) -> None:
    """Seqs 1..2 while 0 and 2 are journaled (a gap the backend accepted): all or nothing."""
    storage = s.storage
    await create(storage, "exec-gap", steps=1)
    try:
        await storage.append_step_async(head("exec-gap", 3), step("exec-gap", 2))  # skips seq 1
    except StepConflictError:
        return  # the backend refuses a gap: no batch can conflict after its first seq
    last = await storage.load_state_async("exec-gap")
    if not storage.atomic_batches:
        return
    error = await expect_raises(
        StepConflictError,
        storage.append_steps_async(
            head("exec-gap", 3, status=ExecutionStatus.FAILED), batch("exec-gap", 1, 2)
        ),
        "append_steps_async of seqs 1..2 while seq 2 is journaled (and seq 1 is not)",
    )
    expect(
        getattr(error, "seq", None) in (1, 2),
        f"StepConflictError names seq {getattr(error, 'seq', None)!r}; expected a seq of the batch (2)",
    )
    try:
        steps = await storage.load_steps_async("exec-gap")
    except CorruptRecordError:  # seq 1 is still missing: the refused batch wrote no entry
        steps = None
    if steps is not None:
        raise ConformanceFailure(
            f"a batch refused at its second seq (2, journaled) wrote its first entry: the journal reads "
            f"as seqs {[e.seq for e in steps]} (atomic_batches is True: a refused batch writes nothing)"
        )
    expect_equal(
        await storage.load_state_async("exec-gap"),
        last,
        "head after a batch refused at its second seq (it must not change)",
    )


@check("batch.never_creates")
async def _never_creates(s: Subject) -> None:
    """append_steps without a head raises ExecutionNotFoundError, after a delete ExecutionDeletedError."""
    storage = s.storage
    await create(storage, "exec-exists", steps=1)
    error = await expect_raises(
        ExecutionNotFoundError,
        storage.append_steps_async(head("exec-new", 2), batch("exec-new", 0, 2)),
        "append_steps_async of an execution without a head",
    )
    expect(
        getattr(error, "execution_id", None) == "exec-new",
        f"ExecutionNotFoundError names {getattr(error, 'execution_id', None)!r}, expected 'exec-new'",
    )
    await invisible(storage, "exec-new", "after a refused batch of a new id")
    await create(storage, "exec-t", steps=2)
    expect_equal(await storage.delete_state_async("exec-t"), True, "delete_state_async('exec-t')")
    before = await storage.get_stats_async()
    for first in (2, 0):
        error = await expect_raises(
            ExecutionDeletedError,
            storage.append_steps_async(head("exec-t", first + 2), batch("exec-t", first, 2)),
            f"append_steps_async of seqs {first}..{first + 1} after delete_state_async",
        )
        expect(
            getattr(error, "execution_id", None) == "exec-t",
            f"ExecutionDeletedError names {getattr(error, 'execution_id', None)!r}, expected 'exec-t'",
        )
    await invisible(storage, "exec-t", "after refused batches of a deleted id")
    expect_equal(await storage.get_stats_async(), before, "get_stats_async() after refused batches")
    expect_equal(
        [e.seq for e in await storage.load_steps_async("exec-exists")], [0], "journal of the other execution"
    )


@check("batch.survives_reopen", needs=["reopen"])
async def _survives_reopen(s: Subject) -> None:
    """A stored batch is read by another instance, which continues it; a stale instance's batch conflicts."""
    first = s.storage
    await first.save_state_async(head("exec-persist"))
    last = unleased(full_record("exec-persist")).model_copy(update={"next_seq": 3})
    written = batch("exec-persist", 0, 3)
    await first.append_steps_async(last, written)
    await first.close_async()
    second = await s.reopen()
    expect_equal(
        await second.load_state_async("exec-persist"), last, "head of a batch read through a new instance"
    )
    expect_equal(
        await second.load_steps_async("exec-persist"),
        written,
        "journal of a batch read through a new instance",
    )
    third = await s.reopen()
    await third.load_steps_async("exec-persist")
    await second.append_steps_async(last.model_copy(update={"next_seq": 5}), batch("exec-persist", 3, 2))
    await expect_raises(
        StepConflictError,
        third.append_steps_async(
            last.model_copy(update={"next_seq": 5}), batch("exec-persist", 3, 2, result={"x": 1})
        ),
        "append_steps_async of seqs 3..4 through a third instance after the second one wrote them",
    )
    await third.append_steps_async(last.model_copy(update={"next_seq": 7}), batch("exec-persist", 5, 2))
    seqs = [e.seq for e in await second.load_steps_async("exec-persist")]
    expect_equal(seqs, list(range(7)), "journal seqs read through the second instance")
    expect_equal(
        getattr(await second.load_state_async("exec-persist"), "next_seq", None), 7, "next_seq of the head"
    )
