"""One registry of storage backends for the conformance, lease, integrity and crash suites.

`make_factory` opens an isolated store of one backend in-process, `backend_url` names one for a
subprocess. Redis and PostgreSQL are real servers started once per test session on 127.0.0.1 by the
fixtures of `support.server_redis` and `support.server_postgres` (registered by `tests/conftest.py`).
Locally a server that cannot be started skips its tests with the reason; with `CI=true` it fails
them, because CI must exercise every backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from perdure.codec import Codec
from perdure.storage import (
    DurableExecutionStorage,
    FileDurableStorage,
    InMemoryDurableStorage,
    SQLiteDurableStorage,
)

Factory = Callable[[], DurableExecutionStorage]

BACKENDS = ["memory", "file", "sqlite-full", "sqlite-normal", "redis", "postgres"]
PERSISTENT = [b for b in BACKENDS if b != "memory"]
SERVER_BACKENDS = ["redis", "postgres"]


def make_factory(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, codec: Codec | None = None
) -> Factory:
    """A factory opening a fresh, isolated store of `kind`; calling it again reopens the same store."""
    if kind == "memory":
        return InMemoryDurableStorage
    if kind == "file":
        return lambda: FileDurableStorage(tmp_path / "states", codec=codec)
    if kind in ("sqlite-full", "sqlite-normal"):
        synchronous = "FULL" if kind == "sqlite-full" else "NORMAL"
        return lambda: SQLiteDurableStorage(tmp_path / "durable.db", synchronous=synchronous, codec=codec)
    namespace = f"t{uuid.uuid4().hex[:12]}"
    if kind == "redis":
        from perdure.storage.redis import RedisDurableStorage

        url = request.getfixturevalue("redis_url")
        return lambda: RedisDurableStorage(url=url, prefix=f"{namespace}:", codec=codec)
    if kind == "postgres":
        from perdure.storage.postgres import PostgresDurableStorage

        dsn = request.getfixturevalue("postgres_dsn")
        return lambda: PostgresDurableStorage(dsn, table_prefix=f"{namespace}_", codec=codec)
    raise ValueError(kind)


def backend_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A `storage_from_url` URL of an isolated store of `kind`, for subprocess tests."""
    namespace = f"t{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'crash.db'}"
    if kind == "file":
        return f"file://{tmp_path / 'states'}"
    if kind == "redis":
        return f"{request.getfixturevalue('redis_url')}?prefix={namespace}:"
    if kind == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        sep = "&" if "?" in dsn else "?"
        return f"{dsn}{sep}table_prefix={namespace}_"
    raise ValueError(kind)
