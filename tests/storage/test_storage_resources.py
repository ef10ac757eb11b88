"""Storage you cannot trick: bounded resources, lease clocks that do not jump, timeouts, typed errors.

Real processes and real servers where the behaviour involves them: another process holding a file
lock, a subprocess with a low descriptor limit, a process that cannot write the SQLite file, a
stopped (SIGSTOP) PostgreSQL backend / postmaster / redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure.errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    InvalidExecutionIdError,
    LeaseLostError,
    StorageConfigurationError,
    StorageLockedError,
    StorageUnavailableError,
)
from perdure.records import ExecutionRecord, StepKind, StepRecord
from perdure.storage import DurableExecutionStorage, FileDurableStorage, SQLiteDurableStorage, _clock
from perdure.storage.file import JOURNAL_FILE
from support.paths import SRC, TESTS
from support.server_postgres import PostgresServer, postgres_server  # noqa: F401 - session fixture
from support.server_redis import launch_redis


def _record(execution_id: str, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, **fields)


def _step(execution_id: str, seq: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name=f"tool:t{seq}",
        key=f"tool:call-{seq}",
        result={"seq": seq},
    )


def _open_fds(containing: str = "") -> int:
    """Descriptors this process has open (only those whose target contains `containing`)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += containing in os.readlink(f"/proc/self/fd/{fd}")
    return count


def _python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# ---- 1. file backend: the flock is polled off the event loop, with a timeout ----------------------


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[Any]:
    """Start a process that holds the journal lock of an execution for `seconds` (killed at the end)."""
    procs: list[subprocess.Popen[str]] = []

    def hold(journal: Path, seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(journal), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_file_lock_held_elsewhere_times_out_and_the_loop_keeps_running(
    tmp_path: Path, lock_holder: Any
) -> None:
    store = FileDurableStorage(tmp_path / "states", lock_timeout=0.5)
    await store.save_state_async(_record("exec-l", metadata={"v": 1}))
    # Held past lock_timeout but not forever: code blocking on the lock ends late instead of hanging.
    lock_holder(tmp_path / "states" / "exec-l" / JOURNAL_FILE, 3.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(StorageLockedError) as info:
        await store.save_state_async(_record("exec-l", metadata={"v": 2}))
    elapsed = time.monotonic() - started
    ticking.cancel()
    assert 0.45 <= elapsed < 2.0
    assert ticks >= 15  # the event loop ran other work while the lock was polled
    assert isinstance(info.value, StorageUnavailableError)  # retryable
    assert info.value.execution_id == "exec-l" and "lock_timeout" in str(info.value)
    head = await store.load_state_async("exec-l")
    assert head is not None and head.metadata == {"v": 1}


async def test_file_lock_wait_can_be_cancelled(tmp_path: Path, lock_holder: Any) -> None:
    store = FileDurableStorage(tmp_path / "states", lock_timeout=30)
    await store.save_state_async(_record("exec-c"))
    holder = lock_holder(tmp_path / "states" / "exec-c" / JOURNAL_FILE, 30)
    before = _open_fds()
    task = asyncio.create_task(store.append_step_async(_record("exec-c", step_index=1), _step("exec-c", 0)))
    await asyncio.sleep(0.2)
    assert not task.done()
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    assert _open_fds() == before  # the journal fd opened for the lock was closed
    holder.kill()
    holder.wait()
    await store.append_step_async(_record("exec-c", step_index=1), _step("exec-c", 0))
    assert len(await store.load_steps_async("exec-c")) == 1


def test_file_lock_timeout_is_validated_and_in_url(tmp_path: Path) -> None:
    from perdure.storage import storage_from_url

    store = storage_from_url(f"file://{tmp_path / 's'}?lock_timeout=2.5")
    assert isinstance(store, FileDurableStorage) and store.lock_timeout == 2.5
    for bad in (0, -1, float("nan"), True, "10"):
        with pytest.raises(Exception, match="lock_timeout"):
            FileDurableStorage(tmp_path / "s", lock_timeout=bad)


# ---- 2. SQLite: connections bounded whatever the number of threads --------------------------------


_MANY_THREADS = """
import json, os, resource, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from perdure.records import ExecutionRecord, StepKind, StepRecord
from perdure.storage import SQLiteDurableStorage

store = SQLiteDurableStorage(sys.argv[1], synchronous="NORMAL")
failures, peak, lock = [], [0, 0], threading.Lock()

def fds(containing=""):
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += containing in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count

def work(i):
    eid = f"exec-{i}"
    try:
        store.save_state(ExecutionRecord(execution_id=eid))
        step = StepRecord(execution_id=eid, seq=0, kind=StepKind.TOOL_CALL, name="t", key="k", result=i)
        store.append_step(ExecutionRecord(execution_id=eid, step_index=1), step)
        assert store.load_state(eid).step_index == 1 and len(store.load_steps(eid)) == 1
    except Exception as exc:
        with lock:
            failures.append(repr(exc))
    with lock:
        peak[0] = max(peak[0], fds())
        peak[1] = max(peak[1], fds("many.db"))

start = fds()
for batch in range(24):  # 600 operations, each from a new thread, 25 threads alive at a time
    threads = [threading.Thread(target=work, args=(batch * 25 + j,)) for j in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
listed = len(store.list_executions())
print(json.dumps({"failures": len(failures), "first": failures[:3], "start": start, "peak": peak[0],
                  "peak_db": peak[1], "end": fds(), "listed": listed, "pool": store._pool.size}))
"""


def test_sqlite_thread_per_operation_stays_within_a_low_fd_limit(tmp_path: Path) -> None:
    done = _python(_MANY_THREADS, str(tmp_path / "many.db"), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == 0, result["first"]
    assert result["listed"] == 600
    assert result["pool"] <= 8
    assert result["peak_db"] <= 8 * 3, result  # 8 pooled connections x (database, -wal, -shm)
    # Once the threads ended: the pool, plus the event loops (3 descriptors each) of threads that
    # ended since the last one started, which the next thread to start closes.
    assert result["end"] - result["start"] <= 8 * 3 + 25 * 3, result
    assert result["peak"] < 200, result


def test_sqlite_pool_reuses_connections_and_close_releases_them(tmp_path: Path) -> None:
    store = SQLiteDurableStorage(tmp_path / "p.db", max_connections=2)
    store.save_state(_record("exec-p"))
    threads = [threading.Thread(target=store.load_state, args=("exec-p",)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store._pool.size <= 2
    path = str(tmp_path / "p.db")  # this database only (other tests' files may end in "p.db")
    assert _open_fds(path) <= 2 * 3  # database, -wal and -shm per pooled connection
    store.close()
    assert store._pool.size == 0 and _open_fds(path) == 0
    assert store.load_state("exec-p") is not None  # reopened after close
    store.close()
    with pytest.raises(Exception, match="max_connections"):
        SQLiteDurableStorage(tmp_path / "p.db", max_connections=0)


def test_sqlite_lock_timeout_is_short_and_typed(tmp_path: Path) -> None:
    assert SQLiteDurableStorage(tmp_path / "d.db").busy_timeout_ms <= 10_000  # < a third of a 30 s lease
    store = SQLiteDurableStorage(tmp_path / "d.db", busy_timeout_ms=200)
    store.save_state(_record("exec-b"))
    other = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        started = time.monotonic()
        with pytest.raises(StorageLockedError) as info:
            store.save_state(_record("exec-b", metadata={"v": 2}))
        assert time.monotonic() - started < 2
        assert info.value.execution_id == "exec-b" and "busy_timeout_ms=200" in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.save_state(_record("exec-b", metadata={"v": 2}))
    store.close()


# ---- 3. lease clocks that do not jump (SQLite, file) ------------------------------------------------


def _single_host(kind: str, tmp_path: Path) -> DurableExecutionStorage:
    if kind == "file":
        return FileDurableStorage(tmp_path / "states")
    return SQLiteDurableStorage(tmp_path / "leases.db")


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_wall_clock_step_does_not_free_a_live_lease(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _single_host(kind, tmp_path)
    await first.save_state_async(_record("exec-w"))
    await first.acquire_lease_async("exec-w", "w1", 30)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60)  # the clock steps 60 s forward
    second = _single_host(kind, tmp_path)  # another worker, seeing the stepped clock
    with pytest.raises(ExecutionLeasedError):
        await second.acquire_lease_async("exec-w", "w2", 30)
    with pytest.raises(LeaseLostError):  # the write fence does not believe the stepped clock either
        await second.save_state_async(_record("exec-w", lease_owner="w2"))
    await first.save_state_async(_record("exec-w", lease_owner="w1", metadata={"still": "w1"}))
    head = await second.load_state_async("exec-w")
    assert head is not None and head.lease_owner == "w1" and head.metadata == {"still": "w1"}
    assert head.lease_expires_at is not None  # wall-clock expiry kept for display
    await first.close_async()
    await second.close_async()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_lease_of_another_boot_is_expired(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _single_host(kind, tmp_path)
    await store.save_state_async(_record("exec-b"))
    monkeypatch.setattr(_clock, "BOOT_ID", "00000000-0000-0000-0000-before-reboot")
    await store.acquire_lease_async("exec-b", "w-old", 3600)  # an hour left, but in the previous boot
    monkeypatch.undo()
    head = await store.acquire_lease_async("exec-b", "w-new", 30)
    assert head.lease_owner == "w-new"
    with pytest.raises(ExecutionLeasedError):  # the new lease is live in this boot
        await store.acquire_lease_async("exec-b", "w-other", 30)
    await store.close_async()


# ---- 4. PostgreSQL and Redis timeouts ---------------------------------------------------------------


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:  # noqa: F811
    psycopg = pytest.importorskip("psycopg")
    prefix = f"r{uuid.uuid4().hex[:10]}_"
    yield postgres_server, prefix
    if postgres_server.is_running():
        with psycopg.connect(postgres_server.dsn, autocommit=True) as db:
            for table in ("heads", "steps", "meta", "tombstones"):
                db.execute(f"DROP TABLE IF EXISTS {prefix}{table}")


def test_postgres_lock_wait_ends_at_statement_timeout(pg: tuple[PostgresServer, str]) -> None:
    import psycopg

    from perdure.storage.postgres import PostgresDurableStorage

    server, prefix = pg
    store = PostgresDurableStorage(server.dsn, table_prefix=prefix, statement_timeout=1, connect_timeout=2)
    try:
        store.save_state(_record("exec-t"))
        with psycopg.connect(server.dsn) as locker:
            locker.execute(f"LOCK TABLE {prefix}heads IN ACCESS EXCLUSIVE MODE")  # held until rollback
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                store.load_state("exec-t")
            assert 0.9 <= time.monotonic() - started < 3
            assert "statement_timeout=1s" in str(info.value) and info.value.execution_id == "exec-t"
            locker.rollback()
        assert store.load_state("exec-t") is not None
    finally:
        store.close()


def test_postgres_stalled_backend_fails_within_the_timeout(pg: tuple[PostgresServer, str]) -> None:
    import psycopg

    from perdure.storage.postgres import PostgresDurableStorage

    server, prefix = pg
    app = f"stall-{uuid.uuid4().hex[:8]}"
    store = PostgresDurableStorage(
        f"{server.dsn}?application_name={app}", table_prefix=prefix, statement_timeout=1, max_size=2
    )
    try:
        store.save_state(_record("exec-s"))
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            pids = [
                r[0]
                for r in admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
            ]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # Resumed after 8 s whatever happens: code without a client-side bound waits that long, then succeeds.
        resume = threading.Timer(8, lambda: [os.kill(pid, signal.SIGCONT) for pid in pids])
        resume.start()
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                store.load_state("exec-s")
            assert time.monotonic() - started < 4
            assert "no answer" in str(info.value)
        finally:
            resume.cancel()
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        head = store.load_state("exec-s")  # a fresh connection once the server answers
        assert head is not None
    finally:
        store.close()


def test_postgres_stalled_server_fails_within_connect_timeout(pg: tuple[PostgresServer, str]) -> None:
    from perdure.storage.postgres import PostgresDurableStorage

    server, prefix = pg
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    store = PostgresDurableStorage(server.dsn, table_prefix=prefix, connect_timeout=1)
    os.kill(postmaster, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            store.load_state("exec-x")
        assert time.monotonic() - started < 6  # connect_timeout, then a bounded probe for the message
    finally:
        os.kill(postmaster, signal.SIGCONT)
    try:
        store.save_state(_record("exec-x"))  # the server answers again: so does the storage
        assert store.load_state("exec-x") is not None
    finally:
        store.close()


def test_postgres_statement_timeout_option_and_url(pg: tuple[PostgresServer, str]) -> None:
    from perdure._sync import run_sync
    from perdure.storage.postgres import PostgresDurableStorage

    server, prefix = pg
    store = PostgresDurableStorage.from_url(f"{server.dsn}?table_prefix={prefix}&statement_timeout=1.5")
    try:
        assert store.statement_timeout == 1.5 and "statement_timeout" not in store.dsn
        rows = run_sync(store._query("SHOW statement_timeout", (), None))
        assert rows == [("1500ms",)]
    finally:
        store.close()
    for bad in (0, -2, True, "x"):
        with pytest.raises(Exception, match="statement_timeout"):
            PostgresDurableStorage(server.dsn, statement_timeout=bad)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("redis")
    try:
        server = launch_redis(tmp_path / "redis")
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"redis-server unavailable: {exc}")
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop(kill=True)


def test_redis_stalled_server_fails_within_socket_timeout(own_redis: Any) -> None:
    from perdure.storage.redis import RedisDurableStorage

    store = RedisDurableStorage(url=own_redis.url, prefix="stall:", socket_timeout=1)
    try:
        store.save_state(_record("exec-r"))
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                store.load_state("exec-r")
            assert time.monotonic() - started < 2.2  # one socket_timeout, not one per retry
            assert "Timeout" in str(info.value)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert store.load_state("exec-r") is not None
    finally:
        store.close()


# ---- 5. distinct typed errors ------------------------------------------------------------------------


def test_redis_wrong_password_is_a_configuration_error(own_redis: Any) -> None:
    import redis

    from perdure.storage.redis import RedisDurableStorage

    admin = redis.Redis(host="127.0.0.1", port=own_redis.port)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    for password in ("wrong", None):
        store = RedisDurableStorage(port=own_redis.port, host="127.0.0.1", password=password, prefix="p:")
        try:
            with pytest.raises(StorageConfigurationError) as info:
                store.load_state("exec-1")
            assert "resume" not in str(info.value) and "password" in str(info.value)
        finally:
            store.close()
    good = RedisDurableStorage(port=own_redis.port, host="127.0.0.1", password="s3cret", prefix="p:")
    try:
        good.save_state(_record("exec-1"))
        assert good.load_state("exec-1") is not None
    finally:
        good.close()


def test_postgres_missing_database_is_a_configuration_error(pg: tuple[PostgresServer, str]) -> None:
    from perdure.storage.postgres import PostgresDurableStorage

    server, prefix = pg
    dsn = f"postgresql://postgres@127.0.0.1:{server.port}/no_such_db"
    store = PostgresDurableStorage(dsn, table_prefix=prefix, connect_timeout=1)
    try:
        with pytest.raises(StorageConfigurationError) as info:
            store.save_state(_record("exec-1"))
        assert "no_such_db" in str(info.value) and "does not exist" in str(info.value)
    finally:
        store.close()


def test_postgres_id_it_cannot_store_is_an_invalid_id(pg: tuple[PostgresServer, str]) -> None:
    from perdure.storage.postgres import PostgresDurableStorage

    server, prefix = pg
    store = PostgresDurableStorage(server.dsn, table_prefix=prefix)
    try:
        with pytest.raises(InvalidExecutionIdError, match="NUL"):
            store.save_state(_record("exec\x00nul"))
    finally:
        store.close()


@pytest.mark.parametrize("bad", ["abc\n", "abc\r", "ab\nc", "x" * 201])
def test_file_refuses_ids_with_a_trailing_newline(tmp_path: Path, bad: str) -> None:
    store = FileDurableStorage(tmp_path / "states")
    with pytest.raises(InvalidExecutionIdError) as info:
        store.save_state(_record(bad))
    assert info.value.execution_id == bad
    assert not (tmp_path / "states").exists() or list((tmp_path / "states").iterdir()) == []


def test_sqlite_table_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageConfigurationError, match="table name"):
        SQLiteDurableStorage(tmp_path / "t.db", table_name="runs\n")


def test_sqlite_not_a_database_is_corrupt_not_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a SQLite database, it is a text file\n" * 200)
    store = SQLiteDurableStorage(path)
    with pytest.raises(CorruptRecordError) as info:
        store.list_executions()
    assert not isinstance(info.value, StorageUnavailableError)
    assert str(path) in str(info.value) and "resume" not in str(info.value)
    store.close()
    assert path.read_bytes().startswith(b"this is not a SQLite database")  # left untouched


# ---- 6. read-only and truncated SQLite files ----------------------------------------------------------


_AS_NOBODY = """
import json, os, sys
from perdure.errors import PerdureError, StorageConfigurationError
from perdure.records import ExecutionRecord
from perdure.storage import SQLiteDurableStorage
import perdure.codec, encodings.idna  # imported before the privileges go
os.setgid(65534)
os.setuid(65534)
out = {}
for path in sys.argv[1:]:
    store = SQLiteDurableStorage(path)
    res = {}
    try:
        res["listed"] = sorted(h.execution_id for h in store.list_executions())
        res["steps"] = len(store.load_steps("exec-0"))
        res["stats"] = store.get_stats()["total_executions"]
        head = store.load_state("exec-1")
        res["head"] = head.metadata if head else None
    except PerdureError as exc:
        res["read_error"] = f"{type(exc).__name__}: {exc}"
    try:
        store.save_state(ExecutionRecord(execution_id="exec-new"))
        res["write"] = "written"
    except StorageConfigurationError as exc:
        res["write"] = f"StorageConfigurationError: {exc}"
    except PerdureError as exc:
        res["write"] = f"{type(exc).__name__}: {exc}"
    store.close()
    out[path] = res
print(json.dumps(out))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside root's private temp dirs, so an unprivileged user can reach it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create files that another user cannot write")
    base = Path(tempfile.mkdtemp(prefix="perdure-ro-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _populate(path: Path) -> None:
    store = SQLiteDurableStorage(path)
    for i in range(3):
        store.save_state(_record(f"exec-{i}", metadata={"i": i}))
    store.append_step(_record("exec-0", step_index=1), _step("exec-0", 0))
    store.close()  # the last connection checkpoints and removes the -wal file


def test_sqlite_file_this_process_cannot_write_stays_readable(shared_dir: Path) -> None:
    # (a) root's file in root's directory: no -shm can be created; (b) root's file in a world-writable
    # directory; (c) a file the user owns in root's directory: the read-write open fails first.
    cases = {"a": shared_dir / "a", "b": shared_dir / "b", "c": shared_dir / "c"}
    for name, directory in cases.items():
        directory.mkdir()
        _populate(directory / "runs.db")
        directory.chmod(0o777 if name == "b" else 0o755)
        (directory / "runs.db").chmod(0o644)
    os.chown(cases["c"] / "runs.db", 65534, 65534)
    paths = [str(d / "runs.db") for d in cases.values()]
    done = _python(_AS_NOBODY, *paths)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for path in paths:
        res = results[path]
        assert "read_error" not in res, (path, res)
        assert res["listed"] == ["exec-0", "exec-1", "exec-2"] and res["stats"] == 3
        assert res["steps"] == 1 and res["head"] == {"i": 1}
        assert res["write"].startswith("StorageConfigurationError"), (path, res)
        assert path in res["write"] and "read-only" in res["write"]
    for directory in cases.values():  # nothing was written
        reopened = SQLiteDurableStorage(directory / "runs.db")
        assert reopened.load_state("exec-new") is None
        reopened.close()


@pytest.mark.parametrize("keep", [50, 4096, 0.5])
def test_sqlite_truncated_file_is_corrupt_or_partly_readable(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteDurableStorage(path, synchronous="NORMAL")
    for i in range(200):
        store.save_state(_record(f"exec-{i}", metadata={"pad": "x" * 500}))
    store.close()
    size = path.stat().st_size
    os.truncate(path, int(size * keep) if keep < 1 else int(keep))
    damaged = SQLiteDurableStorage(path)
    for read in (damaged.list_executions, damaged.get_stats, lambda: damaged.load_state("exec-150")):
        try:
            read()  # what can be read is returned
        except CorruptRecordError as exc:
            assert not isinstance(exc, StorageUnavailableError)
            assert "damaged" in str(exc) and str(path) in str(exc) and "reachable" not in str(exc)
    damaged.close()


# ---- 7. file backend: no temp files left behind when a write fails -----------------------------------


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_file_disk_full_leaves_no_temp_file_and_keeps_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store = FileDurableStorage(tmp_path / "states")
    store.save_state(_record("exec-f", metadata={"v": 1}))
    real = getattr(os, failing)

    def full(fd: int, *args: Any) -> Any:
        if ".head-" in _fd_path(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *args)

    monkeypatch.setattr(os, failing, full)
    directory = tmp_path / "states" / "exec-f"
    with pytest.raises(StorageUnavailableError) as info:
        store.save_state(_record("exec-f", metadata={"v": 2}))
    assert "disk full" in str(info.value) and info.value.execution_id == "exec-f"
    with pytest.raises(StorageUnavailableError):
        store.append_step(_record("exec-f", step_index=1, metadata={"v": 3}), _step("exec-f", 0))
    assert list(directory.glob(".*.tmp")) == []
    monkeypatch.undo()
    head = store.load_state("exec-f")
    assert head is not None and head.metadata == {"v": 1}


def test_file_read_only_filesystem_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileDurableStorage(tmp_path / "states")
    store.save_state(_record("exec-ro"))
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if ".head-" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(StorageConfigurationError) as info:
        store.save_state(_record("exec-ro", metadata={"v": 2}))
    assert "Read-only file system" in str(info.value) and "resume" not in str(info.value)
