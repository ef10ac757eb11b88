"""Checks an attempt passes before anything runs: the execution, the agent, the journal, the decisions.

Why a module of its own: each check is a rule about what may run, decided from stored state before
anything does. A finished execution must not run again; an agent without `PerdureDurability` would
journal nothing; a journal that lost entries would run their units again; approvals for an execution
that is not paused, or a resolution for a call that was never interrupted, would be silently
ignored. The engine (`perdure.durable.engine`) calls them once per attempt, under the lease and
before the agent runs, so a refused resume leaves the head as it was. The agent's identity is
checked next to them, in `perdure.durable.identity`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from ..errors import CorruptRecordError, ExecutionCancelledError, ExecutionCompletedError, UserError
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, UsageTotals
from ..storage.base import DurableExecutionStorage
from ._keys import started_units
from .capability import PerdureDurability
from .decisions import ApprovalDecision, ToolResolution
from .journal import response_tokens

__all__ = ["check_decisions", "check_durable", "check_journal", "check_resumable", "interrupted_calls"]

logger = logging.getLogger("perdure")


def check_resumable(head: ExecutionRecord) -> None:
    """Refuse to run an execution that is finished: completed, or cancelled by a tool or an operator."""
    if head.status is ExecutionStatus.COMPLETED:
        raise ExecutionCompletedError(head.execution_id)
    if head.status is ExecutionStatus.CANCELLED:
        raise ExecutionCancelledError(head.execution_id)  # the head's error says who cancelled it and why


def check_durable(agent: PydanticAgent[Any, Any], execution_id: str) -> None:
    """Refuse an agent without `PerdureDurability`: nothing it ran would be journaled."""
    if PerdureDurability.from_agent(agent) is None:
        raise UserError(
            f"Agent {agent.name!r} is not durable: create it with "
            f"`capabilities=[PerdureDurability()]` (from perdure.durable) to run execution "
            f"{execution_id!r}, or use perdure.Agent."
        )


def check_journal(
    storage: DurableExecutionStorage, head: ExecutionRecord, journal: list[StepRecord]
) -> ExecutionRecord:
    """Accept the journal only if it matches the head, or leads it by the backend's crash window.

    A journal shorter than the head lost entries (a deleted row, a lost last line, a damaged page):
    replaying it would run the lost units again, so it is `CorruptRecordError` and nothing runs. A
    journal longer than the head is the file backend's legitimate crash window (the entries of one
    write, up to a batch, are appended before the head is replaced); anything beyond that window is
    corruption too.
    """
    count = len(journal)
    if count == head.next_seq:
        return head
    if count < head.next_seq:
        missing = f"{count}" if head.next_seq - count == 1 else f"{count}..{head.next_seq - 1}"
        raise CorruptRecordError(
            head.execution_id,
            f"the head counts {head.next_seq} journal entries but the journal holds {count}: entries "
            f"{missing} are missing, so the units they recorded would run again",
            step=missing,
        )
    if count - head.next_seq <= storage.journal_may_lead_head:
        return _reconcile(head, journal)
    raise CorruptRecordError(
        head.execution_id,
        f"the journal holds {count} entries but the head counts {head.next_seq}; the "
        f"{storage.backend_name} backend can leave at most {storage.journal_may_lead_head} extra entries "
        f"after a crash",
    )


def _reconcile(head: ExecutionRecord, journal: list[StepRecord]) -> ExecutionRecord:
    """Rebuild the head's journal-derived fields when the journal is ahead of it.

    The file backend appends (and fsyncs) the journal entry before it replaces the head, so a crash
    between the two leaves one more journal entry than the head counts. The journal is the source of
    truth: its result must be replayed, and the next entry must get the next free sequence number.
    """
    responses = [response_tokens(s.result) for s in journal if s.kind is StepKind.MODEL_REQUEST]
    usage = UsageTotals(
        requests=len(responses),
        input_tokens=sum(t[0] for t in responses),
        output_tokens=sum(t[1] for t in responses),
        tool_calls=sum(1 for s in journal if s.kind is StepKind.TOOL_CALL),
    )
    last = journal[-1] if journal else None
    logger.warning(
        "[%s] head counted %d journal steps but the journal holds %d; continuing from the journal",
        head.execution_id,
        head.next_seq,
        len(journal),
    )
    return head.model_copy(
        update={
            "next_seq": len(journal),
            "step_index": last.seq if last else -1,
            "step_name": last.name if last else "",
            "usage": usage,
        }
    )


def interrupted_calls(journal: list[StepRecord]) -> list[str]:
    """Tool call ids with a `started` marker and no journaled result: interrupted mid-effect."""
    done = {s.key for s in journal if s.kind is StepKind.TOOL_CALL}
    started = [
        s.result.get("tool_call_id")
        for s in journal
        if s.kind is StepKind.STARTED
        and isinstance(s.result, dict)
        and not any(unit in done for unit in started_units(s.key))
    ]
    return list(dict.fromkeys(i for i in started if isinstance(i, str)))


def check_decisions(
    head: ExecutionRecord,
    journal: list[StepRecord],
    approvals: Mapping[str, ApprovalDecision] | None,
    resolutions: dict[str, ToolResolution],
) -> None:
    """Refuse a resume that cannot continue: a pause needs its decisions, decisions need a pause.

    Resolutions are accepted for any call the journal shows as interrupted, so an operator who
    already checked the external system can resolve right after the crash, without a resume that
    first stops as `paused`.
    """
    pending = head.pending if head.status is ExecutionStatus.PAUSED else None
    ids = [c.tool_call_id for c in pending.calls] if pending is not None else []
    if approvals is not None:
        if pending is None or pending.kind != "approval":
            raise UserError(
                f"Execution {head.execution_id!r} is not waiting for approvals (status {head.status.value}); "
                f"resume it without approvals=."
            )
        missing = [i for i in ids if i not in approvals]
        unknown = [i for i in approvals if i not in ids]
        if missing or unknown:
            raise UserError(
                f"Execution {head.execution_id!r} waits for approval of calls {ids}; "
                f"missing decisions for {missing}, unknown call ids {unknown}."
            )
    elif pending is not None and pending.kind == "approval":
        calls = ", ".join(f"{c.tool_name}({c.tool_call_id}, args={c.args!r})" for c in pending.calls)
        raise UserError(
            f"Execution {head.execution_id!r} is paused waiting for approval of: {calls}. Resume it with "
            f"approvals={{call_id: True | False | override_args}}."
        )
    if resolutions:
        interrupted = interrupted_calls(journal)
        unknown_res = [i for i in resolutions if i not in interrupted]
        if unknown_res:
            raise UserError(
                f"Execution {head.execution_id!r} has no interrupted non-idempotent call {unknown_res}; "
                f"interrupted: {interrupted or 'none'}."
            )
