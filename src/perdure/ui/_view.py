"""What the execution page shows, computed from the head and the journal (no HTML here).

Everything `perdure show` prints, plus the conversation: the user prompt, each journaled model
response (text, thinking, tool calls with their arguments), each journaled tool return, the
operator's decisions and the failed tries of retried units. Values stay raw Python data; the templates
escape them (Jinja2 autoescape), and `preview` cuts long JSON for the timeline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..durable._keys import attempt_unit, is_round_key, parse_call_key
from ..durable._operator import decided_calls
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, utcnow
from ._queries import is_running

__all__ = ["ExecutionView", "Message", "TimelineRow", "execution_view", "preview", "pretty", "status_label"]

PREVIEW_CHARS = 240
_SCOPE = re.compile(r"^w\d+/")


def pretty(value: Any) -> str:
    """`value` as indented JSON (text as is)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """`value` as compact JSON (text as is), cut to `limit` characters with an ellipsis."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_label(head: ExecutionRecord, now: datetime | None = None) -> str:
    """The status an operator acts on: `success` split into `running` (leased now) and `interrupted`."""
    if head.status is ExecutionStatus.SUCCESS:
        return "running" if is_running(head, now) else "interrupted"
    return head.status.value


@dataclass
class TimelineRow:
    """One journal entry as the step timeline shows it."""

    seq: int
    kind: str
    name: str
    key: str
    attempt: int
    tokens: int
    duration_ms: float
    finished_at: datetime
    arguments: Any = None
    result_preview: str = ""
    result_full: str = ""
    error: str = ""
    traceback: str = ""
    bookkeeping: bool = False


@dataclass
class Message:
    """One part of the conversation.

    `role`: `user`, `system`, `model`, `thinking`, `tool_call`, `tool_return`, `retry` (a failed try),
    `decision` or `output`.
    """

    role: str
    text: str = ""
    tool_name: str = ""
    tool_call_id: str = ""
    seq: int | None = None


@dataclass
class ExecutionView:
    """The execution page's data."""

    head: ExecutionRecord
    status: str
    name: str
    model: str
    duration_s: float
    timeline: list[TimelineRow] = field(default_factory=list)
    failed_attempts: list[TimelineRow] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    tokens_used: int = 0
    fork_points: list[int] = field(default_factory=list)
    pending_args: dict[str, str] = field(default_factory=dict)
    decided: dict[str, str] = field(default_factory=dict)
    """Pending calls of the round already decided elsewhere (`perdure approve`, another page)."""


def _tool_name(step: StepRecord) -> str:
    return step.name.removeprefix("tool:")


def _call_id(step: StepRecord) -> str:
    """The tool call id of a tool call entry (inside a workflow its key has a `w<n>/` scope)."""
    key = _SCOPE.sub("", step.key)
    parsed = parse_call_key(key)
    return parsed.tool_call_id if parsed is not None else key.rpartition("/")[2]


def _parts(step: StepRecord) -> list[dict[str, Any]]:
    result = step.result
    if isinstance(result, dict) and isinstance(result.get("parts"), list):
        return [p for p in result["parts"] if isinstance(p, dict)]
    return []


def _error_of(step: StepRecord) -> tuple[str, str]:
    result = step.result
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        error = result["error"]
        return f"{error.get('type', '')}: {error.get('message', '')}", str(error.get("traceback", ""))
    return "", ""


def _tool_result(step: StepRecord) -> Any:
    result = step.result
    if (
        isinstance(result, dict)
        and result.get("kind") in ("tool_return", "retry_prompt")
        and "result" in result
    ):
        return result["result"]
    return result


def execution_view(
    head: ExecutionRecord, journal: list[StepRecord], now: datetime | None = None
) -> ExecutionView:
    """The execution page's data for `head` and its `journal`."""
    now = now or utcnow()
    name = head.task.workflow or head.task.agent_name or ""
    model = (head.identity.model if head.identity else None) or head.task.model or ""
    end = now if head.status is ExecutionStatus.SUCCESS and is_running(head, now) else head.updated_at
    view = ExecutionView(
        head=head,
        status=status_label(head, now),
        name=name,
        model=model,
        duration_s=max((end - head.created_at).total_seconds(), 0.0),
    )
    if head.task.instructions:
        view.messages.append(Message("system", head.task.instructions))
    if head.task.description:
        view.messages.append(Message("user", head.task.description))
    call_args: dict[str, Any] = {}
    for step in journal:
        kind = step.kind
        row = TimelineRow(
            seq=step.seq,
            kind=kind.value,
            name=step.name,
            key=step.key,
            attempt=step.attempt,
            tokens=step.tokens,
            duration_ms=max((step.finished_at - step.started_at).total_seconds() * 1000, 0.0),
            finished_at=step.finished_at,
            bookkeeping=kind in (StepKind.STARTED, StepKind.ATTEMPT, StepKind.DECISION, StepKind.REWIND),
        )
        view.tokens_used += step.tokens
        if kind is StepKind.MODEL_REQUEST:
            texts = []
            for part in _parts(step):
                part_kind = part.get("part_kind")
                if part_kind == "tool-call":
                    call_id = str(part.get("tool_call_id", ""))
                    call_args[call_id] = part.get("args")
                    view.messages.append(
                        Message(
                            "tool_call",
                            pretty(part.get("args")),
                            str(part.get("tool_name", "")),
                            call_id,
                            step.seq,
                        )
                    )
                    texts.append(f"→ {part.get('tool_name', '')}({preview(part.get('args'), 80)})")
                elif part_kind == "text":
                    view.messages.append(Message("model", str(part.get("content", "")), seq=step.seq))
                    texts.append(str(part.get("content", "")))
                elif part_kind == "thinking":
                    view.messages.append(Message("thinking", str(part.get("content", "")), seq=step.seq))
            row.result_preview = preview(" ".join(texts)) if texts else preview(step.result)
            row.result_full = pretty(step.result)
        elif kind is StepKind.TOOL_CALL:
            call_id = _call_id(step)
            row.arguments = call_args.get(call_id)
            value = _tool_result(step)
            row.result_preview = preview(value)
            row.result_full = pretty(value)
            view.messages.append(Message("tool_return", pretty(value), _tool_name(step), call_id, step.seq))
        elif kind is StepKind.ATTEMPT:
            row.error, row.traceback = _error_of(step)
            unit = attempt_unit(step.key) or ""
            row.result_preview = preview(row.error)
            view.failed_attempts.append(row)
            view.messages.append(Message("retry", row.error, step.name, unit, step.seq))
        elif kind is StepKind.DECISION:
            _note_overrides(step, call_args)  # a call approved with edited arguments runs with those
            row.result_preview = preview(_decision_text(step))
            row.result_full = pretty(step.result)
            view.messages.append(Message("decision", _decision_text(step), step.name, seq=step.seq))
        elif kind is StepKind.STARTED:
            result = step.result if isinstance(step.result, dict) else {}
            row.arguments = result.get("args")
            row.result_preview = "started (non-idempotent call)"
        else:
            row.result_preview = preview(step.result)
            row.result_full = pretty(step.result)
        if not row.bookkeeping:
            view.fork_points.append(step.seq)
        view.timeline.append(row)
    if head.status is ExecutionStatus.COMPLETED and head.output is not None:
        view.messages.append(Message("output", pretty(head.output)))
    if head.pending is not None:
        view.pending_args = {
            call.tool_call_id: pretty(call.args if call.args is not None else {})
            for call in head.pending.calls
        }
        view.decided = decided_calls(head, journal)
    return view


def _note_overrides(step: StepRecord, call_args: dict[str, Any]) -> None:
    result = step.result if isinstance(step.result, dict) else {}
    approvals = result.get("approvals") if is_round_key(step.key) else None
    if not isinstance(approvals, dict):
        return
    for call_id, decision in approvals.items():
        if isinstance(decision, dict) and isinstance(decision.get("override_args"), dict):
            call_args[str(call_id)] = decision["override_args"]


def _decision_text(step: StepRecord) -> str:
    result = step.result if isinstance(step.result, dict) else {}
    if is_round_key(step.key):
        approvals = result.get("approvals") or {}
        return "approval round " + str(result.get("round", "")) + ": " + preview(approvals, 400)
    if "action" in result:
        return f"{result.get('action')} {result.get('tool_call_id', '')} " + preview(
            result.get("result"), 200
        )
    return preview(result, 400)
