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

from ..durable.capability import TOOL_CONFIG_KEY
from ..durable.retry import RetryPolicy
from ..errors import ToolNotFoundError, UserError
from ..records import ToolRef

__all__ = [
    "ToolOptions",
    "ToolLike",
    "import_ref",
    "object_ref",
    "requires_approval",
    "resolve_tools",
    "to_pydantic_tool",
    "to_tool_ref",
    "tool",
    "tool_name",
    "tool_options",
]

F = TypeVar("F", bound=Callable[..., Any])
ToolLike = Callable[..., Any] | Tool[Any]

_OPTIONS_ATTR = "__perdure_tool__"


@dataclass(frozen=True)
class ToolOptions:
    """Options attached to a function by `@tool`.

    `idempotent` and `retry` are perdure's own: they become the tool's `perdure` metadata, which the
    durable engine reads per call (see `PerdureDurability`). The others are pydantic-ai's.
    """

    name: str | None = None
    description: str | None = None
    retries: int | None = None
    """Validation retries the model gets for this tool (pydantic-ai's `max_retries`)."""
    requires_approval: bool = False
    idempotent: bool = True
    retry: RetryPolicy | None = None
    """Durable retry policy of this tool's calls; overrides the agent's `tool_retry_policy`."""

    def perdure_config(self) -> dict[str, Any]:
        """The tool's `perdure` metadata: only the keys that differ from the engine's defaults.

        Defaults are left out so a tool without options carries no metadata and inherits the agent's
        settings. One deliberate exception: a non-idempotent tool without a policy of its own gets
        `retry: None`, opting it out of the agent-wide `tool_retry_policy`, because an automatic
        retry after an error that struck mid-effect would repeat the effect (charge twice).
        """
        config: dict[str, Any] = {}
        if not self.idempotent:
            config["idempotent"] = False
        if self.retry is not None or not self.idempotent:
            config["retry"] = self.retry
        return config


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
    retry: RetryPolicy | None = None,
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
    retry: RetryPolicy | None = None,
) -> F | Callable[[F], F]:
    """Mark a function as an agent tool, optionally with options.

    The function itself is returned (options are attached to it), so it stays importable by its
    module path and can be called directly in tests. Plain functions work as tools too, with the
    defaults below.

    Args:
        func: The function (when used as a bare `@tool`).
        name: Name the model sees (default: the function's name).
        description: Description the model sees (default: the docstring).
        retries: How often the model may retry invalid arguments (pydantic-ai's `max_retries`).
        requires_approval: Every call waits for a human decision: a durable run ends `paused` and
            `Agent.do` returns pydantic-ai's `DeferredToolRequests` until `continue_durable` /
            `continue_run` is given `approvals=`.
        idempotent: Whether running the tool twice is harmless. A non-idempotent tool gets a
            `started` marker in the journal before it runs; if the process dies before its result
            is journaled, a resume stops with `NonIdempotentReplayError` instead of running it again,
            and an operator decides with `resolutions=`. Idempotent tools (the default) are simply
            run again in that window: pass `perdure.current_step().idempotency_key` to external APIs
            to make that repeat harmless.
        retry: A `RetryPolicy` for this tool's calls (journaled attempts, back-off), overriding the
            agent's `tool_retry_policy`. Non-idempotent tools are retried only under a policy of
            their own (typically with `retry_on_errors=` naming errors known to happen before the
            effect), never under the agent-wide one.

    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise UserError(f"@tool(retry=...) takes a RetryPolicy, got {retry!r}.")
    options = ToolOptions(name, description, retries, requires_approval, idempotent, retry)

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


def requires_approval(item: ToolLike) -> bool:
    """Whether every call of the tool waits for a human decision."""
    if isinstance(item, Tool):
        return bool(item.requires_approval)
    return tool_options(item).requires_approval


def to_pydantic_tool(item: ToolLike) -> Tool[Any]:
    """Build the pydantic-ai `Tool` for a function (or pass a `Tool` through unchanged).

    perdure's options travel as the tool's `metadata={"perdure": {...}}`, the per-tool config key
    of perdure's durability engine, so they work the same for tools built by hand.
    """
    if isinstance(item, Tool):
        return item
    options = tool_options(item)
    config = options.perdure_config()
    return Tool(
        item,
        name=options.name,
        description=options.description,
        max_retries=options.retries,
        requires_approval=options.requires_approval,
        metadata={TOOL_CONFIG_KEY: config} if config else None,
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
