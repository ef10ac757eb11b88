"""A deterministic, offline model that plans tool calls from the task text.

Demos and tests of durable execution need a model that behaves like an LLM agent (it calls the
tools, feeds one tool's result into the next, finishes with text or structured output) but never
touches the network, costs nothing and answers identically every time, so a resumed run can be
compared with an uninterrupted one. `ScriptedModel` is that model: a pydantic-ai `FunctionModel`
whose function reads the prompt and the tool schemas and derives every answer from them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pydantic_core
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.usage import RequestUsage

from perdure.errors import UserError

__all__ = ["ScriptedModel"]

_MAX_ATTEMPTS = 3
_SUMMARY_VALUE_CHARS = 200
_MAX_SCHEMA_DEPTH = 8
# 'single', "double", `back` and typographic quotes; an apostrophe inside a word opens nothing.
_QUOTED = re.compile(
    r"(?<!\w)'([^'\n]+?)'(?!\w)|\"([^\"\n]+?)\"|`([^`\n]+?)`"
    r"|\u201c([^\u201d\n]+?)\u201d|\u2018([^\u2019\n]+?)\u2019"
)
_INTEGER = re.compile(r"(?<![\w.])-?\d+(?![\w.]\d)")
_STRING_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}
_MISSING: Any = object()
_PROMPT_LIKE_NAMES = frozenset({"query", "question", "prompt", "task", "text", "message", "input", "request"})


@dataclass
class _Facts:
    """What the synthesizer knows: the task text and the tool results so far (newest first)."""

    prompt: str
    quoted: list[str]
    first_int: int | None
    results: list[Any] = field(default_factory=list)


@dataclass
class _ToolState:
    """How far one tool got in the current run."""

    calls: int = 0
    last_args: dict[str, Any] | None = None
    outcome: str | None = None
    content: Any = None


class ScriptedModel(FunctionModel):
    """A pydantic-ai model that answers from a deterministic plan instead of an LLM.

    The plan: call every function tool once, in the order the prompt mentions them (tools it does
    not mention follow in declaration order), building arguments from each tool's JSON schema and
    passing the previous tool's result on wherever its type fits. A tool whose call came back as a
    retry is called again with the same arguments, up to three attempts. When every tool has run, the
    model calls the first output tool (structured output) or answers with a text summary of the
    results. Usage is a stable function of the text lengths, so token counts of a replayed run can
    be compared with those of the original.

    Args:
        calls_per_response: How many planned tool calls go into one response; more than one makes
            the agent run several tools per step, the way parallel tool calling models do.
        on_request: Called with the 1-based number of the request this instance is about to answer,
            before answering; tests count requests with it, or raise/kill the process at request N.
        delay: Seconds to sleep (asynchronously) per request, to simulate a slow model.
        settings: Model settings used as defaults, as for any pydantic-ai model.

    """

    def __init__(
        self,
        *,
        calls_per_response: int = 1,
        on_request: Callable[[int], None] | None = None,
        delay: float = 0.0,
        settings: ModelSettings | None = None,
    ) -> None:
        if calls_per_response < 1:
            raise UserError(f"ScriptedModel(calls_per_response={calls_per_response}) must be at least 1.")
        if delay < 0:
            raise UserError(f"ScriptedModel(delay={delay}) must not be negative.")
        self.calls_per_response = calls_per_response
        self.on_request = on_request
        self.delay = delay
        self._request_count = 0
        super().__init__(
            self._respond, stream_function=self._stream, model_name="scripted", settings=settings
        )
        self._system = "perdure"

    def __repr__(self) -> str:
        return (
            f"ScriptedModel(calls_per_response={self.calls_per_response}, delay={self.delay}, "
            f"on_request={self.on_request!r})"
        )

    @property
    def request_count(self) -> int:
        """How many requests this instance has answered (replayed requests never reach it)."""
        return self._request_count

    async def _respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await self._before_request()
        return plan_response(messages, info, calls_per_response=self.calls_per_response)

    async def _stream(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        # Streaming yields the very response `_respond` would return, so streamed and non-streamed
        # runs of the same task take the same steps.
        await self._before_request()
        response = plan_response(messages, info, calls_per_response=self.calls_per_response)
        calls = [part for part in response.parts if isinstance(part, ToolCallPart)]
        if calls:
            yield {
                index: DeltaToolCall(name=call.tool_name, json_args=call.args_as_json_str())
                for index, call in enumerate(calls)
            }
        else:
            yield "".join(part.content for part in response.parts if isinstance(part, TextPart))

    async def _before_request(self) -> None:
        self._request_count += 1
        if self.on_request is not None:
            self.on_request(self._request_count)
        if self.delay > 0:
            await anyio.sleep(self.delay)


def plan_response(
    messages: Sequence[ModelMessage], info: AgentInfo, *, calls_per_response: int = 1
) -> ModelResponse:
    """Compute the scripted answer to `messages`; a pure function of the history and the tools.

    Kept separate from `ScriptedModel` so the plan can be inspected (and reused by other test
    doubles) without a model instance or an agent run.
    """
    run = _current_run(messages)
    prompt = _prompt_text(run)
    facts = _Facts(
        prompt=prompt,
        quoted=_quoted_words(prompt),
        first_int=_first_int(prompt),
        results=_success_results_newest_first(run),
    )
    states, order = _tool_states(run)

    parts: list[ModelResponsePart] = []
    for tool in _ordered_tools(info.function_tools, prompt):
        if len(parts) >= calls_per_response:
            break
        state = states.get(tool.name)
        if state is None or state.calls == 0:
            args = _arguments(tool.parameters_json_schema, facts, prefer_keys=False)
        elif state.outcome == "retried" and state.calls < _MAX_ATTEMPTS and state.last_args is not None:
            args = state.last_args
        else:
            continue
        parts.append(ToolCallPart(tool_name=tool.name, args=args))

    if not parts:
        parts = [_final_part(info, facts, states, order)]
    response_text = "".join(_response_part_text(part) for part in parts)
    usage = RequestUsage(
        input_tokens=50 + (_history_chars(messages) + len(info.instructions or "")) // 4,
        output_tokens=10 + len(response_text) // 4,
    )
    return ModelResponse(parts=parts, usage=usage)


def _final_part(
    info: AgentInfo, facts: _Facts, states: dict[str, _ToolState], order: list[str]
) -> ModelResponsePart:
    output_tool = info.output_tools[0] if info.output_tools else None
    if output_tool is not None:
        state = states.get(output_tool.name)
        # After three rejected attempts fall back to text where it is allowed, as a real model would
        # give up on a shape it cannot produce.
        if state is None or state.calls < _MAX_ATTEMPTS or not info.allow_text_output:
            args = _arguments(output_tool.parameters_json_schema, facts, prefer_keys=True)
            return ToolCallPart(tool_name=output_tool.name, args=args)
    params = info.model_request_parameters
    if params.output_object is not None and params.output_mode in ("native", "prompted"):
        value = _arguments(params.output_object.json_schema, facts, prefer_keys=True)
        return TextPart(content=json.dumps(value, sort_keys=True))
    output_names = {tool.name for tool in info.output_tools}
    steps = [name for name in order if name not in output_names]
    return TextPart(content=_summary(states, steps, facts.prompt))


def _summary(states: dict[str, _ToolState], steps: list[str], prompt: str) -> str:
    """Describe the run's tool results; no ids or timestamps, so equal results give equal text."""
    if not steps:
        return f"Completed 0 steps for: {_truncate(prompt)}"
    described = []
    for name in steps:
        state = states[name]
        value = _dump(state.content) if state.outcome == "success" else f"<{state.outcome}>"
        described.append(f"{name} -> {value}")
    return f"Completed {len(steps)} steps: " + "; ".join(described)


def _dump(value: Any) -> str:
    return _truncate(json.dumps(value, sort_keys=True, default=str))


def _truncate(text: str) -> str:
    return text if len(text) <= _SUMMARY_VALUE_CHARS else text[: _SUMMARY_VALUE_CHARS - 3] + "..."


# --- reading the history -------------------------------------------------------------------------


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


def _tool_states(run: Sequence[ModelMessage]) -> tuple[dict[str, _ToolState], list[str]]:
    """Per tool: attempts, last arguments, last outcome; plus tool names in order of first return."""
    states: dict[str, _ToolState] = {}
    order: list[str] = []
    for message in run:
        if isinstance(message, ModelResponse):
            for response_part in message.parts:
                if isinstance(response_part, ToolCallPart):
                    state = states.setdefault(response_part.tool_name, _ToolState())
                    state.calls += 1
                    state.last_args = response_part.args_as_dict()
        else:
            for part in message.parts:
                name, outcome, content = _return_of(part)
                if name is None:
                    continue
                state = states.setdefault(name, _ToolState())
                state.outcome = outcome
                state.content = content
                if name not in order:
                    order.append(name)
    return states, order


def _return_of(part: Any) -> tuple[str | None, str, Any]:
    """Return (tool name, outcome, JSON-compatible content) if `part` is a tool return."""
    if isinstance(part, ToolReturnPart):
        return part.tool_name, part.outcome, _jsonable(part.content)
    # A deprecated `RetryPromptPart` built in memory may still reach us untranslated.
    if getattr(part, "part_kind", None) == "retry-prompt" and getattr(part, "tool_name", None):
        return str(part.tool_name), "retried", None
    return None, "", None


def _success_results_newest_first(run: Sequence[ModelMessage]) -> list[Any]:
    results: list[Any] = []
    for message in run:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart) and part.outcome == "success":
                    results.append(_jsonable(part.content))
    results.reverse()
    return results


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


# --- planning ------------------------------------------------------------------------------------


def _ordered_tools(tools: Sequence[ToolDefinition], prompt: str) -> list[ToolDefinition]:
    """Tools in the order the prompt mentions them; unmentioned ones after, in declaration order."""
    text = prompt.lower()

    def position(word: str) -> float:
        match = re.search(r"\b" + re.escape(word.lower()), text) if word else None
        return match.start() if match else math.inf

    def key(indexed: tuple[int, ToolDefinition]) -> tuple[float, float, int]:
        index, tool = indexed
        words = [word for word in re.split(r"[_\W]+", tool.name) if word]
        candidates = [tool.name, tool.name.replace("_", " ")]
        if words and len(words[0]) >= 3:
            candidates.append(words[0])
        # Tools sharing a verb ("get_weather", "get_time") are told apart by their other words.
        secondary = min((position(word) for word in words[1:] if len(word) >= 3), default=math.inf)
        return min(position(word) for word in candidates), secondary, index

    return [tool for _, tool in sorted(enumerate(tools), key=key)]


def _quoted_words(prompt: str) -> list[str]:
    return [next(group for group in match.groups() if group) for match in _QUOTED.finditer(prompt)]


def _first_int(prompt: str) -> int | None:
    match = _INTEGER.search(prompt)
    return int(match.group()) if match else None


def _arguments(schema: dict[str, Any], facts: _Facts, *, prefer_keys: bool) -> dict[str, Any]:
    """Arguments for a tool call: every property of the tool's schema, required and optional alike.

    Args:
        schema: The tool's parameters JSON schema (its `$defs` resolve `$ref`s).
        facts: The task text and the tool results so far.
        prefer_keys: Look up a result key named like the property before trying whole results;
            right for output tools, whose fields usually echo what the tools returned.

    """
    root = _resolve(schema, schema)
    properties: dict[str, Any] = root.get("properties") or {}
    return {
        name: _top_level_value(name, prop, facts, schema, prefer_keys) for name, prop in properties.items()
    }


def _top_level_value(name: str, schema: Any, facts: _Facts, root: dict[str, Any], prefer_keys: bool) -> Any:
    """Pick a value for parameter `name`: a fitting tool result if there is one, else a synthesized one.

    The order matters for demos: the latest result flows into the next tool when its type fits; a
    key of the same name in a result dict comes next; then, for containers only, an older result,
    so data fetched two steps back still reaches a tool after a step that returned a flag.
    """
    schema = _resolve(schema, root)
    latest = facts.results[0] if facts.results else None
    by_key = next(
        (
            result[name]
            for result in facts.results
            if isinstance(result, dict) and name in result and _fits(schema, result[name], root)
        ),
        _MISSING,
    )
    if prefer_keys and by_key is not _MISSING:
        return by_key
    if facts.results and _fits(schema, latest, root):
        return latest
    if by_key is not _MISSING:
        return by_key
    if _types(schema, root) & {"object", "array"}:
        for result in facts.results[1:]:
            if isinstance(result, dict | list) and _fits(schema, result, root):
                return result
    return _synthesize(name, schema, facts, root, 1, latest if isinstance(latest, dict) else None)


def _synthesize(
    name: str, schema: Any, facts: _Facts, root: dict[str, Any], depth: int, source: dict[str, Any] | None
) -> Any:
    """Build a deterministic value for `schema`; `source` lends matching keys to nested objects."""
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = [_resolve(option, root) for option in schema.get(combinator) or []]
        options = [option for option in options if option.get("type") != "null"] or options
        if options:
            return _synthesize(name, {**schema, combinator: None, **options[0]}, facts, root, depth, source)
    kind = _first_type(schema)
    if depth > _MAX_SCHEMA_DEPTH:
        return _empty(kind)
    if kind == "string":
        return _string_value(name, schema, facts)
    if kind == "integer":
        return _clamp(facts.first_int if facts.first_int is not None else 1, schema)
    if kind == "number":
        return float(_clamp(facts.first_int if facts.first_int is not None else 1, schema))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items")
        count = schema.get("minItems", 0)
        return [
            _synthesize(name, items if isinstance(items, dict) else {}, facts, root, depth + 1, None)
            for _ in range(count if isinstance(count, int) else 0)
        ]
    if kind == "object" or "properties" in schema:
        properties: dict[str, Any] = schema.get("properties") or {}
        value: dict[str, Any] = {}
        for key, prop in properties.items():
            if source is not None and key in source and _fits(prop, source[key], root):
                value[key] = source[key]
            else:
                nested = source.get(key) if source is not None else None
                value[key] = _synthesize(
                    key, prop, facts, root, depth + 1, nested if isinstance(nested, dict) else None
                )
        return value
    # An untyped schema (`Any`) takes anything; a string is the least surprising thing to hand over.
    return _string_value(name, schema, facts)


def _string_value(name: str, schema: dict[str, Any], facts: _Facts) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _STRING_FORMATS:
        return _STRING_FORMATS[fmt]
    tokens = [token for token in re.split(r"[_\W]+", name.lower()) if len(token) >= 3]
    value = next(
        (word for word in facts.quoted if any(token in word.lower() for token in tokens)),
        facts.quoted[0] if facts.quoted else None,
    )
    if value is None:
        value = facts.prompt if name.lower() in _PROMPT_LIKE_NAMES and facts.prompt else f"sample_{name}"
    min_length = schema.get("minLength")
    if isinstance(min_length, int) and len(value) < min_length:
        value = value + "_" * (min_length - len(value))
    max_length = schema.get("maxLength")
    if isinstance(max_length, int) and len(value) > max_length:
        value = value[:max_length]
    return value


def _clamp(value: int, schema: dict[str, Any]) -> int:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, int | float) and value < low + (1 if "exclusiveMinimum" in schema else 0):
        value = math.ceil(low) + (1 if "exclusiveMinimum" in schema else 0)
    if isinstance(high, int | float) and value > high - (1 if "exclusiveMaximum" in schema else 0):
        value = math.floor(high) - (1 if "exclusiveMaximum" in schema else 0)
    return value


_EMPTY: dict[str, Any] = {
    "object": {},
    "array": [],
    "string": "",
    "integer": 0,
    "number": 0.0,
    "boolean": False,
}


def _empty(kind: str | None) -> Any:
    value = _EMPTY.get(kind or "")
    return value.copy() if isinstance(value, dict | list) else value


# --- JSON schema helpers -------------------------------------------------------------------------


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """Follow local `$ref`s (`#/$defs/Name`); anything else resolves to an empty (any) schema."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < _MAX_SCHEMA_DEPTH:
        ref: str = schema["$ref"]
        target: Any = root
        if not ref.startswith("#"):
            return {}
        for key in [segment for segment in ref.lstrip("#").split("/") if segment]:
            target = target.get(key) if isinstance(target, dict) else None
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        schema = {**target, **siblings} if isinstance(target, dict) else siblings
        seen += 1
    return schema if isinstance(schema, dict) else {}


def _types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """All JSON types a schema admits (through `anyOf`/`oneOf` and type lists)."""
    schema = _resolve(schema, root)
    found: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        found.add(declared)
    elif isinstance(declared, list):
        found.update(item for item in declared if isinstance(item, str))
    if "properties" in schema and not declared:
        found.add("object")
    for combinator in ("anyOf", "oneOf"):
        for option in schema.get(combinator) or []:
            found |= _types(option, root)
    return found


def _first_type(schema: dict[str, Any]) -> str | None:
    declared = schema.get("type")
    if isinstance(declared, list):
        non_null = [item for item in declared if item != "null"]
        return non_null[0] if non_null else "null"
    return declared if isinstance(declared, str) else None


def _fits(schema: Any, value: Any, root: dict[str, Any], depth: int = 0) -> bool:
    """Whether `value` validates against `schema`, as far as this simple checker can tell."""
    schema = _resolve(schema, root)
    if depth > _MAX_SCHEMA_DEPTH:
        return False
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return any(_fits(option, value, root, depth + 1) for option in schema[combinator])
    if "allOf" in schema:
        return all(_fits(option, value, root, depth + 1) for option in schema["allOf"])
    declared = schema.get("type")
    kinds = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    if not kinds:
        return "properties" not in schema or _fits_object(schema, value, root, depth)
    return any(_fits_kind(kind, schema, value, root, depth) for kind in kinds)


def _fits_kind(kind: str, schema: dict[str, Any], value: Any, root: dict[str, Any], depth: int) -> bool:
    if kind == "object":
        return _fits_object(schema, value, root, depth)
    if kind == "array":
        items = schema.get("items")
        return isinstance(value, list) and (
            not isinstance(items, dict) or all(_fits(items, item, root, depth + 1) for item in value)
        )
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return False


def _fits_object(schema: dict[str, Any], value: Any, root: dict[str, Any], depth: int) -> bool:
    if not isinstance(value, dict):
        return False
    properties: dict[str, Any] = schema.get("properties") or {}
    if not properties:
        return True
    if any(key not in value for key in schema.get("required") or []):
        return False
    if schema.get("additionalProperties") is False and any(key not in properties for key in value):
        return False
    return all(
        _fits(properties[key], item, root, depth + 1) for key, item in value.items() if key in properties
    )
