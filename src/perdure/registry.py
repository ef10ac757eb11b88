"""What the running program registered: the only place a resume finds code.

Stored data never chooses code. A record names its tools and output type (`module:qualname`), but
that name is only a lookup key into this registry, filled by the program itself: `@tool`
registers a function when its module is imported, a perdure `Agent` or `Task` registers the tools
and output type it was given, and `perdure.register()` registers anything else explicitly. A record that
names something this process did not register fails with `UnregisteredReferenceError` (or
`ToolNotFoundError` for tools); nothing is imported and nothing is called, whatever the record says.
This is what keeps a tampered record (`os:system` as a tool, `subprocess:getoutput` as an output
type) from running code.

That is also why the two-file quick start works: the resuming script imports the app module, which
registers its tools as it is imported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registry", "object_ref", "registry"]


def object_ref(obj: Any) -> str | None:
    """`module:qualname` of a module-level object, or None when it has no stable name."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if "<locals>" in qualname or "<lambda>" in qualname:
        return None
    return f"{module}:{qualname}"


@dataclass
class Registry:
    """Tools, output types and workflows, registered by the running program."""

    _tools_by_ref: dict[str, Any] = field(default_factory=dict)
    _tools_by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    _types_by_ref: dict[str, Any] = field(default_factory=dict)
    _workflows: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_tool(self, tool: Any, name: str, ref: str | None) -> None:
        """Register a tool (a function or a pydantic-ai `Tool`) under its name and reference."""
        with self._lock:
            if ref is not None:
                self._tools_by_ref[ref] = tool
            self._tools_by_name.setdefault(name, {})[ref or f"<unnamed {id(tool)}>"] = tool

    def add_type(self, output_type: Any) -> None:
        """Register an output type (pydantic model, dataclass, ...) under its reference."""
        ref = object_ref(output_type)
        if ref is None:
            return
        with self._lock:
            self._types_by_ref[ref] = output_type

    def tool(self, name: str, ref: str | None) -> Any | None:
        """The registered tool for a recorded `(name, ref)`: by reference, else the only one of that name."""
        with self._lock:
            if ref is not None and ref in self._tools_by_ref:
                return self._tools_by_ref[ref]
            candidates = list(self._tools_by_name.get(name, {}).values())
        unique = {id(c): c for c in candidates}
        return next(iter(unique.values())) if len(unique) == 1 else None

    def output_type(self, ref: str) -> Any | None:
        """The registered output type recorded as `ref`, or None."""
        with self._lock:
            return self._types_by_ref.get(ref)

    def add_workflow(self, name: str, workflow: Any) -> None:
        """Register a workflow under its name (a later registration of the same name replaces it)."""
        with self._lock:
            self._workflows[name] = workflow

    def workflow(self, name: str) -> Any | None:
        """The workflow registered as `name`, or None."""
        with self._lock:
            return self._workflows.get(name)

    def workflow_names(self) -> list[str]:
        """Names of the registered workflows, sorted."""
        with self._lock:
            return sorted(self._workflows)


registry = Registry()
"""The process-wide registry."""
