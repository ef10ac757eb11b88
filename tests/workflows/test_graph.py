"""pydantic-graph graphs in workflows: each graph step journaled with the state after it, replayed on resume.

Every step counts its runs and reads state an earlier step wrote, so a resume that ran a finished
step again, or replayed it without restoring the state, shows in the counters or in the output.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_graph import (
    BaseNode,
    End,
    GraphBuilder,
    GraphRunContext,
    StepContext,
    reduce_list_append,
)

from perdure import DurableExecution, RetryPolicy, step, workflow
from perdure.errors import UserError
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import InMemoryDurableStorage, SQLiteDurableStorage
from perdure.workflows._graph import _restore, run_graph

COUNTS: Counter[str] = Counter()
FAIL: set[str] = set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    COUNTS.clear()
    FAIL.clear()


# ---- a linear graph: parse -> price -> (transform reading the state) -> charge -> confirm ----------


class Cart(BaseModel):
    items: list[str] = []
    total: int = 0
    notes: list[str] = []


class Receipt(BaseModel):
    amount: int
    items: int


shop = GraphBuilder(state_type=Cart, input_type=str, output_type=str)


@shop.step
async def parse(ctx: StepContext[Cart, None, str]) -> list[str]:
    COUNTS["parse"] += 1
    ctx.state.items = ctx.inputs.split(",")
    return ctx.state.items


@shop.step
async def price(ctx: StepContext[Cart, None, list[str]]) -> int:
    COUNTS["price"] += 1
    ctx.state.total = sum(len(item) for item in ctx.inputs)
    ctx.state.notes.append("priced")
    return ctx.state.total


def add_shipping(ctx: StepContext[Cart, None, int]) -> int:
    """An edge transform (never journaled): it reads the state the replayed `parse` must restore."""
    return ctx.inputs + 10 * len(ctx.state.items)


@shop.step
async def charge(ctx: StepContext[Cart, None, int]) -> Receipt:
    COUNTS["charge"] += 1
    ctx.state.notes.append("charging")
    if "charge" in FAIL:
        raise RuntimeError("card declined")
    return Receipt(amount=ctx.inputs, items=len(ctx.state.items))


@shop.step
async def confirm(ctx: StepContext[Cart, None, Receipt]) -> str:
    COUNTS["confirm"] += 1
    assert isinstance(ctx.inputs, Receipt)  # decoded by the return annotation when replayed
    ctx.state.notes.append("confirmed")
    return f"{ctx.inputs.items} items: {ctx.inputs.amount} ({ctx.state.total} + shipping)"


shop.add(
    shop.edge_from(shop.start_node).to(parse),
    shop.edge_from(parse).to(price),
    shop.edge_from(price).transform(add_shipping).to(charge),
    shop.edge_from(charge).to(confirm),
    shop.edge_from(confirm).to(shop.end_node),
)
checkout_graph = shop.build()


@step
async def audit(text: str) -> str:
    COUNTS["audit"] += 1
    return text.upper()


@workflow(name="graph-checkout")
async def checkout(order: str) -> dict[str, Any]:
    cart = Cart()
    output = await run_graph(checkout_graph, state=cart, inputs=order)
    return {"output": output, "cart": cart.model_dump(), "audit": await audit(output)}


async def test_a_failed_graph_resumes_without_running_finished_steps_again(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "graph.db")
    reference = await DurableExecution(storage).run_workflow_async(checkout, "tea,cake")
    assert reference == {
        "output": "2 items: 27 (7 + shipping)",
        "cart": {"items": ["tea", "cake"], "total": 7, "notes": ["priced", "charging", "confirmed"]},
        "audit": "2 ITEMS: 27 (7 + SHIPPING)",
    }
    COUNTS.clear()

    FAIL.add("charge")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError, match="card declined"):
        await durable.run_workflow_async(checkout, "tea,cake")
    eid = durable.execution_id
    head = await storage.load_state_async(eid)
    assert head is not None and head.status is ExecutionStatus.FAILED and head.step_name == "node:charge"
    assert Counter(parse=1, price=1, charge=1) == COUNTS
    journal = await storage.load_steps_async(eid)
    assert [(s.key, s.name, s.kind) for s in journal] == [
        ("w1", "node:parse", StepKind.STEP),
        ("w2", "node:price", StepKind.STEP),
    ]
    assert journal[1].result == {
        "output": 7,
        "state": {"items": ["tea", "cake"], "total": 7, "notes": ["priced"]},
    }

    FAIL.clear()
    COUNTS.clear()
    resumed = DurableExecution(storage, execution_id=eid, auto_cleanup=False)
    assert await resumed.resume_workflow_async() == reference
    # parse and price were replayed (state restored: the transform and charge saw the items);
    # the failed step and the rest ran once.
    assert Counter(charge=1, confirm=1, audit=1) == COUNTS
    journal = await storage.load_steps_async(eid)
    assert [s.key for s in journal] == ["w1", "w2", "w3", "w4", "w5"]
    assert [s.name for s in journal][2:] == ["node:charge", "node:confirm", "step:audit"]
    head = await storage.load_state_async(eid)
    assert head is not None and head.status is ExecutionStatus.COMPLETED and head.output == reference

    COUNTS.clear()  # a resume of the completed execution's journal replays every step
    again = DurableExecution(storage, auto_cleanup=False)
    assert await again.run_workflow_async(checkout, "tea,cake") == reference
    assert Counter(parse=1, price=1, charge=1, confirm=1, audit=1) == COUNTS


async def test_outside_a_workflow_the_graph_runs_unchanged() -> None:
    cart = Cart()
    assert await run_graph(checkout_graph, state=cart, inputs="a,bb") == "2 items: 23 (3 + shipping)"
    assert cart.notes == ["priced", "charging", "confirmed"]
    assert await checkout("a,bb") == {  # the workflow called directly: a plain function
        "output": "2 items: 23 (3 + shipping)",
        "cart": {"items": ["a", "bb"], "total": 3, "notes": ["priced", "charging", "confirmed"]},
        "audit": "2 ITEMS: 23 (3 + SHIPPING)",
    }
    assert Counter(parse=2, price=2, charge=2, confirm=2, audit=1) == COUNTS


# ---- a decision: the route depends on the type of a step's (replayed) output -----------------------


class Route(BaseModel):
    path: list[str] = []


class Large(BaseModel):
    value: int


router = GraphBuilder(state_type=Route, input_type=int, output_type=str)


@router.step
async def classify(ctx: StepContext[Route, None, int]) -> Large | int:
    COUNTS["classify"] += 1
    ctx.state.path.append("classify")
    return Large(value=ctx.inputs) if ctx.inputs >= 100 else ctx.inputs


@router.step
async def handle_large(ctx: StepContext[Route, None, Large]) -> str:
    COUNTS["large"] += 1
    ctx.state.path.append("large")
    if "branch" in FAIL:
        raise RuntimeError("branch failed")
    return f"large {ctx.inputs.value} after {ctx.state.path}"


@router.step
async def handle_small(ctx: StepContext[Route, None, int]) -> str:
    COUNTS["small"] += 1
    ctx.state.path.append("small")
    if "branch" in FAIL:
        raise RuntimeError("branch failed")
    return f"small {ctx.inputs} after {ctx.state.path}"


router.add(
    router.edge_from(router.start_node).to(classify),
    router.edge_from(classify).to(
        router.decision()
        .branch(router.match(Large).to(handle_large))
        .branch(router.match(int).to(handle_small))
    ),
    router.edge_from(handle_large, handle_small).to(router.end_node),
)
routing_graph = router.build()


@workflow(name="graph-routing")
async def routing(value: int) -> list[Any]:
    route = Route()
    return [await run_graph(routing_graph, state=route, inputs=value), route.path]


@pytest.mark.parametrize(
    ("value", "branch", "expected"),
    [
        (250, "large", ["large 250 after ['classify', 'large']", ["classify", "large"]]),
        (7, "small", ["small 7 after ['classify', 'small']", ["classify", "small"]]),
    ],
)
async def test_a_decision_takes_the_same_branch_on_resume(
    value: int, branch: str, expected: list[Any], tmp_path: Path
) -> None:
    storage = SQLiteDurableStorage(tmp_path / "route.db")
    FAIL.add("branch")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError, match="branch failed"):
        await durable.run_workflow_async(routing, value)
    FAIL.clear()
    COUNTS.clear()
    resumed = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    # The replayed `classify` output is decoded by its annotation (a `Large`, not a dict), so the
    # decision routes it as in the first run; the path restored from the journal has no failed try.
    assert await resumed.resume_workflow_async() == expected
    assert Counter({branch: 1}) == COUNTS


# ---- retries, and what is refused ------------------------------------------------------------------


@dataclass
class Tally:
    tries: list[int] = field(default_factory=list)


flaky_builder = GraphBuilder(state_type=Tally, input_type=int, output_type=int)


@flaky_builder.step
async def flaky(ctx: StepContext[Tally, None, int]) -> int:
    COUNTS["flaky"] += 1
    ctx.state.tries.append(COUNTS["flaky"])  # changed before failing: the retry starts without it
    if COUNTS["flaky"] < 3:
        raise ConnectionError("reset")
    return ctx.inputs + len(ctx.state.tries)


flaky_builder.add(
    flaky_builder.edge_from(flaky_builder.start_node).to(flaky),
    flaky_builder.edge_from(flaky).to(flaky_builder.end_node),
)
flaky_graph = flaky_builder.build()


@workflow(name="graph-retry")
async def retrying() -> list[Any]:
    tally = Tally()
    policy = RetryPolicy(max_retries=2, retry_delay=0.01, jitter=0)
    return [await run_graph(flaky_graph, state=tally, inputs=10, retry=policy), tally.tries]


async def test_a_retried_step_starts_each_try_from_the_state_before_it() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    assert await durable.run_workflow_async(retrying) == [11, [3]]  # a dataclass state, restored in place
    kinds = [s.kind for s in await storage.load_steps_async(durable.execution_id)]
    assert kinds == [StepKind.ATTEMPT, StepKind.ATTEMPT, StepKind.STEP]


fan = GraphBuilder(state_type=dict[str, int], input_type=int, output_type=list[int])


@fan.step
async def spread(ctx: StepContext[dict[str, int], None, int]) -> list[int]:
    COUNTS["spread"] += 1
    return list(range(ctx.inputs))


@fan.step
async def bump(ctx: StepContext[dict[str, int], None, int]) -> int:
    COUNTS["bump"] += 1
    return ctx.inputs + 1


gathered = fan.join(reduce_list_append, initial_factory=list[int])
fan.add(
    fan.edge_from(fan.start_node).to(spread),
    fan.edge_from(spread).map().to(bump),
    fan.edge_from(bump).to(gathered),
    fan.edge_from(gathered).to(fan.end_node),
)
fan_graph = fan.build()


@workflow(name="graph-fan-out")
async def fan_out() -> list[int]:
    return sorted(await run_graph(fan_graph, state={}, inputs=3))


async def test_parallel_branches_are_refused_in_a_workflow_and_run_outside() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(UserError, match="parallel branches") as info:
        await durable.run_workflow_async(fan_out)
    assert "concurrent" in str(info.value) and "@step" in str(info.value)
    assert Counter() == COUNTS and await storage.load_steps_async(durable.execution_id) == []
    assert await fan_out() == [1, 2, 3]  # outside a workflow the same graph runs as pydantic-graph runs it


@dataclass
class Greet(BaseNode[None, None, str]):
    name: str

    async def run(self, ctx: GraphRunContext[None, None]) -> End[str]:
        return End(f"hi {self.name}")


nodes = GraphBuilder(input_type=str, output_type=str)


@nodes.step
async def begin(ctx: StepContext[None, None, str]) -> Greet:
    return Greet(ctx.inputs)


nodes.add(nodes.edge_from(nodes.start_node).to(begin), nodes.node(Greet))
node_graph = nodes.build()

streaming = GraphBuilder(input_type=int, output_type=list[int])


@streaming.stream
async def count_up(ctx: StepContext[None, None, int]) -> Any:
    for i in range(ctx.inputs):
        yield i


@streaming.step
async def drain(ctx: StepContext[None, None, Any]) -> list[int]:
    return [i async for i in ctx.inputs]


streaming.add(
    streaming.edge_from(streaming.start_node).to(count_up),
    streaming.edge_from(count_up).to(drain),
    streaming.edge_from(drain).to(streaming.end_node),
)
stream_graph = streaming.build()


@workflow(name="graph-unsupported")
async def unsupported(kind: str) -> Any:
    if kind == "node":
        return await run_graph(node_graph, inputs="bob")
    return await run_graph(stream_graph, inputs=2)


@pytest.mark.parametrize(("kind", "message"), [("node", "BaseNode class"), ("stream", "stream step")])
async def test_basenode_classes_and_stream_steps_are_refused_in_a_workflow(kind: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        await DurableExecution(InMemoryDurableStorage()).run_workflow_async(unsupported, kind)
    assert await unsupported(kind) == ("hi bob" if kind == "node" else [0, 1])


class Loose(BaseModel, extra="allow"):
    name: str = ""


def test_states_are_restored_in_place_or_refused() -> None:
    model = Loose(name="a", extra_field=1)
    _restore(model, Loose, {"name": "b", "other": 2})
    assert model.name == "b" and model.model_extra == {"other": 2}
    mapping, items, members = {"a": 1}, [1], {1}
    _restore(mapping, dict, {"b": 2})
    _restore(items, list, [2, 3])
    _restore(members, set, [4])
    assert (mapping, items, members) == ({"b": 2}, [2, 3], {4})
    _restore(5, int, 5)  # an immutable state that did not change: nothing to restore
    with pytest.raises(UserError, match="cannot be restored in place"):
        _restore((1,), tuple, [2])


# ---- a state whose values only the graph's declared state type can load ----------------------------

books = GraphBuilder(state_type=dict[str, Receipt], input_type=int, output_type=int)


@books.step
async def book(ctx: StepContext[dict[str, Receipt], None, int]) -> int:
    COUNTS["book"] += 1
    ctx.state["first"] = Receipt(amount=ctx.inputs, items=1)
    return ctx.inputs


@books.step
async def settle(ctx: StepContext[dict[str, Receipt], None, int]) -> int:
    COUNTS["settle"] += 1
    if "settle" in FAIL:
        raise RuntimeError("not yet")
    return sum(receipt.amount for receipt in ctx.state.values()) + ctx.inputs  # Receipts, not dicts


books.add(
    books.edge_from(books.start_node).to(book),
    books.edge_from(book).to(settle),
    books.edge_from(settle).to(books.end_node),
)
books_graph = books.build()


@workflow(name="graph-books")
async def bookkeeping(amount: int) -> int:
    return await run_graph(books_graph, state={}, inputs=amount)


async def test_the_state_is_loaded_as_the_graph_declares_it() -> None:
    storage = InMemoryDurableStorage()
    FAIL.add("settle")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError, match="not yet"):
        await durable.run_workflow_async(bookkeeping, 5)
    FAIL.clear()
    resumed = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    assert await resumed.resume_workflow_async() == 10
    assert Counter(book=1, settle=2) == COUNTS
