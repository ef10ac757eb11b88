"""A deterministic, offline model that plans tool calls from the task text.

Demos and tests of durable execution need a model that behaves like an LLM agent (it calls the
tools, feeds one tool's result into the next, finishes with text or structured output) but never
touches the network, costs nothing and answers identically every time, so a resumed run can be
compared with an uninterrupted one. `ScriptedModel` is that model: a pydantic-ai `FunctionModel`
whose function reads the prompt and the tool schemas and derives every answer from them.

This module is the model itself (options, request counting, streaming); the answer it gives is
`plan_response` of `_scripted_plan`, re-exported here, which reads the history with
`_scripted_history` and fills in arguments with `_scripted_arguments` and `_json_schema`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.settings import ModelSettings

from perdure.errors import UserError
from perdure.models._scripted_plan import plan_response

__all__ = ["ScriptedModel"]


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
