"""perdure as a pydantic-ai durability engine.

`PerdureDurability` subclasses pydantic-ai's public `BaseDurabilityCapability`: pydantic-ai turns
every model request and tool call of an agent into a durable operation and hands it to the backend
returned here, which routes it through the current `JournalRun`. Outside an execution (no run
installed) the agent behaves exactly like a plain pydantic-ai agent.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.capabilities.abstract import AbstractCapability
from pydantic_ai.durable_exec import (
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    DurableOperationBackend,
    DurableOperationId,
    JournalCallableOperationBackend,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetValidateToolArgumentsId,
    conversation_id_from_run_id,
)
from pydantic_ai.messages import AgentStreamEvent
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.tools import AgentDepsT

from ..codec import JOURNAL_CODEC
from ..errors import UserError
from ..records import StepKind
from . import _streaming
from ._keys import MODEL_REQUEST, workflow_key, workflow_scope
from ._outside import warn_outside_execution
from .circuit import CircuitBreaker
from .identity import instructions_hash
from .journal import UnitIdentity, current_run, in_unit_scope, serialization_failure
from .retry import RetryPolicy
from .step_context import STEP

__all__ = ["TOOL_CONFIG_KEY", "PerdureDurability", "StepConfig", "tool_step_config"]

TOOL_CONFIG_KEY = "perdure"
"""Key of perdure's per-tool settings in a pydantic-ai tool's `metadata`."""

StepConfig = dict[str, Any]
"""Per-unit configuration: `retry` (RetryPolicy), `circuit_breaker` (CircuitBreaker), `idempotent` (bool).

Agent-wide values come from `PerdureDurability(...)`; a tool overrides them with its metadata
under the `perdure` key, e.g. `Tool(f, metadata={"perdure": {"idempotent": False}})` (perdure's
`@tool(idempotent=False, retry=...)` sets it for you).
"""


def _unit_identity(
    operation_id: DurableOperationId, name: str, cache_key: tuple[object, ...]
) -> UnitIdentity:
    ctx = next((item for item in cache_key if isinstance(item, RunContext)), None)
    tool_call_id = ctx.tool_call_id if ctx is not None else None
    if isinstance(operation_id, ModelRequestId):
        return UnitIdentity(StepKind.MODEL_REQUEST, "model_request", MODEL_REQUEST)
    if isinstance(operation_id, ToolsetCallToolId):
        tool_name = cache_key[0] if cache_key and isinstance(cache_key[0], str) else name.rsplit(":", 1)[-1]
        args = cache_key[1] if len(cache_key) > 1 else None
        return UnitIdentity(StepKind.TOOL_CALL, f"tool:{tool_name}", f"tool:{tool_name}", tool_call_id, args)
    if isinstance(operation_id, ToolsetValidateToolArgumentsId):
        tool_name = cache_key[0] if cache_key and isinstance(cache_key[0], str) else name
        return UnitIdentity(StepKind.OTHER, f"validate:{tool_name}", "validate", tool_call_id)
    return UnitIdentity(StepKind.OTHER, name, name)


def tool_step_config(tool_name: str, metadata: Mapping[str, Any] | None, defaults: StepConfig) -> StepConfig:
    """A tool's `perdure` metadata merged over the agent's tool defaults (every engine reads it so)."""
    own = (metadata or {}).get(TOOL_CONFIG_KEY)
    if own is None:
        return defaults
    if not isinstance(own, dict):
        raise UserError(
            f"Tool {tool_name!r} has invalid {TOOL_CONFIG_KEY!r} metadata: expected a dict like "
            f"{{'idempotent': False, 'retry': RetryPolicy(...)}}, got {type(own).__name__}."
        )
    return {**defaults, **own}


def _tool_config(defaults: StepConfig) -> Callable[[DurableOperationId, object | None, str], StepConfig]:
    """Merge a tool's `perdure` metadata over the agent's tool defaults."""

    def resolve(operation_id: DurableOperationId, tool: object | None, tool_name: str) -> StepConfig:
        tool_def = getattr(tool, "tool_def", None)
        return tool_step_config(tool_name, getattr(tool_def, "metadata", None), defaults)

    return resolve


def _model_key(model: Any) -> str:
    system = getattr(model, "system", None)
    name = getattr(model, "model_name", None) or type(model).__name__
    return f"{system}:{name}" if system else str(name)


class _JournalBackend(JournalCallableOperationBackend[StepConfig]):
    """Runs each durable unit through the current execution's journal."""

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: StepConfig,
    ) -> object:
        run = current_run()
        if run is None:  # pragma: no cover - the capability only dispatches inside an execution
            return await body()
        body = _streaming.live_body(body)  # a unit that runs live switches a stream from replay to live
        return await run.run_unit(_unit_identity(operation_id, name, cache_key), body, config)


class PerdureDurability(BaseDurabilityCapability[AgentDepsT]):
    """Capability that makes any pydantic-ai agent durable with perdure.

    Add it to an agent (`Agent(..., name="x", capabilities=[PerdureDurability()])`) and run the
    agent through `DurableExecution.run_agent(...)`; the agent needs a stable `name`, which names its
    journaled units.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="perdure",
        durable_unit_noun="step",
        durable_container_noun="execution",
        codec=JOURNAL_CODEC,  # JSON_CODEC that refuses NaN/inf and non-UTF-8 bytes (perdure.codec)
        serialization_failure=serialization_failure,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={
            "function": "enter-always",
            "mcp": "enter-in-durable-unit",
            "dynamic": "enter-never",
        },
        journal_discovery=True,
        # Journal order must be deterministic for ordinal keys, so tools of one response run in order.
        sequential_tools_in_durable_context=True,
        tool_config_key="perdure",
    )

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        tool_retry: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        name: str | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        warn_outside_execution: bool = True,
        engine: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Configure the engine for one agent.

        Args:
            retry: Retry policy of model requests (durable: attempts are journaled).
            tool_retry: Default retry policy of tool calls; a tool's own policy wins.
            circuit_breaker: Breaker guarding the agent's model requests.
            name: Name of the agent's durable units (defaults to the agent's name).
            event_stream_handler: pydantic-ai's capability-level handler: it gets the live model
                stream inside each model request unit and every other event once, journaled (not
                again on resume). To stream a run to a consumer, replay included, use
                `DurableExecution.run_agent_stream_events` instead.
            warn_outside_execution: Log a one-time warning when the agent runs outside a durable
                execution (nothing is saved then); False when that is intended.
            engine: What runs the agent: `embedded` (perdure's journal), `temporal`, `dbos` or
                `prefect`. None reads the `engine` setting (`PERDURE_ENGINE`, `perdure.toml`) when
                the agent is built, so one agent module runs on any engine by configuration alone.
            **kwargs: Passed to pydantic-ai's `BaseDurabilityCapability`, e.g. `models=`: the model
                instances a run may pass with `run_agent(..., model=...)`, as a mapping
                `{key: model}` or a list (keyed by `provider:model name`).

        """
        models = kwargs.get("models")
        if isinstance(models, list | tuple):  # a list of instances: key each by its model name
            kwargs["models"] = {_model_key(m): m for m in models}
        # pydantic-ai hands the live model stream of a unit to the capability-level handler only: the
        # forwarder passes it on to a streamed execution's consumer (perdure.durable._streaming).
        self._user_event_handler = event_stream_handler
        super().__init__(name=name, event_stream_handler=_streaming.forwarder(event_stream_handler), **kwargs)
        self.warn_outside_execution = warn_outside_execution
        self.engine = engine
        self.retry = retry
        self.tool_retry = tool_retry
        self.circuit_breaker = circuit_breaker

    @property
    def extra_models(self) -> dict[str, Any]:
        """The `models=` registered besides the agent's own (key -> `Model`), for engine adapters."""
        return dict(getattr(self, "_extra_models", None) or {})  # where pydantic-ai's base keeps them

    @property
    def user_event_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        """The `event_stream_handler` the user passed (not perdure's streaming forwarder)."""
        return self._user_event_handler

    def for_agent(self, agent: AbstractAgent[AgentDepsT, Any]) -> AbstractCapability[AgentDepsT]:
        """Bind to the agent: perdure's journal, or the chosen distributed engine's own durability.

        The engine is resolved here, when the agent is built, because engines such as Temporal
        register an agent's units with their workers before anything runs.
        """
        from ..engines import get_engine, resolve_engine_name

        engine = resolve_engine_name(self.engine)
        if engine == "embedded":
            return super().for_agent(agent)
        return get_engine(engine).bind(self, agent)

    def get_model_settings(self) -> Any:
        """Turn off the provider SDK's own retries when perdure retries model requests.

        SDK retries are invisible to the journal (a request retried three times inside the openai
        client looks like one), and they stack with ours: a persistent HTTP 500 under
        `RetryPolicy(max_retries=2)` made 9 requests with the SDK default and 3 without. A
        `max_retries` the user set explicitly is left alone.
        """
        if self.retry is None:
            return None

        def settings(ctx: RunContext[Any]) -> dict[str, Any]:
            return {} if "max_retries" in (ctx.model_settings or {}) else {"max_retries": 0}

        return settings

    async def before_model_request(
        self, ctx: RunContext[AgentDepsT], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        """Check the instructions against the execution's identity before the first request of an attempt.

        This is where instructions are final (they may be dynamic), and it runs before the request is
        replayed from the journal or sent, so a mismatch stops the attempt before anything ran.
        """
        request_context = await super().before_model_request(ctx, request_context)
        run = current_run()
        if run is not None and not run.instructions_checked:  # the hash scans the whole history: once
            digest = instructions_hash(
                request_context.messages, request_context.model_request_parameters.instruction_parts
            )
            await run.before_model_request(digest)
        return request_context

    async def wrap_run(self, ctx: RunContext[AgentDepsT], *, handler: Any) -> Any:
        """Key the units of an agent run that is nested in another unit or a workflow under its own scope.

        Inside a unit's body (a tool of another agent, a workflow step) the run is part of that unit:
        its units are keyed `<unit key>/<agent>#<k>/...`, so they never collide with the outer run's
        and a re-run of the unit replays what its agent already did.

        The run's position (`w<n>`) is journaled with the agent's name, so a resume that reaches it
        with another agent is refused; its units are keyed `w<n>/...`, so the units of two agents
        (both asking for `model#1`, both calling a tool `call-0`) never collide.
        """
        run = current_run()
        if run is None:
            if self.warn_outside_execution:
                warn_outside_execution(self.name)
            return await super().wrap_run(ctx, handler=handler)
        unit = STEP.get(None)
        if unit is not None:  # inside a unit's body (a tool, a workflow step): part of that unit
            prefix = f"{unit.key}/{self.name}#{run.sub_ordinal(unit.key, self.name)}/"
            with run.scoped(prefix), _streaming.muted():  # its events stay out of the outer stream
                return await super().wrap_run(ctx, handler=handler)
        if run.workflow is None or in_unit_scope():
            return await super().wrap_run(ctx, handler=handler)
        position = run.next_position()
        name = f"agent:{self.name}"
        await run.mark_position(workflow_key(position), StepKind.AGENT, name, {"agent": self.name})
        with run.scoped(workflow_scope(position)):
            return await super().wrap_run(ctx, handler=handler)

    @property
    def has_wrap_run_event_stream(self) -> bool:
        """Stream the run's nodes only for a handler of the user's or a streamed execution."""
        return self._user_event_handler is not None or _streaming.streaming_active()

    async def wrap_run_event_stream(
        self, ctx: RunContext[AgentDepsT], *, stream: AsyncIterable[AgentStreamEvent]
    ) -> AsyncIterable[AgentStreamEvent]:
        """Copy the run's events to a streamed execution's consumer (see `perdure.durable._streaming`)."""
        if self._user_event_handler is not None:  # pydantic-ai's delivery to the capability-level handler
            stream = super().wrap_run_event_stream(ctx, stream=stream)
        async for event in _streaming.relay(stream):
            yield event

    @property
    def in_durable_context(self) -> bool:
        """Inside an execution attempt started by `DurableExecution`."""
        return current_run() is not None

    def get_default_run_id(self) -> str | None:
        """The execution id, so a replayed run carries the same `run_id` on its messages."""
        run = current_run()
        return run.execution_id if run is not None else None

    def get_default_conversation_id(self, run_id: str) -> str | None:
        """Stable conversation id derived from the execution id."""
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        """Count `timeout=` from when the execution first started, not from the resume."""
        run = current_run()
        return run.head.created_at if run is not None else None

    def get_durable_operation_backend(self) -> DurableOperationBackend[StepConfig]:
        """The backend that journals this agent's units."""
        base: StepConfig = {}
        model: StepConfig = {"retry": self.retry, "circuit_breaker": self.circuit_breaker}
        tool: StepConfig = {"retry": self.tool_retry}
        return _JournalBackend(
            agent_name=self.name,
            default_model_id=self.default_model_id,
            config=RoleBasedOperationConfig(
                model=model, event=base, capability=base, tool=tool, resolve_tool=_tool_config(tool)
            ),
        )
