"""The seed-compatible facade: `Agent`, `Task` and `@tool`."""

from __future__ import annotations

from .agent import Agent
from .task import Task
from .tools import ToolOptions, tool

__all__ = ["Agent", "Task", "ToolOptions", "tool"]
