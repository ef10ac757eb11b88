"""What one durable step costs: perdure's overhead as ratios against baselines run side by side.

Run it with ``python benchmarks/step_overhead.py`` (about a minute) or ``--quick`` (under 30 s);
``--profile`` adds a cProfile of the durable step path at the end.

Method
------
This machine is shared and small, so absolute times drift from minute to minute. The script
therefore never compares against a number measured at another time: every figure with a goal is a
*ratio* between perdure and a baseline measured in the same process, interleaved with it, on fresh
databases in a temporary directory, all timed with ``time.perf_counter``:

* every measurement starts with warmup steps that are not timed;
* perdure and its baseline alternate in blocks, and the order of the blocks flips from one block
  (or repetition) to the next, so that drift and the WAL's periodic checkpoints hit both sides alike;
* each repetition yields one paired ratio; the table shows the median ratio over the repetitions
  and, as "spread", the smallest and largest one, which tells how much to trust the median.

The measurements:

(a) ``JournalRun.run_unit`` (one durable step: run the body, build the journal entry and the new
    head, ``append_step_async`` both in one transaction) on a fresh ``SQLiteDurableStorage``, the
    body returning a ~200-byte JSON payload, versus a raw ``sqlite3`` transaction that writes the
    same encoded step and head bytes with the backend's own SQL, table layout and pragmas
    (WAL, ``busy_timeout``, ``synchronous``), rows prepared before timing starts.
(b) A pydantic-ai agent run of 50 tool calls (a ``FunctionModel`` asks for one tool call per
    response, then answers text; the tool returns a small dict): with ``PerdureDurability`` through
    ``DurableExecution.run_agent_async`` on SQLite, versus the same agent without the capability.
(c) In one execution of 1,005 steps, the median time of steps 995-1005 over that of steps 5-15:
    1.0 means a step costs the same however long the history is (``synchronous=NORMAL``, so that
    fsync jitter does not hide CPU growth).
(d) Bytes stored for 1,000 steps that each add a 100-byte result: size of the SQLite database plus
    its WAL after ``PRAGMA wal_checkpoint(TRUNCATE)``, minus the size of an empty database; the
    size is also taken after every 250 steps to check that growth is linear. The same for
    ``FileDurableStorage`` (sum of the file sizes; ``fsync`` off, which changes no byte).

Benchmarks are not tests: the exit code is 0 even when a goal is missed; the table says MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import io
import itertools
import json
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurableOperationBackend,
    DurableOperationId,
    JournalCallableOperationBackend,
    RoleBasedOperationConfig,
)
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from perdure.codec import encode_head, encode_step
from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.durable.journal import JournalRun, UnitIdentity
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, TaskSnapshot, utcnow
from perdure.storage._query import execution_name, search_text
from perdure.storage.base import DurableExecutionStorage
from perdure.storage.memory import InMemoryDurableStorage
from perdure.storage.sqlite import SQLiteDurableStorage

TABLE = "bench"

# ---- the backend's SQL for the raw baseline ------------------------------------------------------
# The baseline runs exactly the statements and pragmas of the `SQLiteDurableStorage` under test,
# read from the instance (see `BaselineSQL.of`); this copy (the backend's SQL when this script was
# written) is only used, with a warning, if the backend stops exposing them.
_T, _S, _M = TABLE, f"{TABLE}_steps", f"{TABLE}_meta"
FALLBACK_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {_M} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {_T} (execution_id TEXT PRIMARY KEY, status TEXT, "
    f"created_at TEXT, updated_at TEXT, schema_version INTEGER, codec TEXT, payload BLOB)",
    f"CREATE INDEX IF NOT EXISTS {_T}_status_updated ON {_T} (status, updated_at)",
    f"CREATE INDEX IF NOT EXISTS {_T}_updated ON {_T} (updated_at)",
    f"CREATE TABLE IF NOT EXISTS {_S} (execution_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    f"kind TEXT, name TEXT, key TEXT, codec TEXT, payload BLOB, "
    f"PRIMARY KEY (execution_id, seq)) WITHOUT ROWID",
]
FALLBACK_UPSERT_HEAD = (
    f"INSERT INTO {_T} (execution_id, status, created_at, updated_at, schema_version, codec, payload) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(execution_id) DO UPDATE SET "
    f"status=excluded.status, created_at=excluded.created_at, updated_at=excluded.updated_at, "
    f"schema_version=excluded.schema_version, codec=excluded.codec, payload=excluded.payload"
)
FALLBACK_INSERT_STEP = (
    f"INSERT INTO {_S} (execution_id, seq, kind, name, key, codec, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class BaselineSQL:
    """Statements and pragmas of the raw baseline: the backend's own."""

    schema: list[str]
    insert_step: str
    upsert_head: str
    busy_timeout_ms: int
    synchronous: str
    warnings: list[str]

    @classmethod
    def of(cls, storage: SQLiteDurableStorage) -> BaselineSQL:
        """Read them from `storage`, falling back to this script's copy with a warning."""
        warnings: list[str] = []

        def take(attr: str, fallback: Any) -> Any:
            value = getattr(storage, attr, None)
            if value is None:
                warnings.append(f"WARNING: SQLiteDurableStorage.{attr} not found; the baseline uses a copy.")
                return fallback
            return value

        return cls(
            schema=list(take("_sql_schema", FALLBACK_SCHEMA)),
            insert_step=take("_sql_insert_step", FALLBACK_INSERT_STEP),
            upsert_head=take("_sql_upsert_head", FALLBACK_UPSERT_HEAD),
            busy_timeout_ms=int(take("busy_timeout_ms", 30000)),
            synchronous=str(take("synchronous", "FULL")),
            warnings=warnings,
        )

    def connect(self, path: Path) -> sqlite3.Connection:
        """A connection set up like `SQLiteDurableStorage._conn`, with the same schema."""
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        for sql in self.schema:
            conn.execute(sql)
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({_T})")}
        for column in ("name", "search"):  # added by the backend's migration, not its first schema
            if column not in columns:
                conn.execute(f"ALTER TABLE {_T} ADD COLUMN {column} TEXT")
        conn.execute("COMMIT")
        return conn

    def step(self, conn: sqlite3.Connection, step_row: tuple[Any, ...], head_row: tuple[Any, ...]) -> float:
        """Write one step and its head in one transaction, as the backend does; return seconds."""
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(self.insert_step, step_row)
        conn.execute(self.upsert_head, head_row)
        conn.execute("COMMIT")
        return time.perf_counter() - start


# ---- figures measured elsewhere (/work/shared/NOTES.md, "Figures to beat") ------------------------
ELSEWHERE = [
    ("Raw SQLite WAL txn (200 B journal insert + head upsert), synchronous=FULL", "0.76 ms"),
    ("Raw SQLite WAL txn (200 B journal insert + head upsert), synchronous=NORMAL", "0.09 ms"),
    ("LangGraph SqliteSaver, durability 'sync', per checkpoint", "2.4 ms (0.38 ms without)"),
    ("LangGraph SqliteSaver, 1,000 steps adding 100 B of state each", "51.65 MB"),
    ("DBOS 3.4 step on a SQLite system database (CPU-bound)", "3.3 ms"),
]


@dataclass(frozen=True)
class Settings:
    """Repetition counts; `--quick` shrinks them."""

    quick: bool
    a_reps: int
    a_steps_full: int
    a_steps_normal: int
    a_warmup: int
    b_reps: int
    b_tool_calls: int
    c_reps: int
    d_steps: int
    e_tool_calls: int

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 3, 100, 200, 10, 3, 50, 5, 1000, 200)
        return cls(False, 7, 200, 500, 20, 12, 50, 9, 1000, 200)


@dataclass
class Row:
    """One line of the result table."""

    key: str
    measure: str
    value: str
    goal: str
    verdict: str
    spread: str = ""
    detail: str = ""


@dataclass
class Report:
    """Everything the run prints at the end."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- helpers -------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """`min-max` of per-repetition ratios."""
    return f"{min(values):.2f}-{max(values):.2f}x" if len(values) > 1 else "1 rep"


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def payload_of_size(size: int, i: int = 0) -> dict[str, Any]:
    """A JSON object whose compact encoding is exactly `size` bytes."""
    base = {"i": i, "status": "ok", "text": ""}
    overhead = len(json.dumps(base, separators=(",", ":")))
    return {"i": i, "status": "ok", "text": "x" * max(size - overhead, 0)}


def ts(moment: datetime) -> str:
    """The backend's timestamp column format (fixed-width UTC text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_head(execution_id: str) -> ExecutionRecord:
    """A head as `DurableExecution` stores it when an attempt starts."""
    return ExecutionRecord(execution_id=execution_id, task=TaskSnapshot(description="benchmark"), attempts=1)


async def new_run(storage: DurableExecutionStorage, execution_id: str) -> JournalRun:
    """Save a fresh head and return the attempt that journals steps after it."""
    head = new_head(execution_id)
    await storage.save_state_async(head)
    return JournalRun(storage, head, [])


def sqlite_storage(directory: Path, name: str, synchronous: str) -> SQLiteDurableStorage:
    """A fresh perdure SQLite storage."""
    return SQLiteDurableStorage(directory / name, table_name=TABLE, synchronous=synchronous)


def db_bytes(path: Path) -> int:
    """Size of a SQLite database plus its WAL after a truncating checkpoint."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError(f"checkpoint of {path} was blocked")
    finally:
        conn.close()
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def empty_db_bytes(storage: SQLiteDurableStorage, path: Path) -> int:
    """Size of `storage`'s database holding its tables and no execution (the fixed cost of a file).

    The database is created lazily by the first write, so one execution is written and deleted
    (through the public API; its tombstone row is a few bytes on a page the table has anyway).
    """
    probe = new_head("schema-probe")
    await storage.save_state_async(probe)
    await storage.delete_state_async(probe.execution_id)
    return db_bytes(path)


def tree_bytes(root: Path) -> int:
    """Sum of the sizes of the files under `root`."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@contextlib.contextmanager
def collected() -> Iterator[None]:
    """Start a timed section with no garbage pending from the previous one."""
    gc.collect()
    yield


# ---- (a) durable step vs raw transaction ---------------------------------------------------------


class RawRows:
    """Step and head rows with exactly the bytes perdure writes, prepared before timing."""

    def __init__(self, execution_id: str, payload: Any, count: int) -> None:
        self.execution_id = execution_id
        head = new_head(execution_id)
        self.initial_head = self._head_row(head)
        self.rows: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
        now = utcnow()
        for seq in range(count):
            finished = now + timedelta(microseconds=137 * seq + 1)
            step = StepRecord(
                execution_id=execution_id,
                seq=seq,
                kind=StepKind.OTHER,
                name="bench",
                key=f"bench#{seq + 1}",
                result=payload,
                started_at=finished - timedelta(microseconds=51),
                finished_at=finished,
                attempt=1,
            )
            head = head.model_copy(
                update={
                    "status": ExecutionStatus.SUCCESS,
                    "step_index": seq,
                    "step_name": "bench",
                    "updated_at": finished,
                    "next_seq": seq + 1,
                }
            )
            step_row = (execution_id, seq, step.kind.value, step.name, step.key, "json", encode_step(step))
            self.rows.append((step_row, self._head_row(head)))

    @staticmethod
    def _head_row(head: ExecutionRecord) -> tuple[Any, ...]:
        return _head_row(head, head.execution_id)


async def durable_step(run: JournalRun, unit: UnitIdentity, body: Callable[[], Awaitable[Any]]) -> float:
    """Run one durable step; return seconds."""
    start = time.perf_counter()
    await run.run_unit(unit, body)
    return time.perf_counter() - start


async def durable_steps(run: JournalRun, count: int, payload: Any) -> float:
    """Run `count` durable steps whose body returns `payload`; return seconds."""
    unit = UnitIdentity(StepKind.OTHER, "bench", "bench")

    async def body() -> Any:
        return payload

    start = time.perf_counter()
    for _ in range(count):
        await run.run_unit(unit, body)
    return time.perf_counter() - start


async def bench_step(settings: Settings, synchronous: str, report: Report, key: str) -> None:
    """(a): ms per durable step vs ms per raw transaction, at one `synchronous` level.

    Durable steps and raw transactions alternate one by one (which goes first flips every pair), each
    timed on its own; a repetition's ratio is the median durable step over the median raw one.
    """
    count = settings.a_steps_full if synchronous == "FULL" else settings.a_steps_normal
    warmup = settings.a_warmup
    payload = payload_of_size(200)
    unit = UnitIdentity(StepKind.OTHER, "bench", "bench")

    async def body() -> Any:
        return payload

    ratios: list[float] = []
    mean_ratios: list[float] = []
    durable_ms: list[float] = []
    raw_ms: list[float] = []
    sizes = ""
    for rep in range(settings.a_reps):
        with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
            directory = Path(tmp)
            storage = sqlite_storage(directory, "perdure.db", synchronous)
            sql = BaselineSQL.of(storage)
            report.notes.extend(n for n in sql.warnings if n not in report.notes)
            run = await new_run(storage, f"a-{synchronous.lower()}-{rep}")
            conn = sql.connect(directory / "raw.db")
            prepared = RawRows(f"a-raw-{rep}", payload, warmup + count)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql.upsert_head, prepared.initial_head)
            conn.execute("COMMIT")
            for step_row, head_row in prepared.rows[:warmup]:
                await durable_step(run, unit, body)
                sql.step(conn, step_row, head_row)
            t_durable: list[float] = []
            t_raw: list[float] = []
            gc.collect()
            for i, (step_row, head_row) in enumerate(prepared.rows[warmup:]):
                if (rep + i) % 2 == 0:
                    t_durable.append(await durable_step(run, unit, body))
                    t_raw.append(sql.step(conn, step_row, head_row))
                else:
                    t_raw.append(sql.step(conn, step_row, head_row))
                    t_durable.append(await durable_step(run, unit, body))
            durable_ms.append(median(t_durable) * 1e3)
            raw_ms.append(median(t_raw) * 1e3)
            ratios.append(median(t_durable) / median(t_raw))
            mean_ratios.append(sum(t_durable) / sum(t_raw))
            if rep == 0:
                sizes = _payload_sizes(storage, conn, run.execution_id, prepared.execution_id)
            conn.close()
            await storage.close_async()
    ratio = median(ratios)
    detail = (
        f"{median(durable_ms):.3f} vs {median(raw_ms):.3f} ms/step (medians); "
        f"ratio of means {median(mean_ratios):.2f}x"
    )
    if synchronous == "FULL":
        row = Row(
            key, "durable step / raw sqlite txn, sync=FULL", f"{ratio:.2f}x", "<= 1.3x", verdict(ratio <= 1.3)
        )
    else:
        row = Row(key, "durable step / raw sqlite txn, sync=NORMAL", f"{ratio:.2f}x", "report", "-")
    row.spread, row.detail = spread(ratios), detail
    report.rows.append(row)
    if sizes and synchronous == "FULL":
        report.notes.append(f"(a) bytes per step, perdure vs raw: {sizes}")


def _payload_sizes(
    storage: SQLiteDurableStorage, conn: sqlite3.Connection, durable_id: str, raw_id: str
) -> str:
    """Average stored step and head payload sizes on both sides, to show they write the same bytes."""
    q_steps = f"SELECT AVG(LENGTH(payload)) FROM {_S} WHERE execution_id = ?"
    q_head = f"SELECT LENGTH(payload) FROM {_T} WHERE execution_id = ?"
    check = sqlite3.connect(storage.db_path)
    try:
        d_step = check.execute(q_steps, (durable_id,)).fetchone()[0]
        d_head = check.execute(q_head, (durable_id,)).fetchone()[0]
    finally:
        check.close()
    r_step = conn.execute(q_steps, (raw_id,)).fetchone()[0]
    r_head = conn.execute(q_head, (raw_id,)).fetchone()[0]
    return f"step {d_step:.0f} vs {r_step:.0f} B, head {d_head} vs {r_head} B (result payload 200 B)"


# ---- (b) durable agent run vs plain run ----------------------------------------------------------


def scripted_model(tool_calls: int) -> FunctionModel:
    """A model that asks for one `lookup` call per response `tool_calls` times, then answers."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < tool_calls:
            return ModelResponse(parts=[ToolCallPart("lookup", {"i": done}, tool_call_id=f"call-{done}")])
        return ModelResponse(parts=[TextPart(f"looked up {done} items")])

    return FunctionModel(respond)


def lookup(i: int) -> dict[str, Any]:
    """Return a small record."""
    return {"i": i, "name": f"item-{i}", "ok": True}


def make_agent(tool_calls: int, durable: bool) -> Agent[None, str]:
    """The same agent with or without `PerdureDurability`."""
    capabilities: list[Any] = [PerdureDurability()] if durable else []
    return Agent(scripted_model(tool_calls), name="bench", tools=[lookup], capabilities=capabilities)


# ---- (e) decomposition of the per-unit cost of a durable agent run -------------------------------


class _PassThroughBackend(JournalCallableOperationBackend[dict[str, Any]]):
    """pydantic-ai's durable layer with nothing behind it: every unit just runs its body."""

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: dict[str, Any],
    ) -> object:
        return await body()


class PassThroughDurability(BaseDurabilityCapability[Any]):
    """perdure's engine spec (sequential tools, ...) with pydantic-ai's own `JSON_CODEC` and a pass-through
    backend: what pydantic-ai's durable layer costs before any engine (perdure's codec checks count as
    perdure's)."""

    engine_spec = dataclasses.replace(
        PerdureDurability.engine_spec, engine_name="passthrough", codec=JSON_CODEC
    )

    @property
    def in_durable_context(self) -> bool:
        return True

    def get_durable_operation_backend(self) -> DurableOperationBackend[dict[str, Any]]:
        base: dict[str, Any] = {}
        return _PassThroughBackend(
            agent_name=self.name,
            default_model_id=self.default_model_id,
            config=RoleBasedOperationConfig(model=base, event=base, capability=base, tool=base),
        )


class RecordingStorage(InMemoryDurableStorage):
    """In-memory storage that also keeps every write, to replay the same rows as raw transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[ExecutionRecord, StepRecord | None]] = []

    async def save_state_async(self, record: ExecutionRecord) -> None:
        await super().save_state_async(record)
        self.writes.append((record, None))

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        await super().append_step_async(record, step)
        self.writes.append((record, step))


class RawInRunStorage(InMemoryDurableStorage):
    """In-memory storage that also writes each record's bytes with a bare FULL transaction.

    The raw baseline inside a real agent run: the same rows (the bytes the in-memory backend just
    encoded), the same SQL and pragmas, interleaved with pydantic-ai's work as perdure's writes are.
    A loop of back-to-back transactions runs with hot CPU caches and flatters the raw side.
    """

    def __init__(self, sql: BaselineSQL, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._sql = sql
        self._conn = conn

    def _raw(self, record: ExecutionRecord, step: StepRecord | None) -> None:
        execution_id = record.execution_id
        head = self._heads[execution_id]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        if step is not None:
            entry = self._journals[execution_id][-1]
            conn.execute(
                self._sql.insert_step,
                (execution_id, step.seq, step.kind.value, step.name, step.key, "json", entry),
            )
        row = (record.status.value, ts(record.created_at), ts(record.updated_at), record.schema_version)
        listing = (execution_name(record), search_text(record))
        conn.execute(self._sql.upsert_head, (execution_id, *row, "json", head, *listing))
        conn.execute("COMMIT")

    async def save_state_async(self, record: ExecutionRecord) -> None:
        await super().save_state_async(record)
        self._raw(record, None)

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        await super().append_step_async(record, step)
        self._raw(record, step)


def _head_row(head: ExecutionRecord, execution_id: str) -> tuple[Any, ...]:
    """The head row as the backend writes it: payload, then the listing's name and search columns."""
    payload = encode_head(head)
    return (
        execution_id,
        head.status.value,
        ts(head.created_at),
        ts(head.updated_at),
        head.schema_version,
        "json",
        payload,
        execution_name(head),
        search_text(head),
    )


def _step_row(step: StepRecord, execution_id: str) -> tuple[Any, ...]:
    return (execution_id, step.seq, step.kind.value, step.name, step.key, "json", encode_step(step))


class RawAgentRows:
    """The transactions a durable agent run makes, as raw rows: one txn per head save or step."""

    def __init__(self, writes: list[tuple[ExecutionRecord, StepRecord | None]]) -> None:
        self.writes = [(_head_row(h, "x"), _step_row(s, "x") if s else None) for h, s in writes]
        self.steps = sum(1 for _, s in writes if s is not None)
        self.bytes = sum(len(s[-1]) for _, s in self.writes if s) + len(self.writes[-1][0][6])

    def run(self, sql: BaselineSQL, conn: sqlite3.Connection, execution_id: str) -> None:
        """Write every transaction of the run for `execution_id`."""
        for head_row, step_row in self.writes:
            conn.execute("BEGIN IMMEDIATE")
            if step_row is not None:
                conn.execute(sql.insert_step, (execution_id, *step_row[1:]))
            conn.execute(sql.upsert_head, (execution_id, *head_row[1:]))
            conn.execute("COMMIT")


def records_bytes(path: Path) -> tuple[int, int]:
    """Bytes of the stored records (step and head payloads) in a perdure SQLite database, and rows."""
    conn = sqlite3.connect(path)
    try:
        steps, rows = conn.execute(f"SELECT SUM(LENGTH(payload)), COUNT(*) FROM {_S}").fetchone()
        heads, head_rows = conn.execute(f"SELECT SUM(LENGTH(payload)), COUNT(*) FROM {_T}").fetchone()
    finally:
        conn.close()
    return (steps or 0) + (heads or 0), rows + head_rows


async def bench_decompose(settings: Settings, report: Report) -> None:
    """(e): where a durable agent unit's time goes, and the database bytes per record byte.

    Runners, in a rotating order per repetition: the plain agent; pydantic-ai's durable layer with
    a pass-through backend; perdure with in-memory storage, SQLite NORMAL and FULL; and a raw
    FULL transaction per write of the same rows (captured from a perdure run, in a separate database
    with the backend's schema and pragmas). Per-unit figures divide by the run's journaled units.
    """
    n = settings.b_tool_calls
    limits = UsageLimits(request_limit=None)
    expected = f"looked up {n} items"
    plain = make_agent(n, durable=False)
    passthrough = Agent(
        scripted_model(n), name="bench", tools=[lookup], capabilities=[PassThroughDurability()]
    )
    durable = make_agent(n, durable=True)
    recorder = RecordingStorage()
    attempt = await DurableExecution(recorder, auto_cleanup=False).run_agent_async(
        durable, "look everything up", usage_limits=limits
    )
    units = attempt.head.next_seq
    raw_rows = RawAgentRows(recorder.writes)
    counter = itertools.count()
    with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
        stores: dict[str, DurableExecutionStorage] = {
            mode: sqlite_storage(Path(tmp), f"agent-{mode.lower()}.db", mode) for mode in ("NORMAL", "FULL")
        }
        stores["memory"] = InMemoryDurableStorage()
        full_store = stores["FULL"]
        assert isinstance(full_store, SQLiteDurableStorage)
        sql = BaselineSQL.of(full_store)
        conn = sql.connect(Path(tmp) / "raw.db")
        stores["raw-in-run"] = RawInRunStorage(sql, sql.connect(Path(tmp) / "raw-in-run.db"))

        async def run_plain() -> None:
            result = await plain.run("look everything up", usage_limits=limits)
            if result.output != expected:
                raise RuntimeError(f"plain run answered {result.output!r}")

        async def run_passthrough() -> None:
            result = await passthrough.run("look everything up", usage_limits=limits)
            if result.output != expected:
                raise RuntimeError(f"pass-through run answered {result.output!r}")

        def run_durable(mode: str) -> Callable[[], Awaitable[None]]:
            async def go() -> None:
                execution = DurableExecution(stores[mode], auto_cleanup=False)
                done = await execution.run_agent_async(durable, "look everything up", usage_limits=limits)
                if done.output != expected or done.head.next_seq != units:
                    raise RuntimeError(f"durable run: {done.output!r}, {done.head.next_seq} steps")

            return go

        async def run_raw() -> None:
            raw_rows.run(sql, conn, f"raw-{next(counter):08d}")

        runners: dict[str, Callable[[], Awaitable[None]]] = {
            "plain": run_plain,
            "passthrough": run_passthrough,
            "memory": run_durable("memory"),
            "NORMAL": run_durable("NORMAL"),
            "FULL": run_durable("FULL"),
            "raw-in-run": run_durable("raw-in-run"),
            "raw": run_raw,
        }
        for runner in runners.values():  # warmup
            await runner()
        wall: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        order = list(runners)
        for rep in range(settings.b_reps):
            rotated = order[rep % len(order) :] + order[: rep % len(order)]
            for name in rotated:
                gc.collect()
                w0, c0 = time.perf_counter(), time.process_time()
                await runners[name]()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        conn.close()
        for store in stores.values():
            await store.close_async()
        # bytes: one fresh FULL database holding one run of `e_tool_calls` tool calls
        size_agent = make_agent(settings.e_tool_calls, durable=True)
        path = Path(tmp) / "size.db"
        size_store = sqlite_storage(Path(tmp), "size.db", "FULL")
        empty = await empty_db_bytes(size_store, path)
        await DurableExecution(size_store, auto_cleanup=False).run_agent_async(
            size_agent, "look everything up", usage_limits=limits
        )
        await size_store.close_async()
        file_size = db_bytes(path)
        content, row_count = records_bytes(path)

    def per_unit(a: str, b: str) -> list[float]:  # paired per-repetition differences, ms per unit
        return [(x - y) / units * 1e3 for x, y in zip(wall[a], wall[b], strict=True)]

    def ms_range(values: list[float]) -> str:
        return f"{min(values):.3f}-{max(values):.3f} ms"

    layers = [
        ("e1", "pydantic-ai durable layer: pass-through - plain", per_unit("passthrough", "plain")),
        ("e2", "perdure engine: in-memory - pass-through", per_unit("memory", "passthrough")),
        ("e3", "storage share, sync=NORMAL: NORMAL - in-memory", per_unit("NORMAL", "memory")),
        ("e4", "storage share, sync=FULL: FULL - in-memory", per_unit("FULL", "memory")),
    ]
    raw_unit = [x / units * 1e3 for x in wall["raw"]]
    for key, label, diffs in layers:
        value = median(diffs)
        goal = 0.15 if key == "e2" else None
        cpu_diff = ""
        if key == "e2":
            cpu_diff = (median(cpu["memory"]) - median(cpu["passthrough"])) / units * 1e3
            cpu_diff = f"; CPU time {cpu_diff:.3f} ms/unit"
        report.rows.append(
            Row(
                key,
                f"{label}, per unit",
                f"{value:.3f} ms",
                f"<= {goal} ms" if goal else "report",
                verdict(value <= goal) if goal else "-",
                ms_range(diffs),
                f"{units} units per run ({n} tool calls){cpu_diff}",
            )
        )
    share = per_unit("FULL", "memory")
    raw_share = per_unit("raw-in-run", "memory")
    ratios = [s / r for s, r in zip(share, raw_share, strict=True)]
    ratio = median(ratios)
    report.rows.append(
        Row(
            "e5",
            "storage share FULL / raw FULL txn, both inside a run",
            f"{ratio:.2f}x",
            "<= 1.2x",
            verdict(ratio <= 1.2),
            spread(ratios),
            f"{median(share):.3f} vs {median(raw_share):.3f} ms per unit; the raw txns back to back, "
            f"out of a run: {median(raw_unit):.3f} ms per unit ({len(raw_rows.writes)} txns per run)",
        )
    )
    # The fixed cost of a database (its tables' and indexes' first pages) does not grow with runs:
    # the goal is about what each record costs on disk, so the ratio is taken net of it.
    size_ratio = (file_size - empty) / content
    report.rows.append(
        Row(
            "e6",
            f"SQLite file growth / bytes of its records, {settings.e_tool_calls} tool calls",
            f"{size_ratio:.2f}x",
            "<= 1.3x",
            verdict(size_ratio <= 1.3),
            "",
            f"{file_size / 1e3:.0f} KB file - {empty / 1e3:.0f} KB empty database = "
            f"{(file_size - empty) / 1e3:.0f} KB for {content / 1e3:.0f} KB in {row_count} records "
            f"({file_size / content:.2f}x gross)",
        )
    )
    for key, mode in (("b0", "memory"), ("b1", "NORMAL"), ("b2", "FULL")):
        report.rows.append(_agent_row(key, mode, n, units, wall, cpu))
    engine = await engine_unit_ms(units)
    report.notes.append(
        f"(e) perdure's run_unit alone on in-memory storage (model-request-sized results): "
        f"{engine:.3f} ms/unit"
    )
    report.rows.sort(key=lambda r: r.key)
    times = ", ".join(f"{name} {median(wall[name]) / units * 1e3:.3f}" for name in runners)
    report.notes.append(f"(e) median ms per unit: {times}")


def _agent_row(
    key: str, mode: str, n: int, units: int, wall: dict[str, list[float]], cpu: dict[str, list[float]]
) -> Row:
    """(b): a durable agent run over the plain run, from the runs of (e)."""
    goal = 1.5 if mode == "NORMAL" else None
    ratios = [d / p for d, p in zip(wall[mode], wall["plain"], strict=True)]
    cpu_ratios = [d / p for d, p in zip(cpu[mode], cpu["plain"], strict=True)]
    ratio = median(ratios)
    label = f"sync={mode}" if mode != "memory" else "InMemoryDurableStorage"
    extra = (median(wall[mode]) - median(wall["plain"])) / units * 1e3
    return Row(
        key,
        f"durable / plain agent run, {n} tools, {label}",
        f"{ratio:.2f}x",
        f"<= {goal}x" if goal else "report",
        verdict(ratio <= goal) if goal else "-",
        spread(ratios),
        f"{median(wall[mode]) * 1e3:.0f} vs {median(wall['plain']) * 1e3:.0f} ms/run wall "
        f"(+{extra:.2f} ms per each of {units} units); CPU ratio {median(cpu_ratios):.2f}x",
    )


async def engine_unit_ms(count: int) -> float:
    """Median over 5 blocks of `JournalRun.run_unit` on in-memory storage, ms per unit.

    Units alternate a ~600 B model-response-like result and a small tool result, as in the agent run.
    """
    response = {
        "parts": [{"part_kind": "tool-call", "tool_name": "lookup", "args": {"i": 1}}],
        "x": "y" * 500,
    }
    tool = {"i": 1, "name": "item-1", "ok": True}
    units = [
        UnitIdentity(StepKind.MODEL_REQUEST, "model_request", "model"),
        UnitIdentity(StepKind.OTHER, "t", "t"),
    ]

    async def body_model() -> Any:
        return response

    async def body_tool() -> Any:
        return tool

    bodies = [body_model, body_tool]
    blocks: list[float] = []
    storage = InMemoryDurableStorage()
    for block in range(6):
        run = await new_run(storage, f"engine-{block}")
        gc.collect()
        start = time.perf_counter()
        for i in range(count):
            await run.run_unit(units[i % 2], bodies[i % 2])
        if block:  # the first block is warmup
            blocks.append((time.perf_counter() - start) / count * 1e3)
    return median(blocks)


# ---- (c) step 1000 vs step 10 --------------------------------------------------------------------


async def bench_growth(settings: Settings, report: Report) -> None:
    """(c): per-step time late in a long execution over per-step time early in it."""
    payload = payload_of_size(200)
    unit = UnitIdentity(StepKind.OTHER, "bench", "bench")

    async def body() -> Any:
        return payload

    ratios: list[float] = []
    early_ms: list[float] = []
    late_ms: list[float] = []
    for rep in range(settings.c_reps):
        with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
            storage = sqlite_storage(Path(tmp), "growth.db", "NORMAL")
            run = await new_run(storage, f"c-{rep}")
            per_step: list[float] = []
            gc.collect()
            for _ in range(1006):
                start = time.perf_counter()
                await run.run_unit(unit, body)
                per_step.append(time.perf_counter() - start)
            await storage.close_async()
        early, late = median(per_step[5:16]), median(per_step[995:1006])
        early_ms.append(early * 1e3)
        late_ms.append(late * 1e3)
        ratios.append(late / early)
    ratio = median(ratios)
    report.rows.append(
        Row(
            "c",
            "step ~1000 / step ~10, same execution, NORMAL",
            f"{ratio:.2f}x",
            "<= 1.2x",
            verdict(ratio <= 1.2),
            spread(ratios),
            f"{median(late_ms):.3f} vs {median(early_ms):.3f} ms/step (medians of steps 995-1005, 5-15)",
        )
    )


# ---- (d) bytes for 1,000 steps of 100 B --------------------------------------------------------


async def _grow(
    storage: DurableExecutionStorage, steps: int, measure: Callable[[], int], execution_id: str
) -> list[int]:
    """Journal `steps` steps adding 100 B each; return the stored size after every quarter."""
    run = await new_run(storage, execution_id)
    unit = UnitIdentity(StepKind.OTHER, "bench", "bench")
    sizes = [measure()]
    quarter = steps // 4
    for i in range(steps):
        chunk = payload_of_size(100, i)

        async def body(value: dict[str, Any] = chunk) -> Any:
            return value

        await run.run_unit(unit, body)
        if (i + 1) % quarter == 0:
            sizes.append(measure())
    return sizes


def _size_row(key: str, label: str, steps: int, empty: int, sizes: list[int], goal: bool) -> Row:
    total = sizes[-1] - empty
    quarter = steps // 4
    increments = [(b - a) / quarter for a, b in itertools.pairwise(sizes)]
    linear = max(increments) <= 1.5 * min(increments) if min(increments) > 0 else False
    ok = linear and total < 1_000_000
    return Row(
        key,
        f"{label} bytes for {steps:,} steps x 100 B",
        f"{total / 1e6:.3f} MB",
        "< 1 MB, linear" if goal else "report",
        verdict(ok) if goal else ("-" if linear else "not linear"),
        "",
        f"{total / steps:.0f} B/step; per-quarter B/step: "
        + ", ".join(f"{x:.0f}" for x in increments)
        + (" (linear)" if linear else " (NOT linear)"),
    )


async def bench_size(settings: Settings, report: Report) -> None:
    """(d): bytes stored for 1,000 steps that each add 100 B, SQLite and (if available) files."""
    steps = settings.d_steps
    with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
        path = Path(tmp) / "size.db"
        storage = sqlite_storage(Path(tmp), "size.db", "NORMAL")
        empty = await empty_db_bytes(storage, path)
        sizes = await _grow(storage, steps, lambda: db_bytes(path), "d-sqlite")
        await storage.close_async()
    report.rows.append(_size_row("d1", "SQLite", steps, empty, sizes, goal=True))
    try:
        from perdure.storage.file import FileDurableStorage

        with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
            root = Path(tmp) / "files"
            files = FileDurableStorage(root, fsync=False)
            empty = tree_bytes(root)
            sizes = await _grow(files, steps, lambda: tree_bytes(root), "d-file")
            await files.close_async()
        report.rows.append(_size_row("d2", "FileStorage", steps, empty, sizes, goal=False))
    except Exception as exc:  # the file backend is optional here: report, do not fail
        report.rows.append(
            Row("d2", "FileStorage bytes", "n/a", "report", "-", "", f"{type(exc).__name__}: {exc}")
        )


# ---- profile -------------------------------------------------------------------------------------


async def profile_steps(count: int) -> str:
    """cProfile of `count` durable steps at NORMAL: where a step's time goes."""
    payload = payload_of_size(200)
    with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
        storage = sqlite_storage(Path(tmp), "profile.db", "NORMAL")
        run = await new_run(storage, "profile")
        await durable_steps(run, 50, payload)
        profiler = cProfile.Profile()
        profiler.enable()
        await durable_steps(run, count, payload)
        profiler.disable()
        await storage.close_async()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(22)
    return out.getvalue()


# ---- output --------------------------------------------------------------------------------------


def render(report: Report, settings: Settings, elapsed: float) -> str:
    """The result table, the figures measured elsewhere, and notes."""
    lines = [
        "",
        "perdure step overhead: ratios measured side by side in this run "
        f"({'--quick' if settings.quick else 'full'}, {elapsed:.0f} s)",
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; ratio = median over repetitions, spread = min-max",
        "",
    ]
    header = ("#", "measure", "this run", "goal", "verdict", "spread")
    table = [header] + [(r.key, r.measure, r.value, r.goal, r.verdict, r.spread) for r in report.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    sep = "  "
    lines.append(sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append(sep.join("-" * w for w in widths))
    for r in report.rows:
        cells = (r.key, r.measure, r.value, r.goal, r.verdict, r.spread)
        lines.append(sep.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if r.detail:
            lines.append(" " * (widths[0] + len(sep)) + "   " + r.detail)
    missed = [r.key for r in report.rows if r.verdict == "MISS"]
    lines.append("")
    lines.append(f"MISSED GOALS: {', '.join(missed)}" if missed else "All goals met.")
    lines += ["", "For context, measured elsewhere (/work/shared/NOTES.md), NOT in this run:"]
    wide = max(len(label) for label, _ in ELSEWHERE)
    lines += [f"  {label.ljust(wide)}  {value}" for label, value in ELSEWHERE]
    if report.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in report.notes]
    return "\n".join(lines)


async def main_async(settings: Settings, profile: bool) -> str:
    """Run every measurement and return the rendered report."""
    started = time.perf_counter()
    report = Report()
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("(a) step vs raw, FULL", lambda: bench_step(settings, "FULL", report, "a1")),
        ("(a) step vs raw, NORMAL", lambda: bench_step(settings, "NORMAL", report, "a2")),
        ("(b, e) agent runs, decomposition", lambda: bench_decompose(settings, report)),
        ("(c) growth", lambda: bench_growth(settings, report)),
        ("(d) bytes", lambda: bench_size(settings, report)),
    ]
    for label, step in steps:
        t0 = time.perf_counter()
        print(f"running {label} ...", file=sys.stderr, flush=True)
        await step()
        print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    text = render(report, settings, time.perf_counter() - started)
    if profile:
        text += "\n\ncProfile of 500 durable steps (SQLite, NORMAL):\n" + await profile_steps(500)
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0 (benchmarks are not tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; under 30 s")
    parser.add_argument("--profile", action="store_true", help="append a cProfile of the step path")
    args = parser.parse_args(argv)
    print(asyncio.run(main_async(Settings.make(args.quick), args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
