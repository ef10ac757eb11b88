"""`@tool` and import references that let another process find a task's tools again.

perdure never pickles functions. A tool is recorded by name and by `module:qualname`; resuming in a
new process imports it from there, or takes it from the `tools=[...]` the caller passes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic_ai import Tool

from ..errors import ToolNotFoundError
from ..records import ToolRef

__all__ = [
    "ToolOptions",
    "ToolLike",
    "import_ref",
    "object_ref",
    "resolve_tools",
    "tool",
    "tool_name",
    "to_tool_ref",
]

F = TypeVar("F", bound=Callable[..., Any])
ToolLike = Callable[..., Any] | Tool[Any]

_OPTIONS_ATTR = "__perdure_tool__"


@dataclass(frozen=True)
class ToolOptions:
    """Options attached to a function by `@tool`."""

    name: str | None = None
    description: str | None = None
    retries: int | None = None
    requires_approval: bool = False
    idempotent: bool = True


@overload
def tool(func: F, /) -> F: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    retries: int | None = None,
    requires_approval: bool = False,
    idempotent: bool = True,
) -> Callable[[F], F]: ...
def tool(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    retries: int | None = None,
    requires_approval: bool = False,
    idempotent: bool = True,
) -> F | Callable[[F], F]:
    """Mark a function as an agent tool, optionally with options.

    The function itself is returned (options are attached to it), so it stays importable by its
    module path and can be called directly in tests. Plain functions work as tools too.
    """
    options = ToolOptions(name, description, retries, requires_approval, idempotent)

    def mark(fn: F) -> F:
        setattr(fn, _OPTIONS_ATTR, options)
        return fn

    return mark(func) if func is not None else mark


def tool_options(fn: Callable[..., Any]) -> ToolOptions:
    """Options of a function marked with `@tool` (defaults for plain functions)."""
    options = getattr(fn, _OPTIONS_ATTR, None)
    return options if isinstance(options, ToolOptions) else ToolOptions()


def tool_name(item: ToolLike) -> str:
    """The name the model sees for a tool."""
    if isinstance(item, Tool):
        return item.name
    return tool_options(item).name or item.__name__


def object_ref(obj: Any) -> str | None:
    """`module:qualname` of a module-level object, or None when it cannot be imported by path."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    return f"{module}:{qualname}"


def import_ref(ref: str) -> Any:
    """Import the object named by `module:qualname`; raises ImportError or AttributeError."""
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def to_tool_ref(item: ToolLike) -> ToolRef:
    """How a tool is recorded with its task."""
    func = item.function if isinstance(item, Tool) else item
    return ToolRef(name=tool_name(item), ref=object_ref(func))


def to_pydantic_tool(item: ToolLike) -> Tool[Any]:
    """Build the pydantic-ai `Tool` for a function (or pass a `Tool` through)."""
    if isinstance(item, Tool):
        return item
    options = tool_options(item)
    return Tool(
        item,
        name=options.name,
        description=options.description,
        max_retries=options.retries,
        requires_approval=options.requires_approval,
    )


def resolve_tools(
    execution_id: str, recorded: Sequence[ToolRef], given: Sequence[ToolLike]
) -> list[ToolLike]:
    """Find every recorded tool again: in `given` by name, else by import reference.

    A recorded tool that cannot be found is an error: silently dropping it would let the model call
    a tool that no longer exists and take the run somewhere the original never went.
    """
    by_name = {tool_name(item): item for item in given}
    resolved: list[ToolLike] = []
    for ref in recorded:
        if ref.name in by_name:
            resolved.append(by_name.pop(ref.name))
            continue
        if ref.ref is None:
            raise ToolNotFoundError(
                execution_id, ref.name, "it was not defined at module level, so it has no import path"
            )
        try:
            found = import_ref(ref.ref)
        except (ImportError, AttributeError) as exc:
            raise ToolNotFoundError(execution_id, ref.name, f"importing {ref.ref!r} failed ({exc})") from exc
        if not callable(found) or tool_name(found) != ref.name:
            raise ToolNotFoundError(execution_id, ref.name, f"{ref.ref!r} is not that tool any more")
        resolved.append(found)
    resolved.extend(by_name.values())  # extra tools the caller added on purpose
    return resolved
