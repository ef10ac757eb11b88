"""`perdure watch`: print the events of one execution, or of all, as workers in other processes run them.

The events come from `perdure.watch` (PostgreSQL LISTEN/NOTIFY, Redis pub/sub, polling for SQLite and
files). One line per event, execution ids never shortened; `--json` prints one JSON object per line
for scripts. Watching one execution ends after its attempt ends (exit 0; `--follow` keeps going);
watching all runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Annotated

import typer

from ..errors import ExecutionNotFoundError
from ..events import Event, watch
from ._app import EXIT_STORAGE_NOT_FOUND, StorageOption, _fail, _open, _run, app
from ._format import _json, safe_text

__all__ = ["format_event", "watch_command"]


def format_event(event: Event) -> str:
    """One line: time, execution id (whole), kind, step, and what matters for that kind."""
    parts = [f"{event.at:%H:%M:%S}", event.execution_id, event.kind]
    if event.step_name:
        parts.append(event.step_name)
    duration = getattr(event, "duration", None)
    if event.kind == "unit_completed" and duration is not None:
        parts.append(f"{duration * 1000:.0f}ms")
    tokens = getattr(event, "input_tokens", 0) + getattr(event, "output_tokens", 0)
    if tokens and event.kind in ("unit_completed", "execution_completed"):
        parts.append(f"{tokens} tokens")
    if event.attempt and event.kind in ("execution_resumed", "unit_retried"):
        parts.append(f"attempt {event.attempt}")
    if event.error_type:
        parts.append(f"{event.error_type}: {event.error_message or ''}")
    return safe_text("  ".join(parts))


@app.command("watch")
def watch_command(
    execution_id: Annotated[
        str | None, typer.Argument(show_default=False, help="The execution to watch (default: all).")
    ] = None,
    storage: StorageOption = None,
    follow: Annotated[
        bool, typer.Option(help="Keep watching one execution after its attempt ended.")
    ] = False,
    from_start: Annotated[
        bool, typer.Option(help="Print the stored history of the execution first.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event and line.")] = False,
) -> None:
    """Print live events (units, retries, pauses, failures, completions) as other processes run them."""

    async def run() -> None:
        store = _open(storage)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with watch(execution_id, store, follow=follow, from_start=from_start) as events:
                reading = asyncio.ensure_future(_print(events, as_json))
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (reading, stopping):
                    if task not in done:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if reading in done:
                    reading.result()  # raise what the watch raised
        except ExecutionNotFoundError as exc:
            _fail(exc, EXIT_STORAGE_NOT_FOUND)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await store.close_async()

    _run(run)


async def _print(events: AsyncIterator[Event], as_json: bool) -> None:
    try:
        async for event in events:
            if as_json:
                typer.echo(_json(event.model_dump(mode="json"), compact=True))
            else:
                typer.echo(format_event(event))
    except BrokenPipeError:  # the reader went away (`perdure watch | head`): stop quietly
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
