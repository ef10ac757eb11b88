"""The storage contract against every built-in backend, plus checks that are about one backend.

The contract's properties are `perdure.testing`'s conformance kit (the same checks a custom backend
runs, see the README's "Writing a custom backend"): `test_storage_contract` runs every property but
the lease ones (`test_lease_conformance.py`) against the six backends of `support.storages.BACKENDS`,
one test id per property and backend. Each property gets a fresh, empty store (`fresh_storage`); the
hooks let the kit damage a head (`put_raw_head`, below) and open a store twice (`reopen_builtin`, of
`support.conformance`, shared with the lease suite).
The tests after it cover what is specific to one backend: compression, URLs, the file layout, SQLite
options and processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from perdure.codec import Codec
from perdure.errors import CorruptRecordError, IncompatibleSchemaError, StorageUnavailableError, UserError
from perdure.records import SCHEMA_VERSION, ExecutionRecord, StepKind, StepRecord
from perdure.storage import (
    DurableExecutionStorage,
    FileDurableStorage,
    InMemoryDurableStorage,
    SQLiteDurableStorage,
    storage_from_url,
)
from perdure.storage.file import JOURNAL_FILE
from perdure.testing import pytest_suite
from support.conformance import IN_PROCESS_ONLY, reopen_builtin
from support.paths import SRC
from support.storages import Factory, make_factory

# ---- the contract, through the conformance kit ----------------------------------------------------


def put_raw_head(store: DurableExecutionStorage, execution_id: str, payload: bytes) -> None:
    """Store raw head bytes the way a bad disk or a bad deploy would (every built-in backend's test hook)."""
    store._put_raw_head(execution_id, payload)  # type: ignore[attr-defined]


test_storage_contract = pytest_suite(
    "fresh_storage", raw_writer=put_raw_head, reopen=reopen_builtin, skip=["lease.*"]
)

test_memory_contract = pytest_suite(
    InMemoryDurableStorage,
    raw_writer=put_raw_head,
    skip=["lease.*", *IN_PROCESS_ONLY, "cancel.seen_by_another_instance"],
)


# ---- helpers of the backend-specific tests ---------------------------------------------------------


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
            env={**os.environ, "PYTHONPATH": str(SRC)},
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
