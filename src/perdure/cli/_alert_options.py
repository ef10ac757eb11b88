"""The `--alert` and `--alert-webhook` options of `perdure worker` and `perdure monitor`.

`--alert STATUS[:THRESHOLD[:WINDOW]]` (repeatable) and `--alert-webhook URL` become
`perdure.alerts.AlertRule`s; a malformed rule is a usage error (exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from ..alerts import AlertRule
from ..errors import UserError
from ._app import _usage

__all__ = ["AlertOption", "AlertWebhookOption", "parse_alerts"]

AlertOption = Annotated[
    list[str] | None,
    typer.Option(
        "--alert",
        metavar="STATUS[:N[:WINDOW]]",
        help="Alert when N executions reach STATUS within WINDOW, e.g. failed:5:10m (defaults 5 and "
        "10m); at most once per window. Repeat for several rules.",
    ),
]
AlertWebhookOption = Annotated[
    str | None,
    typer.Option(
        "--alert-webhook",
        envvar="PERDURE_ALERT_WEBHOOK",
        metavar="URL",
        show_default=False,
        help="POST each alert as JSON to this http(s) URL (retried, with a timeout); without it alerts "
        "are only logged.",
    ),
]


def parse_alerts(specs: Sequence[str] | None, webhook: str | None) -> list[AlertRule]:
    """The rules `--alert` names, each notifying `webhook` (None: log only); a bad one is exit 2."""
    if webhook and not specs:
        _usage("--alert-webhook needs at least one --alert STATUS[:N[:WINDOW]], e.g. --alert failed:5:10m")
    try:
        return [AlertRule.parse(spec, notify=webhook or None) for spec in specs or ()]
    except UserError as exc:
        _usage(f"--alert: {exc.message}")
