"""Journal properties: head round trips, atomic step writes, seq conflicts, order, gaps, reopening.

Each check documents its property in its docstring's first line (listed by `perdure.testing.PROPERTIES`)
and gets a fresh, empty storage. The contract itself is written in `perdure.storage.base`.
"""

from __future__ import annotations

import asyncio

from ..errors import (
    CorruptRecordError,
    ExecutionNotFoundError,
    StepConflictError,
)
from ..records import ExecutionStatus, StepKind
from ._checks import (
    Subject,
    check,
    create,
    expect,
    expect_equal,
    expect_raises,
    full_record,
    head,
    invisible,
    step,
    unleased,
)

# ---- heads ---------------------------------------------------------------------------------------


@check("head.save_load_roundtrip")
async def _save_load_roundtrip(s: Subject) -> None:
    """save_state then load_state returns an equal head (every field); a save overwrites the head."""
    storage = s.storage
    await storage.save_state_async(head("exec-rt"))
    record = full_record("exec-rt")
    await storage.save_state_async(record)
    loaded = await storage.load_state_async("exec-rt")
    expect(loaded is not None, "load_state_async('exec-rt') returned None after save_state_async")
    # The lease is stored apart from the head body: a head write never sets it.
    expect_equal(loaded, unleased(record), "load_state_async after save_state_async of a full record")
    expect(loaded is not record, "load_state_async returned the very object that was saved (share nothing)")
    assert loaded is not None
    expect(
        loaded.updated_at.tzinfo is not None and loaded.created_at.tzinfo is not None,
        "load_state_async returned naive datetimes: keep the timezone (UTC)",
    )
    overwrite = unleased(record).model_copy(update={"status": ExecutionStatus.COMPLETED, "step_index": 4})
    await storage.save_state_async(overwrite)
    expect_equal(await storage.load_state_async("exec-rt"), overwrite, "load_state_async after an overwrite")


@check("head.load_unknown_is_none")
async def _load_unknown(s: Subject) -> None:
    """Reading an id the storage does not hold returns None (head) and [] (journal), sync twin too."""
    storage = s.storage
    await storage.save_state_async(head("exec-other"))  # the storage exists, the id does not
    expect_equal(await storage.load_state_async("does-not-exist"), None, "load_state_async of an unknown id")
    expect_equal(await storage.load_steps_async("does-not-exist"), [], "load_steps_async of an unknown id")
    expect_equal(
        await asyncio.to_thread(storage.load_state, "does-not-exist"), None, "load_state of an unknown id"
    )


@check("head.large_values_roundtrip")
async def _large_values(s: Subject) -> None:
    """A 1 MiB head output and a 1 MiB step result are stored and read back intact."""
    storage = s.storage
    big = "x" * (1024 * 1024)
    await storage.save_state_async(head("exec-big"))
    record = head("exec-big", 1, output={"text": big})
    await storage.append_step_async(record, step("exec-big", 0, {"blob": big, "n": [1] * 1000}))
    loaded = await storage.load_state_async("exec-big")
    expect(
        loaded is not None and loaded.output == {"text": big},
        "load_state_async did not return the 1 MiB output intact",
    )
    entries = await storage.load_steps_async("exec-big")
    expect(
        len(entries) == 1 and entries[0].result == {"blob": big, "n": [1] * 1000},
        "load_steps_async did not return the 1 MiB step result intact",
    )


# ---- steps and the journal -----------------------------------------------------------------------


@check("step.atomic_head_and_journal")
async def _atomic_step(s: Subject) -> None:
    """append_step stores the journal entry and the new head together (both visible after it returns)."""
    storage = s.storage
    await storage.save_state_async(head("exec-a"))
    for seq in range(3):
        record = head("exec-a", seq + 1, usage={"requests": seq + 1})
        entry = step(
            "exec-a",
            seq,
            {"text": f"answer {seq}"},
            kind=StepKind.MODEL_REQUEST,
            name="model_request",
            tokens=9 + seq,
        )
        await storage.append_step_async(record, entry)
        expect_equal(
            await storage.load_state_async("exec-a"),
            record,
            f"load_state_async after append_step_async(head next_seq={seq + 1}, step seq={seq}) "
            f"(the head update of the step was lost or changed)",
        )
        journal = await storage.load_steps_async("exec-a")
        expect_equal(
            journal[-1:],
            [entry],
            f"last journal entry after append_step_async(step seq={seq}) "
            f"(the journal entry was lost or changed)",
        )


@check("step.seq_conflict")
async def _seq_conflict(s: Subject) -> None:
    """Appending a seq that is already journaled raises StepConflictError and changes nothing."""
    storage = s.storage
    last = await create(storage, "exec-c", steps=2)
    before = await storage.load_steps_async("exec-c")
    intruder = head("exec-c", 99, status=ExecutionStatus.FAILED)
    for seq in (0, 1):  # a journaled seq is never overwritten
        error = await expect_raises(
            StepConflictError,
            storage.append_step_async(intruder, step("exec-c", seq, {"other": True})),
            f"append_step_async of seq {seq}, already journaled",
        )
        expect(
            isinstance(error, StepConflictError) and (error.execution_id, error.seq) == ("exec-c", seq),
            f"StepConflictError names execution {getattr(error, 'execution_id', None)!r} seq "
            f"{getattr(error, 'seq', None)!r}; expected 'exec-c' seq {seq}",
        )
    expect_equal(await storage.load_state_async("exec-c"), last, "head after a refused (conflicting) append")
    expect_equal(
        await storage.load_steps_async("exec-c"), before, "journal after a refused (conflicting) append"
    )
    await storage.append_step_async(head("exec-c", 3), step("exec-c", 2))  # the next seq still works
    seqs = [e.seq for e in await storage.load_steps_async("exec-c")]
    expect_equal(seqs, [0, 1, 2], "journal seqs after appending seq 2 following a conflict")


@check("step.never_creates")
async def _never_creates(s: Subject) -> None:
    """append_step without a head, or a leased save_state of a new id, raises ExecutionNotFoundError."""
    storage = s.storage
    await create(storage, "exec-exists")
    error = await expect_raises(
        ExecutionNotFoundError,
        storage.append_step_async(head("exec-new", 1), step("exec-new", 0)),
        "append_step_async of an execution without a head",
    )
    expect(
        getattr(error, "execution_id", None) == "exec-new",
        f"ExecutionNotFoundError names {getattr(error, 'execution_id', None)!r}, expected 'exec-new'",
    )
    await expect_raises(
        ExecutionNotFoundError,
        storage.save_state_async(head("exec-new", lease_owner="w1")),
        "save_state_async of a new id by a running attempt (lease_owner set)",
    )
    await invisible(storage, "exec-new", "after refused writes of a new id")
    stats = await storage.get_stats_async()
    expect_equal(
        stats.get("total_executions"), 1, "get_stats_async()['total_executions'] after refused writes"
    )
    await storage.save_state_async(head("exec-new"))  # the unleased first write of a new run creates it
    await storage.append_step_async(head("exec-new", 1), step("exec-new", 0))
    await storage.save_state_async(head("exec-new", 1, lease_owner="w1"))
    expect_equal(
        [e.seq for e in await storage.load_steps_async("exec-new")],
        [0],
        "journal seqs of the created execution",
    )


@check("step.second_writer_conflicts", needs=["reopen"])
async def _second_writer(s: Subject) -> None:
    """Two instances on one store: the second writer of a seq gets StepConflictError, then continues."""
    first, second = s.storage, await s.reopen()
    await create(first, "exec-two", steps=1)
    await second.load_steps_async("exec-two")
    await first.append_step_async(head("exec-two", 2), step("exec-two", 1))  # `second` has not seen it
    await expect_raises(
        StepConflictError,
        second.append_step_async(head("exec-two", 2), step("exec-two", 1)),
        "append_step_async of seq 1 through a second instance after the first one wrote it",
    )
    await second.append_step_async(head("exec-two", 3), step("exec-two", 2))
    seqs = [e.seq for e in await first.load_steps_async("exec-two")]
    expect_equal(seqs, [0, 1, 2], "journal seqs read through the first instance")


@check("journal.append_order")
async def _append_order(s: Subject) -> None:
    """load_steps returns the journal in seq order, entries intact, each execution its own journal."""
    storage = s.storage
    await create(storage, "exec-b", steps=3)
    await storage.save_state_async(head("exec-order"))
    for seq in range(12):
        await storage.append_step_async(head("exec-order", seq + 1), step("exec-order", seq))
        if seq == 5:
            await storage.append_step_async(head("exec-b", 4), step("exec-b", 3))  # interleaved
    journal = await storage.load_steps_async("exec-order")
    expect_equal([e.seq for e in journal], list(range(12)), "seqs returned by load_steps_async")
    expect_equal(
        journal[7],
        step("exec-order", 7).model_copy(
            update={"started_at": journal[7].started_at, "finished_at": journal[7].finished_at}
        ),
        "journal entry 7",
    )
    expect(
        all(e.execution_id == "exec-order" for e in journal),
        "load_steps_async returned another execution's entries",
    )
    expect_equal([e.seq for e in await storage.load_steps_async("exec-b")], [0, 1, 2, 3], "seqs of exec-b")


@check("journal.gap_is_corrupt")
async def _gap(s: Subject) -> None:
    """A journal is never read with a gap: a skipping append is refused, or load raises CorruptRecordError."""
    storage = s.storage
    last = await create(storage, "exec-gap", steps=1)
    try:
        await storage.append_step_async(head("exec-gap", 3), step("exec-gap", 2))  # seq 1 is missing
    except StepConflictError:
        expect_equal(await storage.load_state_async("exec-gap"), last, "head after a refused skipping append")
        expect_equal(
            [e.seq for e in await storage.load_steps_async("exec-gap")],
            [0],
            "journal after a refused skipping append",
        )
        return
    error = await expect_raises(
        CorruptRecordError,
        storage.load_steps_async("exec-gap"),
        "load_steps_async of a journal holding seqs 0 and 2 (append_step_async accepted seq 2 after seq 0)",
    )
    expect(
        getattr(error, "execution_id", None) == "exec-gap",
        f"CorruptRecordError names {getattr(error, 'execution_id', None)!r}, expected 'exec-gap'",
    )


# ---- persistence ---------------------------------------------------------------------------------


@check("persistence.reopen", needs=["reopen"])
async def _persistence(s: Subject) -> None:
    """A second instance on the same store reads what the first wrote and continues its journal."""
    first = s.storage
    await first.save_state_async(head("exec-persist"))
    await first.save_state_async(unleased(full_record("exec-persist")).model_copy(update={"next_seq": 0}))
    last = full_record("exec-persist")
    for seq in range(3):
        last = unleased(full_record("exec-persist")).model_copy(update={"next_seq": seq + 1})
        await first.append_step_async(last, step("exec-persist", seq))
    await first.close_async()
    second = await s.reopen()
    expect_equal(await second.load_state_async("exec-persist"), last, "head read through a new instance")
    seqs = [e.seq for e in await second.load_steps_async("exec-persist")]
    expect_equal(seqs, [0, 1, 2], "journal read through a new instance")
    await second.append_step_async(last.model_copy(update={"next_seq": 4}), step("exec-persist", 3))
    expect_equal(len(await second.load_steps_async("exec-persist")), 4, "journal length after continuing it")
