"""`@tool`, and how a resume finds a task's tools again without trusting the record.

perdure never pickles functions and never imports what a record names. A tool is recorded by name
and by `module:qualname`; a resume finds it among the tools the running program registered
(`@tool` registers a function when its module is imported; an `Agent` or `Task` registers the
tools it is given) or among the `tools=[...]` the caller passes. See `perdure.registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic_ai import Tool

from ..durable.capability import TOOL_CONFIG_KEY
from ..durable.retry import RetryPolicy
from ..errors import ToolNotFoundError, UnregisteredReferenceError, UserError
from ..records import ToolRef
from ..registry import object_ref, registry

__all__ = [
    "ToolLike",
    "ToolOptions",
    "object_ref",
    "register",
    "register_output_type",
    "register_tool",
    "requires_approval",
    "resolve_output_type",
    "resolve_tools",
    "to_pydantic_tool",
    "to_tool_ref",
    "tool",
    "tool_name",
    "tool_options",
]

logger = logging.getLogger("perdure")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
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
        register_tool(fn)
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


def register_tool(item: ToolLike) -> None:
    """Register a tool so that a resume in this process finds it by its recorded name and reference."""
    func = item.function if isinstance(item, Tool) else item
    registry.add_tool(item, tool_name(item), object_ref(func))


def register_output_type(output_type: Any) -> None:
    """Register an output type (each member of a list of them) for resumes in this process."""
    members = output_type if isinstance(output_type, list | tuple) else [output_type]
    for member in members:
        if isinstance(member, type):
            registry.add_type(member)


def register(obj: T) -> T:
    """Register an output type or a tool function, so a resume in this process can find it.

    A decorator for pydantic models and dataclasses used as `response_format` when the resuming
    process does not otherwise construct the `Task` that names them:

        @perdure.register
        class Report(BaseModel): ...

    Tools decorated with `@tool`, and the tools and `response_format` given to an `Agent` or a
    `Task`, are registered already. Returns `obj` unchanged.
    """
    if isinstance(obj, type):
        registry.add_type(obj)
    elif callable(obj) or isinstance(obj, Tool):
        register_tool(obj)
    else:
        raise UserError(f"perdure.register() takes a type or a tool function, got {obj!r}.")
    return obj


def to_tool_ref(item: ToolLike) -> ToolRef:
    """How a tool is recorded with its task (and registered for resumes in this process)."""
    func = item.function if isinstance(item, Tool) else item
    ref = object_ref(func)
    register_tool(item)
    if ref is not None and ref.startswith("__main__:"):
        _warn_main(tool_name(item), ref)
    return ToolRef(name=tool_name(item), ref=ref)


_WARNED_MAIN: set[str] = set()


def _warn_main(name: str, ref: str) -> None:
    """Once per tool: a tool of the `__main__` script cannot be found by another process by itself."""
    if ref in _WARNED_MAIN:
        return
    _WARNED_MAIN.add(ref)
    logger.warning(
        "tool %r is defined in the script being run (%s): another process can only resume this execution "
        "if it defines or imports the same tool and passes it with tools=[%s], or if the tool moves to an "
        "importable module (e.g. app.py) that the resuming script imports.",
        name,
        ref,
        name,
    )


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
    """Find every recorded tool again: in `given` by name, else among the tools this process registered.

    A recorded tool that cannot be found is an error: silently dropping it would let the model call
    a tool that no longer exists and take the run somewhere the original never went. The recorded
    reference is only a lookup key: nothing is imported (a tampered record cannot run code).
    """
    by_name = {tool_name(item): item for item in given}
    resolved: list[ToolLike] = []
    for ref in recorded:
        if ref.name in by_name:
            resolved.append(by_name.pop(ref.name))
            continue
        found = registry.tool(ref.name, ref.ref)
        if found is None:
            where = f" (recorded as {ref.ref!r})" if ref.ref else ""
            raise ToolNotFoundError(
                execution_id,
                ref.name,
                f"this program registered no tool of that name{where}; nothing was imported. Import the "
                f"module that defines it (importing a module registers its @tool functions)",
            )
        resolved.append(found)
    resolved.extend(by_name.values())  # extra tools the caller added on purpose
    return resolved


def resolve_output_type(execution_id: str, ref: str | None, given: Any = None) -> Any:
    """The output type an execution recorded: `given` when passed, else the registered one (None: text).

    Raises:
        UnregisteredReferenceError: The record names a type this program did not register; nothing
            was imported.

    """
    if given is not None:
        return given
    if not ref:
        return None
    found = registry.output_type(ref)
    if found is None:
        raise UnregisteredReferenceError(
            execution_id,
            "output type",
            ref,
            hint="Pass it with response_format=..., decorate the class with @perdure.register, or "
            "import the module whose Agent/Task uses it.",
        )
    return found
