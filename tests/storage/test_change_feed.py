"""Change feeds when the server goes away: they reconnect (and say so) or fail naming the storage.

The feed properties every backend keeps (announced within 100 ms, deletes, isolation) are in the
conformance kit (`perdure.testing`, `feed.*`); these tests stop, stall and cut real servers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from perdure.errors import StorageUnavailableError, UserError
from perdure.records import ExecutionRecord
from perdure.storage import _postgres_feed, _redis_feed
from support.server_postgres import PostgresServer, postgres_server  # noqa: F401 - session fixture
from support.server_redis import launch_redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _heard(feed: object, execution_id: str) -> None:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if execution_id in (await feed.wait(0.5) or set()):  # type: ignore[attr-defined]
            return
    raise AssertionError(f"{execution_id} was not announced")


# ---- PostgreSQL ----------------------------------------------------------------------------------


def _pg_store(server: PostgresServer, app: str, **options: object):  # type: ignore[no-untyped-def]
    from perdure.storage.postgres import PostgresDurableStorage

    prefix = f"f{uuid.uuid4().hex[:10]}_"
    return PostgresDurableStorage(f"{server.dsn}?application_name={app}", table_prefix=prefix, **options)


def _pg_pids(server: PostgresServer, app: str) -> list[int]:
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
        return [r[0] for r in rows]


async def test_postgres_feed_reconnects_after_its_connection_is_cut(postgres_server: PostgresServer) -> None:  # noqa: F811
    import psycopg

    writer = _pg_store(postgres_server, "writer")
    app = f"feed-{uuid.uuid4().hex[:8]}"
    watcher = writer.__class__(
        f"{postgres_server.dsn}?application_name={app}", table_prefix=writer.table_prefix
    )
    async with watcher.change_feed() as feed:
        await writer.save_state_async(ExecutionRecord(execution_id="e1"))
        await _heard(feed, "e1")
        with psycopg.connect(postgres_server.dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,)
            )
        await asyncio.sleep(0.1)
        assert await feed.wait(1.0) is None  # lost: the watcher must re-read everything
        await writer.save_state_async(ExecutionRecord(execution_id="e2"))
        await _heard(feed, "e2")
    assert _pg_pids(postgres_server, app) == []  # closing the feed released its connection
    await writer.close_async()
    await watcher.close_async()


async def test_postgres_feed_notices_a_stalled_backend(
    postgres_server: PostgresServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_postgres_feed, "HEARTBEAT", 0.2)
    app = f"feed-{uuid.uuid4().hex[:8]}"
    watcher = _pg_store(postgres_server, app, statement_timeout=0.5)
    async with watcher.change_feed() as feed:
        [pid] = _pg_pids(postgres_server, app)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = []
            while time.monotonic() - started < 5 and None not in results:
                results.append(await feed.wait(0.2))
            assert None in results  # noticed, and reconnected on a fresh backend
            assert time.monotonic() - started < 3
        finally:
            os.kill(pid, signal.SIGCONT)
    await watcher.close_async()


async def test_postgres_feed_without_a_server_fails_naming_the_storage() -> None:
    from perdure.storage.postgres import PostgresDurableStorage

    store = PostgresDurableStorage(
        f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres", connect_timeout=1
    )
    feed = store.change_feed()
    with pytest.raises(UserError):
        await feed.wait(0.1)  # not open
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        await feed.open()
    assert time.monotonic() - started < 3
    assert "change feed of PostgresDurableStorage(" in str(info.value)
    await store.close_async()


async def test_postgres_close_of_the_storage_closes_its_feeds(postgres_server: PostgresServer) -> None:  # noqa: F811
    app = f"feed-{uuid.uuid4().hex[:8]}"
    store = _pg_store(postgres_server, app)
    feed = store.change_feed()
    await feed.open()
    assert len(_pg_pids(postgres_server, app)) == 1
    await store.close_async()
    await asyncio.sleep(0.1)
    assert _pg_pids(postgres_server, app) == []
    with pytest.raises(UserError):
        await feed.wait(0.1)


# ---- Redis ---------------------------------------------------------------------------------------


async def test_redis_feed_fails_naming_the_storage_then_reconnects(tmp_path: Path) -> None:
    from perdure.storage.redis import RedisDurableStorage

    server = launch_redis(tmp_path)
    try:
        writer = RedisDurableStorage(url=server.url, prefix="feed:", socket_timeout=1)
        watcher = RedisDurableStorage(url=server.url, prefix="feed:", socket_timeout=1)
        async with watcher.change_feed() as feed:
            await writer.save_state_async(ExecutionRecord(execution_id="e1"))
            await _heard(feed, "e1")
            server.stop()
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                for _ in range(20):
                    await feed.wait(0.1)
            assert time.monotonic() - started < 3
            assert "change feed of RedisDurableStorage(" in str(info.value)
            server.start()
            assert await feed.wait(0.5) is None  # reconnected; what was published meanwhile is lost
            await writer.save_state_async(ExecutionRecord(execution_id="e2"))
            await _heard(feed, "e2")
        await writer.close_async()
        await watcher.close_async()
    finally:
        server.stop()


async def test_redis_feed_notices_a_stalled_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perdure.storage.redis import RedisDurableStorage

    monkeypatch.setattr(_redis_feed, "HEARTBEAT", 0.2)
    server = launch_redis(tmp_path)
    try:
        watcher = RedisDurableStorage(url=server.url, prefix="feed:", socket_timeout=0.5)
        async with watcher.change_feed() as feed:
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(StorageUnavailableError):
                    while time.monotonic() - started < 5:
                        await feed.wait(0.1)
                assert time.monotonic() - started < 3
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert await feed.wait(0.5) is None
        await watcher.close_async()
    finally:
        server.stop()


async def test_redis_close_of_the_storage_closes_its_feeds(tmp_path: Path) -> None:
    import redis

    from perdure.storage.redis import RedisDurableStorage

    server = launch_redis(tmp_path)
    try:
        store = RedisDurableStorage(url=server.url, prefix="feed:")
        feed = store.change_feed()
        await feed.open()
        admin = redis.Redis.from_url(server.url)
        assert admin.pubsub_numsub("feed:changes") == [(b"feed:changes", 1)]
        await store.close_async()
        await asyncio.sleep(0.1)
        assert admin.pubsub_numsub("feed:changes") == [(b"feed:changes", 0)]
        admin.close()
    finally:
        server.stop()
