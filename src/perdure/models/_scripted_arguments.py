"""How `ScriptedModel` fills in a tool's arguments from its JSON schema, the task text and results.

A tool call is only a useful demo if its arguments look like what an LLM would pass: the quoted
names and the number from the task, and the previous tool's result wherever its type fits, so data
visibly flows from tool to tool. This module picks those values, and synthesizes a deterministic,
schema-valid value (formats, enums, bounds, lengths, nested objects) where nothing fits. The same
inputs always give the same arguments, which is what lets a resumed run be compared with an
uninterrupted one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from perdure.models._json_schema import MAX_SCHEMA_DEPTH, admitted_types, first_type, fits, resolve

__all__ = ["Facts", "arguments", "name_words"]

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
_EMPTY: dict[str, Any] = {
    "object": {},
    "array": [],
    "string": "",
    "integer": 0,
    "number": 0.0,
    "boolean": False,
}


@dataclass
class Facts:
    """What the synthesizer knows: the task text and the tool results so far (newest first)."""

    prompt: str
    quoted: list[str]
    first_int: int | None
    results: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, prompt: str, results: list[Any]) -> Facts:
        """Facts of a task: its quoted words and first integer are read from `prompt` once."""
        quoted = [next(group for group in match.groups() if group) for match in _QUOTED.finditer(prompt)]
        number = _INTEGER.search(prompt)
        return cls(
            prompt=prompt,
            quoted=quoted,
            first_int=int(number.group()) if number else None,
            results=results,
        )


def name_words(name: str) -> list[str]:
    """The words of an identifier (`get_weather` -> `["get", "weather"]`), split at `_` and non-word chars."""
    return [word for word in re.split(r"[_\W]+", name) if word]


def arguments(schema: dict[str, Any], facts: Facts, *, prefer_keys: bool) -> dict[str, Any]:
    """Arguments for a tool call: every property of the tool's schema, required and optional alike.

    Args:
        schema: The tool's parameters JSON schema (its `$defs` resolve `$ref`s).
        facts: The task text and the tool results so far.
        prefer_keys: Look up a result key named like the property before trying whole results;
            right for output tools, whose fields usually echo what the tools returned.

    """
    root = resolve(schema, schema)
    properties: dict[str, Any] = root.get("properties") or {}
    return {
        name: _top_level_value(name, prop, facts, schema, prefer_keys) for name, prop in properties.items()
    }


def _top_level_value(name: str, schema: Any, facts: Facts, root: dict[str, Any], prefer_keys: bool) -> Any:
    """Pick a value for parameter `name`: a fitting tool result if there is one, else a synthesized one.

    The order matters for demos: the latest result flows into the next tool when its type fits; a
    key of the same name in a result dict comes next; then, for containers only, an older result,
    so data fetched two steps back still reaches a tool after a step that returned a flag.
    """
    schema = resolve(schema, root)
    latest = facts.results[0] if facts.results else None
    by_key = next(
        (
            result[name]
            for result in facts.results
            if isinstance(result, dict) and name in result and fits(schema, result[name], root)
        ),
        _MISSING,
    )
    if prefer_keys and by_key is not _MISSING:
        return by_key
    if facts.results and fits(schema, latest, root):
        return latest
    if by_key is not _MISSING:
        return by_key
    if admitted_types(schema, root) & {"object", "array"}:
        for result in facts.results[1:]:
            if isinstance(result, dict | list) and fits(schema, result, root):
                return result
    return _synthesize(name, schema, facts, root, 1, latest if isinstance(latest, dict) else None)


def _synthesize(
    name: str, schema: Any, facts: Facts, root: dict[str, Any], depth: int, source: dict[str, Any] | None
) -> Any:
    """Build a deterministic value for `schema`; `source` lends matching keys to nested objects."""
    schema = resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = [resolve(option, root) for option in schema.get(combinator) or []]
        options = [option for option in options if option.get("type") != "null"] or options
        if options:
            return _synthesize(name, {**schema, combinator: None, **options[0]}, facts, root, depth, source)
    kind = first_type(schema)
    if depth > MAX_SCHEMA_DEPTH:
        return _empty(kind)
    if kind == "string":
        return _string_value(name, schema, facts)
    if kind in ("integer", "number"):
        number = _clamp(facts.first_int if facts.first_int is not None else 1, schema)
        return number if kind == "integer" else float(number)
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
            if source is not None and key in source and fits(prop, source[key], root):
                value[key] = source[key]
            else:
                nested = source.get(key) if source is not None else None
                value[key] = _synthesize(
                    key, prop, facts, root, depth + 1, nested if isinstance(nested, dict) else None
                )
        return value
    # An untyped schema (`Any`) takes anything; a string is the least surprising thing to hand over.
    return _string_value(name, schema, facts)


def _string_value(name: str, schema: dict[str, Any], facts: Facts) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _STRING_FORMATS:
        return _STRING_FORMATS[fmt]
    tokens = [token for token in name_words(name.lower()) if len(token) >= 3]
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
    above = 1 if "exclusiveMinimum" in schema else 0
    below = 1 if "exclusiveMaximum" in schema else 0
    if isinstance(low, int | float) and value < low + above:
        value = math.ceil(low) + above
    if isinstance(high, int | float) and value > high - below:
        value = math.floor(high) - below
    return value


def _empty(kind: str | None) -> Any:
    value = _EMPTY.get(kind or "")
    return value.copy() if isinstance(value, dict | list) else value
