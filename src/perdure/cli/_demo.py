"""`perdure demo`: the offline crash-and-resume demo (`make demo`), from any install and directory.

The demo lives in `perdure._demo`; this command only chooses its state directory and says what
became of it. By default the state is a fresh temporary directory, removed when the demo succeeds
(`--keep` keeps it, to inspect it with `perdure show`); `--state-dir PATH` writes there instead
(created if missing, never removed; an `executions.db` already there is reused, the demo adding one
execution with a fresh id). A failed demo keeps its state, whichever directory it is in.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from .._demo import run_demo
from .._demo.run import DB_NAME, new_execution_id
from ._app import EXIT_FAILURE, _fail, _usage, app
from ._format import safe_text

__all__ = ["demo"]


def _state_dir(chosen: Path | None) -> Path:
    if chosen is None:
        return Path(tempfile.mkdtemp(prefix="perdure-demo-"))
    path = chosen.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, ...
        _usage(f"cannot use --state-dir {path}: {exc.strerror or exc}")
    return path


@app.command()
def demo(
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            show_default=False,
            help="Directory for the demo's SQLite database, created if missing and kept afterwards "
            "(default: a new temporary directory).",
        ),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the temporary state directory after a successful demo."),
    ] = False,
) -> None:
    """Run the offline crash-and-resume demo: a run is killed, fails, and resumes in new processes.

    Offline: the model is perdure's scripted stand-in unless PERDURE_MODEL names a real one.
    """
    path = _state_dir(state_dir)
    temporary = state_dir is None
    remove = temporary and not keep
    typer.echo(
        safe_text(f"state directory: {path}")
        + (" (temporary: removed at the end, --keep keeps it)" if remove else "")
    )
    execution_id = new_execution_id()
    code = EXIT_FAILURE
    try:
        code = run_demo(path, execution_id=execution_id, inspect_hint=not remove)
    except Exception as exc:
        _fail(exc, EXIT_FAILURE)
    finally:
        if remove and code == 0:
            shutil.rmtree(path, ignore_errors=True)
    db = path / DB_NAME
    if code != 0:
        typer.echo(safe_text(f"the demo failed; its state is kept in {path}"), err=True)
        raise typer.Exit(code)
    if remove:
        typer.echo()
        typer.echo(safe_text(f"removed {path} (--keep or --state-dir keeps the state)"))
    else:
        typer.echo(safe_text(f"    or: perdure show --storage sqlite:///{quote(str(db))} {execution_id}"))
