"""One conformance suite for every storage backend, plus backend-specific durability checks."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import Factory, make_factory
from perdure.codec import Codec
from perdure.errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    IncompatibleSchemaError,
    StepConflictError,
    StorageUnavailableError,
    UserError,
)
from perdure.records import (
    SCHEMA_VERSION,
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    ReplayStats,
    StepKind,
    StepRecord,
    TaskSnapshot,
    ToolRef,
    UsageTotals,
)
from perdure.storage import (
    DurableExecutionStorage,
    FileDurableStorage,
    InMemoryDurableStorage,
    SQLiteDurableStorage,
    storage_from_url,
)
from perdure.storage.file import JOURNAL_FILE


def _factory(kind: str, tmp_path: Path, codec: Codec | None = None) -> Factory:
    """Local backends only (the backend-specific tests below)."""
    return make_factory(kind, tmp_path, None, codec)  # type: ignore[arg-type]


def make_record(execution_id: str, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, **fields)


def make_step(execution_id: str, seq: int, result: Any = None, **fields: Any) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=fields.pop("kind", StepKind.TOOL_CALL),
        name=fields.pop("name", f"tool:t{seq}"),
        key=fields.pop("key", f"tool:call-{seq}"),
        result={"seq": seq, "value": f"result {seq}"} if result is None else result,
        **fields,
    )


async def append_n(
    store: DurableExecutionStorage, execution_id: str, n: int, start: int = 0
) -> ExecutionRecord:
    record = make_record(execution_id)
    if start == 0:  # an append never creates the execution: the first write of a run does
        await store.save_state_async(record)
    for seq in range(start, start + n):
        record = record.model_copy(
            update={"next_seq": seq + 1, "step_index": seq, "step_name": f"tool:t{seq}"}
        )
        await store.append_step_async(record, make_step(execution_id, seq))
    return record


def full_record(execution_id: str) -> ExecutionRecord:
    created = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    try:
        raise ValueError("tool exploded")
    except ValueError as exc:
        error = ErrorInfo.from_exception(exc)
    return ExecutionRecord(
        execution_id=execution_id,
        status=ExecutionStatus.FAILED,
        step_index=3,
        step_name="tool:search",
        error=error,
        created_at=created,
        updated_at=created + timedelta(minutes=5, microseconds=7),
        task=TaskSnapshot(
            description="Find the answer",
            response_format="mymod:Answer",
            tools=[ToolRef(name="search", ref="mymod:search"), ToolRef(name="local")],
            model="openai:gpt-4o",
            agent_name="researcher",
            instructions="Be brief.",
            context={"user": "ann", "nested": {"k": [1, 2.5, None, True]}},
        ),
        usage=UsageTotals(requests=4, input_tokens=120, output_tokens=80, tool_calls=2),
        replay=ReplayStats(resumes=1, replayed_model_requests=2, tokens_saved=150),
        next_seq=4,
        attempts=2,
        output={"answer": 42, "items": ["a", "ü", "😀"], "none": None},
        lease_owner="host:123",
        lease_expires_at=created + timedelta(seconds=30),
        metadata={"tenant": "acme", "tags": ["x"]},
    )


# ---- the contract -------------------------------------------------------------------------------


async def test_save_load_roundtrip_keeps_every_field(storage: DurableExecutionStorage) -> None:
    record = full_record("exec-roundtrip")
    # A write carrying a lease owner (a running attempt's) never creates: the run's first write does.
    await storage.save_state_async(make_record("exec-roundtrip"))
    await storage.save_state_async(record)
    loaded = await storage.load_state_async("exec-roundtrip")
    # The lease is stored apart from the head body (only the lease methods set it).
    assert loaded == record.model_copy(update={"lease_owner": None, "lease_expires_at": None})
    assert loaded is not record
    assert loaded.error is not None and "tool exploded" in loaded.error.traceback
    assert loaded.updated_at.tzinfo is not None
    # Overwrite replaces the head.
    await storage.save_state_async(record.model_copy(update={"status": ExecutionStatus.COMPLETED}))
    again = await storage.load_state_async("exec-roundtrip")
    assert again is not None and again.status is ExecutionStatus.COMPLETED


async def test_load_unknown_returns_none(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(make_record("exec-other"))  # the storage exists, the id does not
    assert await storage.load_state_async("does-not-exist") is None
    assert await storage.load_steps_async("does-not-exist") == []
    assert storage.load_state("does-not-exist") is None


async def test_append_step_stores_head_and_journal_together(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(make_record("exec-a"))
    record = make_record("exec-a", next_seq=1, step_index=0, step_name="model_request")
    step = make_step("exec-a", 0, {"text": "hi"}, kind=StepKind.MODEL_REQUEST, name="model_request", tokens=9)
    await storage.append_step_async(record, step)
    assert await storage.load_state_async("exec-a") == record
    assert await storage.load_steps_async("exec-a") == [step]


async def test_step_conflict_changes_nothing(storage: DurableExecutionStorage) -> None:
    head = await append_n(storage, "exec-c", 2)
    steps_before = await storage.load_steps_async("exec-c")
    intruder = make_record("exec-c", next_seq=99, status=ExecutionStatus.FAILED)
    for seq in (0, 1):  # the contract: a journaled seq is never overwritten
        with pytest.raises(StepConflictError) as info:
            await storage.append_step_async(intruder, make_step("exec-c", seq, {"other": True}))
        assert info.value.execution_id == "exec-c"
        assert info.value.seq == seq
    assert await storage.load_state_async("exec-c") == head
    assert await storage.load_steps_async("exec-c") == steps_before
    await append_n(storage, "exec-c", 1, start=2)  # the next seq still works
    assert [s.seq for s in await storage.load_steps_async("exec-c")] == [0, 1, 2]


async def test_second_writer_of_a_seq_conflicts(reopen: Factory) -> None:
    first, second = reopen(), reopen()
    try:
        await append_n(first, "exec-two", 1)
        await second.load_steps_async("exec-two")
        await append_n(first, "exec-two", 1, start=1)  # `second` has not seen this one
        with pytest.raises(StepConflictError):
            await append_n(second, "exec-two", 1, start=1)
        await append_n(second, "exec-two", 1, start=2)
        assert [s.seq for s in await first.load_steps_async("exec-two")] == [0, 1, 2]
    finally:
        first.close()
        second.close()


async def test_load_steps_in_sequence_order(storage: DurableExecutionStorage) -> None:
    await append_n(storage, "exec-b", 3)
    await append_n(storage, "exec-order", 12)
    steps = await storage.load_steps_async("exec-order")
    assert [s.seq for s in steps] == list(range(12))
    assert all(s.execution_id == "exec-order" for s in steps)
    assert steps[7].result == {"seq": 7, "value": "result 7"}
    assert len(await storage.load_steps_async("exec-b")) == 3


async def test_delete_removes_head_and_journal(storage: DurableExecutionStorage) -> None:
    await append_n(storage, "exec-del", 3)
    await append_n(storage, "exec-keep", 1)
    assert await storage.delete_state_async("exec-del") is True
    assert await storage.load_state_async("exec-del") is None
    assert await storage.load_steps_async("exec-del") == []
    assert await storage.delete_state_async("exec-del") is False
    assert storage.delete_state("never-existed") is False
    assert await storage.load_state_async("exec-keep") is not None
    # The tombstone refuses the id: nothing re-creates the deleted execution.
    with pytest.raises(ExecutionDeletedError):
        await append_n(storage, "exec-del", 1)
    assert await storage.load_steps_async("exec-del") == []


async def test_list_newest_first_with_filter_and_limit(storage: DurableExecutionStorage) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    statuses = [
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.COMPLETED,
        ExecutionStatus.PAUSED,
    ]
    for i, status in enumerate(statuses):
        await storage.save_state_async(
            make_record(f"exec-{i}", status=status, updated_at=base + timedelta(hours=i))
        )
    ids = [r.execution_id for r in await storage.list_executions_async()]
    assert ids == ["exec-3", "exec-2", "exec-1", "exec-0"]
    completed = await storage.list_executions_async(status="completed")
    assert [r.execution_id for r in completed] == ["exec-2", "exec-0"]
    assert [r.execution_id for r in storage.list_executions(ExecutionStatus.COMPLETED, limit=1)] == ["exec-2"]
    assert [r.execution_id for r in await storage.list_executions_async(limit=2)] == ["exec-3", "exec-2"]
    assert await storage.list_executions_async(status=ExecutionStatus.CANCELLED) == []
    assert await storage.list_executions_async(limit=0) == []


async def test_get_stats_shape(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(make_record("exec-gone"))  # create the storage; tombstones not counted
    assert await storage.delete_state_async("exec-gone") is True
    empty = await storage.get_stats_async()
    assert empty == {
        "backend": storage.backend_name,
        "total_executions": 0,
        "by_status": {s.value: 0 for s in ExecutionStatus},
    }
    for i, status in enumerate([ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.FAILED]):
        await storage.save_state_async(make_record(f"exec-{i}", status=status))
    stats = storage.get_stats()
    assert stats["backend"] == storage.backend_name
    assert stats["total_executions"] == 3
    assert stats["by_status"] == {"success": 1, "paused": 0, "failed": 2, "completed": 0, "cancelled": 0}


async def test_cleanup_old_executions(storage: DurableExecutionStorage) -> None:
    old = datetime.now(UTC) - timedelta(days=30)
    await append_n(storage, "exec-old", 2)
    await storage.save_state_async(make_record("exec-old", updated_at=old, created_at=old, next_seq=2))
    await storage.save_state_async(make_record("exec-older", updated_at=old - timedelta(days=1)))
    await append_n(storage, "exec-new", 1)
    assert await storage.cleanup_old_executions_async(older_than_days=7) == 2
    assert await storage.load_state_async("exec-old") is None
    assert await storage.load_steps_async("exec-old") == []
    assert await storage.load_state_async("exec-new") is not None
    assert storage.cleanup_old_executions(7) == 0
    assert storage.cleanup_old_executions(0) == 1
    with pytest.raises(UserError):
        storage.cleanup_old_executions(-1)


async def test_sync_twins_work_inside_running_loop(storage: DurableExecutionStorage) -> None:
    asyncio.get_running_loop()  # this test runs inside the event loop
    storage.save_state(make_record("exec-sync"))
    storage.append_step(make_record("exec-sync", next_seq=1), make_step("exec-sync", 0))
    loaded = storage.load_state("exec-sync")
    assert loaded is not None and loaded.next_seq == 1
    assert [s.seq for s in storage.load_steps("exec-sync")] == [0]
    assert storage.get_stats()["total_executions"] == 1
    assert [r.execution_id for r in storage.list_executions()] == ["exec-sync"]
    assert storage.delete_state("exec-sync") is True


def test_sync_twins_without_loop(storage: DurableExecutionStorage) -> None:
    record = make_record("exec-plain", status=ExecutionStatus.PAUSED)
    storage.save_state(record)
    storage.append_step(record.model_copy(update={"next_seq": 1}), make_step("exec-plain", 0))
    assert storage.load_state("exec-plain") == record.model_copy(update={"next_seq": 1})
    assert storage.get_stats()["by_status"]["paused"] == 1
    assert storage.cleanup_old_executions(1) == 0
    assert storage.delete_state("exec-plain") is True


async def test_corrupt_head_is_typed_and_skipped_by_queries(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(make_record("exec-good", status=ExecutionStatus.COMPLETED))
    await storage.save_state_async(make_record("exec-bad"))
    storage._put_raw_head("exec-bad", b'{"execution_id": "exec-bad", "status": ')  # type: ignore[attr-defined]
    storage._put_raw_head("exec-shape", b'{"execution_id": "exec-shape", "step_index": "x"}')  # type: ignore[attr-defined]
    with pytest.raises(CorruptRecordError) as info:
        await storage.load_state_async("exec-bad")
    assert info.value.execution_id == "exec-bad"
    assert "exec-bad" in str(info.value)
    with pytest.raises(CorruptRecordError, match="exec-shape"):
        storage.load_state("exec-shape")
    assert [r.execution_id for r in await storage.list_executions_async()] == ["exec-good"]
    stats = await storage.get_stats_async()
    assert stats["total_executions"] == 1 and stats["by_status"]["completed"] == 1
    assert await storage.delete_state_async("exec-bad") is True


async def test_newer_schema_version_is_refused(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(make_record("exec-future", schema_version=SCHEMA_VERSION + 1))
    await storage.save_state_async(make_record("exec-now"))
    with pytest.raises(IncompatibleSchemaError) as info:
        await storage.load_state_async("exec-future")
    assert info.value.found == SCHEMA_VERSION + 1 and info.value.execution_id == "exec-future"
    assert [r.execution_id for r in await storage.list_executions_async()] == ["exec-now"]
    assert (await storage.get_stats_async())["total_executions"] >= 1


async def test_large_result_roundtrip(storage: DurableExecutionStorage) -> None:
    big = "x" * (1024 * 1024)
    record = make_record("exec-big", next_seq=1, output={"text": big})
    await storage.save_state_async(make_record("exec-big"))
    await storage.append_step_async(record, make_step("exec-big", 0, {"blob": big, "n": [1] * 1000}))
    loaded = await storage.load_state_async("exec-big")
    assert loaded is not None and loaded.output == {"text": big}
    [step] = await storage.load_steps_async("exec-big")
    assert step.result["blob"] == big and len(step.result["n"]) == 1000


async def test_persistence_across_instances(reopen: Factory) -> None:
    first = reopen()
    record = full_record("exec-persist")
    await first.save_state_async(make_record("exec-persist"))
    await first.save_state_async(record)
    head = await append_n(first, "exec-persist", 3)
    first.close()
    second = reopen()
    try:
        assert await second.load_state_async("exec-persist") == head
        assert [s.seq for s in await second.load_steps_async("exec-persist")] == [0, 1, 2]
        await append_n(second, "exec-persist", 1, start=3)  # a new instance continues the journal
        assert len(await second.load_steps_async("exec-persist")) == 4
    finally:
        second.close()


# ---- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "sqlite-full"])
async def test_zstd_codec_roundtrip(kind: str, tmp_path: Path) -> None:
    store = _factory(kind, tmp_path, codec=Codec(compress_above=1024))()
    big = {"text": "abc " * 5000}
    record = make_record("exec-z", next_seq=2, output=big)
    await store.save_state_async(make_record("exec-z"))
    await store.append_step_async(make_record("exec-z", next_seq=1), make_step("exec-z", 0, {"small": 1}))
    await store.append_step_async(record, make_step("exec-z", 1, big))
    assert await store.load_state_async("exec-z") == record
    steps = await store.load_steps_async("exec-z")
    assert [s.result for s in steps] == [{"small": 1}, big]
    if kind == "sqlite-full":
        with sqlite3.connect(tmp_path / "durable.db") as raw:
            codecs = [r[0] for r in raw.execute("SELECT codec FROM durable_executions_steps ORDER BY seq")]
            size = raw.execute(
                "SELECT length(payload) FROM durable_executions_steps WHERE seq = 1"
            ).fetchone()[0]
        assert codecs == ["json", "json+zstd"]
    else:
        lines = (tmp_path / "states" / "exec-z" / JOURNAL_FILE).read_bytes().splitlines()
        assert json.loads(lines[0])["seq"] == 0
        assert json.loads(lines[1])["codec"] == "json+zstd"
        size = len(lines[1])
    assert size < len(json.dumps(big)) / 10
    store.close()
    plain = _factory(kind, tmp_path)()  # compressed records stay readable without compression
    assert [s.result for s in await plain.load_steps_async("exec-z")] == [{"small": 1}, big]
    plain.close()


# ---- storage_from_url ---------------------------------------------------------------------------


def test_storage_from_url_memory() -> None:
    store = storage_from_url("memory://")
    assert isinstance(store, InMemoryDurableStorage)
    store.save_state(make_record("exec-url"))
    assert store.load_state("exec-url") is not None


def test_storage_from_url_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = storage_from_url(f"file://{tmp_path / 'abs'}")
    assert isinstance(absolute, FileDurableStorage) and absolute.path == tmp_path / "abs"
    absolute.save_state(make_record("exec-url"))
    assert (tmp_path / "abs" / "exec-url" / "head.json").is_file()
    monkeypatch.chdir(tmp_path)
    relative = storage_from_url("file://./rel/states?fsync=false")
    assert isinstance(relative, FileDurableStorage) and relative.fsync is False
    relative.save_state(make_record("exec-url"))
    assert (tmp_path / "rel" / "states" / "exec-url" / "head.json").is_file()


def test_storage_from_url_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = storage_from_url(f"sqlite:///{tmp_path / 'abs.db'}?table=runs&synchronous=NORMAL")
    assert isinstance(absolute, SQLiteDurableStorage)
    assert absolute.db_path == str(tmp_path / "abs.db")
    assert (absolute.table_name, absolute.synchronous) == ("runs", "NORMAL")
    absolute.save_state(make_record("exec-url"))
    with sqlite3.connect(tmp_path / "abs.db") as raw:
        assert raw.execute("SELECT execution_id FROM runs").fetchall() == [("exec-url",)]
    absolute.close()
    monkeypatch.chdir(tmp_path)
    relative = storage_from_url("sqlite:///rel.db", codec=Codec(compress_above=10))
    assert isinstance(relative, SQLiteDurableStorage) and relative.db_path == "rel.db"
    relative.save_state(make_record("exec-url"))
    relative.close()
    assert (tmp_path / "rel.db").is_file()
    with pytest.raises(UserError, match="synchronous"):
        storage_from_url("sqlite:///x.db?synchronous=OFF")
    with pytest.raises(UserError, match="colour"):
        storage_from_url("sqlite:///x.db?colour=red")
    with pytest.raises(UserError, match="Invalid table name"):
        storage_from_url("sqlite:///x.db?table=a-b")


@pytest.mark.parametrize("url", ["mongodb://h/db", "s3://bucket", "just-a-path"])
def test_storage_from_url_unknown_scheme_lists_supported(url: str) -> None:
    with pytest.raises(UserError) as info:
        storage_from_url(url)
    for scheme in ("memory://", "file://", "sqlite://", "redis://", "postgresql://"):
        assert scheme in str(info.value)


# ---- file backend -------------------------------------------------------------------------------


async def test_file_torn_trailing_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    await append_n(store, "exec-torn", 2)
    journal = tmp_path / "states" / "exec-torn" / JOURNAL_FILE
    intact = journal.read_bytes()
    with open(journal, "ab") as fh:  # a crash in the middle of the third append
        fh.write(b'{"execution_id":"exec-torn","seq":2,"kind":"tool_c')
    for reader in (store, FileDurableStorage(tmp_path / "states")):
        assert [s.seq for s in await reader.load_steps_async("exec-torn")] == [0, 1]
    # Both an instance that cached the journal and a fresh one repair it before appending.
    with open(journal, "ab") as fh:
        fh.write(b'{"torn')
    fresh = FileDurableStorage(tmp_path / "states")
    await append_n(fresh, "exec-torn", 1, start=2)
    assert journal.read_bytes().startswith(intact)
    with open(journal, "ab") as fh:
        fh.write(b'{"torn again')
    await append_n(fresh, "exec-torn", 1, start=3)
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
    assert [json.loads(line)["seq"] for line in lines[:-1]] == [0, 1, 2, 3]
    assert [s.seq for s in await store.load_steps_async("exec-torn")] == [0, 1, 2, 3]


async def test_file_complete_but_undecodable_line_is_corrupt(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    await append_n(store, "exec-dmg", 3)
    journal = tmp_path / "states" / "exec-dmg" / JOURNAL_FILE
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b'{"execution_id": "exec-dmg", "seq": 1, "kind": "nonsense"}'
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptRecordError) as info:
        await store.load_steps_async("exec-dmg")
    assert info.value.execution_id == "exec-dmg" and info.value.step == "1"
    assert "exec-dmg" in str(info.value) and "journal entry 1" in str(info.value)


@pytest.mark.parametrize("bad", ["", ".", "..", "../escape", "a/b", "a\\b", "x\x00y", "sp ace", "é"])
def test_file_rejects_unsafe_execution_ids(tmp_path: Path, bad: str) -> None:
    store = FileDurableStorage(tmp_path / "states")
    with pytest.raises(UserError, match="Invalid execution id"):
        store.save_state(make_record(bad))
    with pytest.raises(UserError):
        store.load_state(bad)
    with pytest.raises(UserError):
        store.delete_state(bad)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "states").exists()  # nothing was created


def test_file_accepts_id_characters(tmp_path: Path) -> None:
    store = FileDurableStorage(tmp_path / "states")
    for good in ("20261122135501-a1b2c3d4", "tenant:run_1.v2", "A-Z.0_9"):
        store.save_state(make_record(good))
        store.append_step(make_record(good, next_seq=1), make_step(good, 0))
        assert store.load_state(good) is not None
    assert store.get_stats()["total_executions"] == 3


# ---- sqlite backend -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["x; DROP TABLE y", "", "1abc", "a-b", "t" * 64, 'q"uote'])
def test_sqlite_rejects_bad_table_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError, match="Invalid table name"):
        SQLiteDurableStorage(tmp_path / "t.db", table_name=bad)


def test_sqlite_validates_options(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="synchronous"):
        SQLiteDurableStorage(tmp_path / "t.db", synchronous="OFF")
    with pytest.raises(UserError, match="busy_timeout_ms"):
        SQLiteDurableStorage(tmp_path / "t.db", busy_timeout_ms=-1)
    with pytest.raises(UserError, match="InMemoryDurableStorage"):
        SQLiteDurableStorage(":memory:")


def test_sqlite_tables_are_separate_and_pragmas_apply(tmp_path: Path) -> None:
    a = SQLiteDurableStorage(tmp_path / "t.db", table_name="runs_a")
    b = SQLiteDurableStorage(tmp_path / "t.db", table_name="runs_b", synchronous="NORMAL")
    a.save_state(make_record("exec-1"))
    assert b.load_state("exec-1") is None and a.load_state("exec-1") is not None
    with b._pool.connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with a._pool.connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    a.close()
    b.close()


def test_sqlite_refuses_newer_database_layout(tmp_path: Path) -> None:
    created = SQLiteDurableStorage(tmp_path / "t.db")
    created.save_state(make_record("exec-1"))  # the first write creates the file and its tables
    created.close()
    with sqlite3.connect(tmp_path / "t.db") as raw:
        raw.execute(
            "UPDATE durable_executions_meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    newer = SQLiteDurableStorage(tmp_path / "t.db")  # opening is lazy: the first use refuses it
    with pytest.raises(IncompatibleSchemaError) as info:
        newer.load_state("exec-1")
    assert info.value.found == SCHEMA_VERSION + 1


def test_sqlite_close_then_reuse(tmp_path: Path) -> None:
    store = SQLiteDurableStorage(tmp_path / "t.db")
    store.save_state(make_record("exec-1"))
    store.close()
    store.close()
    assert store.load_state("exec-1") is not None


def test_sqlite_many_processes_append_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    starter = SQLiteDurableStorage(db)  # create the executions (and the file) first, as a run would
    for n in range(4):
        starter.save_state(ExecutionRecord(execution_id=f"proc-{n}"))
    starter.close()
    script = textwrap.dedent(
        """
        import sys
        from perdure.records import ExecutionRecord, StepKind, StepRecord
        from perdure.storage import SQLiteDurableStorage

        db, worker = sys.argv[1], int(sys.argv[2])
        store = SQLiteDurableStorage(db)
        eid = f"proc-{worker}"
        for seq in range(50):
            head = ExecutionRecord(execution_id=eid, next_seq=seq + 1, step_index=seq)
            step = StepRecord(execution_id=eid, seq=seq, kind=StepKind.TOOL_CALL, name="tool:t",
                              key=f"tool:{worker}-{seq}", result={"worker": worker, "seq": seq})
            store.append_step(head, step)
        store.close()
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(db), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        )
        for n in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    store = SQLiteDurableStorage(db)
    for n in range(4):
        steps = store.load_steps(f"proc-{n}")
        assert [s.seq for s in steps] == list(range(50))
        assert all(s.result == {"worker": n, "seq": s.seq} for s in steps)
        head = store.load_state(f"proc-{n}")
        assert head is not None and head.next_seq == 50
    assert store.get_stats()["total_executions"] == 4
    store.close()


def test_sqlite_locked_database_is_storage_unavailable(tmp_path: Path) -> None:
    store = SQLiteDurableStorage(tmp_path / "t.db", busy_timeout_ms=50)
    store.save_state(make_record("exec-1"))
    blocker = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StorageUnavailableError) as info:
            store.append_step(make_record("exec-1", next_seq=1), make_step("exec-1", 0))
        assert info.value.backend == "sqlite" and info.value.execution_id == "exec-1"
        assert "locked" in info.value.detail
        assert store.load_state("exec-1") is not None  # WAL readers are not blocked
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.append_step(make_record("exec-1", next_seq=1), make_step("exec-1", 0))
    assert len(store.load_steps("exec-1")) == 1
    store.close()
