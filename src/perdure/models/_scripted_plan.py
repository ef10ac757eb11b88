"""`ScriptedModel`'s plan: which tool to call next, and the final answer once every tool has run.

The plan is a pure function of the message history and the tools (`plan_response`), so it can be
inspected and reused without a model instance or an agent run, and a replayed run takes the very
steps of the original. Reading the history lives in `_scripted_history`, filling in arguments in
`_scripted_arguments`; this module decides the order of the calls, retries, and how the run ends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelResponse, ModelResponsePart, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo
from pydantic_ai.tools import ToolDefinition

from perdure.models._scripted_arguments import Facts, arguments, name_words
from perdure.models._scripted_history import RunSoFar, read_run, request_usage

__all__ = ["plan_response"]

_MAX_ATTEMPTS = 3
_SUMMARY_VALUE_CHARS = 200


def plan_response(
    messages: Sequence[ModelMessage], info: AgentInfo, *, calls_per_response: int = 1
) -> ModelResponse:
    """Compute the scripted answer to `messages`; a pure function of the history and the tools.

    Kept separate from `ScriptedModel` so the plan can be inspected (and reused by other test
    doubles) without a model instance or an agent run.

    Args:
        messages: The whole message history, earlier runs included (only the current run counts).
        info: The tools and output settings pydantic-ai passes to a `FunctionModel`.
        calls_per_response: At most this many tool calls go into the response.

    Returns:
        The next tool calls; when every tool has run, the output tool call or the final text.

    """
    run = read_run(messages)
    facts = Facts.of(run.prompt, run.results)

    parts: list[ModelResponsePart] = []
    for tool in _ordered_tools(info.function_tools, run.prompt):
        if len(parts) >= calls_per_response:
            break
        state = run.states.get(tool.name)
        if state is None or state.calls == 0:
            args = arguments(tool.parameters_json_schema, facts, prefer_keys=False)
        elif state.outcome == "retried" and state.calls < _MAX_ATTEMPTS and state.last_args is not None:
            args = state.last_args
        else:
            continue
        parts.append(ToolCallPart(tool_name=tool.name, args=args))

    if not parts:
        parts = [_final_part(info, facts, run)]
    return ModelResponse(parts=parts, usage=request_usage(messages, info.instructions, parts))


def _final_part(info: AgentInfo, facts: Facts, run: RunSoFar) -> ModelResponsePart:
    output_tool = info.output_tools[0] if info.output_tools else None
    if output_tool is not None:
        state = run.states.get(output_tool.name)
        # After three rejected attempts fall back to text where it is allowed, as a real model would
        # give up on a shape it cannot produce.
        if state is None or state.calls < _MAX_ATTEMPTS or not info.allow_text_output:
            args = arguments(output_tool.parameters_json_schema, facts, prefer_keys=True)
            return ToolCallPart(tool_name=output_tool.name, args=args)
    params = info.model_request_parameters
    if params.output_object is not None and params.output_mode in ("native", "prompted"):
        value = arguments(params.output_object.json_schema, facts, prefer_keys=True)
        return TextPart(content=json.dumps(value, sort_keys=True))
    output_names = {tool.name for tool in info.output_tools}
    steps = [name for name in run.order if name not in output_names]
    return TextPart(content=_summary(run, steps))


def _summary(run: RunSoFar, steps: list[str]) -> str:
    """Describe the run's tool results; no ids or timestamps, so equal results give equal text."""
    if not steps:
        return f"Completed 0 steps for: {_truncate(run.prompt)}"
    described = []
    for name in steps:
        state = run.states[name]
        value = _dump(state.content) if state.outcome == "success" else f"<{state.outcome}>"
        described.append(f"{name} -> {value}")
    return f"Completed {len(steps)} steps: " + "; ".join(described)


def _dump(value: Any) -> str:
    return _truncate(json.dumps(value, sort_keys=True, default=str))


def _truncate(text: str) -> str:
    return text if len(text) <= _SUMMARY_VALUE_CHARS else text[: _SUMMARY_VALUE_CHARS - 3] + "..."


def _ordered_tools(tools: Sequence[ToolDefinition], prompt: str) -> list[ToolDefinition]:
    """Tools in the order the prompt mentions them; unmentioned ones after, in declaration order."""
    text = prompt.lower()

    def position(word: str) -> float:
        match = re.search(r"\b" + re.escape(word.lower()), text) if word else None
        return match.start() if match else math.inf

    def key(indexed: tuple[int, ToolDefinition]) -> tuple[float, float, int]:
        index, tool = indexed
        words = name_words(tool.name)
        candidates = [tool.name, tool.name.replace("_", " ")]
        if words and len(words[0]) >= 3:
            candidates.append(words[0])
        # Tools sharing a verb ("get_weather", "get_time") are told apart by their other words.
        secondary = min((position(word) for word in words[1:] if len(word) >= 3), default=math.inf)
        return min(position(word) for word in candidates), secondary, index

    return [tool for _, tool in sorted(enumerate(tools), key=key)]
