"""`--app module:attr`: import the operator's agents and turn them into an agent resolver.

The worker resumes executions with the agents of the operator's application, which it can only reach
by importing it. Everything that can go wrong here (a typo in the reference, an import error, a class
instead of an instance, a pydantic-ai agent without `PerdureDurability`, two agents with one name)
is a usage error (exit 2) found before the storage is opened, so a wrong `--app` never touches it.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from ..agent import Agent as PerdureAgent
from ..durable import PerdureDurability
from ..durable.recovery import AgentResolver
from ..workflows import Workflow
from ._app import _settings, _usage

__all__ = ["ACCEPTED_APPS", "build_resolver", "load_app"]

ACCEPTED_APPS = (
    "a perdure Agent, a pydantic-ai Agent with PerdureDurability, a @workflow, a dict "
    "{agent_name: agent}, a list/tuple of agents, or a callable (head) -> agent"
)


def load_app(reference: str) -> Any:
    """Import `module:attr` (attr may be dotted) the way uvicorn does: the current dir is importable.

    A reference that cannot be imported is a usage error (exit 2).

    Args:
        reference: `module:attr`, e.g. `myapp.agents:support` or `myapp:registry.agents`.

    Returns:
        The object the reference names, not yet checked to be an agent.

    """
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        _usage(f"--app: expected module:attribute, got {reference!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as exc:  # ImportError, AttributeError, or the module failing at import time
        if _settings.debug:
            traceback.print_exc()
        _usage(f"--app: cannot import {reference!r}: {type(exc).__name__}: {exc}")
    return target


def _is_agent(obj: Any, reference: str) -> bool:
    """Whether `obj` is an agent the worker can resume with; a non-durable pydantic-ai agent is refused."""
    if isinstance(obj, PydanticAgent):
        if PerdureDurability.from_agent(obj) is None:
            _usage(
                f"--app {reference}: pydantic-ai Agent {obj.name!r} is not durable; create it with "
                f"capabilities=[PerdureDurability()] (from perdure.durable), or use perdure.Agent"
            )
        return True
    if isinstance(obj, PerdureAgent | Workflow):
        return True
    # Duck-typed like the recovery code: anything with the facade's resume method.
    return not isinstance(obj, type) and callable(getattr(obj, "continue_durable_async", None))


def _describe(obj: Any) -> str:
    """A short description of a wrong `--app` target, so the error says what was found instead."""
    if isinstance(obj, type):
        return f"the class {obj.__qualname__} (pass an instance)"
    text = repr(obj)
    return f"{type(obj).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def build_resolver(references: Sequence[str]) -> AgentResolver:
    """The agent resolver the `--app` references name, validated before the storage is opened.

    One reference to an agent or a callable is passed through unchanged. Otherwise every agent
    (from dicts, lists/tuples and single agents, over all references) is collected into one
    `{agent_name: agent}` mapping; agents need a name there, and two different agents with one name
    are refused. Anything else is a usage error (exit 2) saying what is accepted.

    Args:
        references: The `--app` values, in order.

    Returns:
        An agent, a callable resolver, or a `{agent_name: agent}` mapping.

    """
    if not references:
        _usage(f"--app is required: {ACCEPTED_APPS}")
    targets = [(ref, load_app(ref)) for ref in references]
    if len(targets) == 1:
        ref, obj = targets[0]
        if _is_agent(obj, ref):
            return obj
        if callable(obj) and not isinstance(obj, type | Mapping):
            return obj
    agents: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def add(name: Any, agent: Any, where: str) -> None:
        if not _is_agent(agent, where):
            _usage(f"--app {where}: expected an agent, got {_describe(agent)}; accepted: {ACCEPTED_APPS}")
        if not isinstance(name, str) or not name:
            _usage(
                f"--app {where}: agent {agent!r} has no name; with several agents each needs one "
                f"(Agent(..., name='...')) to match the agent_name its executions recorded"
            )
        if name in agents and agents[name] is not agent:
            _usage(f"--app: two different agents are named {name!r} ({origin[name]} and {where})")
        agents[name] = agent
        origin[name] = where

    for ref, obj in targets:
        if isinstance(obj, Mapping):
            for key, agent in obj.items():
                add(key, agent, f"{ref}[{key!r}]")
        elif isinstance(obj, list | tuple):
            for index, agent in enumerate(obj):
                add(getattr(agent, "name", None), agent, f"{ref}[{index}]")
        elif _is_agent(obj, ref):
            add(getattr(obj, "name", None), obj, ref)
        elif callable(obj) and not isinstance(obj, type):
            _usage(f"--app {ref}: a callable resolver must be the only --app (it chooses every agent)")
        else:
            _usage(f"--app {ref}: got {_describe(obj)}; accepted: {ACCEPTED_APPS}")
    if not agents:
        _usage(f"--app {', '.join(references)}: names no agent; accepted: {ACCEPTED_APPS}")
    return agents
