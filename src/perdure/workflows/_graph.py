"""pydantic-graph graphs inside workflows: every graph step a journaled unit, with the state after it.

```python
g = GraphBuilder(state_type=Order, input_type=str, output_type=str)

@g.step
async def charge(ctx: StepContext[Order, None, str]) -> str: ...   # an ordinary graph step

g.add(g.edge_from(g.start_node).to(charge), g.edge_from(charge).to(g.end_node))
graph = g.build()

@workflow
async def checkout(order_id: str) -> str:
    return await run_graph(graph, state=Order(id=order_id), inputs=order_id)
```

Run at a workflow's own level, `run_graph` runs a copy of the graph whose steps are wrapped (the
builder's `Step(id=..., call=..., label=...)` with the same id and label, so edges, decisions and
transforms are untouched): each step that runs is journaled at the workflow's next position as
`node:<step id>`, recording its return value and the graph state after it as JSON. A resumed
workflow runs the graph again from its start; each step already journaled returns its recorded
value without running, and the shared state object is set, in place, to the state recorded after
it, so decisions and the steps that run live see exactly what the first run saw. Outside a
workflow (or inside a `@step` or another graph step) the graph runs unchanged.

Why these rules:
- State is recorded after every step because pydantic-graph hands the same mutable object to every
  step: a replayed step must leave it as the step left it, or the steps after it would see another
  state. It is stored and loaded as the graph's `state_type` (so `dict[str, Item]` gets its items
  back) and restored in place (the graph run and the caller hold that object), field by field for
  a pydantic model or a dataclass, by content for a dict, list or set; live runs are restored from
  their own record too, so a live run and a replay see the same (JSON round-tripped) state.
- Positions are the order in which steps run. pydantic-graph runs parallel branches (a `map()` or a
  broadcast: `Fork` nodes) as concurrent tasks, so their steps start and finish in an order that
  depends on timing, and a resume would give a step another branch's recorded result. Such graphs
  are refused in a workflow (`UserError` naming the forks) before anything runs; pydantic-graph's
  public API cannot run the branches one after another (its scheduler starts every branch task
  itself). Run a parallel part inside one `@step` instead.
- Only steps made with `GraphBuilder.step` / `stream` are journaled. A `BaseNode` class in the graph
  (`GraphBuilder.node`, `match_node`) is refused: its step's call is bound to the node class by
  pydantic-graph (`NodeStep`) and cannot be replaced through the public API, and its result is the
  next node object, not a value pydantic can store. A `stream` step's output (an async iterator)
  cannot be stored either: it fails with `UserError` when it runs.
- A step's body is one unit: what it calls (`@step` functions, `now()`, `sleep`) is part of it and
  runs again only when the step does. Return values are decoded by the step function's return
  annotation (unresolvable annotations: plain JSON), like `@step` results.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, cast

from pydantic import BaseModel
from pydantic_graph import Fork, Graph, Step, StepContext

from ..codec import JOURNAL_CODEC
from ..durable.retry import RetryPolicy
from ..errors import UserError
from ._context import INSIDE_STEP, active, dump, journaled

__all__ = ["run_graph"]


async def run_graph(
    graph: Graph,
    *,
    state: Any = None,
    deps: Any = None,
    inputs: Any = None,
    retry: RetryPolicy | None = None,
) -> Any:
    """Run `graph` to its end; inside a workflow, each graph step is journaled with the state after it.

    Args:
        graph: A graph built with `pydantic_graph.GraphBuilder` (not changed: a wrapped copy runs).
        state: The graph's state object, shared by its steps. Inside a workflow it must be JSON-able
            through pydantic (a model, a dataclass, a dict...): it is recorded after every step.
        deps: The graph's dependencies, passed as they are (never journaled).
        inputs: The graph's input.
        retry: Inside a workflow, try a failing step again under this policy (each failure
            journaled); every try starts from the state the step started with.

    Returns:
        The graph's output. On a resume the steps already journaled do not run again.

    Raises:
        UserError: Inside a workflow, for a graph with parallel branches (`map()` / broadcast) or a
            `BaseNode` class: their steps cannot be journaled deterministically (see the module).

    """
    if active() is None:  # not at a workflow's own level: nothing of it is durable
        return await graph.run(state=state, deps=deps, inputs=inputs, infer_name=False)
    durable = dataclasses.replace(graph, nodes=_journaled_nodes(graph, retry))
    return await durable.run(state=state, deps=deps, inputs=inputs, infer_name=False)


def _journaled_nodes(graph: Graph, retry: RetryPolicy | None) -> dict[Any, Any]:
    """The graph's nodes with each step's call journaled; refuses what cannot be replayed in order."""
    forks = sorted(str(node_id) for node_id, node in graph.nodes.items() if isinstance(node, Fork))
    if forks:
        raise UserError(
            f"Graph {graph.name or '(unnamed)'!r} has parallel branches (forks {', '.join(forks)}: a "
            f"map() or a broadcast), which pydantic-graph runs as concurrent tasks. Inside a workflow "
            f"each graph step is journaled at the position it runs in, and concurrent branches run in "
            f"an order that changes between runs, so a resume could replay another branch's result. "
            f"Run the parallel part inside one @step, or make the branches sequential."
        )
    nodes: dict[Any, Any] = {}
    for node_id, node in graph.nodes.items():
        if isinstance(node, Step):
            if type(node) is not Step:  # `NodeStep`: a BaseNode class, its call bound to the class
                raise UserError(
                    f"Graph node {str(node_id)!r} is a BaseNode class; inside a workflow run_graph "
                    f"journals steps made with GraphBuilder.step only (a BaseNode's call cannot be "
                    f"wrapped through pydantic-graph's API, and its result is the next node object)."
                )
            call = _journaled_call(node, graph.state_type, retry)
            node = Step(id=node.id, call=cast(Any, call), label=node.label)
        nodes[node_id] = node
    return nodes


def _journaled_call(
    step: Step, declared_state: Any, retry: RetryPolicy | None
) -> Callable[[StepContext], Awaitable[Any]]:
    """`step`'s call as one journaled unit `node:<id>` recording `{"output": ..., "state": ...}`."""
    call = step.call
    output_type = _return_type(call)
    name = f"node:{step.id}"
    config = {"retry": retry} if retry is not None else None

    async def journaled_call(ctx: StepContext) -> Any:
        state = ctx.state
        state_type = _state_type(declared_state, state)
        started: list[Any] = []  # the state before the first try, when a retry may need it again

        async def body() -> Any:
            if started:  # a retry: start again from the state the step started with
                _restore(state, state_type, started[0])
            elif retry is not None:
                started.append(dump(state_type, state))
            token = INSIDE_STEP.set(True)  # what the step calls is part of it, never journaled apart
            try:
                output = await call(ctx)
            finally:
                INSIDE_STEP.reset(token)
            if isinstance(output, AsyncIterable):
                raise UserError(
                    f"Graph step {str(step.id)!r} returned an async iterator (a stream step), which "
                    f"cannot be journaled; inside a workflow return a value (e.g. a list) instead."
                )
            return {"output": dump(output_type, output), "state": dump(state_type, state)}

        data = await journaled(name, body, config=config)
        # Live or replayed, the steps after it see the recorded state.
        _restore(state, state_type, data["state"])
        return JOURNAL_CODEC.load(output_type, data["output"])

    return journaled_call


def _return_type(call: Callable[..., Any]) -> Any:
    """The step function's return annotation, `Any` when it cannot be resolved."""
    try:
        return typing.get_type_hints(call).get("return", Any)
    except Exception:  # unresolvable annotations: the result is stored and loaded as plain JSON
        return Any


def _state_type(declared: Any, state: Any) -> Any:
    """The graph's declared state type (`dict[str, Item]` loads items) if `state` is one, else its class."""
    try:
        if isinstance(state, typing.get_origin(declared) or declared):
            return declared
    except TypeError:  # not a class (a type expression isinstance cannot check)
        pass
    return type(state)


def _restore(state: Any, state_type: Any, data: Any) -> None:
    """Make the graph's own state object equal to the recorded `data`, in place.

    In place because the graph run and the workflow hold this object: a new one would be seen by
    nobody. Private attributes of a pydantic model are not recorded and stay as they are.
    """
    if state is None:
        return
    saved = JOURNAL_CODEC.load(state_type, data)
    if isinstance(state, BaseModel):
        state.__dict__.update(saved.__dict__)
        object.__setattr__(state, "__pydantic_fields_set__", set(saved.model_fields_set))
        if saved.__pydantic_extra__ is not None:
            object.__setattr__(state, "__pydantic_extra__", dict(saved.__pydantic_extra__))
    elif dataclasses.is_dataclass(state):
        for field in dataclasses.fields(state):
            object.__setattr__(state, field.name, getattr(saved, field.name))
    elif isinstance(state, dict | set):
        state.clear()
        state.update(saved)
    elif isinstance(state, list):
        state[:] = saved
    elif saved != state:  # an immutable value cannot have changed; anything else cannot be restored
        raise UserError(
            f"The graph state ({type(state).__name__}) cannot be restored in place after a replayed "
            f"step: use a pydantic model, a dataclass, a dict or a list."
        )
