"""`@workflow` and `@step`: plain functions that become durable when run by `DurableExecution`.

A workflow is an async function. Run by `DurableExecution.run_workflow_async`, its arguments are
stored with the execution and each of its own units (a `@step` call, an agent run, `sleep`, `now()`,
`random()`, `save_state`) is journaled at its position; a resume calls the function again with the
stored arguments and every journaled unit returns its recorded result instead of running again.
Called directly, a workflow or a step is just the function.

Arguments, step results and the workflow's output are stored as JSON through pydantic, using the
function's annotations: a step annotated `-> Report` gives a `Report` back on replay, not a dict.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from pydantic import TypeAdapter

from ..codec import JOURNAL_CODEC, json_data
from ..durable.retry import RetryPolicy
from ..errors import SerializationError, UserError
from ..registry import registry
from ._context import INSIDE_STEP, active, dump, journaled

__all__ = ["Step", "Workflow", "step", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: store and load those values as plain JSON
        return {}


class Workflow(Generic[P, R]):
    """A registered workflow function (made by `@workflow`); calling it runs the function as is."""

    def __init__(self, fn: Callable[P, Awaitable[R]], name: str, steps: int | None = None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise UserError(f"@workflow needs an async function; {fn!r} is not one.")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise UserError(f"@workflow(steps=...) must be a positive int, got {steps!r}.")
        self.fn = fn
        self.name = name
        self.steps = steps
        """How many positions (steps, sleeps, nested agent runs, ...) the workflow declares: the total
        of `execution_summary`'s completion percentage. None: unknown."""
        self._signature = inspect.signature(fn)
        hints = _hints(fn)
        self._params = {p: TypeAdapter(hints.get(p, Any)) for p in self._signature.parameters}
        self._output = TypeAdapter(hints.get("return", Any))
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<workflow {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self.fn(*args, **kwargs)

    def dump_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], execution_id: str) -> dict[str, Any]:
        """The call's arguments as JSON, by parameter name; refuses what JSON cannot store."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UserError(f"Workflow {self.name!r} cannot be called with these arguments: {exc}.") from exc
        data = {name: self._params[name].dump_python(v, mode="json") for name, v in bound.arguments.items()}
        return {"arguments": json_data(data, execution_id=execution_id, what="workflow arguments")}

    def load_args(self, stored: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any]]:
        """The stored arguments, validated against the parameters' annotations, as `(args, kwargs)`."""
        arguments = (stored or {}).get("arguments", {})
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, param in self._signature.parameters.items():
            if name not in arguments:
                continue
            value = self._params[name].validate_python(arguments[name])
            if param.kind is param.VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is param.VAR_KEYWORD:
                kwargs.update(value)
            elif param.kind is param.KEYWORD_ONLY:
                kwargs[name] = value
            else:
                args.append(value)
        return args, kwargs

    def dump_output(self, value: Any, execution_id: str) -> Any:
        """The workflow's return value as JSON for the head."""
        try:
            return self._output.dump_python(value, mode="json")
        except Exception as exc:
            raise SerializationError(execution_id, "output", type(value).__name__, str(exc)) from exc


@overload
def workflow(fn: Callable[P, Awaitable[R]], /) -> Workflow[P, R]: ...
@overload
def workflow(
    *, name: str | None = None, steps: int | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Workflow[P, R]]: ...
def workflow(fn: Any = None, /, *, name: str | None = None, steps: int | None = None) -> Any:
    """Make an async function a durable workflow, registered under `name` (default: its `__qualname__`).

    `steps` declares how many positions the workflow takes (each `@step` call, `sleep`, `now`,
    `random`, nested agent run), so `execution_summary` can report a completion percentage.

    A resume finds the workflow by the name its execution recorded, among the workflows this program
    registered (importing the module registers them); nothing is imported because a record says so.
    """

    def make(function: Callable[P, Awaitable[R]]) -> Workflow[P, R]:
        made = Workflow(function, name or function.__qualname__, steps)
        registry.add_workflow(made.name, made)
        return made

    return make(fn) if fn is not None else make


class Step(Generic[P, R]):
    """A function whose result a workflow journals (made by `@step`); outside a workflow it just runs."""

    def __init__(self, fn: Callable[P, Any], name: str, retry: RetryPolicy | None) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self._async = inspect.iscoroutinefunction(fn)
        self._type = _hints(fn).get("return", Any)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<step {self.name!r}>"

    async def _call(self, *args: Any, **kwargs: Any) -> Any:
        token = INSIDE_STEP.set(True)  # what the body does is part of this step, never journaled apart
        try:
            if self._async:
                return await self.fn(*args, **kwargs)
            run = active()
            context = contextvars.copy_context()
            call = functools.partial(context.run, self.fn, *args, **kwargs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(run.run.threads if run is not None else None, call)
        finally:
            INSIDE_STEP.reset(token)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if active() is None:
            result: R = await self._call(*args, **kwargs)
            return result

        async def body() -> Any:
            return dump(self._type, await self._call(*args, **kwargs))

        config = {"retry": self.retry} if self.retry is not None else None
        data = await journaled(f"step:{self.name}", body, config=config)
        output: R = JOURNAL_CODEC.load(self._type, data)
        return output


@overload
def step(fn: Callable[P, Awaitable[R]], /) -> Step[P, R]: ...
@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None
) -> Callable[[Callable[P, Any]], Step[P, Any]]: ...
def step(fn: Any = None, /, *, name: str | None = None, retry: RetryPolicy | None = None) -> Any:
    """Journal a function's result when a workflow calls it: on resume it returns the recorded result.

    Sync functions run in a worker thread (a shutdown waits for them, as for sync tools). With
    `retry=RetryPolicy(...)` a failing step is tried again, each failure journaled; a step that
    still fails fails the workflow, and the journal before it is kept. Always awaited:
    `await save(data)`, also for a sync function.
    """

    def make(function: Callable[P, Any]) -> Step[P, Any]:
        return Step(function, name or function.__name__, retry)

    return make(fn) if fn is not None else make
