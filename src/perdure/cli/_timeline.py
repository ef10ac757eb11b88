"""What an operator reads in an execution: its state from the lease, its model, its step timeline.

Pure functions of a head and its journal (no typer, no Rich, no storage), so `perdure show`,
`perdure steps` and a dashboard read an execution the same way:

- `state`: the stored status, with `success` told apart by the lease: `running` while a worker holds
  an unexpired lease, `sleeping` while a workflow waits for its wake-up time, else `interrupted`
  (the process that ran it stopped: a worker's recovery resumes it);
- `timeline`: one row per journal entry with its duration (`finished_at - started_at`), tokens,
  the tool call's arguments (from the model response that asked for it: a tool entry only holds the
  result), a result preview, the error of a failed try (`attempt` entries), and whether a rewind
  superseded it (`perdure.durable.checkpoints.effective_journal`).

Values are raw (untrusted storage text): the caller escapes them (`_format`).
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime
from typing import Any

from ..durable._keys import parse_call_key
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, utcnow
from ..storage._checkpoints import effective_journal

__all__ = ["ago", "execution_name", "lease_live", "model_of", "preview", "state", "timeline"]

_SCOPE = re.compile(r"^(?P<scope>(?:[wr]\d+/)*)(?P<rest>.*)$", re.DOTALL)


def ago(moment: datetime, now: datetime | None = None) -> str:
    """`12s`, `5m`, `3h`, `2d`: how long ago `moment` was (`0s` for the future)."""
    seconds = max(((now or utcnow()) - moment).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def lease_live(head: ExecutionRecord, now: datetime | None = None) -> bool:
    """Whether a worker holds an unexpired lease on the execution."""
    expires = head.lease_expires_at
    return bool(head.lease_owner) and expires is not None and expires > (now or utcnow())


def state(head: ExecutionRecord, now: datetime | None = None) -> str:
    """The status an operator acts on: `running`, `sleeping` or `interrupted` instead of `success`."""
    if head.status is not ExecutionStatus.SUCCESS:
        return head.status.value
    now = now or utcnow()
    if lease_live(head, now):
        return "running"
    if head.wake_at is not None and head.wake_at > now:
        return "sleeping"
    return "interrupted"


def execution_name(head: ExecutionRecord) -> str:
    """The workflow's registered name, else the agent's name ('' when it has neither)."""
    return head.task.workflow or head.task.agent_name or ""


def model_of(head: ExecutionRecord, journal: list[StepRecord]) -> str:
    """The model: as the task recorded it, else the identity's, else the last model response's."""
    if head.task.model:
        return head.task.model
    if head.identity is not None and head.identity.model:
        return head.identity.model
    for step in reversed(journal):
        if step.kind is StepKind.MODEL_REQUEST and isinstance(step.result, dict):
            name = step.result.get("model_name")
            if isinstance(name, str) and name:
                return name
    return ""


def preview(value: Any, width: int = 60) -> str:
    """`value` as one line of compact JSON (text as is), cut to `width` characters with `…`."""
    text = value if isinstance(value, str) else _compact(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    except (TypeError, ValueError):
        return repr(value)


def _calls(result: Any) -> list[dict[str, Any]]:
    """The tool-call parts of a journaled model response."""
    if not isinstance(result, dict):
        return []
    parts = result.get("parts")
    return [p for p in parts or () if isinstance(p, dict) and p.get("part_kind") == "tool-call"]


def _text(result: Any) -> str:
    """The text parts of a journaled model response, joined."""
    if not isinstance(result, dict):
        return ""
    parts = result.get("parts") or ()
    return " ".join(
        str(p.get("content", "")) for p in parts if isinstance(p, dict) and p.get("part_kind") == "text"
    )


def _call_text(call: dict[str, Any]) -> str:
    args = call.get("args")
    if isinstance(args, str):  # some providers journal the arguments as a JSON string
        with contextlib.suppress(ValueError):
            args = json.loads(args)
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={_compact(v)}" for k, v in args.items())
    else:
        inner = "" if args is None else _compact(args)
    return f"{call.get('tool_name', '?')}({inner})"


def _tokens(result: Any) -> tuple[int, int]:
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


def _arguments(step: StepRecord, responses: dict[str, StepRecord], latest: dict[str, StepRecord]) -> Any:
    """The arguments of the tool call `step` journaled, from the model response that asked for it."""
    match = _SCOPE.match(step.key)
    assert match is not None  # the pattern matches every string
    parsed = parse_call_key(match["rest"])
    if parsed is None:
        return None
    scope = match["scope"] + (f"r{parsed.round}/" if parsed.round else "")
    if parsed.response is not None:
        response = responses.get(f"{scope}model#{parsed.response}")
    else:  # a journal written before per-response keys: the latest response in the scope
        response = latest.get(scope)
    if response is None:
        return None
    same = [c for c in _calls(response.result) if c.get("tool_call_id") == parsed.tool_call_id]
    if len(same) < parsed.repeat:
        return None
    return same[parsed.repeat - 1].get("args")


def _result_of(step: StepRecord) -> tuple[Any, dict[str, Any] | None]:
    """The unit's result (what a tool returned, a step's value) and the error of a failed try."""
    result = step.result
    if step.kind is StepKind.ATTEMPT and isinstance(result, dict):
        error = result.get("error")
        return None, error if isinstance(error, dict) else {"type": "", "message": str(error)}
    if step.kind is StepKind.TOOL_CALL and isinstance(result, dict) and "result" in result:
        return result["result"], None
    return result, None


def timeline(journal: list[StepRecord], *, preview_width: int = 60) -> list[dict[str, Any]]:
    """One row per journal entry (JSON values), in journal order, superseded entries included.

    Each row: `seq`, `kind`, `name`, `key`, `attempt` (the try that succeeded; for an `attempt`
    entry the try that failed), `started_at`, `finished_at`, `duration_ms`, `tokens`,
    `input_tokens`, `output_tokens`, `superseded` (a rewind made replay skip it), `args` (a tool
    call's arguments), `calls` (the tool calls a model response asked for, as text), `text` (a model
    response's text), `result` (the unit's result: a tool's return value, a step's value), `preview`
    (one line) and `error` (`{type, message, traceback}` of a failed try).
    """
    kept = {id(s) for s in effective_journal(journal)}
    responses: dict[str, StepRecord] = {}
    latest: dict[str, StepRecord] = {}
    rows: list[dict[str, Any]] = []
    for step in journal:
        if step.kind is StepKind.MODEL_REQUEST:
            responses[step.key] = step
            scope = _SCOPE.match(step.key)
            latest[scope["scope"] if scope else ""] = step
        result, error = _result_of(step)
        args = _arguments(step, responses, latest) if step.kind is StepKind.TOOL_CALL else None
        calls = [_call_text(c) for c in _calls(step.result)] if step.kind is StepKind.MODEL_REQUEST else []
        text = _text(step.result) if step.kind is StepKind.MODEL_REQUEST else ""
        tokens_in, tokens_out = _tokens(step.result) if step.kind is StepKind.MODEL_REQUEST else (0, 0)
        attempt = step.attempt
        if step.kind is StepKind.ATTEMPT and isinstance(step.result, dict):
            attempt = int(step.result.get("attempt") or attempt)
        if step.kind is StepKind.MODEL_REQUEST:
            shown = "; ".join(calls) if calls else text
        elif step.kind is StepKind.ATTEMPT:
            shown = f"{(error or {}).get('type', '')}: {(error or {}).get('message', '')}"
        elif step.kind is StepKind.TOOL_CALL:
            called = _call_text({"tool_name": "", "args": args})[1:-1]  # the arguments, no name
            shown = f"{preview(called, preview_width // 2 - 2)} -> {preview(result, 10_000)}"
        elif step.kind is StepKind.REWIND and isinstance(step.result, dict):
            shown = f"rewound to step {step.result.get('to_step')}"
        elif step.kind is StepKind.AGENT:
            shown = f"agent run {step.name.removeprefix('agent:')} (its units follow)"
        else:
            shown = preview(result, 10_000) if result is not None else ""
        duration = (step.finished_at - step.started_at).total_seconds() * 1000
        rows.append(
            {
                "seq": step.seq,
                "kind": step.kind.value,
                "name": step.name,
                "key": step.key,
                "attempt": attempt,
                "started_at": step.started_at.isoformat(timespec="milliseconds"),
                "finished_at": step.finished_at.isoformat(timespec="milliseconds"),
                "duration_ms": round(max(duration, 0.0), 3),
                "tokens": step.tokens,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "superseded": id(step) not in kept and step.kind is not StepKind.REWIND,
                "args": args,
                "calls": calls,
                "text": text,
                "result": result,
                "preview": preview(shown, preview_width),
                "error": error,
            }
        )
    return rows
