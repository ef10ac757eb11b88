"""`--engine` for `perdure worker`, `list` and `show`: the same commands over a distributed engine.

The engine must be chosen before the operator's application is imported: its agents pick their
durability (perdure's journal, Temporal, DBOS, ...) when they are built, from the `engine` setting.
So the options are written to the environment (`PERDURE_ENGINE`, `PERDURE_TEMPORAL_ADDRESS`, ...)
and the settings reloaded first; then `--app` is imported and its agents are served by the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from pydantic_ai.agent.abstract import AbstractAgent
from rich.console import Console
from rich.table import Table

from ..engines import ENGINE_NAMES, Engine, get_engine, resolve_engine_name
from ..errors import PerdureError, UserError
from ..settings import reset_settings
from ._app import EXIT_STORAGE_NOT_FOUND, _exit_code, _fail, _usage
from ._format import _SafeFormatter, safe_text
from ._resolve import load_app

__all__ = [
    "AddressOption",
    "DbosUrlOption",
    "EngineOption",
    "NamespaceOption",
    "TaskQueueOption",
    "choose_engine",
    "engine_action",
    "engine_agents",
    "engine_list",
    "engine_show",
    "serve_engine",
]

EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        show_default=False,
        help=f"What runs the agents: {', '.join(ENGINE_NAMES)} [default: PERDURE_ENGINE, else embedded].",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", metavar="HOST:PORT", show_default=False, help="Temporal frontend address."),
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", show_default=False, help="Temporal namespace.")
]
TaskQueueOption = Annotated[
    str | None, typer.Option("--task-queue", show_default=False, help="Temporal task queue.")
]
DbosUrlOption = Annotated[
    str | None,
    typer.Option("--dbos-url", metavar="URL", show_default=False, help="DBOS system database URL."),
]

_ENVIRONMENT = {
    "address": "PERDURE_TEMPORAL_ADDRESS",
    "namespace": "PERDURE_TEMPORAL_NAMESPACE",
    "task_queue": "PERDURE_TEMPORAL_TASK_QUEUE",
    "dbos_url": "PERDURE_DBOS_DATABASE_URL",
}


def choose_engine(engine: str | None, **options: str | None) -> str:
    """Resolve `--engine` and make it, and the engine options given, this process's settings.

    Returns:
        The engine's name (`embedded` when neither the option nor the setting names another).

    """
    try:
        name = resolve_engine_name(engine)
    except UserError as exc:
        _usage(f"--engine: {exc}")
    given = {key: value for key, value in options.items() if value is not None}
    if name == "embedded" and given:
        flags = ", ".join("--" + key.replace("_", "-") for key in sorted(given))
        _usage(f"{flags}: used only with --engine temporal, dbos or prefect")
    if name == "embedded":
        return name
    os.environ["PERDURE_ENGINE"] = name  # read by the agents of --app when they are built
    for key, value in given.items():
        os.environ[_ENVIRONMENT[key]] = value
    reset_settings()
    return name


def engine_agents(references: Sequence[str]) -> list[AbstractAgent[Any, Any]]:
    """The pydantic-ai agents `--app` names (an agent, a list/tuple or a dict of them), by name."""
    if not references:
        _usage("--app is required: module:attr of an agent, a list/tuple or a dict {name: agent}")
    found: dict[str, AbstractAgent[Any, Any]] = {}
    for reference in references:
        target = load_app(reference)
        items: list[Any]
        if isinstance(target, Mapping):
            items = list(target.values())
        elif isinstance(target, list | tuple):
            items = list(target)
        else:
            items = [target]
        for item in items:
            agent = item
            if not isinstance(agent, AbstractAgent):
                hint = (
                    " (a perdure.Agent builds its pydantic-ai agent per Task, so only the embedded engine "
                    "runs it; serve pydantic-ai agents with capabilities=[PerdureDurability()])"
                    if callable(getattr(item, "do", None))
                    else ""
                )
                _usage(f"--app {reference}: expected pydantic-ai agents, got {type(item).__name__}{hint}")
            if not agent.name:
                _usage(f"--app {reference}: an agent served by an engine needs a name (Agent(..., name=...))")
            if agent.name in found and found[agent.name] is not agent:
                _usage(f"--app: two different agents are named {agent.name!r}")
            found[agent.name] = agent
    return list(found.values())


def serve_engine(engine_name: str, references: Sequence[str], log_level: str) -> None:
    """`perdure worker --engine NAME`: serve the `--app` agents' runs on that engine until Ctrl-C/SIGTERM."""
    agents = engine_agents(references)  # imported after choose_engine: they bind to the engine now
    try:
        engine: Engine = get_engine(engine_name)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])
    logging.getLogger("perdure").setLevel(log_level.upper())
    names = ", ".join(agent.name or "" for agent in agents)
    logging.getLogger("perdure.cli").info("serving %s on the %s engine", names, engine_name)

    async def run() -> None:
        serving = asyncio.ensure_future(engine.serve(agents))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, serving.cancel)  # stop polling, let running work end
        try:
            await serving
        except asyncio.CancelledError:
            pass
        finally:
            await engine.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _engine_call(engine_name: str, call: Any) -> Any:
    """Run one client call against the engine; its errors are one-line CLI errors."""

    async def run() -> Any:
        engine = get_engine(engine_name)
        try:
            return await call(engine)
        finally:
            await engine.close()

    try:
        return asyncio.run(run())
    except PerdureError as exc:  # not found: 3, conflict: 4, configuration: 2, as for the embedded engine
        _fail(exc, _exit_code(exc))


def _agent_of(row: Mapping[str, Any]) -> str:
    """The agent's name in an engine's info dict (adapters put it at the top or in `metadata`)."""
    metadata: Mapping[str, Any] = row.get("metadata") or {}
    task: Mapping[str, Any] = row.get("task") or {}
    return str(row.get("agent_name") or metadata.get("agent") or task.get("agent_name") or "")


def engine_list(engine_name: str, statuses: Sequence[str], limit: int, as_json: bool) -> None:
    """`perdure list --engine NAME`: the runs the engine's own visibility lists, newest first."""
    wanted = set(statuses)

    async def load(engine: Engine) -> list[dict[str, Any]]:
        if len(wanted) == 1:
            return await engine.list(next(iter(wanted)), limit)
        rows = await engine.list(None, None if wanted else limit)
        return [row for row in rows if not wanted or row.get("status") in wanted][:limit]

    rows: list[dict[str, Any]] = _engine_call(engine_name, load)
    if as_json:
        typer.echo(json.dumps({"engine": engine_name, "executions": rows}, indent=2, default=str))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("execution id", "status", "name", "updated"):
        table.add_column(column, overflow="fold")
    for row in rows:
        updated = str(row.get("updated_at") or "")[:19].replace("T", " ")
        table.add_row(
            safe_text(str(row.get("execution_id"))),
            safe_text(str(row.get("status"))),
            safe_text(_agent_of(row)),
            updated,
        )
    console = Console(highlight=False)
    if rows:
        console.print(table)
    typer.echo(f"{len(rows)} execution{'' if len(rows) == 1 else 's'} on the {engine_name} engine")


def engine_show(engine_name: str, execution_id: str, as_json: bool) -> None:
    """`perdure show --engine NAME ID`: the run as the engine describes it (exit 3 when unknown)."""
    info: dict[str, Any] | None = _engine_call(engine_name, lambda engine: engine.describe(execution_id))
    if info is None:
        typer.echo(f"error: no execution {execution_id!r} on the {engine_name} engine", err=True)
        raise typer.Exit(EXIT_STORAGE_NOT_FOUND)
    if as_json:
        typer.echo(json.dumps({"engine": engine_name, "head": info}, indent=2, default=str))
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in info.items():
        if value in (None, "", [], {}):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(safe_text(key), safe_text(text))
    Console(highlight=False).print(table)


def engine_action(engine_name: str, execution_id: str, action: str, **options: Any) -> None:
    """`perdure approve|deny|cancel --engine NAME`: the decision or the cancel, sent through the engine."""

    async def act(engine: Engine) -> None:
        if action == "approve":
            await engine.approve(execution_id, options["call_id"], args=options.get("args"))
        elif action == "deny":
            await engine.deny(execution_id, options["call_id"], message=options.get("message"))
        else:
            await engine.cancel(execution_id, options.get("reason") or "")

    _engine_call(engine_name, act)
    done = {"approve": "approved", "deny": "denied", "cancel": "cancel sent"}[action]
    call = f" {options['call_id']}" if "call_id" in options else ""
    typer.echo(safe_text(f"{execution_id}:{call} {done} through the {engine_name} engine"))
