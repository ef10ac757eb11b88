"""The process's DBOS runtime: DBOS is a process-global singleton, so one launch per system database.

`ensure_launched` constructs and launches DBOS for a system database URL once; asking for another
URL (tests that use a fresh SQLite file each) destroys the old runtime first, keeping the workflow
registry so `perdure.agent` stays registered. Launching recovers the PENDING workflows of the same
application version: that is how a new worker continues the runs of a crashed one.

Processes that only observe or steer runs (`perdure list`, approving from a web app) should not
launch DBOS, or they would recover and run workflows themselves: they use a `DBOSClient`, which
talks to the system database only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dbos import DBOS, DBOSClient

from .._redact import mask_url
from ..errors import StorageUnavailableError
from ..settings import settings
from . import _dbos_workflow  # noqa: F401 - registers the `perdure.agent` workflow before any launch
from ._dbos_serializer import PerdureJSONSerializer

__all__ = ["DEFAULT_URL", "RuntimeKey", "destroy", "ensure_launched", "launched_key", "open_client"]

DEFAULT_URL = "sqlite:///perdure-dbos.sqlite"


@dataclass(frozen=True)
class RuntimeKey:
    """What identifies a launched runtime: the system database and the application."""

    url: str
    app_name: str
    app_version: str | None = None


_lock = threading.Lock()
_queues: set[str] = set()
_launched: RuntimeKey | None = None


def launched_key() -> RuntimeKey | None:
    """The runtime this process launched, if any."""
    return _launched


def _config(key: RuntimeKey, extra: dict[str, Any]) -> Any:
    config: dict[str, Any] = {
        "name": key.app_name,
        "system_database_url": key.url,
        "serializer": PerdureJSONSerializer(),
        "enable_otlp": False,
        "notification_listener_polling_interval_sec": 0.05,
        # DBOS logs every migration and launch at INFO; perdure's log level (PERDURE_LOG_LEVEL) rules.
        "log_level": (settings().log_level or "WARNING").upper(),
        **extra,
    }
    if key.app_version:
        config["application_version"] = key.app_version
    return config


def ensure_launched(key: RuntimeKey, extra: dict[str, Any] | None = None) -> None:
    """Construct and launch DBOS for `key` unless this process runs it already.

    Raises:
        StorageUnavailableError: DBOS could not open or migrate the system database.

    """
    global _launched
    with _lock:
        if _launched == key:
            return
        if _launched is not None:
            DBOS.destroy(destroy_registry=False)
            _launched = None
        try:
            DBOS(config=_config(key, extra or {}))
            DBOS.launch()
        except Exception as err:
            DBOS.destroy(destroy_registry=False)
            raise StorageUnavailableError(
                "dbos",
                f"could not launch DBOS on {mask_url(key.url)}: {err}. Check dbos_database_url "
                f"(PERDURE_DBOS_DATABASE_URL) and that the database server is reachable.",
            ) from err
        _launched = key


async def declare_queue(name: str) -> None:
    """Register the DBOS queue `name` (after the launch: DBOS stores queues in its system database)."""
    if name in _queues:
        return
    await DBOS.register_queue_async(name, polling_interval_sec=0.2)
    _queues.add(name)


def destroy() -> None:
    """Stop this process's DBOS runtime (running workflows stay PENDING and recover on next launch)."""
    global _launched
    with _lock:
        if _launched is not None:
            DBOS.destroy(destroy_registry=False)
            _launched = None


def open_client(url: str) -> DBOSClient:
    """A client on the system database, for processes that must not run workflows.

    Raises:
        StorageUnavailableError: The system database is unreachable.

    """
    try:
        return DBOSClient(system_database_url=url, serializer=PerdureJSONSerializer())
    except Exception as err:
        raise StorageUnavailableError(
            "dbos", f"could not open the DBOS system database {mask_url(url)}: {err}"
        ) from err
