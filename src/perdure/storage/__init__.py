"""Storage backends for durable executions.

`InMemoryDurableStorage`, `FileDurableStorage` and `SQLiteDurableStorage` ship with the core
package; backends that need a client library are imported lazily so that a missing extra is
reported by name only when that backend is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._query import ActivityBucket, CancelRequest, ExecutionPage, ExecutionQuery
from .base import ChangeFeed, DurableExecutionStorage, DurableStorage, validate_identifier
from .file import FileDurableStorage
from .memory import InMemoryDurableStorage
from .sqlite import SQLiteDurableStorage
from .url import storage_from_url

if TYPE_CHECKING:
    from .postgres import PostgresDurableStorage
    from .redis import RedisDurableStorage

__all__ = [
    "ActivityBucket",
    "CancelRequest",
    "ChangeFeed",
    "DurableExecutionStorage",
    "DurableStorage",
    "ExecutionPage",
    "ExecutionQuery",
    "FileDurableStorage",
    "InMemoryDurableStorage",
    "PostgresDurableStorage",
    "RedisDurableStorage",
    "SQLiteDurableStorage",
    "storage_from_url",
    "validate_identifier",
]

_LAZY = {"RedisDurableStorage": ".redis", "PostgresDurableStorage": ".postgres"}


def __getattr__(name: str) -> Any:
    """Import server backends on first use, so a missing extra only matters to who uses it."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
