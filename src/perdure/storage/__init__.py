"""Storage backends for durable executions.

`InMemoryDurableStorage`, `FileDurableStorage` and `SQLiteDurableStorage` ship with the core
package; backends that need a client library are imported lazily so that a missing extra is
reported by name only when that backend is used.
"""

from __future__ import annotations

from .base import DurableExecutionStorage, DurableStorage, validate_identifier
from .file import FileDurableStorage
from .memory import InMemoryDurableStorage
from .sqlite import SQLiteDurableStorage
from .url import storage_from_url

__all__ = [
    "DurableExecutionStorage",
    "DurableStorage",
    "FileDurableStorage",
    "InMemoryDurableStorage",
    "SQLiteDurableStorage",
    "storage_from_url",
    "validate_identifier",
]
