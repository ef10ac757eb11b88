"""A write the storage applied but whose reply was lost (a socket timeout, a connection cut after
COMMIT) must not corrupt the execution.

The engine sees the append fail and the attempt ends `failed`; writing that attempt's older head over
the applied append would leave the journal one entry longer than the head counts, which the next
resume refuses as corruption. The engine re-reads the stored head before recording the end of an
attempt whose last write it is unsure of, so the resume replays the applied unit instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure import DurableExecution
from perdure.errors import StorageUnavailableError
from perdure.records import ExecutionRecord, ExecutionStatus, StepRecord
from perdure.storage import SQLiteDurableStorage
from support.stepper import BROKEN, RAN, stepper


@pytest.fixture(autouse=True)
def _reset() -> None:
    BROKEN.clear()
    RAN.clear()


class LostReplyStorage(SQLiteDurableStorage):
    """Applies the `lose`-th journal append, then raises as if its reply never arrived."""

    def __init__(self, path: Path, lose: int) -> None:
        super().__init__(path)
        self.lose = lose
        self.appends = 0

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        await super().append_step_async(record, step)
        self.appends += 1
        if self.appends == self.lose:
            raise StorageUnavailableError("sqlite", "the reply was lost", execution_id=record.execution_id)


@pytest.mark.parametrize("lose", [1, 2, 3])  # a model request's, a tool call's, the next request's
async def test_an_applied_append_whose_reply_was_lost_is_replayed_not_corrupt(
    tmp_path: Path, lose: int
) -> None:
    flaky = LostReplyStorage(tmp_path / "r.db", lose)
    first = DurableExecution(flaky, auto_cleanup=False)
    with pytest.raises(StorageUnavailableError):
        await first.run_agent_async(stepper(2), "go")
    head = await flaky.load_state_async(first.execution_id)
    journal = await flaky.load_steps_async(first.execution_id)
    assert head is not None and head.status is ExecutionStatus.FAILED
    assert head.next_seq == len(journal) == lose  # the applied entry is counted, not overwritten
    ran_before = list(RAN)

    storage = SQLiteDurableStorage(tmp_path / "r.db")
    second = DurableExecution(storage, execution_id=first.execution_id, auto_cleanup=False)
    result = await second.resume_agent_async(stepper(2))
    assert result.output == "did 2"
    assert sorted(RAN) == ["step1", "step2"]  # every tool once, across both attempts
    assert result.replay.replayed_units == lose  # the applied unit was replayed, not run again
    assert len(ran_before) == (1 if lose >= 2 else 0)
