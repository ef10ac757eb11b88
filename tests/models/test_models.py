from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, ModelRetry, NativeOutput
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.test import TestModel

from perdure.errors import UserError
from perdure.models import ScriptedModel, model_to_string, resolve_model

PROMPT = "Fetch, validate, transform and store the data from 'database.csv'"


class Pipeline:
    """Four tools that record their executions and arguments."""

    def __init__(self) -> None:
        self.executions: list[str] = []
        self.arguments: dict[str, dict[str, Any]] = {}

    def tools(self) -> list[Any]:
        # Declared out of order on purpose: the prompt, not the declaration, sets the order.
        def store_results(data: dict[str, Any]) -> str:
            """Store the results."""
            self._record("store_results", data=data)
            return f"stored {data.get('count', 0)} rows"

        def transform_data(data: dict[str, Any]) -> dict[str, Any]:
            """Transform the data."""
            self._record("transform_data", data=data)
            return {"rows": [row * 2 for row in data.get("rows", [])], "count": len(data.get("rows", []))}

        def fetch_data(source: str, limit: int = 10) -> dict[str, Any]:
            """Fetch the data."""
            self._record("fetch_data", source=source, limit=limit)
            return {"source": source, "rows": [1, 2, 3]}

        def validate_data(data: dict[str, Any]) -> dict[str, Any]:
            """Validate the data."""
            self._record("validate_data", data=data)
            return {**data, "valid": True}

        return [store_results, transform_data, fetch_data, validate_data]

    def _record(self, name: str, **kwargs: Any) -> None:
        self.executions.append(name)
        self.arguments[name] = kwargs


def tool_calls_per_response(messages: list[Any]) -> list[list[str]]:
    return [
        [part.tool_name for part in message.parts if isinstance(part, ToolCallPart)]
        for message in messages
        if isinstance(message, ModelResponse)
    ]


def test_tools_run_in_prompt_order_once_each_and_pass_results() -> None:
    pipeline = Pipeline()
    agent = Agent(ScriptedModel(), tools=pipeline.tools())

    result = agent.run_sync(PROMPT)

    assert pipeline.executions == ["fetch_data", "validate_data", "transform_data", "store_results"]
    assert Counter(pipeline.executions) == dict.fromkeys(pipeline.executions, 1)
    assert pipeline.arguments["fetch_data"] == {"source": "database.csv", "limit": 1}
    assert pipeline.arguments["validate_data"]["data"] == {"source": "database.csv", "rows": [1, 2, 3]}
    assert pipeline.arguments["transform_data"]["data"]["valid"] is True
    assert pipeline.arguments["store_results"]["data"] == {"rows": [2, 4, 6], "count": 3}
    assert result.output.startswith("Completed 4 steps: fetch_data -> ")
    assert 'store_results -> "stored 3 rows"' in result.output
    assert result.all_messages()[-1].model_name == "scripted"  # type: ignore[union-attr]


def test_same_output_and_usage_on_two_runs() -> None:
    first, second = Pipeline(), Pipeline()
    run1 = Agent(ScriptedModel(), tools=first.tools()).run_sync(PROMPT)
    run2 = Agent(ScriptedModel(), tools=second.tools()).run_sync(PROMPT)

    assert run1.output == run2.output
    assert run1.usage.input_tokens == run2.usage.input_tokens > 0
    assert run1.usage.output_tokens == run2.usage.output_tokens > 0
    per_request1 = [m.usage for m in run1.all_messages() if isinstance(m, ModelResponse)]
    per_request2 = [m.usage for m in run2.all_messages() if isinstance(m, ModelResponse)]
    assert per_request1 == per_request2
    # The first request only carries the prompt: 50 + len(prompt) // 4 tokens.
    assert per_request1[0].input_tokens == 50 + len(PROMPT) // 4


def test_calls_per_response_batches_tool_calls() -> None:
    pipeline = Pipeline()
    agent = Agent(ScriptedModel(calls_per_response=2), tools=pipeline.tools())

    result = agent.run_sync(PROMPT)

    assert tool_calls_per_response(result.all_messages()) == [
        ["fetch_data", "validate_data"],
        ["transform_data", "store_results"],
        [],
    ]
    assert sorted(pipeline.executions) == sorted(set(pipeline.executions))
    assert result.output.startswith("Completed 4 steps")


def test_calls_per_response_must_be_positive() -> None:
    with pytest.raises(UserError):
        ScriptedModel(calls_per_response=0)


class Report(BaseModel):
    source: str
    count: int
    valid: bool


def test_structured_output_uses_result_keys() -> None:
    pipeline = Pipeline()
    agent = Agent(ScriptedModel(), tools=pipeline.tools(), output_type=Report)

    result = agent.run_sync(PROMPT)

    assert result.output == Report(source="database.csv", count=3, valid=True)
    assert len(pipeline.executions) == 4


def test_structured_output_without_tools_and_native_output() -> None:
    assert Agent(ScriptedModel(), output_type=int).run_sync("Count to 7").output == 7
    native = Agent(ScriptedModel(), output_type=NativeOutput(Report)).run_sync("Report on 'db.csv' 5")
    assert native.output == Report(source="db.csv", count=5, valid=True)


class Mode(StrEnum):
    FAST = "fast"
    SAFE = "safe"


class Target(BaseModel):
    path: str
    mode: Mode
    retries: int


def test_arguments_follow_refs_enums_and_nested_models() -> None:
    received: list[Target] = []

    def deploy(target: Target, tags: list[str], ratio: float | None = None) -> bool:
        received.append(target)
        assert tags == [] and ratio == 2.0
        return True

    Agent(ScriptedModel(), tools=[deploy]).run_sync("Deploy 'app.yaml' with 2 replicas")
    assert received == [Target(path="app.yaml", mode=Mode.FAST, retries=2)]


def test_retried_tool_is_called_again_with_same_args() -> None:
    attempts: list[dict[str, Any]] = []

    def flaky_lookup(key: str) -> str:
        attempts.append({"key": key})
        if len(attempts) < 2:
            raise ModelRetry("try again")
        return f"value of {key}"

    agent = Agent(ScriptedModel(), tools=[flaky_lookup], retries=3)
    result = agent.run_sync('Look up "alpha"')

    assert attempts == [{"key": "alpha"}, {"key": "alpha"}]
    assert result.output == 'Completed 1 steps: flaky_lookup -> "value of alpha"'


def test_unmentioned_tools_follow_in_declaration_order() -> None:
    order: list[str] = []

    def alpha() -> int:
        order.append("alpha")
        return 1

    def beta() -> int:
        order.append("beta")
        return 2

    def gamma() -> int:
        order.append("gamma")
        return 3

    Agent(ScriptedModel(), tools=[alpha, beta, gamma]).run_sync("Run gamma first")
    assert order == ["gamma", "alpha", "beta"]


def test_second_run_with_history_calls_tools_again() -> None:
    pipeline = Pipeline()
    agent = Agent(ScriptedModel(), tools=pipeline.tools())
    first = agent.run_sync(PROMPT)
    agent.run_sync(PROMPT, message_history=first.all_messages())
    assert len(pipeline.executions) == 8


def test_on_request_hook_and_delay() -> None:
    seen: list[int] = []
    model = ScriptedModel(on_request=seen.append, delay=0.01)
    Agent(model, tools=Pipeline().tools()).run_sync(PROMPT)
    assert seen == [1, 2, 3, 4, 5]
    assert model.request_count == 5

    def crash_at_three(n: int) -> None:
        if n == 3:
            raise RuntimeError("killed at request 3")

    pipeline = Pipeline()
    with pytest.raises(RuntimeError, match="request 3"):
        Agent(ScriptedModel(on_request=crash_at_three), tools=pipeline.tools()).run_sync(PROMPT)
    assert pipeline.executions == ["fetch_data", "validate_data"]


async def test_streaming_matches_non_streaming() -> None:
    pipeline = Pipeline()
    agent = Agent(ScriptedModel(), tools=pipeline.tools())
    async with agent.run_stream(PROMPT) as stream:
        streamed = await stream.get_output()
    direct = await agent.run(PROMPT)
    assert streamed == direct.output


def test_resolve_model_strings() -> None:
    assert resolve_model("openai/gpt-4o-mini") == "openai:gpt-4o-mini"
    assert resolve_model("openai:gpt-4o-mini") == "openai:gpt-4o-mini"
    assert resolve_model("anthropic/claude-sonnet-4-5") == "anthropic:claude-sonnet-4-5"
    assert resolve_model("openrouter/anthropic/claude-3.5") == "openrouter:anthropic/claude-3.5"
    assert resolve_model("gateway/openai/gpt-5") == "gateway/openai:gpt-5"
    assert resolve_model("openai:ft:gpt-4o:org/x") == "openai:ft:gpt-4o:org/x"
    assert resolve_model(None, default="openai/gpt-4o") == "openai:gpt-4o"
    assert resolve_model("test") == "test"
    assert isinstance(resolve_model("scripted"), ScriptedModel)
    assert isinstance(resolve_model("perdure:scripted"), ScriptedModel)


def test_resolve_model_does_not_need_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_model("openai/gpt-4o-mini") == "openai:gpt-4o-mini"


def test_resolve_model_passes_instances_through() -> None:
    model = TestModel()
    assert resolve_model(model) is model
    scripted = ScriptedModel()
    assert resolve_model(scripted, default="openai:gpt-4o") is scripted


@pytest.mark.parametrize("bad", ["gpt-4o", "unknown/model", "openai/", ":gpt", "perdure:other", "", "  "])
def test_resolve_model_rejects_unknown_forms(bad: str) -> None:
    with pytest.raises(UserError, match="provider:model"):
        resolve_model(bad)


def test_resolve_model_errors() -> None:
    with pytest.raises(UserError, match="No model"):
        resolve_model(None)
    with pytest.raises(UserError, match="Did you mean 'openai:gpt-4o'"):
        resolve_model("gpt-4o")
    with pytest.raises(UserError, match="Expected a model"):
        resolve_model(42)  # type: ignore[arg-type]


def test_model_to_string() -> None:
    assert model_to_string("openai/gpt-4o-mini") == "openai:gpt-4o-mini"
    assert model_to_string("scripted") == "perdure:scripted"
    assert model_to_string(ScriptedModel()) == "perdure:scripted"
    assert model_to_string(TestModel()) == "test:test"
    assert model_to_string(None) is None
    assert model_to_string("not a model") is None

    def answer(messages: list[Any], info: Any) -> ModelResponse:
        return ModelResponse(parts=[TextPart("hi")])

    assert model_to_string(FunctionModel(answer, model_name="mine")) == "function:mine"
