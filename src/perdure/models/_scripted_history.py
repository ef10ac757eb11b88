"""What `ScriptedModel` reads from the message history: the current run so far, and its text size.

`ScriptedModel` keeps no state between requests: every answer is recomputed from the messages, so a
run resumed from a journal gets the same answers as an uninterrupted one. This module turns the
messages into the facts the plan needs (the task text, how far each tool got, the results so far)
and counts the text the usage figures are derived from. It knows pydantic-ai's message parts; it
knows nothing of planning or of JSON schemas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RequestUsage

__all__ = ["RunSoFar", "ToolState", "read_run", "request_usage"]


@dataclass
class ToolState:
    """How far one tool got in the current run."""

    calls: int = 0
    last_args: dict[str, Any] | None = None
    outcome: str | None = None
    content: Any = None


@dataclass
class RunSoFar:
    """The current run as the plan sees it.

    Attributes:
        prompt: The task text (the run's user prompt, text items joined by spaces).
        states: Per tool: attempts, last arguments, last outcome and content.
        order: Tool names in the order of their first return.
        results: The JSON-compatible content of every successful tool return, newest first.

    """

    prompt: str
    states: dict[str, ToolState] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)


def read_run(messages: Sequence[ModelMessage]) -> RunSoFar:
    """Read the current run (see `_current_run`) out of `messages`, in one pass over its parts."""
    run = _current_run(messages)
    seen = RunSoFar(prompt=_prompt_text(run))
    for message in run:
        if isinstance(message, ModelResponse):
            for response_part in message.parts:
                if isinstance(response_part, ToolCallPart):
                    state = seen.states.setdefault(response_part.tool_name, ToolState())
                    state.calls += 1
                    state.last_args = response_part.args_as_dict()
        else:
            for part in message.parts:
                name, outcome, content = _return_of(part)
                if name is None:
                    continue
                state = seen.states.setdefault(name, ToolState())
                state.outcome = outcome
                state.content = content
                if name not in seen.order:
                    seen.order.append(name)
                if outcome == "success":
                    seen.results.append(content)
    seen.results.reverse()
    return seen


def request_usage(
    messages: Sequence[ModelMessage], instructions: str | None, parts: Sequence[ModelResponsePart]
) -> RequestUsage:
    """Usage for answering `messages` with `parts`: a stable function of the text lengths.

    Token counts of a replayed run can then be compared with those of the original.
    """
    response_text = "".join(_response_part_text(part) for part in parts)
    return RequestUsage(
        input_tokens=50 + (_history_chars(messages) + len(instructions or "")) // 4,
        output_tokens=10 + len(response_text) // 4,
    )


def _current_run(messages: Sequence[ModelMessage]) -> Sequence[ModelMessage]:
    """Return the current run's messages: from the last request that carries a user prompt.

    A history passed with `message_history=` contains earlier runs whose tools must not count as
    already called in this one.
    """
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, ModelRequest) and any(isinstance(p, UserPromptPart) for p in message.parts):
            return messages[index:]
    return messages


def _prompt_text(run: Sequence[ModelMessage]) -> str:
    for message in run:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    if isinstance(part.content, str):
                        return part.content
                    return " ".join(item for item in part.content if isinstance(item, str))
    return ""


def _return_of(part: Any) -> tuple[str | None, str, Any]:
    """Return (tool name, outcome, JSON-compatible content) if `part` is a tool return."""
    if isinstance(part, ToolReturnPart):
        return part.tool_name, part.outcome, _jsonable(part.content)
    # A deprecated `RetryPromptPart` built in memory may still reach us untranslated.
    if getattr(part, "part_kind", None) == "retry-prompt" and getattr(part, "tool_name", None):
        return str(part.tool_name), "retried", None
    return None, "", None


def _jsonable(value: Any) -> Any:
    # Tools may return pydantic models or dataclasses; their JSON form is what fits a schema.
    try:
        return pydantic_core.to_jsonable_python(value, fallback=str)
    except (TypeError, ValueError, pydantic_core.PydanticSerializationError):
        return str(value)


def _history_chars(messages: Sequence[ModelMessage]) -> int:
    total = 0
    for message in messages:
        if isinstance(message, ModelResponse):
            total += sum(len(_response_part_text(part)) for part in message.parts)
        else:
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    total += len(part.tool_name) + len(part.model_response_str())
                    continue
                content = getattr(part, "content", None)
                if isinstance(content, str):
                    total += len(content)
                elif isinstance(content, Sequence):
                    total += sum(len(item) if isinstance(item, str) else 0 for item in content)
    return total


def _response_part_text(part: ModelResponsePart) -> str:
    if isinstance(part, ToolCallPart):
        return part.tool_name + json.dumps(part.args_as_dict(), sort_keys=True, default=str)
    content = getattr(part, "content", "")
    return content if isinstance(content, str) else ""
