"""`perdure show`, `steps` and `output`: one execution, read-only, as text for people or `--json`.

- `show ID`: the head (state from the lease, name, model, times, attempts, usage and savings, the
  error, what a paused run waits for, with the calls' arguments), then the step timeline (`_timeline`):
  duration, try, tokens and a one-line detail per entry (the tool calls a model response asked for,
  a tool's arguments and result, the error of a failed try), superseded entries marked `~`.
  `--traceback` adds the error's traceback (and those of the failed tries): the error line is always
  shown, a traceback is long.
- `steps ID`: every journal entry, one row each; `--json` has every field (the full results).
- `output ID`: the stored output of a completed execution (text as is, other values as JSON);
  exit 1 when the execution has not completed.

An unknown execution is exit 3 (`ExecutionNotFoundError`, see `_app._exit_code`). Every value comes
from the storage and goes through `_format`. Tables fold long values onto more lines instead of
cutting them, so an execution id or a call id can always be copied, on 80 columns and in a pipe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..durable._operator import decided_calls
from ..records import ExecutionRecord, ExecutionStatus, StepRecord, utcnow
from ..storage import DurableExecutionStorage
from ._app import EXIT_FAILURE, JsonOption, StorageOption, _query, app
from ._engines import (
    AddressOption,
    DbosUrlOption,
    EngineOption,
    NamespaceOption,
    choose_engine,
    engine_show,
)
from ._format import _json, safe_lines, safe_text
from ._timeline import ago, execution_name, lease_live, model_of, state, timeline

__all__ = ["output", "show", "steps_command"]

ExecutionArgument = Annotated[str, typer.Argument(metavar="EXECUTION_ID", help="The execution's id.")]

_KIND_LABELS = {"model_request": "model", "tool_call": "tool"}
"""Short kind names in the timeline (`--json` keeps the stored ones)."""


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({ago(moment)} ago)"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


async def _load(
    store: DurableExecutionStorage, execution_id: str
) -> tuple[ExecutionRecord, list[StepRecord]]:
    head = await store.load_state_async(execution_id)
    if head is None:
        raise store.not_found_error(execution_id)
    return head, await store.load_steps_async(execution_id)


def _head_fields(head: ExecutionRecord, journal: list[StepRecord]) -> list[tuple[str, str]]:
    """The head as (label, raw text) pairs, in reading order; empty values are left out."""
    now = utcnow()
    current = state(head, now)
    status = current
    if current != head.status.value:
        status = f"{current} (stored status {head.status.value})"
    elif lease_live(head, now):  # e.g. a failed execution a worker is resuming right now
        status = f"{current} (leased: a worker is resuming it)"
    kind = "workflow" if head.task.workflow else "agent"
    usage = head.usage
    saved = head.saved
    fields: list[tuple[str, str]] = [
        ("execution", head.execution_id),
        ("status", status),
        (kind, execution_name(head)),
        ("model", model_of(head, journal)),
        ("created", _when(head.created_at)),
        ("updated", _when(head.updated_at)),
        ("attempts", f"{head.attempts} ({_plural(head.replay.resumes, 'resume')})"),
        ("step", f"{head.step_index} {head.step_name}".strip() if head.step_index >= 0 else ""),
        (
            "usage",
            f"{_plural(usage.requests, 'request')}, {usage.input_tokens} tokens in, "
            f"{usage.output_tokens} out, {_plural(usage.tool_calls, 'tool call')}",
        ),
    ]
    if saved.requests or saved.tool_calls or saved.tokens or saved.other:
        fields.append(
            (
                "saved",
                f"{_plural(saved.requests, 'request')}, {saved.tokens} tokens, "
                f"{_plural(saved.tool_calls, 'tool call')}, {saved.other} other, replayed over "
                f"{_plural(head.replay.resumes, 'resume')}",
            )
        )
    if head.lease_owner:
        expires = head.lease_expires_at
        until = f" until {expires.astimezone(UTC):%H:%M:%S}Z" if expires is not None else ""
        fields.append(("lease", f"{head.lease_owner}{until}{'' if lease_live(head, now) else ' (expired)'}"))
    if head.wake_at is not None:
        fields.append(("wakes", _when(head.wake_at).replace(" ago)", ")")))
    if head.parent_id:
        fields.append(("forked", f"from {head.parent_id} at step {head.forked_at}"))
    if head.error is not None:
        fields.append(("error", str(head.error)))
    fields.append(("tools", ", ".join(t.name for t in head.task.tools)))
    fields.append(("task", head.task.description[:200] + ("…" if len(head.task.description) > 200 else "")))
    return [(label, value) for label, value in fields if value]


def _pending_lines(head: ExecutionRecord, journal: list[StepRecord]) -> list[str]:
    """What a paused run waits for: the decision, then each call with its arguments (JSON)."""
    pending = head.pending
    if pending is None:
        return []
    decided = decided_calls(head, journal)
    what = {
        "approval": "approval (approve or deny each call)",
        "non_idempotent": "a decision on an interrupted non-idempotent call (done, rerun or abort)",
    }.get(pending.kind, pending.kind)
    lines = [f"waiting for {what}:"]
    for call in pending.calls:
        done = f"  (already {decided[call.tool_call_id]})" if call.tool_call_id in decided else ""
        lines.append(f"  {call.tool_name}  call {call.tool_call_id}{done}")
        lines.append(f"    args {_json(call.args, compact=True)}")
    return lines


def _kv_table(fields: list[tuple[str, str]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for label, value in fields:
        table.add_row(Text(label), Text(safe_text(value), overflow="fold"))
    return table


def _duration(ms: float) -> str:
    if ms >= 60_000:
        return f"{ms / 60_000:.1f}m"
    if ms >= 1000:
        return f"{ms / 1000:.1f}s"
    return f"{ms:.0f}ms"


def _timeline_table(rows: list[dict[str, Any]], *, with_key: bool = False) -> Table:
    """The timeline: seq (`~`: superseded), kind, name, duration, try, tokens, detail; long values fold."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=8)
    if with_key:
        table.add_column("key", overflow="fold", min_width=8)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1, min_width=16)
    for row in rows:
        cells = [
            f"{row['seq']}{'~' if row['superseded'] else ''}",
            _KIND_LABELS.get(row["kind"], row["kind"]),
            row["name"],
            *([row["key"]] if with_key else []),
            _duration(row["duration_ms"]),
            str(row["attempt"]),
            str(row["tokens"]) if row["tokens"] else "",
            row["preview"],
        ]
        style = "dim" if row["superseded"] else ("red" if row["kind"] == "attempt" else "")
        table.add_row(*(Text(safe_text(c), overflow="fold") for c in cells), style=style)
    return table


@app.command()
def show(
    execution_id: ExecutionArgument,
    storage: StorageOption = None,
    steps: Annotated[int, typer.Option(min=0, help="Show the last N journal entries.")] = 50,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Also print the tracebacks of the error and failed tries.")
    ] = False,
    as_json: JsonOption = False,
    engine: EngineOption = None,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    dbos_url: DbosUrlOption = None,
) -> None:
    """Show an execution: status, usage, error, pending calls, then its step timeline.

    With `--engine temporal|dbos|prefect` (or `PERDURE_ENGINE`) it shows what that engine describes.
    """
    engine_name = choose_engine(engine, address=address, namespace=namespace, dbos_url=dbos_url)
    if engine_name != "embedded":
        engine_show(engine_name, execution_id, as_json)
        return
    head, journal = _query(storage, lambda s: _load(s, execution_id))
    rows = timeline(journal)
    shown = rows[len(rows) - steps :] if steps else []
    if as_json:
        data = {
            "head": head.info(),
            "state": state(head),
            "name": execution_name(head),
            "model": model_of(head, journal),
            "journal_size": len(journal),
            "journal": shown,
        }
        typer.echo(_json(data))
        return
    console = Console(highlight=False)
    console.print(_kv_table(_head_fields(head, journal)))
    for line in _pending_lines(head, journal):
        console.print(Text(safe_text(line), overflow="fold"))
    hidden = len(rows) - len(shown)
    title = f"journal: {_entries(len(rows))}" if rows else "journal: no entries yet"
    if hidden:
        title += f", the last {len(shown)} shown (--steps N)"
    console.print()
    console.print(Text(title))
    if shown:
        console.print(_timeline_table(shown))
    if any(row["superseded"] for row in shown):
        console.print(Text("~ superseded by a rewind: replay skips it"))
    if traceback:
        _print_tracebacks(console, head, rows)


def _print_tracebacks(console: Console, head: ExecutionRecord, rows: list[dict[str, Any]]) -> None:
    blocks: list[tuple[str, str]] = []
    if head.error is not None and head.error.traceback:
        blocks.append(("the error", head.error.traceback))
    else:  # no error on the head (it was retried, or resumed): the latest failed try's, if any
        tried = [r for r in rows if isinstance(r["error"], dict) and r["error"].get("traceback")]
        if tried:
            row = tried[-1]
            blocks.append(
                (f"step {row['seq']}, try {row['attempt']} of {row['name']}", row["error"]["traceback"])
            )
    if not blocks:
        console.print(Text("traceback: none stored"))
    for label, text in blocks:
        console.print()
        console.print(Text(safe_text(f"traceback ({label}):")))
        console.print(Text(safe_lines(text.rstrip("\n")), overflow="fold"))


@app.command("steps")
def steps_command(
    execution_id: ExecutionArgument,
    storage: StorageOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every field of every entry (full results) as JSON.")
    ] = False,
) -> None:
    """List an execution's whole journal, one row per entry."""
    head, journal = _query(storage, lambda s: _load(s, execution_id))
    rows = timeline(journal)
    if as_json:
        entries = [
            {
                **step.model_dump(mode="json"),
                **{k: row[k] for k in ("duration_ms", "superseded", "args", "error")},
            }
            for step, row in zip(journal, rows, strict=True)
        ]
        typer.echo(_json(entries))
        return
    console = Console(highlight=False)
    console.print(Text(safe_text(f"execution {head.execution_id}: {_entries(len(rows))}")))
    if rows:
        console.print(_timeline_table(rows, with_key=True))
    if any(row["superseded"] for row in rows):
        console.print(Text("~ superseded by a rewind: replay skips it"))


@app.command()
def output(
    execution_id: ExecutionArgument,
    storage: StorageOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the output as JSON, text included.")] = False,
) -> None:
    """Print the stored output of a completed execution (exit 1 if it has not completed)."""

    async def load(store: DurableExecutionStorage) -> ExecutionRecord:
        head = await store.load_state_async(execution_id)
        if head is None:
            raise store.not_found_error(execution_id)
        return head

    head = _query(storage, load)
    if head.status is not ExecutionStatus.COMPLETED:
        typer.echo(
            f"error: execution {safe_text(head.execution_id)} is {state(head)}, not completed: it has no "
            f"output (see perdure show {safe_text(head.execution_id)})",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)
    if as_json or not isinstance(head.output, str):
        typer.echo(_json(head.output))
    else:
        typer.echo(safe_lines(head.output))
