"""The hooks that run `perdure.testing`'s conformance kit against the built-in backends.

Shared by the storage and lease conformance suites: `fresh_storage` (a fixture, registered by
`tests/storage/conftest.py`) gives the kit a fresh, empty store of one persistent backend per
property; `reopen_builtin` opens a second instance on a store it made, as another process would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from weakref import WeakKeyDictionary

import pytest

from perdure.storage import DurableExecutionStorage
from support.storages import PERSISTENT, Factory, make_factory

_OPENERS: WeakKeyDictionary[DurableExecutionStorage, Factory] = WeakKeyDictionary()
"""How to open each persistent store the kit was given once more (see `reopen_builtin`)."""


@pytest.fixture(params=PERSISTENT)
def fresh_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], DurableExecutionStorage]:
    """A factory of fresh, empty stores of one backend: a new directory, database, prefix each call."""
    counter = itertools.count()

    def fresh() -> DurableExecutionStorage:
        root = tmp_path / f"store-{next(counter)}"
        root.mkdir()
        open_store = make_factory(request.param, root, request)
        store = open_store()
        _OPENERS[store] = open_store
        return store

    return fresh


def reopen_builtin(store: DurableExecutionStorage) -> DurableExecutionStorage | None:
    """A second instance on the same store, as another process opens it."""
    opener = _OPENERS.get(store)
    return None if opener is None else opener()


IN_PROCESS_ONLY = [
    "persistence.reopen",
    "step.second_writer_conflicts",
    "lease.survives_reopen",
    "batch.survives_reopen",
]
"""Properties about a second instance on the same store: the in-memory store has no second instance."""
