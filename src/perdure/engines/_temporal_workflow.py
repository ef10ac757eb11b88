"""perdure's one generic Temporal workflow: run a registered agent, pause for approvals, continue.

Why one generic workflow instead of one per agent: the user's agent module stays a plain pydantic-ai
agent carrying `PerdureDurability()`; `TemporalEngine.bind` registers it by name in this process and
the workflow looks it up there. Model requests and tool calls are Temporal activities (pydantic-ai's
`TemporalDurability`); this workflow only adds the human-approval loop and the status memo.

Sandbox: the worker passes the whole `perdure` package through Temporal's workflow sandbox (see
`TemporalEngine.serve`), so the registry below is the worker's own, holding the agents the worker
imported, and the user's app module is never re-imported inside the sandbox. Everything the workflow
does between activities (running the agent graph) is deterministic pydantic-ai code.

The status a client can see without a worker (paused, the pending calls) is kept in the workflow's
memo under `MEMO_KEY`, so `describe` / `list` read it from Temporal's visibility.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, NoReturn

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import RunContext
    from pydantic_ai.agent.abstract import AbstractAgent
    from pydantic_ai.capabilities.abstract import AbstractCapability
    from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
    from pydantic_ai.usage import UsageLimits
    from pydantic_core import to_jsonable_python

    from ._registry import AgentRegistry

__all__ = [
    "DECIDE_UPDATE",
    "MEMO_KEY",
    "WORKFLOW_NAME",
    "AgentRunInput",
    "AgentRunOutput",
    "CallDecision",
    "ContinueAsNewWhenLong",
    "PendingToolCall",
    "PerdureAgentWorkflow",
    "RunMemo",
    "register_agent",
    "registered_agent",
]

WORKFLOW_NAME = "perdure.agent"
"""Temporal workflow type of every perdure agent run (what `list` filters on)."""
DECIDE_UPDATE = "perdure.decide"
"""Update that records one approval decision of a paused run."""
MEMO_KEY = "perdure"
"""Memo entry with perdure's status (`running` / `paused`), the agent and the pending calls."""

_agents = AgentRegistry()


def register_agent(name: str, agent: AbstractAgent[Any, Any]) -> None:
    """Make `agent` runnable by name in this process (called when its capability binds)."""
    _agents.register(name, agent)


def registered_agent(name: str) -> AbstractAgent[Any, Any] | None:
    """The agent registered under `name` in this process, if any."""
    return _agents.get(name)


class AgentRunInput(BaseModel):
    """What the workflow runs: JSON data only, so any worker can run it."""

    agent: str
    prompt: str
    model: str | None = None
    """Key of a model registered in the capability's `models=`, or a model-name string."""
    model_settings: dict[str, Any] | None = None
    usage_limits: dict[str, Any] | None = None
    """Fields of pydantic-ai's `UsageLimits` (e.g. `{"request_limit": 200}`)."""
    message_history: list[Any] | None = None
    """A run continued as new: the messages so far (JSON), ending with the request to send next."""
    approval_rounds: int = 0
    requests: int = 0
    """Model requests of the earlier runs of this workflow (continued as new), counted on."""
    continued: int = 0
    """How many times this workflow continued as new."""
    max_history: int | None = None
    """History events after which the run continues as new (the starting client's setting); None:
    when Temporal suggests it."""


class AgentRunOutput(BaseModel):
    """The finished run: its output as JSON data and how it went."""

    output: Any = None
    approval_rounds: int = 0
    requests: int = 0


class PendingToolCall(BaseModel):
    """A tool call of a paused run that waits for a human decision."""

    tool_call_id: str
    tool_name: str
    args: Any = None


class CallDecision(BaseModel):
    """One human decision, sent with the `perdure.decide` update."""

    tool_call_id: str
    approved: bool
    override_args: dict[str, Any] | None = None
    message: str | None = None


class RunMemo(BaseModel):
    """perdure's state as kept in the workflow memo (readable without a worker)."""

    agent: str
    status: str = "running"
    pending: list[PendingToolCall] = Field(default_factory=list)
    round: int = 0
    updated_at: str | None = None


_RUNNING: ContextVar[PerdureAgentWorkflow | None] = ContextVar("perdure_temporal_workflow", default=None)


class ContinueAsNewWhenLong(AbstractCapability[Any]):
    """Continue a long run as a new workflow run before a model request, so its history stays bounded.

    Temporal caps a history (50,000 events, 50 MB) and every model request activity carries the
    whole conversation, so a long agent run would reach the cap. Before a model request, when
    Temporal suggests it or the history has `max_history` events, the workflow continues as new with
    the messages so far (ending with the request about to be sent): finished tool calls and model
    requests are in those messages and never run again. The first request of a run never continues,
    so a small `max_history` cannot loop. The threshold travels in the workflow input (set by the
    client that started the run), so every worker and every continuation applies the same one.
    """

    async def before_model_request(
        self, ctx: RunContext[Any], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        """Continue as new here when the history is long (workflow code only)."""
        if not workflow.in_workflow() or ctx.usage.requests < 1:
            return request_context
        run = _RUNNING.get()
        if run is None:
            return request_context
        info = workflow.info()
        limit = run.max_history
        long = limit is not None and info.get_current_history_length() >= limit
        if long or info.is_continue_as_new_suggested():
            run.continue_as_new(request_context.messages, ctx.usage.requests)
        return request_context


def _interrupted(error: ActivityError) -> BaseException:
    """A tool activity lost with its worker and not retried (`idempotent=False`): a clear failure."""
    if not isinstance(error.cause, ActivityTimeoutError) or "call_tool" not in error.activity_type:
        return error
    return ApplicationError(
        f"Execution {workflow.info().workflow_id!r}: a tool call ({error.activity_type}, activity "
        f"{error.activity_id}) timed out with no attempt left, e.g. its worker died during the call. "
        f"Tools marked idempotent=False run at most once on Temporal, so perdure does not run it again: "
        f"check the external system, then start a new execution.",
        type="PerdureNonIdempotentInterrupted",
        non_retryable=True,
    )


def _with_deferred(output_type: Any) -> Any:
    """The agent's output types plus `DeferredToolRequests`, so approval-gated tools pause the run."""
    items = (
        list(output_type)
        if isinstance(output_type, Sequence) and not isinstance(output_type, str)
        else [output_type]
    )
    if DeferredToolRequests in items:
        return None  # the agent's own output type already allows pausing
    return [*items, DeferredToolRequests]


@workflow.defn(name=WORKFLOW_NAME)
class PerdureAgentWorkflow:
    """Runs one agent to completion; approval-gated tool calls wait for `perdure.decide` updates."""

    def __init__(self) -> None:
        self._memo: RunMemo | None = None
        self._decisions: dict[str, CallDecision] = {}
        self._request = AgentRunInput(agent="", prompt="")
        self._requests_before = 0

    @workflow.run
    async def run(self, request: AgentRunInput) -> AgentRunOutput:
        """Run the agent; loop over approval rounds until it returns an output."""
        _RUNNING.set(self)  # for `ContinueAsNewWhenLong`, in this workflow's own task context
        self._request = request
        agent = registered_agent(request.agent)
        if agent is None:
            raise ApplicationError(
                f"Agent {request.agent!r} is not served by the worker on task queue "
                f"{workflow.info().task_queue!r}: start `perdure worker --engine temporal --app "
                f"module:agent` with the module that builds it (PERDURE_ENGINE=temporal or "
                f"PerdureDurability(engine='temporal')).",
                type="PerdureAgentNotRegistered",
                non_retryable=True,
            )
        self._memo = RunMemo(agent=request.agent, round=request.approval_rounds)
        output_type = _with_deferred(agent.output_type)
        limits = UsageLimits(**request.usage_limits) if request.usage_limits else None
        history: Any = None
        if request.message_history:  # continued as new: go on from the last request
            history = ModelMessagesTypeAdapter.validate_python(request.message_history)
        prompt: str | None = None if history else request.prompt
        results: DeferredToolResults | None = None
        requests = self._requests_before = request.requests
        runner: Any = agent  # run's overloads over output types are too many for mypy to check
        while True:
            try:
                result = await runner.run(
                    prompt,
                    message_history=history,
                    deferred_tool_results=results,
                    output_type=output_type,
                    model=request.model,
                    model_settings=request.model_settings,
                    usage_limits=limits,
                )
            except ActivityError as error:
                raise _interrupted(error) from error
            requests += result.usage.requests
            self._requests_before = requests
            output = result.output
            if not isinstance(output, DeferredToolRequests):
                return AgentRunOutput(
                    output=to_jsonable_python(output), approval_rounds=self._memo.round, requests=requests
                )
            if output.calls:
                raise ApplicationError(
                    f"Agent {request.agent!r} deferred tool calls to an external executor "
                    f"({', '.join(c.tool_name for c in output.calls)}); the Temporal engine only supports "
                    f"approvals (requires_approval=True / ApprovalRequired). Run such tools as activities.",
                    type="PerdureExternalCallsUnsupported",
                    non_retryable=True,
                )
            self._decisions = {}
            pending = [
                PendingToolCall(tool_call_id=c.tool_call_id, tool_name=c.tool_name, args=c.args_as_dict())
                for c in output.approvals
            ]
            self._set_memo(status="paused", pending=pending, round=self._memo.round + 1)
            await workflow.wait_condition(self._all_decided)
            results = DeferredToolResults(approvals={p.tool_call_id: self._decision(p) for p in pending})
            history = result.all_messages()
            prompt = None

    @property
    def max_history(self) -> int | None:
        """History events after which this run continues as new (None: when Temporal suggests)."""
        return self._request.max_history

    def continue_as_new(self, messages: Sequence[ModelMessage], requests: int) -> NoReturn:
        """Continue this workflow as a new run that goes on from `messages` (history stays bounded)."""
        assert self._memo is not None
        request = self._request.model_copy(
            update={
                "message_history": ModelMessagesTypeAdapter.dump_python(list(messages), mode="json"),
                "approval_rounds": self._memo.round,
                "requests": self._requests_before + requests,
                "continued": self._request.continued + 1,
            }
        )
        workflow.continue_as_new(request, memo={MEMO_KEY: self._memo.model_dump(mode="json")})

    def _all_decided(self) -> bool:
        assert self._memo is not None
        return all(p.tool_call_id in self._decisions for p in self._memo.pending)

    def _decision(self, call: PendingToolCall) -> bool | ToolApproved | ToolDenied:
        decision = self._decisions[call.tool_call_id]
        if not decision.approved:
            return ToolDenied(decision.message) if decision.message else ToolDenied()
        if decision.override_args is not None:
            return ToolApproved(override_args=decision.override_args)
        return True

    def _set_memo(self, **changes: Any) -> None:
        assert self._memo is not None
        self._memo = self._memo.model_copy(update={**changes, "updated_at": workflow.now().isoformat()})
        workflow.upsert_memo({MEMO_KEY: self._memo.model_dump(mode="json")})

    @workflow.update(name=DECIDE_UPDATE)
    def decide(self, decision: CallDecision) -> str:
        """Record a decision; the last one of the round marks the run running again at once."""
        self._decisions[decision.tool_call_id] = decision
        assert self._memo is not None
        if all(p.tool_call_id in self._decisions for p in self._memo.pending):
            self._set_memo(status="running", pending=[])
        return "recorded"

    @decide.validator
    def _check_decision(self, decision: CallDecision) -> None:
        """Refuse decisions the run cannot use (not paused, unknown or already decided call)."""
        memo = self._memo
        if memo is None or memo.status != "paused":
            raise ValueError("the run is not paused for approval")
        ids = [p.tool_call_id for p in memo.pending]
        if decision.tool_call_id not in ids:
            raise ValueError(f"no pending call {decision.tool_call_id!r}; pending: {', '.join(ids)}")
        if decision.tool_call_id in self._decisions:
            raise ValueError(f"call {decision.tool_call_id!r} was already decided")
