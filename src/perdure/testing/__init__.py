"""The storage conformance kit: prove that a storage backend keeps perdure's storage contract.

Every built-in backend passes it, and a custom backend (a subclass of
`perdure.storage.DurableExecutionStorage`) should too before it holds real executions::

    from perdure.testing import check_storage

    report = await check_storage(MyStorage)  # a factory of fresh, empty storages
    print(report)  # "MyStorage: all 40 properties passed", or what failed and why
    report.raise_for_failures()  # AssertionError naming every failed property

Each property (`PROPERTIES`: name -> description) runs against its own fresh storage, with a
timeout; every property runs even when others fail. Two optional hooks unlock the rest:

- `raw_writer(storage, execution_id, payload)` stores raw head bytes (to check that damaged and
  newer-schema records are refused and skipped); without it those properties are skipped.
- `reopen(storage)` opens a second instance on the same data (persistence, two writers, leases
  seen by another process); without it those properties are skipped.

`check_storage_sync` is the same for sync callers; `pytest_suite(factory)` returns a pytest test
with one test id per property. This package imports nothing test-only at import time (pytest is
imported by `pytest_suite` when it is called).
"""

from __future__ import annotations

from ._checks import ConformanceFailure, RawWriter, Reopen, StorageFactory
from ._pytest import pytest_suite
from ._runner import PROPERTIES, ConformanceReport, PropertyResult, check_storage, check_storage_sync

__all__ = [
    "PROPERTIES",
    "ConformanceFailure",
    "ConformanceReport",
    "PropertyResult",
    "RawWriter",
    "Reopen",
    "StorageFactory",
    "check_storage",
    "check_storage_sync",
    "pytest_suite",
]
