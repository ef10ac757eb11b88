"""The Prefect side of the `prefect` engine: the flow that runs an agent, and its agent registry.

Every perdure agent runs as one flow, `perdure-agent`, whose parameters name the agent, carry the
prompt and the execution id; the agent's model requests and tool calls are Prefect tasks (pydantic-ai's
`PrefectDurability`), whose results are persisted and cached under the flow run's id. A flow run that
is executed again (after its worker died) therefore replays every finished task from its cached
result and runs only what had not finished.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import StateType
from pydantic_ai.agent.abstract import AbstractAgent

from ..errors import UserError
from ..records import ExecutionStatus
from ._registry import AgentRegistry

__all__ = [
    "ACTIVE_STATES",
    "FLOW_NAME",
    "TAG",
    "agent_for",
    "perdure_agent_flow",
    "register_agent",
    "status_of",
]

FLOW_NAME = "perdure-agent"
"""Name of the Prefect flow every perdure agent run is a run of."""
TAG = "perdure"
"""Tag of the flow runs perdure creates."""

ACTIVE_STATES: frozenset[StateType] = frozenset(
    {StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING}
)
"""Prefect states of a run that has not ended."""

_STATUS: dict[StateType, ExecutionStatus] = {
    StateType.COMPLETED: ExecutionStatus.COMPLETED,
    StateType.FAILED: ExecutionStatus.FAILED,
    StateType.CRASHED: ExecutionStatus.FAILED,
    StateType.CANCELLED: ExecutionStatus.CANCELLED,
}

_agents = AgentRegistry()


def status_of(state_type: StateType | None) -> ExecutionStatus:
    """The perdure status of a Prefect state type (running, scheduled, ... are `success`)."""
    return _STATUS.get(state_type, ExecutionStatus.SUCCESS) if state_type else ExecutionStatus.SUCCESS


def register_agent(agent: AbstractAgent[Any, Any]) -> None:
    """Make `agent` runnable by `perdure_agent_flow` in this process, under its name."""
    if not agent.name:
        raise UserError("An agent needs a stable `name` to run on the prefect engine.")
    _agents.register(agent.name, agent)


def agent_for(name: str) -> AbstractAgent[Any, Any]:
    """The agent registered under `name` (a worker serves the agents it was given)."""
    agent = _agents.get(name)
    if agent is None:
        raise UserError(
            f"Agent {name!r} is not served by this Prefect worker: pass it to "
            f"`PrefectEngine.serve([...])` (served: {', '.join(_agents.names()) or 'none'})."
        )
    return agent


@flow(name=FLOW_NAME, persist_result=True, validate_parameters=False, log_prints=False)
async def perdure_agent_flow(
    agent: str, prompt: str, execution_id: str, run_kwargs: dict[str, Any] | None = None
) -> Any:
    """Run the registered agent `agent` on `prompt`; its model requests and tool calls are tasks.

    Args:
        agent: Name of the agent (registered with `register_agent`).
        prompt: The user prompt.
        execution_id: perdure's execution id (also the flow run's name and idempotency key).
        run_kwargs: JSON-compatible keyword arguments of `agent.run` (e.g. `model=` a registered key).

    Returns:
        The agent's output.

    """
    result = await agent_for(agent).run(prompt, **(run_kwargs or {}))
    return result.output
