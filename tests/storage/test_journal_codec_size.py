"""Stored model responses leave out fields at their None/number defaults, and load back the same."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from pydantic_ai.durable_exec import JSON_CODEC
from pydantic_ai.messages import (
    ModelResponse,
    NativeToolCallPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
)
from pydantic_ai.usage import RequestUsage

from perdure.codec import JOURNAL_CODEC

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

RESPONSES = [
    ModelResponse(parts=[ToolCallPart("lookup", {"i": 0, "x": None}, tool_call_id="c-1")], timestamp=NOW),
    ModelResponse(
        parts=[
            TextPart("hi"),
            ThinkingPart("thinking", signature="sig", provider_name="anthropic"),
            ToolCallPart("a", "{}", tool_call_id="c-2"),
            NativeToolCallPart("web_search", {"q": "x"}, tool_call_id="b-1"),
        ],
        usage=RequestUsage(input_tokens=10, output_tokens=0, details={"reasoning": 0}),
        model_name="m",
        provider_name="openai",
        provider_details={"a": None, "n": 0},
        provider_response_id="resp-1",
        finish_reason="stop",
        timestamp=NOW,
    ),
    ModelResponse(parts=[], usage=RequestUsage(), timestamp=NOW),
]


@pytest.mark.parametrize("response", RESPONSES)
def test_model_response_is_stored_without_defaults_and_loads_back_equal(response: ModelResponse) -> None:
    compact = JOURNAL_CODEC.dump(ModelResponse, response)
    full = JSON_CODEC.dump(ModelResponse, response)
    assert len(str(compact)) < len(str(full))
    assert JOURNAL_CODEC.load(ModelResponse, compact) == response
    assert JOURNAL_CODEC.load(ModelResponse, full) == response  # records written with every field


def test_only_none_and_number_defaults_are_dropped() -> None:
    compact = JOURNAL_CODEC.dump(ModelResponse, RESPONSES[0])
    part = compact["parts"][0]
    assert part["part_kind"] == "tool-call"  # discriminators stay
    assert part["args"] == {"i": 0, "x": None}  # contents of dicts stay as they are
    assert "provider_details" not in part and "id" not in part
    assert compact["kind"] == "response"


@dataclasses.dataclass
class Point:
    x: int
    y: int | None = None


def test_tool_results_keep_every_field() -> None:
    assert JOURNAL_CODEC.dump(Point, Point(1)) == {"x": 1, "y": None}
    assert JOURNAL_CODEC.dump(dict, {"a": None, "b": 0}) == {"a": None, "b": 0}
