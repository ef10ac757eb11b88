"""The seed-compatible facade: `Agent`, `Task`, `@tool` and the run output object."""

from __future__ import annotations

from .agent import Agent
from .output import AgentRunOutput
from .task import Task
from .tools import ToolOptions, register, tool

__all__ = ["Agent", "AgentRunOutput", "Task", "ToolOptions", "register", "tool"]
