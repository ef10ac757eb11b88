"""PostgreSQL backend: URL parsing, layout versioning, indexes, atomicity, concurrency, server faults.

The contract itself is covered by the conformance suites (the "postgres" param); these tests cover
what only this backend has. They run against the real server of `support/server_postgres.py`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

import perdure.storage.postgres as pgmod
from perdure import DurableExecution, PerdureDurability
from perdure.codec import Codec
from perdure.errors import (
    ExecutionLeasedError,
    IncompatibleSchemaError,
    LeaseLostError,
    StepConflictError,
    StorageUnavailableError,
    UserError,
)
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from perdure.storage import storage_from_url
from perdure.storage.postgres import LAYOUT_VERSION, PostgresDurableStorage
from support.paths import SRC
from support.server_postgres import PostgresServer, postgres_server  # noqa: F401 - session fixture


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def _step(execution_id: str, seq: int, **fields: Any) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name=f"tool:t{seq}",
        key=f"tool:call-{seq}",
        result=fields.pop("result", {"seq": seq}),
        **fields,
    )


def _head(execution_id: str, seq: int, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, next_seq=seq + 1, step_index=seq, **fields)


@pytest.fixture
def prefix() -> str:
    return _prefix()


@pytest.fixture
def store(postgres_dsn: str, prefix: str) -> Iterator[PostgresDurableStorage]:
    storage = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    yield storage
    storage.close()


@pytest.fixture
def db(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection for looking at (and damaging) the tables behind the storage's back."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


def _scalar(db: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = db.execute(sql, params).fetchone()
    return None if row is None else row[0]


def _run_procs(script: str, args: list[list[str]], timeout: float = 60) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *a],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for a in args
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err.decode()
            outputs.append(out.decode())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


# ---- construction and URLs (no server needed) ---------------------------------------------------


def test_from_url_takes_table_prefix_out_and_keeps_libpq_params() -> None:
    store = PostgresDurableStorage.from_url(
        "postgresql://ann:s3cret@db.example:6543/app?sslmode=disable&table_prefix=myapp_"
        "&options=-c%20statement_timeout%3D5000"
    )
    assert store.table_prefix == "myapp_"
    assert store.dsn == (
        "postgresql://ann:s3cret@db.example:6543/app?sslmode=disable&options=-c%20statement_timeout%3D5000"
    )
    info = psycopg.conninfo.conninfo_to_dict(store.dsn)
    assert info["options"] == "-c statement_timeout=5000" and info["sslmode"] == "disable"
    assert "s3cret" not in repr(store) and "db.example:6543/app" in repr(store)


def test_from_url_variants_and_overrides() -> None:
    plain = PostgresDurableStorage.from_url("postgres://localhost/db")
    assert plain.table_prefix == "perdure_" and plain.dsn == "postgres://localhost/db"
    timed = PostgresDurableStorage.from_url("postgresql://h/db?connect_timeout=3&table_prefix=a_")
    assert timed.connect_timeout == 3.0 and "connect_timeout=3" in timed.dsn
    codec = Codec(compress_above=10)
    built = storage_from_url("postgresql://h/db?table_prefix=a_", table_prefix="b_", codec=codec, max_size=3)
    assert isinstance(built, PostgresDurableStorage)
    assert built.table_prefix == "b_" and built.codec is codec and built.max_size == 3


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://h/db", "Not a PostgreSQL URL"),
        ("postgresql://h/db?bogus_param=1", "Invalid PostgreSQL connection string"),
        ("postgresql://h/db?connect_timeout=soon", "connect_timeout must be a number"),
        ("postgresql://h/db?table_prefix=x;drop", "Invalid table_prefix"),
    ],
)
def test_from_url_errors(url: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        PostgresDurableStorage.from_url(url)


@pytest.mark.parametrize("bad", ["x; DROP TABLE y", "1abc_", "a-b_", 'q"uote', "é_", "p" * 47, None])
def test_table_prefix_is_validated(bad: Any) -> None:
    with pytest.raises(UserError, match="table_prefix"):
        PostgresDurableStorage("postgresql://h/db", table_prefix=bad)


def test_prefix_limits_and_options() -> None:
    longest = "p" * 46  # `<prefix>heads_updated_idx` is exactly 63 characters
    assert PostgresDurableStorage("postgresql://h/db", table_prefix=longest).table_prefix == longest
    assert PostgresDurableStorage("postgresql://h/db", table_prefix="").table_prefix == ""
    with pytest.raises(UserError, match="min_size"):
        PostgresDurableStorage("postgresql://h/db", min_size=-1)
    with pytest.raises(UserError, match="max_size"):
        PostgresDurableStorage("postgresql://h/db", min_size=5, max_size=2)
    with pytest.raises(UserError, match="connect_timeout"):
        PostgresDurableStorage("postgresql://h/db", connect_timeout=0)
    with pytest.raises(UserError, match="DSN"):
        PostgresDurableStorage("")


def test_unreachable_server_is_storage_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    store = PostgresDurableStorage(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        store.append_step(_head("exec-u", 0), _step("exec-u", 0))
    assert time.monotonic() - started < 10
    assert info.value.backend == "postgresql" and info.value.execution_id == "exec-u"
    assert f"127.0.0.1:{port}/postgres" in info.value.detail and "refused" in info.value.detail.lower()
    store.close()


# ---- layout versioning ----------------------------------------------------------------------------


def _tables(db: psycopg.Connection[Any], prefix: str) -> set[str]:
    rows = db.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{prefix}%",))
    return {r[0] for r in rows}


def test_tables_created_on_first_use_with_layout_version(
    store: PostgresDurableStorage, db: psycopg.Connection[Any], prefix: str
) -> None:
    assert _tables(db, prefix) == set()  # constructing does not touch the database
    assert store.load_state("nothing") is None
    assert _tables(db, prefix) == {
        *(f"{prefix}heads", f"{prefix}steps", f"{prefix}meta", f"{prefix}tombstones", f"{prefix}cancels"),
    }
    version = _scalar(db, f"SELECT value FROM {prefix}meta WHERE key = 'layout_version'")
    assert int(version) == LAYOUT_VERSION


def test_newer_layout_is_refused_and_left_unchanged(
    store: PostgresDurableStorage, db: psycopg.Connection[Any], prefix: str, postgres_dsn: str
) -> None:
    store.save_state(ExecutionRecord(execution_id="exec-1"))
    store.append_step(_head("exec-1", 0), _step("exec-1", 0))
    db.execute(f"UPDATE {prefix}meta SET value = %s WHERE key = 'layout_version'", (str(LAYOUT_VERSION + 1),))
    newer = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    try:
        for _ in range(2):  # refused on every call, not only the first
            with pytest.raises(IncompatibleSchemaError) as info:
                newer.load_state("exec-1")
        err = info.value
        assert err.found == LAYOUT_VERSION + 1 and err.supported == LAYOUT_VERSION
        assert err.execution_id is None
        assert f"{prefix}meta" in str(err) and "127.0.0.1" in str(err) and "/postgres" in str(err)
        assert "Upgrade perdure" in str(err)
    finally:
        newer.close()
    assert int(_scalar(db, f"SELECT value FROM {prefix}meta")) == LAYOUT_VERSION + 1
    assert _scalar(db, f"SELECT count(*) FROM {prefix}steps") == 1


def test_migrations_run_in_order_from_the_stored_version(
    store: PostgresDurableStorage,
    db: psycopg.Connection[Any],
    prefix: str,
    postgres_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.save_state(ExecutionRecord(execution_id="exec-v1"))  # the current layout in place
    applied: list[int] = []
    new = LAYOUT_VERSION + 1

    def v_next(names: Any) -> list[str]:
        applied.append(new)
        return [f"ALTER TABLE {names.heads} ADD COLUMN note TEXT"]

    monkeypatch.setattr(pgmod, "_MIGRATIONS", (*pgmod._MIGRATIONS, (new, v_next)))
    monkeypatch.setattr(pgmod, "LAYOUT_VERSION", new)
    upgraded = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    again = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    try:
        assert upgraded.load_state("exec-v1") is not None
        assert again.load_state("exec-v1") is not None
    finally:
        upgraded.close()
        again.close()
    assert applied == [new]  # only the missing step ran, and only once
    assert int(_scalar(db, f"SELECT value FROM {prefix}meta")) == new
    cols = {
        r[0]
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (f"{prefix}heads",)
        )
    }
    assert "note" in cols
    monkeypatch.undo()
    old = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    with pytest.raises(IncompatibleSchemaError):
        old.load_state("exec-v1")
    old.close()


def test_processes_create_the_schema_and_append_concurrently(
    postgres_dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # Every process starts on an empty database at the same moment (a file barrier, after the slow
    # imports): the advisory lock must serialize the layout creation, then the appends interleave.
    prefix, workers = _prefix(), 3
    script = """
        import sys, time
        from pathlib import Path
        from perdure.records import ExecutionRecord, StepKind, StepRecord
        from perdure.storage.postgres import PostgresDurableStorage

        dsn, prefix, worker, gate, n = sys.argv[1:6]
        worker, gate, n = int(worker), Path(gate), int(n)
        store = PostgresDurableStorage(dsn, table_prefix=prefix)
        (gate / f"ready-{worker}").touch()
        while len(list(gate.glob("ready-*"))) < n:
            time.sleep(0.005)
        eid = f"proc-{worker}"
        store.save_state(ExecutionRecord(execution_id=eid))
        for seq in range(30):
            head = ExecutionRecord(execution_id=eid, next_seq=seq + 1, step_index=seq)
            step = StepRecord(execution_id=eid, seq=seq, kind=StepKind.TOOL_CALL, name="tool:t",
                              key=f"tool:{worker}-{seq}", result={"worker": worker, "seq": seq})
            store.append_step(head, step)
        store.close()
    """
    _run_procs(script, [[postgres_dsn, prefix, str(n), str(tmp_path), str(workers)] for n in range(workers)])
    assert [r[0] for r in db.execute(f"SELECT value FROM {prefix}meta")] == [str(LAYOUT_VERSION)]
    store = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    for n in range(workers):
        steps = store.load_steps(f"proc-{n}")
        assert [s.seq for s in steps] == list(range(30))
        assert all(s.result == {"worker": n, "seq": s.seq} for s in steps)
        head = store.load_state(f"proc-{n}")
        assert head is not None and head.next_seq == 30
    assert store.get_stats()["total_executions"] == workers
    store.close()


# ---- indexes --------------------------------------------------------------------------------------


def test_indexes_exist_and_serve_list_stats_and_cleanup(
    store: PostgresDurableStorage, db: psycopg.Connection[Any], prefix: str
) -> None:
    store.save_state(ExecutionRecord(execution_id="seed"))
    indexes = dict(
        db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE %s", (f"{prefix}%",))
    )
    assert "(updated_at DESC, execution_id DESC)" in indexes[f"{prefix}heads_updated_idx"]
    assert "(status, updated_at DESC, execution_id DESC)" in indexes[f"{prefix}heads_status_idx"]
    assert "(execution_id, seq)" in indexes[f"{prefix}steps_pkey"]
    # Enough rows that a sequential scan would lose; 'paused' is rare, as in real deployments.
    db.execute(
        f"INSERT INTO {prefix}heads (execution_id, status, updated_at, created_at, codec, payload) "
        f"SELECT 'e' || g, CASE WHEN g % 200 = 0 THEN 'paused' ELSE 'completed' END, "
        f"now() - g * interval '1 minute', now(), 'json', convert_to(repeat('x', 300), 'UTF8') "
        f"FROM generate_series(1, 20000) g"
    )
    db.execute(f"VACUUM ANALYZE {prefix}heads")

    def plan(sql: str, params: Any) -> str:
        return "\n".join(r[0] for r in db.execute("EXPLAIN " + sql, params))

    assert f"Index Scan using {prefix}heads_updated_idx" in plan(store._sql.list_all, (20,))
    assert f"using {prefix}heads_status_idx" in plan(store._sql.list_status, ("paused", 20))
    assert f"Index Only Scan using {prefix}heads_status_idx" in plan(store._sql.stats, ())
    cutoff = datetime.now(UTC) - timedelta(days=13)
    for keep in ([], ["paused"]):  # a batch of cleanup, and the count of its progress bar
        params = {"cutoff": cutoff, "keep": keep, "limit": 500}
        assert f"{prefix}heads_updated_idx" in plan(store._sql.cleanup, params)
        counted = plan(store._sql.count_old, params)  # either index answers it, never a table scan
        assert "Index" in counted and "Seq Scan" not in counted, counted
    # And the answers match.
    assert [r.execution_id for r in store.list_executions(limit=1)] == ["seed"]
    assert store.get_stats()["by_status"] == {
        "success": 1,
        "paused": 100,
        "failed": 0,
        "completed": 19900,
        "cancelled": 0,
    }


def test_list_page_queries_use_their_indexes(
    store: PostgresDurableStorage, db: psycopg.Connection[Any], prefix: str
) -> None:
    """The operator's list page: each query reads an index range, never the whole table.

    Catches an index regression (a dropped or reordered index, a filter written so that the planner
    can no longer use it) that would still give right answers, only slowly on a large table.
    """
    from perdure.storage import ExecutionQuery
    from perdure.storage._query import activity_bounds, encode_cursor

    store.save_state(ExecutionRecord(execution_id="seed"))
    db.execute(
        f"INSERT INTO {prefix}heads (execution_id, status, updated_at, created_at, codec, payload, name, "
        f"search) SELECT 'e' || g, CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'completed' END, "
        f"now() - g * interval '10 seconds', now() - g * interval '11 seconds', 'json', "
        f"convert_to(repeat('x', 300), 'UTF8'), 'agent-' || (g % 20), "
        f"'e' || g || chr(31) || 'agent-' || (g % 20) || chr(31) || "
        f"CASE WHEN g % 10 = 0 THEN 'httpx.readtimeout: timed out' ELSE '' END "
        f"FROM generate_series(1, 30000) g"
    )
    db.execute(f"VACUUM ANALYZE {prefix}heads")
    queries = store._queries
    h = f"{prefix}heads"

    def plan(sql: str, params: Any) -> str:
        return "\n".join(r[0] for r in db.execute("EXPLAIN " + sql, params))

    def index_only(sql: str, params: Any, *indexes: str) -> str:
        text = plan(sql, params)
        assert "Seq Scan" not in text, text
        for index in indexes:
            assert f"{h}_{index}" in text, text
        return text

    first = ExecutionQuery()
    index_only(*queries.page(first), "updated_idx")
    cursor = encode_cursor(datetime.now(UTC) - timedelta(hours=2), "e720")  # rows are not decodable
    index_only(*queries.page(ExecutionQuery(cursor=cursor)), "updated_idx")
    index_only(*queries.page(ExecutionQuery(statuses=frozenset({"failed"}))), "status_idx")
    index_only(*queries.page(ExecutionQuery(statuses=frozenset({"failed", "paused"}))), "status_idx")
    index_only(*queries.page(ExecutionQuery(name="agent-7")), "name_idx")
    index_only(*queries.count(ExecutionQuery(statuses=frozenset({"failed"}))), "status_idx")
    since = datetime.now(UTC) - timedelta(hours=1)
    index_only(*queries.activity(activity_bounds(since, 600)), "created_idx", "status_idx")
    if queries.search_index is not None:  # pg_trgm is available: a rare text is an index lookup
        index_only(*queries.page(ExecutionQuery(search="e12345")), "search_trgm")
        index_only(*queries.count(ExecutionQuery(search="e12345")), "search_trgm")
    rows = db.execute(*queries.page(ExecutionQuery(search="E12345"))).fetchall()
    assert [row[0] for row in rows] == ["e12345"]


def test_search_index_is_pg_trgm_when_the_extension_can_be_created(store: PostgresDurableStorage) -> None:
    store.save_state(ExecutionRecord(execution_id="seed"))
    assert store._queries.search_index is not None  # this test server ships pg_trgm (contrib)


def test_search_without_pg_trgm_falls_back_to_reading_rows(
    postgres_dsn: str, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the extension cannot be created: one warning, no index, the same answers."""
    from perdure.storage import ExecutionQuery

    monkeypatch.setattr(
        pgmod, "search_index_statements", lambda n: ["CREATE EXTENSION IF NOT EXISTS perdure_no_such_ext"]
    )
    monkeypatch.setattr(pgmod, "_trgm_warned", False)
    store = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)
    try:
        store.save_state(ExecutionRecord(execution_id="rare-0001ff"))
        assert store._queries.search_index is None
        assert [r.execution_id for r in store.query_executions(ExecutionQuery(search="01F")).items] == [
            "rare-0001ff"
        ]
        assert sum("pg_trgm" in r.getMessage() for r in caplog.records) == 1
    finally:
        store.close()


# ---- atomicity and fencing --------------------------------------------------------------------------


def _snapshot(db: psycopg.Connection[Any], prefix: str, execution_id: str) -> tuple[Any, ...]:
    head = db.execute(f"SELECT * FROM {prefix}heads WHERE execution_id = %s", (execution_id,)).fetchone()
    steps = db.execute(
        f"SELECT * FROM {prefix}steps WHERE execution_id = %s ORDER BY seq", (execution_id,)
    ).fetchall()
    return head, steps


def test_conflict_and_fence_refusals_change_nothing(
    store: PostgresDurableStorage, db: psycopg.Connection[Any], prefix: str
) -> None:
    store.save_state(ExecutionRecord(execution_id="exec-a"))
    store.append_step(_head("exec-a", 0), _step("exec-a", 0))
    store.append_step(_head("exec-a", 1), _step("exec-a", 1))
    before = _snapshot(db, prefix, "exec-a")
    with pytest.raises(StepConflictError):
        store.append_step(_head("exec-a", 9, status=ExecutionStatus.FAILED), _step("exec-a", 1, result="x"))
    assert _snapshot(db, prefix, "exec-a") == before
    store.acquire_lease("exec-a", "w1", 30)
    leased = _snapshot(db, prefix, "exec-a")
    stale = _head("exec-a", 2, lease_owner="w0", step_name="stale")
    with pytest.raises(LeaseLostError) as info:
        store.append_step(stale, _step("exec-a", 2))
    assert info.value.holder == "w1" and info.value.owner == "w0"
    with pytest.raises(LeaseLostError):
        store.save_state(stale)
    assert _snapshot(db, prefix, "exec-a") == leased
    # The holder writes; the lease columns stay as the lease methods set them.
    store.append_step(_head("exec-a", 2, lease_owner="w1"), _step("exec-a", 2))
    after_head, after_steps = _snapshot(db, prefix, "exec-a")
    assert len(after_steps) == 3 and after_head[4:6] == leased[0][4:6]


def test_a_batch_is_all_or_nothing_and_names_the_journaled_seq(
    store: PostgresDurableStorage, db: psycopg.Connection[Any], prefix: str
) -> None:
    store.save_state(ExecutionRecord(execution_id="exec-b"))
    steps = [_step("exec-b", seq, result={"seq": seq, "blob": b"\x00\xff".hex() * seq}) for seq in range(300)]
    store.append_steps(_head("exec-b", 299), steps)
    assert store.load_steps("exec-b") == steps
    assert _scalar(db, f"SELECT count(*) FROM {prefix}steps WHERE execution_id = 'exec-b'") == 300
    store.append_step(_head("exec-b", 301), _step("exec-b", 301))  # PostgreSQL stores the gap at 300
    before = _snapshot(db, prefix, "exec-b")
    with pytest.raises(StepConflictError) as info:  # seqs 300..302: 301 is journaled
        store.append_steps(_head("exec-b", 302), [_step("exec-b", seq) for seq in (300, 301, 302)])
    assert (info.value.execution_id, info.value.seq) == ("exec-b", 301)
    assert _snapshot(db, prefix, "exec-b") == before  # seq 300 was not written either


def test_zstd_codec_is_stored_with_the_row(
    postgres_dsn: str, prefix: str, db: psycopg.Connection[Any]
) -> None:
    store = PostgresDurableStorage(postgres_dsn, table_prefix=prefix, codec=Codec(compress_above=256))
    big = {"text": "abc" * 10_000}
    store.save_state(ExecutionRecord(execution_id="exec-z"))
    store.append_step(_head("exec-z", 0, output=big), _step("exec-z", 0, result=big))
    codec, size = db.execute(f"SELECT codec, length(payload) FROM {prefix}steps").fetchone()  # type: ignore[misc]
    assert codec == "json+zstd" and size < 2_000
    plain = PostgresDurableStorage(postgres_dsn, table_prefix=prefix)  # reading needs no codec setting
    assert plain.load_steps("exec-z")[0].result == big
    head = plain.load_state("exec-z")
    assert head is not None and head.output == big
    store.close()
    plain.close()


# ---- concurrency ------------------------------------------------------------------------------------


def test_racing_acquires_have_exactly_one_winner(postgres_dsn: str, prefix: str) -> None:
    stores = [PostgresDurableStorage(postgres_dsn, table_prefix=prefix) for _ in range(4)]
    ids = [f"exec-{n}" for n in range(15)]
    for eid in ids:
        stores[0].save_state(ExecutionRecord(execution_id=eid))
    wins: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(stores), timeout=30)

    def worker(n: int) -> None:
        try:
            for eid in ids:
                barrier.wait()  # all four ask for the same lease at the same moment
                try:
                    stores[n].acquire_lease(eid, f"w{n}", 30)
                except ExecutionLeasedError:
                    continue
                with lock:
                    wins[eid] += 1
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert wins == Counter(dict.fromkeys(ids, 1))
    for s in stores:
        s.close()


def test_threads_append_to_distinct_executions_through_one_storage(store: PostgresDurableStorage) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:  # each thread runs the sync twins on its own loop, with its own pool
        try:
            store.save_state(ExecutionRecord(execution_id=f"thr-{n}"))
            for seq in range(25):
                store.append_step(_head(f"thr-{n}", seq), _step(f"thr-{n}", seq))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(store._pools) >= 4
    for n in range(4):
        assert [s.seq for s in store.load_steps(f"thr-{n}")] == list(range(25))
    store.close()  # closes pools of finished threads' loops without waiting for them
    assert store._pools == {}
    assert store.get_stats()["total_executions"] == 4  # usable again after close


async def test_concurrent_appends_in_one_loop(store: PostgresDurableStorage) -> None:
    async def run(n: int) -> None:
        await store.save_state_async(ExecutionRecord(execution_id=f"co-{n}"))
        for seq in range(20):
            await store.append_step_async(_head(f"co-{n}", seq), _step(f"co-{n}", seq))

    await asyncio.gather(*(run(n) for n in range(8)))
    for n in range(8):
        assert len(await store.load_steps_async(f"co-{n}")) == 20
    await store.close_async()


def test_storage_dropped_without_close_releases_its_connections(
    postgres_dsn: str, prefix: str, db: psycopg.Connection[Any]
) -> None:
    app = f"perdure-drop-{uuid.uuid4().hex[:8]}"
    count = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
    store = PostgresDurableStorage(f"{postgres_dsn}?application_name={app}", table_prefix=prefix, min_size=2)
    store.save_state(ExecutionRecord(execution_id="exec-d"))
    assert _scalar(db, count) >= 1
    del store
    deadline = time.monotonic() + 5
    while _scalar(db, count) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _scalar(db, count) == 0


def test_loop_ending_without_close_does_not_hang(postgres_dsn: str, prefix: str) -> None:
    # psycopg_pool workers swallow a cancellation that lands while they connect; asyncio.run()
    # then waited for them forever. The storage's pool honours it.
    script = """
        import asyncio, sys
        from perdure.records import ExecutionRecord
        from perdure.storage.postgres import PostgresDurableStorage

        async def main() -> None:
            store = PostgresDurableStorage(sys.argv[1], table_prefix=sys.argv[2])
            await store.save_state_async(ExecutionRecord(execution_id="x"))
            await asyncio.gather(*(store.load_state_async("x") for _ in range(6)))

        for _ in range(8):
            asyncio.run(main())
        print("done")
    """
    assert _run_procs(script, [[postgres_dsn, prefix]], timeout=45) == ["done\n"]


# ---- server fault in the middle of an agent run -----------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        if isinstance(seen, BaseExceptionGroup):
            for inner in seen.exceptions:
                yield from _causes(inner)
        seen = seen.__cause__ or seen.__context__


def test_idle_connections_broken_by_a_restart_are_replaced_silently(
    postgres_server: PostgresServer,  # noqa: F811 - the fixture imported above
    prefix: str,
) -> None:
    store = PostgresDurableStorage(postgres_server.dsn, table_prefix=prefix, min_size=2)
    store.save_state(ExecutionRecord(execution_id="exec-r"))
    store.append_step(_head("exec-r", 0), _step("exec-r", 0))
    try:
        postgres_server.stop()
    finally:
        postgres_server.start()
    # Every pooled connection died with the old server; none of them reaches the caller.
    store.append_step(_head("exec-r", 1), _step("exec-r", 1))
    assert [s.seq for s in store.load_steps("exec-r")] == [0, 1]
    store.close()


async def test_server_stops_mid_run_then_execution_resumes(
    postgres_server: PostgresServer,  # noqa: F811 - the fixture imported above
    prefix: str,
) -> None:
    store = PostgresDurableStorage(postgres_server.dsn, table_prefix=prefix, connect_timeout=0.5)
    calls: Counter[str] = Counter()
    model_calls: list[int] = []
    stop_server = {"armed": True}

    def fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = [
            p.tool_name
            for m in messages
            if isinstance(m, ModelRequest)
            for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]
        model_calls.append(len(returned))
        plan = ["lookup", "charge", "notify"]
        if len(returned) < len(plan):
            return ModelResponse(parts=[ToolCallPart(plan[len(returned)], {"n": len(returned)})])
        return ModelResponse(parts=[TextPart(f"done: {','.join(returned)}")])

    agent = PydanticAgent(FunctionModel(fn), name="pg-fault", capabilities=[PerdureDurability()])

    @agent.tool_plain
    def lookup(n: int) -> str:
        calls["lookup"] += 1
        return "found"

    @agent.tool_plain
    def charge(n: int) -> str:
        calls["charge"] += 1
        if stop_server["armed"]:
            stop_server["armed"] = False
            postgres_server.stop()  # the database goes away while this tool runs
        return "charged"

    @agent.tool_plain
    def notify(n: int) -> str:
        calls["notify"] += 1
        return "sent"

    journaled: list[str] = []
    durable = DurableExecution(store, auto_cleanup=False)
    try:
        with pytest.raises(Exception) as info:
            await durable.run_agent_async(
                agent, "charge the customer", on_unit=lambda s, _: journaled.append(s.key)
            )
        unavailable = [e for e in _causes(info.value) if isinstance(e, StorageUnavailableError)]
        assert unavailable, f"expected StorageUnavailableError in the chain of {info.value!r}"
        assert unavailable[0].backend == "postgresql"
        assert unavailable[0].execution_id == durable.execution_id
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
    assert calls == Counter(lookup=1, charge=1)
    assert len(journaled) == 3  # model request, lookup, model request; charge's result was not written

    # The same storage object recovers: its pools reconnect to the restarted server.
    steps = await store.load_steps_async(durable.execution_id)
    assert [s.key for s in steps] == journaled
    assert [s.kind for s in steps] == [StepKind.MODEL_REQUEST, StepKind.TOOL_CALL, StepKind.MODEL_REQUEST]

    attempt = await durable.resume_agent_async(agent)
    assert attempt.output == "done: lookup,charge,notify"
    # Journaled units are not run again; charge ran twice because its result never reached the journal.
    assert calls == Counter(lookup=1, charge=2, notify=1)
    assert model_calls == [0, 1, 2, 3]
    head = await store.load_state_async(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.COMPLETED
    assert len(await store.load_steps_async(durable.execution_id)) == 7
    await store.close_async()
