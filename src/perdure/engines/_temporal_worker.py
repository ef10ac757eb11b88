"""The worker side of the Temporal engine: one `temporalio.worker.Worker` for perdure's agents.

Sandbox choice: Temporal's workflow sandbox stays on, with the whole `perdure` package passed
through. The generic workflow then finds the agents in the registry this process filled when it
imported the app (`perdure worker --app`), and the app module is never re-imported inside the
sandbox (re-importing it there would build a second, unregistered copy of every agent). pydantic-ai's
`PydanticAIPlugin` (on the client) adds its own pass-through modules and the pydantic payload
converter; `AgentPlugin` registers each agent's activities.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.durable_exec.temporal import AgentPlugin, TemporalDurability
from pydantic_ai.exceptions import UserError as PydanticAIUserError
from pydantic_ai.toolsets import FunctionToolset
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from ..durable.capability import tool_step_config
from ..errors import UserError
from ._base import EngineOptions
from ._temporal_workflow import PerdureAgentWorkflow, register_agent

__all__ = ["at_most_once", "build_worker"]


def at_most_once(agent: AbstractAgent[Any, Any]) -> None:
    """Give every `idempotent=False` function tool one activity attempt (Temporal's at-most-once).

    Temporal retries an activity that timed out, e.g. because its worker died during the call: for a
    tool perdure must not run twice that would repeat its effect. With one attempt the lost call
    fails the run instead (the workflow turns it into `PerdureNonIdempotentInterrupted`). Done when
    the worker starts, because tools are usually added after the agent is built (`@agent.tool`); a
    tool with its own `{"temporal": {...}}` metadata keeps it.
    """
    for toolset in agent.toolsets:
        if not isinstance(toolset, FunctionToolset):
            continue
        for name, tool in toolset.tools.items():
            metadata = dict(tool.metadata or {})
            if "temporal" in metadata or tool_step_config(name, metadata, {}).get("idempotent", True):
                continue
            metadata["temporal"] = {"retry_policy": RetryPolicy(maximum_attempts=1)}
            tool.metadata = metadata


def build_worker(client: Client, options: EngineOptions, agents: Sequence[AbstractAgent[Any, Any]]) -> Worker:
    """A worker on the task queue for the `perdure.agent` workflow and these agents' activities.

    Raises:
        UserError: an agent that does not carry Temporal durability (built before PERDURE_ENGINE was set).

    """
    plugins = []
    for agent in agents:
        try:
            plugins.append(AgentPlugin(agent))
        except PydanticAIUserError as exc:
            raise UserError(
                f"Agent {agent.name!r} cannot be served on Temporal: {exc} Build it with PerdureDurability() "
                f"after setting PERDURE_ENGINE=temporal (`perdure worker --engine temporal` does that)."
            ) from exc
        durability = TemporalDurability.from_agent(agent)
        assert durability is not None  # AgentPlugin checked it
        register_agent(durability.name, agent)
        at_most_once(agent)
    sticky = options.temporal_sticky_queue_timeout
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("perdure")
    )
    return Worker(
        client,
        task_queue=options.temporal_task_queue,
        workflows=[PerdureAgentWorkflow],
        plugins=plugins,
        workflow_runner=runner,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=sticky or 10.0),
    )
