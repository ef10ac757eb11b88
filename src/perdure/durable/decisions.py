"""Human decisions that let a paused execution continue: approvals and interrupted-call resolutions.

Both are journaled before the run continues, so a crash right after a decision does not lose it:
the resumed run replays the same decision instead of asking again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic_ai.tools import DeferredToolResults, ToolApproved, ToolDenied
from pydantic_core import to_jsonable_python

from ..errors import UserError

__all__ = ["ApprovalDecision", "ToolResolution", "approvals_from_json", "approvals_to_json"]

ApprovalDecision = bool | dict[str, Any] | str | ToolApproved | ToolDenied
"""`True` approves, `False` denies, a dict approves with these arguments instead, a string denies
with that message (shown to the model), or pydantic-ai's `ToolApproved` / `ToolDenied`."""


@dataclass(frozen=True)
class ToolResolution:
    """An operator's decision about a non-idempotent call that started but was never recorded.

    Build one with `done(result)` (the call took effect; continue with this result), `rerun()` (it
    did not take effect; call it again) or `abort()` (cancel the execution).
    """

    action: Literal["done", "rerun", "abort"]
    result: Any = None

    @classmethod
    def done(cls, result: Any = None) -> ToolResolution:
        """The call took effect: record `result` as its return value without calling it again."""
        return cls("done", to_jsonable_python(result))

    @classmethod
    def rerun(cls) -> ToolResolution:
        """The call did not take effect: call the tool again."""
        return cls("rerun")

    @classmethod
    def abort(cls) -> ToolResolution:
        """Stop here: the execution becomes `cancelled` and is never resumed."""
        return cls("abort")

    @classmethod
    def coerce(cls, value: ToolResolution | str, call_id: str) -> ToolResolution:
        """Accept a `ToolResolution` or the strings `"rerun"` / `"abort"`."""
        if isinstance(value, ToolResolution):
            return value
        if value in ("rerun", "abort"):
            return cls(value)  # type: ignore[arg-type]
        raise UserError(
            f"Resolution for call {call_id!r} must be ToolResolution.done(result), ToolResolution.rerun() "
            f"or ToolResolution.abort() (or 'rerun' / 'abort'), got {value!r}."
        )


def approvals_to_json(approvals: dict[str, ApprovalDecision]) -> dict[str, dict[str, Any]]:
    """Normalize user decisions to the JSON form journaled with the approval round."""
    out: dict[str, dict[str, Any]] = {}
    for call_id, decision in approvals.items():
        if decision is True:
            out[call_id] = {"approved": True}
        elif decision is False:
            out[call_id] = {"approved": False, "message": None}
        elif isinstance(decision, str):
            out[call_id] = {"approved": False, "message": decision}
        elif isinstance(decision, ToolDenied):
            out[call_id] = {"approved": False, "message": decision.message}
        elif isinstance(decision, ToolApproved):
            out[call_id] = {"approved": True, "override_args": to_jsonable_python(decision.override_args)}
        elif isinstance(decision, dict):
            out[call_id] = {"approved": True, "override_args": to_jsonable_python(decision)}
        else:
            raise UserError(
                f"Approval for call {call_id!r} must be True, False, a dict of override arguments, a denial "
                f"message, ToolApproved or ToolDenied; got {decision!r}."
            )
    return out


def approvals_from_json(data: dict[str, dict[str, Any]]) -> DeferredToolResults:
    """pydantic-ai's `DeferredToolResults` for a journaled approval round."""
    results = DeferredToolResults()
    for call_id, item in data.items():
        if item.get("approved"):
            override = item.get("override_args")
            approved = ToolApproved(override_args=override) if override is not None else True
            results.approvals[call_id] = approved
        else:
            message = item.get("message")
            results.approvals[call_id] = ToolDenied(message) if message else ToolDenied()
    return results
