"""`perdure config`: the effective settings, where each came from, secrets masked.

The settings are read by the app callback when the command starts (an invalid value is already a
usage error there, naming the setting); this command only prints `perdure.settings.describe()`. The
table fits 80 columns (a long value is cut with `...`; `--json` prints it whole). Secret values and
the password of the storage URL are never printed, in either form.
"""

from __future__ import annotations

import typer

from ..settings import describe, settings
from ._app import JsonOption, app
from ._format import _json, safe_text

__all__ = ["config"]

_WIDTH = 80


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


@app.command()
def config(as_json: JsonOption = False) -> None:
    """Show the effective settings and where each came from (secrets masked)."""
    rows = describe(settings())
    if as_json:
        typer.echo(
            _json({row.name: {"env": row.env, "value": row.value, "source": row.source} for row in rows})
        )
        return
    names = max(len("SETTING"), *(len(row.env) for row in rows))
    sources = max(len("SOURCE"), *(len(row.source) for row in rows))
    room = _WIDTH - names - sources - 4
    lines = [f"{'SETTING':<{names}}  {'SOURCE':<{sources}}  VALUE"]
    lines += [
        f"{row.env:<{names}}  {row.source:<{sources}}  {_fit(row.value or '(not set)', room)}" for row in rows
    ]
    typer.echo("\n".join(safe_text(line) for line in lines))
