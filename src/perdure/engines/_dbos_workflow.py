"""The one DBOS workflow that runs any registered perdure agent: `perdure.agent`.

A stable workflow name (not one per agent) keeps DBOS's application version — a hash of the
registered workflow code, which recovery matches — independent of which agents a process builds.
The agent is looked up by name in a process-wide registry that `DBOSEngine.bind` fills when the
agent is constructed, so a worker recovers a run as soon as it imported the agent's module.

Approvals: a run that ends with pydantic-ai's `DeferredToolRequests` publishes `paused` and its
pending calls as the workflow event `perdure.status`, receives one decision per call on the topic
`perdure.decision` (`DBOS.recv_async`, durable: a recovered workflow replays received decisions),
then continues the run with its message history and the `DeferredToolResults`. The history is not
stored: recovery rebuilds it by replaying the recorded model and tool steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbos import DBOS
from pydantic_ai import DeferredToolRequests
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.usage import UsageLimits
from pydantic_core import to_jsonable_python

from ..durable.decisions import approvals_from_json
from ..errors import UnregisteredReferenceError, UserError
from ._registry import AgentRegistry

__all__ = [
    "DECISION_TOPIC",
    "STATUS_EVENT",
    "WORKFLOW_NAME",
    "agent_name_of",
    "perdure_agent_workflow",
    "register_agent",
    "registered_agent",
]

WORKFLOW_NAME = "perdure.agent"
STATUS_EVENT = "perdure.status"
DECISION_TOPIC = "perdure.decision"
_RECV_TIMEOUT = 3600.0  # each wait is a recorded step; a long pause just loops

_agents = AgentRegistry()


def register_agent(name: str, agent: AbstractAgent[Any, Any]) -> None:
    """Make `agent` runnable (and recoverable) by the `perdure.agent` workflow under `name`."""
    _agents.register(name, agent)


def registered_agent(name: str, execution_id: str | None = None) -> AbstractAgent[Any, Any]:
    """The agent registered under `name`; a typed error naming the execution when there is none."""
    agent = _agents.get(name)
    if agent is None:
        raise UnregisteredReferenceError(
            execution_id,
            "agent",
            name,
            hint=(
                "Import the module that builds the agent (with PerdureDurability() and PERDURE_ENGINE=dbos, "
                "or PerdureDurability(engine='dbos')) in the worker process before DBOS launches."
            ),
        )
    return agent


def agent_name_of(agent: AbstractAgent[Any, Any]) -> str:
    """The name an agent was registered under by `DBOSEngine.bind`."""
    name = _agents.name_of(agent)
    if name is not None:
        return name
    raise UserError(
        f"Agent {agent.name!r} does not run on the DBOS engine: build it with "
        f"capabilities=[PerdureDurability(engine='dbos')] (or set PERDURE_ENGINE=dbos before it is built)."
    )


def _output_type_with_deferred(agent: AbstractAgent[Any, Any]) -> Any:
    """The agent's output type plus `DeferredToolRequests`, so approval-requiring tools pause the run."""
    output_type = getattr(agent, "output_type", str)
    types: Sequence[Any] = output_type if isinstance(output_type, list | tuple) else [output_type]
    if DeferredToolRequests in types:
        return None
    return [*types, DeferredToolRequests]


def _pending(requests: DeferredToolRequests) -> list[dict[str, Any]]:
    return [
        {"tool_call_id": call.tool_call_id, "tool_name": call.tool_name, "args": call.args_as_dict()}
        for call in requests.approvals
    ]


async def _decisions(round_no: int, call_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Receive one decision per pending call of this round (messages of other rounds are dropped)."""
    decided: dict[str, dict[str, Any]] = {}
    while call_ids - decided.keys():
        message = await DBOS.recv_async(DECISION_TOPIC, timeout_seconds=_RECV_TIMEOUT)
        if not isinstance(message, dict) or message.get("round") != round_no:
            continue
        call_id = message.get("tool_call_id")
        if call_id in call_ids and call_id not in decided:
            decided[call_id] = dict(message.get("decision") or {})
    return decided


async def run_agent_workflow(agent_name: str, prompt: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run the registered agent to its output, pausing for approvals; the JSON result of the workflow."""
    execution_id = DBOS.workflow_id
    agent = registered_agent(agent_name, execution_id)
    output_type = _output_type_with_deferred(agent)
    kwargs: dict[str, Any] = {}
    if output_type is not None:
        kwargs["output_type"] = output_type
    if options.get("usage_limits"):
        kwargs["usage_limits"] = UsageLimits(**options["usage_limits"])
    if options.get("model"):
        kwargs["model"] = options["model"]
    result = await agent.run(prompt, **kwargs)
    round_no = 0
    while isinstance(result.output, DeferredToolRequests):
        requests = result.output
        if requests.calls:
            raise UserError(
                f"Execution {execution_id!r}: tools {[c.tool_name for c in requests.calls]} deferred their "
                "calls (CallDeferred) for results from elsewhere; the DBOS engine supports approvals only."
            )
        round_no += 1
        pending = _pending(requests)
        await DBOS.set_event_async(STATUS_EVENT, {"status": "paused", "round": round_no, "pending": pending})
        decided = await _decisions(round_no, {item["tool_call_id"] for item in pending})
        await DBOS.set_event_async(STATUS_EVENT, {"status": "success", "round": round_no, "pending": []})
        result = await agent.run(
            message_history=result.all_messages(),
            deferred_tool_results=approvals_from_json(decided),
            **kwargs,
        )
    usage = result.usage
    return {
        "output": to_jsonable_python(result.output, fallback=repr),
        "approval_rounds": round_no,
        "usage": {
            "requests": usage.requests,
            "tool_calls": usage.tool_calls,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        },
    }


@DBOS.workflow(name=WORKFLOW_NAME)
async def perdure_agent_workflow(agent_name: str, prompt: str, options: dict[str, Any]) -> dict[str, Any]:
    """DBOS entry point; the body lives in `run_agent_workflow` (DBOS hashes this source into its version)."""
    return await run_agent_workflow(agent_name, prompt, options)
