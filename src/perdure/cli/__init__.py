r"""The `perdure` command: a recovery worker and a few operator commands.

    perdure [--debug] worker --storage URL --app module:attr [--app ...] [--concurrency N] [--once] ...
    perdure [--debug] list   --storage URL [--status S] [--limit N] [--json]
    perdure [--debug] stats  --storage URL [--json]
    perdure [--debug] show   --storage URL EXECUTION_ID [--steps N] [--json]
    perdure [--debug] config [--json]
    perdure [--debug] cleanup --storage URL [--older-than 7d] [--batch-size N] [--json]
    perdure [--debug] monitor --storage URL --alert failed:5:10m [--alert-webhook URL] [--once]
    perdure [--debug] watch  --storage URL [EXECUTION_ID] [--follow] [--from-start] [--json]

`--storage` also reads `PERDURE_STORAGE` and defaults to the `PERDURE_STORAGE_URL` setting (see
`perdure.settings`; `perdure config` shows the effective settings), `--app` also reads
`PERDURE_APP`, `--debug` also reads `PERDURE_DEBUG=1`. The logic lives in `perdure.durable.worker`
and `perdure.durable.recovery`; this package only parses and prints.

Errors are one line on stderr, `error: <message>` (`--debug` adds the traceback), with exit codes
2 for usage errors (bad option, `--app` that is not an agent, invalid storage URL or configuration),
3 for a storage that does not exist (read-only commands create nothing), 1 for every other failure
(storage unreachable, corrupt record, failed executions of `worker --once`).

Everything read from a storage is untrusted text: it is printed as plain text, never as Rich
markup, and control characters (ESC, BEL, CR, C1, bidi overrides, ...) are shown as visible escapes
such as `\x1b`, so a record cannot drive the operator's terminal. `--json` output is exact JSON
(non-ASCII kept readable, control characters escaped).

Modules, one concept each, importing only in this direction: `_format` (escaping untrusted text)
<- `_app` (the typer app, `--debug`, errors and exit codes) <- `_resolve` (`--app`) <- `_worker`
(`perdure worker`); `_inspect` (`list`, `stats`, `show`) and `_config` (`config`) use `_app` and
`_format`; `_cleanup` (`cleanup`) uses `_app` and `_format`; `_alert_options` (`--alert`, used by
`_worker` and `_monitor`) uses `_app`; `_monitor` (`monitor`) uses `_app`, `_format` and it;
`_watch` (`watch`) uses `_app` and `_format`. This module
imports the command modules, which registers the commands on `app`, and re-exports the names callers
and tests use. `storage_from_url` and `Worker` are looked up here when a command runs, so
`monkeypatch.setattr(perdure.cli, "Worker", Fake)` still replaces them.
"""

from __future__ import annotations

# Commands are listed by `perdure --help` in the order they register: the worker first, then the
# read-only commands. The split comment keeps the import sorter from swapping these two imports.
from ._worker import CHANGE_KINDS as CHANGE_KINDS
from ._worker import summarize_report
from ._worker import worker as worker

# isort: split
from ._inspect import list_executions as list_executions
from ._inspect import show as show
from ._inspect import stats as stats

# isort: split
from ._config import config as config

# isort: split
from ._cleanup import cleanup as cleanup

# isort: split
from ._monitor import monitor as monitor

# isort: split
from ._watch import watch_command as watch_command

# isort: split
from ..durable.worker import Worker as Worker
from ..storage import storage_from_url as storage_from_url
from ._app import EXIT_FAILURE as EXIT_FAILURE
from ._app import EXIT_STORAGE_NOT_FOUND as EXIT_STORAGE_NOT_FOUND
from ._app import EXIT_USAGE as EXIT_USAGE
from ._app import app, main
from ._format import _SafeFormatter as _SafeFormatter
from ._format import safe_text
from ._resolve import ACCEPTED_APPS as ACCEPTED_APPS
from ._resolve import build_resolver, load_app

__all__ = ["app", "build_resolver", "load_app", "main", "safe_text", "summarize_report"]
