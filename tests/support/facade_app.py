"""Tools, a scripted model and a command line for the facade's decision and continue_run tests.

Imported by the tests (as module `support.facade_app`) and run as a subprocess:
`python tests/support/facade_app.py MODE DB_FILE RUN_ID [JSON]` (with `tests/` on PYTHONPATH). Tools
and model are looked up through the module `support.facade_app` even when this file runs as
`__main__`, so the import paths recorded with an execution are the same in every process.

Side effects go to files, never to memory, so that the parent test can count what ran in which
process: every tool effect and every live model request appends one line to `$LEDGER` (fsync'd
before a kill can happen). Every tool passes perdure's fault point `after_tool_side_effect` right
after its effect, so `PERDURE_FAULT=after_tool_side_effect@TOOL` SIGKILLs the process there, before
the result is journaled. `$API_FILE` is a fake external API that deduplicates requests by
idempotency key.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from perdure import Agent, Task, _faults, tool
from perdure.db import SqliteDatabase
from perdure.durable.journal import current_step

Step = list[tuple[str, dict[str, Any], str]]
"""The tool calls of one model response: (tool name, args, tool call id)."""

SEEN: list[list[ModelMessage]] = []
"""Histories the model was sent in this process, newest last (for assertions on what it saw)."""


def ledger(event: str) -> None:
    """Append one line to $LEDGER and fsync it, so it survives a SIGKILL right after."""
    path = os.environ.get("LEDGER")
    if not path:
        return
    with open(path, "a") as fh:
        fh.write(f"{os.environ.get('PHASE', '-')} {event}\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_ledger(path: Path) -> list[str]:
    """The ledger's events without their phase prefix."""
    if not path.exists():
        return []
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()]


def _effect(name: str, detail: str = "") -> None:
    ledger(f"tool {name}{' ' + detail if detail else ''}")
    _faults.point("after_tool_side_effect", name)


# ---- tools --------------------------------------------------------------------------------------


@tool
def lookup(account: str) -> dict[str, Any]:
    """Look up an account's balance (idempotent, no approval)."""
    _effect("lookup", account)
    return {"account": account, "balance": 1000}


@tool(requires_approval=True)
def transfer(amount: int, to: str) -> str:
    """Transfer money; a human approves every call."""
    _effect("transfer", f"{amount} {to}")
    return f"transferred {amount} to {to}"


@tool(requires_approval=True)
def notify(message: str) -> str:
    """Send a notification; a human approves every call."""
    _effect("notify", message)
    return f"sent {message!r}"


@tool(idempotent=False)
def charge(amount: int, card: str) -> str:
    """Charge a card: running it twice charges twice, so perdure must never repeat it on its own."""
    _effect("charge", f"{amount} {card}")
    return f"charged {amount} to {card}"


@tool
def book(room: str) -> str:
    """Book a room through an API that deduplicates by idempotency key (at-least-once tool)."""
    key = current_step().idempotency_key
    ledger(f"tool book {room} key={key}")
    api = Path(os.environ["API_FILE"])
    bookings: dict[str, str] = json.loads(api.read_text()) if api.exists() else {}
    if key not in bookings:  # the external API applies a key's request once
        bookings[key] = room
        api.write_text(json.dumps(bookings))
    _faults.point("after_tool_side_effect", "book")
    return f"booked {room} (booking {len(bookings)})"


@tool
def fetch(source: str) -> dict[str, Any]:
    """Fetch rows; `FAIL_FETCH_FILE` makes it fail while that file exists (an outage)."""
    flag = os.environ.get("FAIL_FETCH_FILE")
    if flag and Path(flag).exists():
        ledger("fail fetch")
        raise ConnectionError(f"{source}: connection reset by peer")
    _effect("fetch", source)
    return {"source": source, "rows": [1, 2, 3]}


@tool
def store(rows: list[int]) -> str:
    """Store rows and return the storage id."""
    _effect("store", str(len(rows)))
    return f"stored-{len(rows)}"


# ---- model --------------------------------------------------------------------------------------


def tool_returns(messages: Sequence[ModelMessage]) -> list[ToolReturnPart]:
    """Every tool return in a history, oldest first."""
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def summary(messages: Sequence[ModelMessage]) -> str:
    """The final answer: every tool return as `name=content[outcome]`, in order."""
    return "; ".join(f"{p.tool_name}={p.content}[{p.outcome}]" for p in tool_returns(messages))


def plan_model(steps: Sequence[Step], *, fail_requests: Sequence[int] = ()) -> FunctionModel:
    """A model that makes the tool calls of `steps[n]` in its n-th response, then answers `summary`.

    A pure function of the history (responses so far), so a resumed run asks for what the original
    asked for. Live requests are counted in the ledger (`model N`, N counted per process); request
    numbers in `fail_requests` raise `ConnectionError` instead of answering (a provider outage).
    """
    count = {"n": 0}

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        count["n"] += 1
        SEEN.append(list(messages))
        if count["n"] in fail_requests:
            ledger(f"model-fail {count['n']}")
            raise ConnectionError(f"model request {count['n']}: provider unreachable")
        ledger(f"model {count['n']}")
        index = sum(1 for m in messages if isinstance(m, ModelResponse))
        if index < len(steps):
            return ModelResponse(
                parts=[ToolCallPart(name, args, tool_call_id=call_id) for name, args, call_id in steps[index]]
            )
        return ModelResponse(parts=[TextPart(summary(messages))])

    return FunctionModel(respond)


APPROVAL_STEPS: list[Step] = [
    [("lookup", {"account": "acc-1"}, "c-lookup"), ("transfer", {"amount": 100, "to": "bob"}, "c-transfer")],
    [("notify", {"message": "paid bob"}, "c-notify")],
]
CHARGE_STEPS: list[Step] = [
    [("lookup", {"account": "acc-1"}, "c-lookup")],
    [("charge", {"amount": 42, "card": "4242"}, "c-charge")],
]
BOOK_STEPS: list[Step] = [[("book", {"room": "r101"}, "c-book")]]
PIPELINE_STEPS: list[Step] = [
    [("fetch", {"source": "db.csv"}, "c-fetch")],
    [("store", {"rows": [1, 2, 3]}, "c-store")],
]
STEPS = {"approval": APPROVAL_STEPS, "charge": CHARGE_STEPS, "book": BOOK_STEPS, "pipeline": PIPELINE_STEPS}
TOOLS = {
    "approval": [lookup, transfer, notify],
    "charge": [lookup, charge],
    "book": [book],
    "pipeline": [fetch, store],
}
PROMPTS = {
    "approval": "Pay bob 100 from acc-1 and notify.",
    "charge": "Charge 42 to card 4242.",
    "book": "Book room r101.",
    "pipeline": "Fetch db.csv and store the rows.",
}


def new_agent(db: SqliteDatabase, scenario: str, **kwargs: Any) -> Agent:
    """An agent with the scenario's model, on `db`."""
    return Agent(plan_model(STEPS[scenario]), name="FacadeAgent", db=db, **kwargs)


def new_task(scenario: str, run_id: str | None = None) -> Task:
    """The scenario's task (with its tools), optionally standing for run `run_id`."""
    return Task(PROMPTS[scenario], tools=TOOLS[scenario], durable_execution_id=run_id)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def main(argv: list[str]) -> int:
    """`start SCENARIO` | `continue-run` | `approve APPROVALS_JSON`, each with DB_FILE RUN_ID."""
    mode, db_file, run_id = argv[1], argv[2], argv[3]
    db = SqliteDatabase(db_file=db_file, session_id="s-1", user_id="u-1")
    if mode == "start":
        scenario = argv[4]
        out = new_agent(db, scenario).do(new_task(scenario, run_id), return_output=True)
    elif mode == "continue-run":
        out = new_agent(db, argv[4]).continue_run(run_id=run_id, return_output=True)
    elif mode == "approve":
        out = new_agent(db, "approval").continue_run(
            run_id=run_id, approvals=json.loads(argv[4]), return_output=True
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(
        json.dumps(
            {
                "run_id": out.run_id,
                "status": out.status.value,
                "output": _jsonable(out.output),
                "pending": out.pending.model_dump(mode="json") if out.pending else None,
                "replay": out.replay.model_dump(mode="json"),
                "usage": out.usage.model_dump(mode="json"),
                "session_id": out.session_id,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(importlib.import_module("support.facade_app").main(sys.argv))
