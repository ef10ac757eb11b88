"""The agents an engine can run in this process, by name.

An engine's generic workflow (Temporal), workflow function (DBOS) or flow (Prefect) receives the
agent's name as data and must find the agent object the worker imported; the capability registers
it here when it binds (`Engine.bind`, at agent construction). One registry per engine: an agent is
bound to one engine.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic_ai.agent.abstract import AbstractAgent

__all__ = ["AgentRegistry"]


class AgentRegistry:
    """A thread-safe `{name: agent}` map filled at bind time and read by the engine's workers."""

    def __init__(self) -> None:
        self._agents: dict[str, AbstractAgent[Any, Any]] = {}
        self._lock = threading.Lock()

    def register(self, name: str, agent: AbstractAgent[Any, Any]) -> None:
        """Make `agent` runnable under `name` (the last binding of a name wins, as on re-import)."""
        with self._lock:
            self._agents[name] = agent

    def get(self, name: str) -> AbstractAgent[Any, Any] | None:
        """The agent registered under `name`, if any."""
        with self._lock:
            return self._agents.get(name)

    def name_of(self, agent: AbstractAgent[Any, Any]) -> str | None:
        """The name `agent` was registered under, if it was."""
        with self._lock:
            return next((name for name, known in self._agents.items() if known is agent), None)

    def names(self) -> list[str]:
        """The registered names, sorted (for error messages)."""
        with self._lock:
            return sorted(self._agents)
