"""`perdure ui`: serve the dashboard (`perdure.ui`) with uvicorn.

Bound to 127.0.0.1 by default. Any other address needs an access token (`--token` or
`PERDURE_UI_TOKEN`): without one the command refuses to start (exit 2), because the dashboard can
resume, approve and delete executions. The token is never printed; the storage URL is shown with its
password masked.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from .._redact import mask_url
from ._app import StorageOption, _query, _storage_url, _usage, app
from ._format import safe_text

__all__ = ["ui"]

_LOOPBACK_NAMES = frozenset({"localhost"})


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command("ui")
def ui(
    storage: StorageOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; not loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="PERDURE_UI_TOKEN",
            show_envvar=True,
            show_default=False,
            help="Access token every request must carry (?token= once, then a cookie).",
        ),
    ] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Hide and refuse every action.")] = False,
    apps: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            envvar="PERDURE_APP",
            help="module:attr of the agents/workflows that resume runs (repeatable).",
        ),
    ] = None,
) -> None:
    """Serve the web dashboard: executions, live runs, approvals and actions."""
    token = token or None
    if not _is_loopback(host) and not token:
        _usage(
            f"binding {host} (not a loopback address) needs an access token: pass --token or set "
            "PERDURE_UI_TOKEN (or bind 127.0.0.1)"
        )
    url = _storage_url(storage)
    try:
        import uvicorn

        from ..ui import create_app
    except ImportError as exc:
        _usage(f"the dashboard needs its extra: pip install 'perdure[ui]' ({exc.name} is missing)")
    resolver = None
    if apps:
        from ._resolve import build_resolver

        resolver = build_resolver(apps)
    # Read it once now: a malformed URL is exit 2, a missing storage 3, an unreachable one 1.
    _query(url, lambda store: store.get_stats_async())
    application = create_app(url, token=token, read_only=read_only, resolver=resolver)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        safe_text(
            f"perdure ui: {mask_url(url)} on http://{shown}:{port}/"
            + (" (token required: open it with ?token=...)" if token else "")
            + (" read-only" if read_only else "")
        ),
        err=True,
    )
    os.environ.pop("PERDURE_UI_TOKEN", None)  # not inherited by anything the server starts
    uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
