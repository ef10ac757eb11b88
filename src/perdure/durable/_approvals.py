"""Approval rounds: how a run that paused for human approval stops, records its decisions and continues.

Why a module of its own: an approval round spans two attempts, and what connects them is stored.
The attempt that pauses keeps the round's message history in the head's `pending` decision (without
the `run_id` pydantic-ai would refuse); the attempt that resumes journals the decisions together
with that history under the next round's key *before* the round runs, so a crash in the middle
replays the same decisions instead of asking again; and every later attempt continues from the last
journaled round (its history and decisions become `message_history` and `deferred_tool_results`)
rather than from the prompt. The engine (`perdure.durable.engine`) calls these three steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_ai.agent import AgentRunResult
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.tools import DeferredToolRequests

from ..records import PendingCall, PendingDecision
from ._keys import round_key
from .decisions import ApprovalDecision, approvals_from_json, approvals_to_json
from .journal import JournalRun

__all__ = ["approval_pending", "continue_round", "journal_approval_round"]


def approval_pending(result: AgentRunResult[Any], round_no: int) -> PendingDecision:
    """The pending decision of a run that ended on `DeferredToolRequests`: the calls and the history."""
    requests: DeferredToolRequests = result.output
    calls = [
        PendingCall(tool_call_id=c.tool_call_id, tool_name=c.tool_name, args=c.args_as_dict())
        for c in requests.approvals
    ]
    # pydantic-ai refuses a `message_history` that already carries the run's `run_id`, and every
    # round runs with run_id = the execution id (stable idempotency keys): store the history without it.
    messages = [
        {**m, "run_id": None}
        for m in ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json")
    ]
    return PendingDecision(kind="approval", calls=calls, round=round_no, messages=messages)


async def journal_approval_round(
    run: JournalRun, pending: PendingDecision | None, approvals: Mapping[str, ApprovalDecision] | None
) -> None:
    """Journal the decisions with the history they continue, before the next round runs.

    Nothing is journaled unless `approvals` answer a pause for approvals (`pending`).
    """
    if approvals is None or pending is None or pending.kind != "approval":
        return
    round_no = pending.round + 1
    await run.append_decision(
        round_key(round_no),
        "approval",
        {
            "round": round_no,
            "messages": pending.messages or [],
            "approvals": approvals_to_json(dict(approvals)),
        },
    )


def continue_round(run: JournalRun, kwargs: dict[str, Any], prompt: str) -> str | None:
    """Point the run at the last journaled round, if any; return the user prompt to run with.

    After an approval round the run continues from that round's history and decisions (added to
    `kwargs`), without a user prompt; before any round it starts from `prompt`.
    """
    round_input = run.latest_round()
    if round_input is None:
        return prompt
    run.round = round_input["round"]
    kwargs["message_history"] = ModelMessagesTypeAdapter.validate_python(round_input["messages"])
    kwargs["deferred_tool_results"] = approvals_from_json(round_input["approvals"])
    return None
