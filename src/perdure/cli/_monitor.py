"""`perdure monitor`: evaluate alert rules against a storage until SIGTERM (or once, `--once`).

The rules and their window semantics live in `perdure.alerts`, the `--alert` options (shared with
`perdure worker`) in `_alert_options`; this module runs `perdure.alerts.monitor`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Annotated

import typer

from ..alerts import AlertEvaluator
from ..alerts import monitor as run_monitor
from ..settings import settings
from ._alert_options import AlertOption, AlertWebhookOption, parse_alerts
from ._app import EXIT_FAILURE, StorageOption, _open, _run, _storage_url, _usage, app
from ._format import _SafeFormatter, safe_text

__all__ = ["monitor"]


def _logging(level_name: str | None) -> None:
    level = logging.getLevelName((level_name or settings().log_level or "INFO").upper())
    if not isinstance(level, int):
        _usage(f"--log-level: unknown level {level_name!r}; use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("perdure").setLevel(level)


@app.command()
def monitor(
    alert: AlertOption = None,
    storage: StorageOption = None,
    alert_webhook: AlertWebhookOption = None,
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between two evaluations.")] = 60.0,
    once: Annotated[
        bool, typer.Option(help="Evaluate once, print the alerts raised, exit 1 if any fired.")
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(show_default=False, help="DEBUG, INFO, WARNING, ERROR [default: INFO]."),
    ] = None,
) -> None:
    """Watch a storage and alert when too many executions fail (or reach any status) in a window.

    Runs until SIGTERM/SIGINT. Each rule fires at most once per window; alerts are logged and, with
    `--alert-webhook`, POSTed as JSON. A worker can evaluate the same rules itself:
    `perdure worker --alert ...`.
    """
    if not alert:
        _usage("monitor needs at least one --alert STATUS[:N[:WINDOW]], e.g. --alert failed:5:10m")
    rules = parse_alerts(alert, alert_webhook)
    _logging(log_level)
    url = _storage_url(storage)

    async def run() -> int:
        store = _open(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            await store.list_executions_async(limit=1)  # a wrong URL or a missing storage ends here
            evaluator = AlertEvaluator(rules)
            raised = await run_monitor(
                store, evaluator, interval=interval, stop=stop, iterations=1 if once else None
            )
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await store.close_async()
        if once:
            for fired in raised:
                typer.echo(safe_text(fired.text))
        return EXIT_FAILURE if once and raised else 0

    raise typer.Exit(_run(run, quiet=False))
