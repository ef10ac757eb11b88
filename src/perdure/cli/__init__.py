r"""The `perdure` command: the recovery worker and the operator's commands.

    perdure [--debug] worker  --storage URL --app module:attr [--app ...] [--concurrency N] [--once] ...
    perdure [--debug] list    --storage URL [--status S] [--name N] [--since W] [--until W] [--search T]
                              [--limit N] [--cursor C] [--json]
    perdure [--debug] stats   --storage URL [--json]
    perdure [--debug] show    --storage URL EXECUTION_ID [--steps N] [--traceback] [--json]
    perdure [--debug] steps   --storage URL EXECUTION_ID [--json]
    perdure [--debug] output  --storage URL EXECUTION_ID [--json]
    perdure [--debug] resume | approve | deny | resolve | cancel | delete | fork | retry-failed | recover
    perdure [--debug] config  [--json]
    perdure [--debug] cleanup --storage URL [--older-than 7d] [--keep-status S] [--batch-size N] [--json]
    perdure [--debug] monitor --storage URL --alert failed:5:10m [--alert-webhook URL] [--once]
    perdure [--debug] watch   --storage URL [EXECUTION_ID] [--follow] [--from-start] [--json]
    perdure [--debug] ui      --storage URL [--host H] [--port P] [--token T] [--read-only] [--app ...]
    perdure [--debug] demo    [--state-dir PATH] [--keep]

`--storage` also reads `PERDURE_STORAGE` and defaults to the `PERDURE_STORAGE_URL` setting (see
`perdure.settings`; `perdure config` shows the effective settings), `--app` also reads
`PERDURE_APP`, `--debug` also reads `PERDURE_DEBUG=1`. The logic lives in `perdure.durable`,
`perdure.operations` and `perdure.ui`; this package only parses and prints.

Errors are one line on stderr, `error: <message>` (`--debug` adds the traceback), with exit codes
2 for usage errors (bad option, `--app` that is not an agent, invalid storage URL or configuration),
3 for a storage or an execution that does not exist (read-only commands create nothing), 4 for a
conflict (leased by a live worker, already completed or cancelled, not paused, a call already
decided), 1 for every other failure (storage unreachable, corrupt record, failed executions of
`worker --once`).

Everything read from a storage is untrusted text: it is printed as plain text, never as Rich
markup, and control characters (ESC, BEL, CR, C1, bidi overrides, ...) are shown as visible escapes
such as `\x1b`, so a record cannot drive the operator's terminal. `--json` output is exact JSON
(non-ASCII kept readable, control characters escaped).

Modules, one concept each, importing only in this direction: `_format` (escaping untrusted text)
<- `_app` (the typer app, `--debug`, errors and exit codes) <- `_resolve` (`--app`) <- `_worker`
(`perdure worker`) and `_actions` (resume ... recover, through `perdure.operations`); `_inspect`
(`list`, `stats`), `_show` (`show`, `steps`, `output`, on the pure functions of `_timeline`) and
`_config` (`config`) use `_app` and `_format`; `_cleanup` (`cleanup`) uses `_app` and `_format`;
`_alert_options` (`--alert`, used by `_worker` and `_monitor`) uses `_app`; `_monitor` (`monitor`)
uses `_app`, `_format` and it; `_watch` (`watch`) uses `_app` and `_format`; `_ui` (`ui`, the
dashboard of `perdure.ui`) uses `_app`, `_format` and `_resolve`; `_demo` (`demo`, the
crash-and-resume demo of `perdure._demo`) uses `_app` and `_format`. This module imports the
command modules, which registers the commands on `app`, and re-exports the names callers and tests
use. `storage_from_url` and `Worker` are looked up here when a command runs, so
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
from ._inspect import stats as stats
from ._show import output as output
from ._show import show as show
from ._show import steps_command as steps_command

# isort: split
from ._actions import approve as approve
from ._actions import cancel as cancel
from ._actions import delete as delete
from ._actions import deny as deny
from ._actions import fork as fork
from ._actions import recover as recover
from ._actions import resolve as resolve
from ._actions import resume as resume
from ._actions import retry_failed as retry_failed

# isort: split
from ._config import config as config

# isort: split
from ._cleanup import cleanup as cleanup

# isort: split
from ._monitor import monitor as monitor

# isort: split
from ._watch import watch_command as watch_command

# isort: split
from ._ui import ui as ui

# isort: split
from ._demo import demo as demo

# isort: split
from ..durable.worker import Worker as Worker
from ..storage import storage_from_url as storage_from_url
from ._app import EXIT_CONFLICT as EXIT_CONFLICT
from ._app import EXIT_FAILURE as EXIT_FAILURE
from ._app import EXIT_STORAGE_NOT_FOUND as EXIT_STORAGE_NOT_FOUND
from ._app import EXIT_USAGE as EXIT_USAGE
from ._app import app, main
from ._format import _SafeFormatter as _SafeFormatter
from ._format import safe_text
from ._resolve import ACCEPTED_APPS as ACCEPTED_APPS
from ._resolve import build_resolver, load_app

__all__ = ["app", "build_resolver", "load_app", "main", "safe_text", "summarize_report"]
