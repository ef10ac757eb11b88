"""Deletes that stick, no implicit re-creation, journal gaps refused, reads that never create.

Conformance tests run against every backend (`storage` / `reopen` fixtures of tests/conftest.py); the
file-backend tests at the end cover its crash windows (a delete interrupted before or after its
rename, the directories older versions left, a last line without its newline).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from perdure.errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    LeaseLostError,
    StorageNotFoundError,
)
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from perdure.settings import reset_settings
from perdure.storage import (
    DurableExecutionStorage,
    FileDurableStorage,
    InMemoryDurableStorage,
    SQLiteDurableStorage,
    storage_from_url,
)
from perdure.storage.file import HEAD_FILE, JOURNAL_FILE, TOMBSTONES_DIR, TRASH_DIR
from support.paths import SRC
from support.storages import Factory


def _head(execution_id: str, next_seq: int = 0, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=execution_id, next_seq=next_seq, step_index=max(next_seq - 1, 0), **fields
    )


def _step(execution_id: str, seq: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name=f"tool:t{seq}",
        key=f"tool:call-{seq}",
        result={"seq": seq},
    )


async def _create(store: DurableExecutionStorage, execution_id: str, steps: int = 0, **fields: Any) -> None:
    """A new run: the unleased first write, then `steps` journal entries."""
    await store.save_state_async(_head(execution_id, **fields))
    for seq in range(steps):
        await store.append_step_async(_head(execution_id, seq + 1), _step(execution_id, seq))


async def _invisible(store: DurableExecutionStorage, execution_id: str) -> None:
    assert await store.load_state_async(execution_id) is None
    assert await store.load_steps_async(execution_id) == []
    assert execution_id not in {h.execution_id for h in await store.list_executions_async()}


# ---- 1. a lease blocks a delete, unless forced ----------------------------------------------------


async def test_delete_of_a_leased_execution_is_refused_unless_forced(
    storage: DurableExecutionStorage,
) -> None:
    await _create(storage, "exec-run", steps=2)
    await storage.acquire_lease_async("exec-run", "w1", 30)
    with pytest.raises(ExecutionLeasedError) as info:
        await storage.delete_state_async("exec-run")
    assert info.value.owner == "w1" and info.value.expires_at is not None
    assert info.value.execution_id == "exec-run"
    head = await storage.load_state_async("exec-run")  # nothing changed
    assert head is not None and head.lease_owner == "w1" and head.next_seq == 2
    assert [s.seq for s in await storage.load_steps_async("exec-run")] == [0, 1]
    await storage.append_step_async(_head("exec-run", 3, lease_owner="w1"), _step("exec-run", 2))

    assert await storage.delete_state_async("exec-run", force=True) is True
    await _invisible(storage, "exec-run")

    # An expired lease does not block: the holder is not running it any more.
    await _create(storage, "exec-stale")
    await storage.acquire_lease_async("exec-stale", "w2", 0.05)
    await asyncio.sleep(0.1)
    assert storage.delete_state("exec-stale") is True


async def test_cleanup_skips_running_executions(storage: DurableExecutionStorage) -> None:
    old = datetime.now(UTC) - timedelta(days=30)
    for eid in ("old-running", "old-idle", "old-expired"):
        await _create(storage, eid, steps=1)
        await storage.save_state_async(_head(eid, 1, updated_at=old, created_at=old))
    await _create(storage, "new-idle")
    await storage.acquire_lease_async("old-running", "w1", 30)
    await storage.acquire_lease_async("old-expired", "w2", 0.05)
    await asyncio.sleep(0.1)
    assert await storage.cleanup_old_executions_async(7) == 2
    assert {h.execution_id for h in await storage.list_executions_async()} == {"old-running", "new-idle"}
    assert [s.seq for s in await storage.load_steps_async("old-running")] == [0]
    for eid in ("old-idle", "old-expired"):  # cleanup deletes leave tombstones too
        with pytest.raises(ExecutionDeletedError):
            await storage.save_state_async(_head(eid))
    await storage.release_lease_async("old-running", "w1")
    assert await storage.cleanup_old_executions_async(7) == 1


async def test_cleanup_without_argument_reads_retention_days(
    storage: DurableExecutionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cleanup_old_executions()` keeps `PERDURE_RETENTION_DAYS` days, else 7, on every backend."""
    now = datetime.now(UTC)
    for eid, age in (("ten-days", 10), ("three-days", 3)):
        await _create(storage, eid, steps=1)
        when = now - timedelta(days=age)
        await storage.save_state_async(_head(eid, 1, updated_at=when, created_at=when))
    await _create(storage, "fresh")
    monkeypatch.setenv("PERDURE_RETENTION_DAYS", "30")
    reset_settings()
    assert await storage.cleanup_old_executions_async() == 0
    monkeypatch.delenv("PERDURE_RETENTION_DAYS")
    reset_settings()
    assert await storage.cleanup_old_executions_async() == 1  # the default: 7 days
    monkeypatch.setenv("PERDURE_RETENTION_DAYS", "2")
    reset_settings()
    assert storage.cleanup_old_executions() == 1
    assert {h.execution_id for h in await storage.list_executions_async()} == {"fresh"}


# ---- 2. tombstones --------------------------------------------------------------------------------


async def test_tombstone_refuses_every_write_and_hides_the_id(storage: DurableExecutionStorage) -> None:
    await _create(storage, "exec-t", steps=2)
    await _create(storage, "exec-other", steps=1)
    assert await storage.delete_state_async("exec-t") is True
    before = await storage.get_stats_async()

    for write in (
        storage.save_state_async(_head("exec-t")),  # a new run reusing the id
        storage.save_state_async(_head("exec-t", 2, lease_owner="w1", status=ExecutionStatus.FAILED)),
        storage.append_step_async(_head("exec-t", 3), _step("exec-t", 2)),
        storage.append_step_async(_head("exec-t", 1), _step("exec-t", 0)),
    ):
        with pytest.raises(ExecutionDeletedError) as info:
            await write
        assert info.value.execution_id == "exec-t"
    with pytest.raises(ExecutionNotFoundError):
        await storage.acquire_lease_async("exec-t", "w1", 30)
    with pytest.raises(LeaseLostError):
        await storage.renew_lease_async("exec-t", "w1", 30)
    assert await storage.release_lease_async("exec-t", "w1") is False
    assert await storage.delete_state_async("exec-t") is False
    assert await storage.delete_state_async("exec-t", force=True) is False

    await _invisible(storage, "exec-t")
    assert await storage.get_stats_async() == before
    assert before["total_executions"] == 1
    assert await storage.load_state_async("exec-other") is not None

    assert await storage.cleanup_old_executions_async(7) == 0  # a fresh tombstone stays
    with pytest.raises(ExecutionDeletedError):
        await storage.save_state_async(_head("exec-t"))
    await asyncio.sleep(0.01)
    assert await storage.cleanup_old_executions_async(0) == 1  # exec-other; and the tombstone is purged
    await _create(storage, "exec-t", steps=1)  # the id is free again
    assert [s.seq for s in await storage.load_steps_async("exec-t")] == [0]


async def test_a_running_attempt_cannot_recreate_a_deleted_execution(reopen: Factory) -> None:
    worker, operator = reopen(), reopen()  # two processes sharing the storage
    try:
        await _create(worker, "exec-r")
        head = await worker.acquire_lease_async("exec-r", "w1", 30)
        await worker.append_step_async(head.model_copy(update={"next_seq": 1}), _step("exec-r", 0))
        assert await operator.delete_state_async("exec-r", force=True) is True
        # The attempt goes on: its next step, its failure record, its heartbeat all fail, nothing returns.
        with pytest.raises(ExecutionDeletedError):
            await worker.append_step_async(head.model_copy(update={"next_seq": 2}), _step("exec-r", 1))
        with pytest.raises(ExecutionDeletedError):
            await worker.save_state_async(head.model_copy(update={"status": ExecutionStatus.FAILED}))
        with pytest.raises(LeaseLostError):
            await worker.renew_lease_async("exec-r", "w1", 30)
        assert await worker.release_lease_async("exec-r", "w1") is False
        for store in (worker, operator):
            await _invisible(store, "exec-r")
            assert (await store.get_stats_async())["total_executions"] == 0
    finally:
        worker.close()
        operator.close()


# ---- 3. no implicit creation ------------------------------------------------------------------------


async def test_writes_never_create_an_execution_implicitly(storage: DurableExecutionStorage) -> None:
    await _create(storage, "exec-exists")  # the storage itself exists
    with pytest.raises(ExecutionNotFoundError) as info:
        await storage.append_step_async(_head("exec-new", 1), _step("exec-new", 0))
    assert info.value.execution_id == "exec-new" and info.value.where
    with pytest.raises(ExecutionNotFoundError):  # a running attempt's write: the head must exist
        await storage.save_state_async(_head("exec-new", lease_owner="w1"))
    await _invisible(storage, "exec-new")
    assert (await storage.get_stats_async())["total_executions"] == 1

    await storage.save_state_async(_head("exec-new"))  # the unleased first write of a new run creates it
    await storage.append_step_async(_head("exec-new", 1), _step("exec-new", 0))
    await storage.save_state_async(_head("exec-new", 1, lease_owner="w1"))
    assert [s.seq for s in await storage.load_steps_async("exec-new")] == [0]


def _where_parts(store: DurableExecutionStorage) -> list[str]:
    if isinstance(store, FileDurableStorage):
        return [str(store.path)]
    if isinstance(store, SQLiteDurableStorage):
        return [store.db_path, store.table_name]
    if isinstance(store, InMemoryDurableStorage):
        return ["in-process"]
    if type(store).__name__ == "RedisDurableStorage":
        return [f"{store.host}:{store.port}", store.prefix]  # type: ignore[attr-defined]
    return ["postgresql://", store.table_prefix]  # type: ignore[attr-defined]


async def test_not_found_names_the_storage_searched(storage: DurableExecutionStorage) -> None:
    await _create(storage, "exec-exists")
    with pytest.raises(ExecutionNotFoundError) as info:
        await storage.acquire_lease_async("nope", "w1", 30)
    assert info.value.backend == storage.backend_name
    for part in _where_parts(storage):
        assert part in info.value.where and part in str(info.value)


def test_not_found_masks_passwords() -> None:
    redis_mod = pytest.importorskip("perdure.storage.redis")
    pg_mod = pytest.importorskip("perdure.storage.postgres")
    redis_store = redis_mod.RedisDurableStorage(url="redis://ann:s3cret@db.example:6380/2", prefix="app:")
    pg_store = pg_mod.PostgresDurableStorage(
        "postgresql://bob:s3cret@db.example:5433/runs", table_prefix="app_"
    )
    for searched, expected in (
        (redis_store._searched, ["redis://ann:***@db.example:6380/2", "'app:'"]),
        (pg_store._searched, ["postgresql://bob:***@db.example:5433/runs", "'app_'"]),
    ):
        assert "s3cret" not in searched
        for part in expected:
            assert part in searched
    pg_store.close()


# ---- 4. journal gaps ----------------------------------------------------------------------------------


def _drop_entry(store: DurableExecutionStorage, execution_id: str, seq: int) -> None:
    """Remove one journal entry behind the storage's back (a bad restore, a manual edit)."""
    if isinstance(store, InMemoryDurableStorage):
        del store._journals[execution_id][seq]
    elif isinstance(store, FileDurableStorage):
        journal = store.path / execution_id / JOURNAL_FILE
        lines = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(b"".join(lines[:seq] + lines[seq + 1 :]))
    elif isinstance(store, SQLiteDurableStorage):
        with sqlite3.connect(store.db_path) as raw:
            table = f"{store.table_name}_steps"
            raw.execute(f"DELETE FROM {table} WHERE execution_id = ? AND seq = ?", (execution_id, seq))
    elif type(store).__name__ == "RedisDurableStorage":
        import redis

        client = redis.Redis(host=store.host, port=store.port, db=store.db)  # type: ignore[attr-defined]
        key = f"{store.prefix}journal:{execution_id}"  # type: ignore[attr-defined]
        client.lset(key, seq, b"-gone-")
        client.lrem(key, 1, b"-gone-")
        client.close()
    else:
        import psycopg

        with psycopg.connect(store.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            table = f"{store.table_prefix}steps"  # type: ignore[attr-defined]
            conn.execute(f"DELETE FROM {table} WHERE execution_id = %s AND seq = %s", (execution_id, seq))


@pytest.mark.parametrize("missing", [0, 1, 2])
async def test_a_gap_in_the_journal_is_corruption(storage: DurableExecutionStorage, missing: int) -> None:
    await _create(storage, "exec-gap", steps=4)
    _drop_entry(storage, "exec-gap", missing)
    with pytest.raises(CorruptRecordError) as info:
        await storage.load_steps_async("exec-gap")
    assert f"journal entries {missing} are missing" in str(info.value)
    assert info.value.step == str(missing) and info.value.execution_id == "exec-gap"
    # Only the file backend's journal may lead its head: by at most one batch (`max_batch`).
    file_backend = isinstance(storage, FileDurableStorage)
    assert storage.journal_may_lead_head == (64 if file_backend else 0)
    assert storage.max_batch == (64 if file_backend else None) and storage.atomic_batches


def test_postgres_layout_1_tables_get_tombstones(postgres_dsn: str) -> None:
    pg_mod = pytest.importorskip("perdure.storage.postgres")
    import psycopg

    prefix = f"t{os.urandom(6).hex()}_"
    first = pg_mod.PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    first.save_state(_head("exec-v1"))
    first.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # back to what layout 1 had
        conn.execute(f"DROP TABLE {prefix}tombstones")
        conn.execute(f"UPDATE {prefix}meta SET value = '1' WHERE key = 'layout_version'")
    store = pg_mod.PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    try:
        assert store.delete_state("exec-v1") is True  # migrated to layouts 2 and 3 on first use
        with pytest.raises(ExecutionDeletedError):
            store.save_state(_head("exec-v1"))
    finally:
        store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        version = conn.execute(f"SELECT value FROM {prefix}meta").fetchone()
        assert version is not None and int(version[0]) == pg_mod.LAYOUT_VERSION == 3


# ---- 6. reads never create ----------------------------------------------------------------------------


def _missing_store(kind: str, root: Path) -> DurableExecutionStorage:
    if kind == "file":
        return FileDurableStorage(root / "sub" / "states")
    return SQLiteDurableStorage(root / "sub" / "runs.db")


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_reads_of_a_missing_storage_create_nothing(kind: str, tmp_path: Path) -> None:
    store = _missing_store(kind, tmp_path)
    location = str(tmp_path / "sub" / ("states" if kind == "file" else "runs.db"))
    reads = [
        store.load_state_async("x"),
        store.load_steps_async("x"),
        store.list_executions_async(),
        store.get_stats_async(),
        store._iter_heads_async(),
        store.delete_state_async("x"),
        store.cleanup_old_executions_async(0),
    ]
    for read in reads:
        with pytest.raises(StorageNotFoundError) as info:
            await read
        assert info.value.backend == kind and info.value.location == location
    with pytest.raises(StorageNotFoundError):  # what a resume does first: the storage is named
        await store.acquire_lease_async("x", "w1", 30)
    with pytest.raises(LeaseLostError):
        await store.renew_lease_async("x", "w1", 30)
    assert await store.release_lease_async("x", "w1") is False
    with pytest.raises(ExecutionNotFoundError):  # appends and leased writes do not create either
        await store.append_step_async(_head("x", 1), _step("x", 0))
    with pytest.raises(ExecutionNotFoundError):
        await store.save_state_async(_head("x", lease_owner="w1"))
    assert list(tmp_path.iterdir()) == []  # not even the parent directory

    await _create(store, "x", steps=1)  # the first write creates the storage, parents included
    assert (tmp_path / "sub").is_dir()
    assert [s.seq for s in await store.load_steps_async("x")] == [0]
    assert (await store.get_stats_async())["total_executions"] == 1
    store.close()


def test_sqlite_url_paths_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = storage_from_url("sqlite:///rel/runs.db")
    assert isinstance(relative, SQLiteDurableStorage) and relative.db_path == "rel/runs.db"
    with pytest.raises(StorageNotFoundError, match=r"rel/runs\.db"):
        relative.list_executions()
    relative.save_state(_head("x"))
    assert (tmp_path / "rel" / "runs.db").is_file()
    relative.close()
    absolute = storage_from_url(f"sqlite:///{tmp_path / 'abs.db'}")  # four slashes: absolute
    assert isinstance(absolute, SQLiteDurableStorage) and absolute.db_path == str(tmp_path / "abs.db")
    absolute.save_state(_head("x"))
    assert (tmp_path / "abs.db").is_file()
    absolute.close()


# ---- file backend: crash windows and leftovers -----------------------------------------------------


async def test_file_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    await _create(store, "exec-nl", steps=2)
    journal = tmp_path / "states" / "exec-nl" / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes().rstrip(b"\n"))  # e.g. an editor dropped the final newline
    for reader in (store, FileDurableStorage(tmp_path / "states")):
        assert [s.seq for s in await reader.load_steps_async("exec-nl")] == [0, 1]
    await FileDurableStorage(tmp_path / "states").append_step_async(_head("exec-nl", 3), _step("exec-nl", 2))
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["seq"] for line in lines[:-1]] == [0, 1, 2]


async def test_file_undecodable_middle_line_is_corrupt(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    await _create(store, "exec-mid", steps=3)
    journal = tmp_path / "states" / "exec-mid" / JOURNAL_FILE
    lines = journal.read_bytes().split(b"\n")
    lines[1] = lines[1][: len(lines[1]) // 2]  # torn, but not last: not a crash window
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptRecordError) as info:
        await store.load_steps_async("exec-mid")
    assert info.value.step == "1"


async def test_file_leftovers_of_interrupted_deletes_are_invisible_and_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "states"
    store = FileDurableStorage(root)
    for eid in ("keep", "orphan", "half", "trashed"):
        await _create(store, eid, steps=1)
    # An older version's rmtree killed halfway: the head is left, the journal is gone.
    (root / "orphan" / JOURNAL_FILE).unlink()
    # A delete killed after its tombstone, before its rename.
    (root / TOMBSTONES_DIR).mkdir()
    (root / TOMBSTONES_DIR / "half").write_text("0\n")
    # A delete killed after its rename, before its removal.
    (root / TRASH_DIR).mkdir()
    os.rename(root / "trashed", root / TRASH_DIR / "trashed.0123abcd")

    for eid in ("orphan", "half", "trashed"):
        await _invisible(store, eid)
        with pytest.raises(ExecutionNotFoundError):
            await store.acquire_lease_async(eid, "w1", 30)
    assert [h.execution_id for h in await store.list_executions_async()] == ["keep"]
    assert (await store.get_stats_async())["total_executions"] == 1
    with pytest.raises(ExecutionDeletedError):
        await store.append_step_async(_head("half", 2), _step("half", 1))

    FileDurableStorage(root)  # opening empties the trash
    assert list((root / TRASH_DIR).iterdir()) == []
    assert await store.cleanup_old_executions_async(1) == 0  # finishes the others
    assert sorted(p.name for p in root.iterdir()) == sorted(["keep", TOMBSTONES_DIR, TRASH_DIR])
    assert sorted(p.name for p in (root / TOMBSTONES_DIR).iterdir()) == ["half", "orphan"]
    with pytest.raises(ExecutionDeletedError):
        await store.save_state_async(_head("orphan"))


async def test_file_delete_racing_writers_never_raises_os_errors(tmp_path: Path) -> None:
    root = tmp_path / "states"
    ids = [f"race-{n}" for n in range(12)]
    errors: list[BaseException] = []

    def write(eid: str) -> None:
        store = FileDurableStorage(root, fsync=False)
        try:
            for seq in range(200):
                store.append_step(_head(eid, seq + 1), _step(eid, seq))
                store.save_state(_head(eid, seq + 1, lease_owner="w"))
        except ExecutionDeletedError:
            return
        except BaseException as exc:
            errors.append(exc)

    setup = FileDurableStorage(root, fsync=False)
    for eid in ids:
        await _create(setup, eid)
    threads = [threading.Thread(target=write, args=(eid,)) for eid in ids]
    for t in threads:
        t.start()
    await asyncio.sleep(0.02)
    deleter = FileDurableStorage(root, fsync=False)
    for eid in ids:
        assert await deleter.delete_state_async(eid, force=True) is True
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(p.name for p in root.iterdir()) == sorted([TOMBSTONES_DIR, TRASH_DIR])
    assert list((root / TRASH_DIR).iterdir()) == []


def test_file_sigkill_between_rename_and_removal_resurrects_nothing(tmp_path: Path) -> None:
    root = tmp_path / "states"
    store = FileDurableStorage(root)
    store.save_state(_head("exec-k"))
    store.append_step(_head("exec-k", 1), _step("exec-k", 0))
    script = textwrap.dedent(
        """
        import sys
        from perdure.storage import FileDurableStorage

        FileDurableStorage(sys.argv[1]).delete_state("exec-k")
        print("not killed")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "PERDURE_FAULT": "delete_after_rename"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -9, done.stderr  # SIGKILL'd between the rename and the removal
    leftovers = list((root / TRASH_DIR).iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / HEAD_FILE).is_file()  # the removal never ran

    assert store.load_state("exec-k") is None and store.load_steps("exec-k") == []
    assert store.list_executions() == [] and store.get_stats()["total_executions"] == 0
    with pytest.raises(ExecutionNotFoundError):  # what recovery would do: it cannot take the lease
        store.acquire_lease("exec-k", "recovery", 30)
    with pytest.raises(ExecutionDeletedError):  # the attempt that was running cannot bring it back
        store.save_state(_head("exec-k", 1))
    assert store.cleanup_old_executions(1) == 0
    assert list((root / TRASH_DIR).iterdir()) == []
    assert not (root / "exec-k").exists()
