"""perdure vs DBOS vs LangGraph vs raw SQLite: one 1,000-step workflow of trivial steps, side by side.

Run it with ``python benchmarks/vs_peers.py`` (1.5-2.5 minutes here) or ``--quick`` (about a minute:
200 steps, 3 repetitions); ``--profile`` adds a cProfile of perdure's workflow at ``synchronous=FULL``.
The peers come from the ``bench`` extra (``pip install -e '.[bench]'``); without them their rows are
skipped and the perdure and raw SQLite rows still run.

Method
------
Every system runs the same workflow in this one process, on its own fresh database in one temporary
directory (the same disk): ``n`` steps (1,000; 200 with ``--quick``), step ``i`` calling a trivial
function that returns ``PAYLOADS[i]``, 100 ASCII characters of base64 from a seeded generator (the
same data everywhere, not compressible to nothing).

The systems run *in lockstep*: each in its own thread, all of them in one repetition, passing a
baton round-robin after every 20 steps (``--turn``), so that only one runs at a time and every
system's steps are spread evenly over the whole repetition. Disk latency on this shared machine
changes within seconds (fsync at ~0.3 ms one moment and ~4 ms the next: other test suites share the
disk and the 2 cores); run one after the other, whole workflows land in different phases, while
systems in lockstep see the same phases. (A turn of one step would do that best, but then every
step starts with cold CPU caches, which costs the fast rows 50% and more and the slow ones little.)
A system's time is the sum of its own turns from its first step to its last (setup,
``DBOS.launch()``, compiling the graph, creating the execution and the checks after the run hold
the baton but are not timed); per step = that sum / ``n``. The order of the round-robin rotates
from one repetition to the next. The table shows the median per-step time over the repetitions and
its min-max; ratios are per repetition (both sides in the same lockstep run), summarized as median
and min-max. Background threads (LangGraph's checkpoint writer, DBOS's pollers) are not gated by the
baton; LangGraph's ``durability="sync"`` still waits for each checkpoint before its next step.

Rows:

* perdure: ``@workflow`` calling an async ``@step`` ``n`` times, run by
  ``DurableExecution(SQLiteDurableStorage(path, synchronous=...)).run_workflow_async``; every step is
  one SQLite transaction (journal entry + head) in WAL mode, at ``synchronous=FULL`` and ``NORMAL``.
* DBOS: ``@DBOS.workflow`` calling a ``@DBOS.step`` ``n`` times, with a SQLite system database
  (``DBOS(config={"name": ..., "system_database_url": "sqlite:///..."})``, ``DBOS.launch()``); sync
  workflow and steps (the usual form) and async ones (both in one launched DBOS, so on one system
  database). DBOS sets neither ``journal_mode`` nor ``synchronous`` on SQLite, so it runs on
  SQLite's defaults (rollback journal, ``FULL``); the values are read from its own connection.
* LangGraph: a ``StateGraph`` whose one node loops back to itself ``n`` times, each pass adding the
  step's 100 B to the state (``Annotated[list[str], operator.add]``, the documented reducer idiom),
  compiled with ``SqliteSaver`` (langgraph-checkpoint-sqlite: WAL, SQLite's default ``synchronous``,
  i.e. ``FULL``) and invoked with ``durability="sync"`` (each checkpoint written before the next step
  starts). Also: the state channel as ``DeltaChannel`` (beta in LangGraph 1.2: checkpoints store only
  the new writes); the list state at ``synchronous=NORMAL`` (set on the saver's connection); and no
  checkpointer (LangGraph's own cost, no durability).
* raw SQLite: per step a bare ``BEGIN IMMEDIATE; INSERT`` of the step's JSON result ``; UPSERT`` of a
  small head row ``; COMMIT`` with ``sqlite3``: WAL at ``FULL`` and ``NORMAL``, and the rollback
  journal at ``FULL`` (DBOS's settings).
* plain: the same loop of plain function calls, no durability; "added" per step is a row's time
  minus this one's.

Storage: one more, untimed run of 1,000 steps (also with ``--quick``) of each durable system on its
own (no lockstep), with a probe before the first step and after every quarter of the steps: the
size of its database files (``.db`` + ``-wal`` + ``-journal``) after ``PRAGMA
wal_checkpoint(TRUNCATE)`` from a separate connection. Bytes per step = growth from the first probe
to the last over the steps; the same for each quarter: equal quarters (within two 4 KiB pages or
25%) mean storage grows linearly with the steps. ``synchronous`` changes no byte, so perdure and raw
SQLite are measured once.

Equal durability: perdure ``FULL``, LangGraph ``SqliteSaver`` (WAL, ``FULL``), DBOS (rollback
journal, ``FULL``) and raw ``FULL`` all make a step durable against power loss before the next one
starts; ``NORMAL`` in WAL mode survives a process crash, not a power loss.

Benchmarks are not tests: the exit code is 0 even when a goal is missed; the table says MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import cProfile
import gc
import io
import itertools
import json
import logging
import operator
import os
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, TypedDict

from perdure import DurableExecution, step, workflow
from perdure.storage import SQLiteDurableStorage

# ---- the workload --------------------------------------------------------------------------------

MAX_STEPS = 1000


def _payloads(count: int) -> list[str]:
    """`count` strings of exactly 100 base64 characters (75 random bytes each), the same every run."""
    rng = random.Random(20261130)
    return [base64.b64encode(rng.randbytes(75)).decode() for _ in range(count)]


PAYLOADS = _payloads(MAX_STEPS)


def trivial(i: int, payload: str) -> str:
    """The step body of every system: return the step's 100 B."""
    return payload


# ---- lockstep and size probes: the hook every system's step loop calls ----------------------------


class Baton:
    """Round-robin turns between system threads: a thread runs only while it holds the baton.

    `enter` waits for the first turn; `tick(key, completed)` (from the system's step loop) ends the
    current turn, passes the baton on and waits for the next one, timing the turns from step 0 to
    step `steps`; after the last step the thread keeps the baton for its checks, then `leave`s.
    """

    def __init__(self, keys: Sequence[str], steps: int, turn: int) -> None:
        self.steps = steps
        self.turn = turn
        self.active = list(keys)
        self.lock = threading.Lock()
        self.events = {k: threading.Event() for k in keys}
        self.spent = dict.fromkeys(keys, 0.0)
        self.quarters = {k: [0.0] * 4 for k in keys}
        self.since: dict[str, float] = {}
        self.events[self.active[0]].set()

    def _wait(self, key: str) -> None:
        self.events[key].wait()
        self.events[key].clear()

    def _pass(self, key: str, leaving: bool) -> None:
        with self.lock:
            i = self.active.index(key)
            if leaving:
                self.active.pop(i)
                following = self.active[i % len(self.active)] if self.active else None
            else:
                following = self.active[(i + 1) % len(self.active)]
        if following is not None:
            self.events[following].set()

    def enter(self, key: str) -> None:
        self._wait(key)

    def tick(self, key: str, completed: int) -> None:
        now = time.perf_counter()
        if key in self.since:  # one step: since the previous tick, or since this turn began
            took = now - self.since.pop(key)
            self.spent[key] += took
            self.quarters[key][min((completed - 1) * 4 // self.steps, 3)] += took
        if completed >= self.steps:
            return  # timing ends; keep the baton for the checks after the run
        if completed % self.turn:
            self.since[key] = now
            return
        self._pass(key, leaving=False)
        self._wait(key)
        self.since[key] = time.perf_counter()

    def leave(self, key: str) -> None:
        self._pass(key, leaving=True)


class Probe:
    """Records the stored size before the first step and after every quarter (untimed size runs)."""

    def __init__(self, paths: Sequence[Path], steps: int) -> None:
        self.paths = list(paths)
        self.every = max(steps // 4, 1)
        self.sizes: list[tuple[int, int]] = []

    def done(self, completed: int) -> None:
        if completed % self.every == 0:
            self.sizes.append((completed, stored_bytes(self.paths)))


TURN = 20
"""Steps a system runs per turn in lockstep (`--turn`)."""
BATON: Baton | None = None
PROBE: Probe | None = None
SYSTEM: contextvars.ContextVar[str] = contextvars.ContextVar("SYSTEM", default="")
"""The row a thread runs (asyncio, DBOS and LangGraph carry it into the step loop)."""


def tick(completed: int) -> None:
    """Every system's step loop calls this with the number of steps done (0 before the first)."""
    if BATON is not None:
        BATON.tick(SYSTEM.get(), completed)
    elif PROBE is not None:
        PROBE.done(completed)


PAGE_SIZE = 4096
"""SQLite's default page size (every system here keeps it): the unit in which the files grow."""


def stored_bytes(paths: Sequence[Path]) -> int:
    """Sum over `paths` of database + WAL + rollback journal sizes, after a truncating WAL checkpoint."""
    total = 0
    for path in paths:
        if not path.exists():
            continue
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        for suffix in ("", "-wal", "-journal"):
            extra = Path(f"{path}{suffix}")
            if extra.exists():
                total += extra.stat().st_size
    return total


SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def sqlite_settings(conn: sqlite3.Connection) -> str:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return f"journal_mode={mode}, synchronous={SYNC_NAMES.get(sync, sync)}"


# ---- perdure ---------------------------------------------------------------------------------------


@step
async def perdure_trivial(i: int, payload: str) -> str:
    return trivial(i, payload)


@workflow(name="vs-peers")
async def perdure_flow(n: int) -> int:
    tick(0)
    for i in range(n):
        await perdure_trivial(i, PAYLOADS[i])
        tick(i + 1)
    return n


def run_perdure(directory: Path, n: int, synchronous: str) -> str:
    """Run the workflow on a fresh `SQLiteDurableStorage`; return its settings."""
    path = directory / "perdure.db"

    async def go() -> tuple[int, int]:
        storage = SQLiteDurableStorage(path, synchronous=synchronous)
        durable = DurableExecution(storage, auto_cleanup=False)
        out = await durable.run_workflow_async(perdure_flow, n)
        steps = await storage.load_steps_async(durable.execution_id)
        await storage.close_async()
        return out, len(steps)

    out, journaled = asyncio.run(go())
    if out != n or journaled != n:
        raise RuntimeError(f"perdure returned {out!r} and journaled {journaled} entries for {n} steps")
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    return f"journal_mode={mode}, synchronous={synchronous}"  # perdure sets it on each connection


# ---- raw SQLite and the plain loop -----------------------------------------------------------------


def run_raw(directory: Path, n: int, journal_mode: str, synchronous: str) -> str:
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(
        "CREATE TABLE steps (execution_id TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, "
        "PRIMARY KEY (execution_id, seq)) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE heads (execution_id TEXT PRIMARY KEY, next_seq INTEGER, updated_at REAL)")
    insert = "INSERT INTO steps (execution_id, seq, payload) VALUES (?, ?, ?)"
    upsert = (
        "INSERT INTO heads (execution_id, next_seq, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(execution_id) DO UPDATE SET "
        "next_seq = excluded.next_seq, updated_at = excluded.updated_at"
    )
    tick(0)
    for i in range(n):
        data = json.dumps(trivial(i, PAYLOADS[i])).encode()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(insert, ("raw", i, data))
        conn.execute(upsert, ("raw", i + 1, time.time()))
        conn.execute("COMMIT")
        tick(i + 1)
    count = conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    settings = sqlite_settings(conn)
    conn.close()
    if count != n:
        raise RuntimeError(f"raw SQLite stored {count} rows for {n} steps")
    return settings


def run_plain(directory: Path, n: int) -> str:
    out: list[str] = []
    tick(0)
    for i in range(n):
        out.append(trivial(i, PAYLOADS[i]))
        tick(i + 1)
    if out[-1] != PAYLOADS[n - 1]:
        raise RuntimeError("plain loop lost its data")
    return "no durability"


# ---- DBOS ------------------------------------------------------------------------------------------


class DBOSRunner:
    """DBOS workflows, defined once (its decorators register globally); DBOS is one launched singleton.

    `open(directory)` configures and launches DBOS on a fresh system database there and `close()`
    destroys it; `run` launches one of its own unless one is open for the same directory.
    """

    def __init__(self) -> None:
        from dbos import DBOS, SetWorkflowID

        self.DBOS, self.SetWorkflowID = DBOS, SetWorkflowID
        self.opened: Path | None = None
        self.settings = ""

        @DBOS.step()
        def dbos_trivial(i: int, payload: str) -> str:
            return trivial(i, payload)

        @DBOS.workflow()
        def dbos_flow(n: int) -> int:
            tick(0)
            for i in range(n):
                dbos_trivial(i, PAYLOADS[i])
                tick(i + 1)
            return n

        @DBOS.step()
        async def dbos_trivial_async(i: int, payload: str) -> str:
            return trivial(i, payload)

        @DBOS.workflow()
        async def dbos_flow_async(n: int) -> int:
            tick(0)
            for i in range(n):
                await dbos_trivial_async(i, PAYLOADS[i])
                tick(i + 1)
            return n

        self.flow = dbos_flow
        self.flow_async = dbos_flow_async

    def open(self, directory: Path) -> None:
        path = directory / "dbos.sqlite"
        config = {"name": "vs-peers", "system_database_url": f"sqlite:///{path}", "log_level": "WARNING"}
        self.DBOS(config=config)  # type: ignore[arg-type]
        try:
            self.DBOS.launch()
        except BaseException:
            self.DBOS.destroy()
            raise
        self.opened = directory
        self.settings = self._pragmas()

    def close(self) -> None:
        self.opened = None
        self.DBOS.destroy()

    def _pragmas(self) -> str:
        """journal_mode / synchronous / busy_timeout of DBOS's own system-database connection."""
        try:
            import sqlalchemy as sa
            from dbos import _dbos

            engine = _dbos._dbos_global_instance._sys_db.engine  # private: only to read its PRAGMAs
            with engine.connect() as conn:
                values = {
                    p: conn.execute(sa.text(f"PRAGMA {p}")).scalar()
                    for p in ("journal_mode", "synchronous", "busy_timeout")
                }
        except Exception as exc:  # private attributes may move: say so instead of failing
            return f"PRAGMAs not readable ({type(exc).__name__}); SQLite defaults expected"
        sync = SYNC_NAMES.get(values["synchronous"], values["synchronous"])
        return (
            f"journal_mode={values['journal_mode']}, synchronous={sync}, "
            f"busy_timeout={values['busy_timeout']}"
        )

    def run(self, directory: Path, n: int, use_async: bool) -> str:
        own = self.opened != directory
        if own:
            self.open(directory)
        workflow_id = f"vs-peers-{uuid.uuid4()}"
        try:
            with self.SetWorkflowID(workflow_id):
                out = asyncio.run(self.flow_async(n)) if use_async else self.flow(n)
        finally:
            if own:
                self.close()
        if out != n:
            raise RuntimeError(f"DBOS returned {out!r}, expected {n}")
        conn = sqlite3.connect(directory / "dbos.sqlite", timeout=30)
        try:
            sql = "SELECT COUNT(*) FROM operation_outputs WHERE workflow_uuid = ?"
            count = conn.execute(sql, (workflow_id,)).fetchone()[0]
        finally:
            conn.close()
        if count != n:
            raise RuntimeError(f"DBOS recorded {count} step outputs for {n} steps")
        return self.settings


# ---- LangGraph -------------------------------------------------------------------------------------


def _concat(state: list[str] | None, writes: Sequence[list[str]]) -> list[str]:
    """`DeltaChannel` reducer: the state with every batch of writes appended (batching-invariant)."""
    out = list(state or [])
    for write in writes:
        out.extend(write)
    return out


class LangGraphRunner:
    """A `StateGraph` whose one node loops `n` times, adding 100 B of state per pass."""

    def __init__(self) -> None:
        from langgraph.channels import DeltaChannel
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, StateGraph

        # Functional TypedDicts: with `from __future__ import annotations` the class form would leave the
        # annotations as strings, which LangGraph resolves in this module's globals (no DeltaChannel there).
        items_list = Annotated[list[str], operator.add]
        items_delta = Annotated[list[str], DeltaChannel(_concat)]
        list_state = TypedDict("ListState", {"i": int, "items": items_list})  # noqa: UP013
        delta_state = TypedDict("DeltaState", {"i": int, "items": items_delta})  # noqa: UP013
        self.states = {"list": list_state, "delta": delta_state}
        self.SqliteSaver = SqliteSaver
        self.StateGraph, self.START, self.END = StateGraph, START, END

    def build(self, state: str, n: int, checkpointer: Any) -> Any:
        def node(s: dict[str, Any]) -> dict[str, Any]:
            done = s["i"]  # steps completed so far; with durability="sync" all are checkpointed
            tick(done)
            return {"i": done + 1, "items": [trivial(done, PAYLOADS[done])]}

        graph = self.StateGraph(self.states[state])
        graph.add_node("step", node)
        graph.add_edge(self.START, "step")
        graph.add_conditional_edges("step", lambda s: "step" if s["i"] < n else self.END)
        return graph.compile(checkpointer=checkpointer)

    def run(self, directory: Path, n: int, state: str, durable: bool, synchronous: str | None = None) -> str:
        """`synchronous` None: what `SqliteSaver` leaves (SQLite's default); else set on its connection."""
        conn = sqlite3.connect(directory / "langgraph.sqlite", check_same_thread=False) if durable else None
        saver = None
        settings = "no checkpointer"
        if conn is not None:
            saver = self.SqliteSaver(conn)
            saver.setup()
            if synchronous is not None:
                conn.execute(f"PRAGMA synchronous = {synchronous}")
            settings = sqlite_settings(conn) + ", durability=sync"
        graph = self.build(state, n, saver)
        config: dict[str, Any] = {"configurable": {"thread_id": "bench"}, "recursion_limit": n + 10}
        options = {"durability": "sync"} if durable else {}
        try:
            out = graph.invoke({"i": 0, "items": []}, config, **options)
            tick(n)
        finally:
            if conn is not None:
                conn.close()
        if out["i"] != n or len(out["items"]) != n or out["items"][-1] != PAYLOADS[n - 1]:
            raise RuntimeError(f"LangGraph ended with i={out['i']}, {len(out['items'])} items")
        return settings


# ---- the benchmark ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Step and repetition counts; `--quick` shrinks them."""

    quick: bool
    steps: int
    reps: int
    warmup_steps: int
    size_steps: int = MAX_STEPS
    """Also with `--quick`: fewer steps would leave each quarter a handful of 4 KiB pages."""

    @classmethod
    def make(cls, quick: bool) -> Settings:
        return cls(True, 200, 3, 50) if quick else cls(False, MAX_STEPS, 5, 100)


@dataclass
class System:
    """One row: how to run it in a directory, and where it stores (for the size run)."""

    key: str
    label: str
    run: Callable[[Path, int], str]
    db_file: str | None = None
    """The database file it creates in its directory: set for the systems whose size is measured."""
    shared: DBOSRunner | None = None
    """Opened once per repetition for all the rows that use it (DBOS is a process-wide singleton)."""
    times: dict[int, float] = field(default_factory=dict)
    quarters: dict[int, list[float]] = field(default_factory=dict)
    """Seconds per quarter of the steps, by repetition."""
    settings: str = ""
    failed: str = ""
    sizes: list[tuple[int, int]] = field(default_factory=list)
    total_bytes: int = 0


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


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def build_systems(skipped: list[str]) -> list[System]:
    systems = [
        System("p1", "perdure, SQLite FULL", lambda d, n: run_perdure(d, n, "FULL"), "perdure.db"),
        System("p2", "perdure, SQLite NORMAL", lambda d, n: run_perdure(d, n, "NORMAL")),
    ]
    try:
        dbos = DBOSRunner()
    except ImportError as exc:
        skipped.append(f"DBOS rows ({exc}); install the peers with `pip install -e '.[bench]'`")
    else:
        v = version("dbos")
        systems += [
            System("d1", f"DBOS {v}, sync workflow", lambda d, n: dbos.run(d, n, False), "dbos.sqlite", dbos),
            System("d2", f"DBOS {v}, async workflow", lambda d, n: dbos.run(d, n, True), None, dbos),
        ]
    try:
        graph = LangGraphRunner()
    except ImportError as exc:
        skipped.append(f"LangGraph rows ({exc}); install the peers with `pip install -e '.[bench]'`")
    else:
        v = version("langgraph")
        systems += [
            System(
                "l1",
                f"LangGraph {v} SqliteSaver, list state",
                lambda d, n: graph.run(d, n, "list", True),
                "langgraph.sqlite",
            ),
            System(
                "l2",
                f"LangGraph {v} SqliteSaver, DeltaChannel",
                lambda d, n: graph.run(d, n, "delta", True),
                "langgraph.sqlite",
            ),
            System(
                "l3",
                f"LangGraph {v} SqliteSaver, list, NORMAL",
                lambda d, n: graph.run(d, n, "list", True, "NORMAL"),
            ),
            System("l0", f"LangGraph {v}, no checkpointer", lambda d, n: graph.run(d, n, "list", False)),
        ]
    systems += [
        System("r1", "raw SQLite, WAL FULL", lambda d, n: run_raw(d, n, "WAL", "FULL"), "raw.db"),
        System("r2", "raw SQLite, WAL NORMAL", lambda d, n: run_raw(d, n, "WAL", "NORMAL")),
        System("r3", "raw SQLite, rollback journal FULL", lambda d, n: run_raw(d, n, "DELETE", "FULL")),
        System("b", "plain function calls", run_plain),
    ]
    return systems


@contextlib.contextmanager
def fresh_dir() -> Iterator[Path]:
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="perdure-vs-peers-", dir=os.environ.get("BENCH_DIR")) as tmp:
        yield Path(tmp)


def lockstep(systems: list[System], steps: int, rep: int) -> None:
    """One repetition: every system in its own thread, one step each in turn; records their times."""
    global BATON
    shift = rep % len(systems)
    order = systems[shift:] + systems[:shift]
    baton = Baton([s.key for s in order], steps, TURN)
    with fresh_dir() as root:
        (root / "shared").mkdir()
        shared = {id(s.shared): s.shared for s in order if s.shared is not None}
        for resource in shared.values():
            resource.open(root / "shared")  # before any thread starts: nothing else runs meanwhile

        def worker(system: System) -> None:
            SYSTEM.set(system.key)
            directory = root / "shared" if system.shared is not None else root / system.key
            directory.mkdir(exist_ok=True)
            baton.enter(system.key)
            try:
                system.run(directory, steps)
            except BaseException as exc:
                system.failed = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            else:
                system.times[rep] = baton.spent[system.key]
                system.quarters[rep] = baton.quarters[system.key]
            finally:
                baton.leave(system.key)

        BATON = baton
        try:
            threads = [threading.Thread(target=worker, args=(s,), name=f"bench-{s.key}") for s in order]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            BATON = None
            for resource in shared.values():
                resource.close()


def measure(systems: list[System], settings: Settings) -> None:
    """Warm every system up on its own, then run the repetitions in lockstep."""
    print(f"warming up ({settings.warmup_steps} steps each) ...", file=sys.stderr, flush=True)
    for system in systems:
        with fresh_dir() as directory:
            system.settings = system.run(directory, settings.warmup_steps)
    for rep in range(settings.reps):
        t0 = time.perf_counter()
        running = [s for s in systems if not s.failed]
        lockstep(running, settings.steps, rep)
        print(
            f"repetition {rep + 1}/{settings.reps} (lockstep) done in {time.perf_counter() - t0:.1f} s "
            f"(load {os.getloadavg()[0]:.1f})",
            file=sys.stderr,
            flush=True,
        )


def measure_sizes(systems: list[System], settings: Settings) -> None:
    """One untimed run per storing system on its own, with the quarter probe."""
    global PROBE
    print("size runs ...", file=sys.stderr, flush=True)
    for system in systems:
        if system.db_file is None or system.failed:
            continue
        with fresh_dir() as directory:
            paths = [directory / system.db_file]
            PROBE = Probe(paths, settings.size_steps)
            try:
                system.run(directory, settings.size_steps)
            finally:
                probe, PROBE = PROBE, None
            system.sizes = probe.sizes
            system.total_bytes = stored_bytes(paths)


def ms_per_step(seconds: float, steps: int) -> float:
    return seconds / steps * 1e3


def ratio_row(key: str, label: str, num: System, den: System, goal: float | None, steps: int) -> Row | None:
    reps = sorted(set(num.times) & set(den.times))
    if not reps:
        return None
    ratios = [num.times[r] / den.times[r] for r in reps]
    value = statistics.median(ratios)
    num_ms = ms_per_step(statistics.median([num.times[r] for r in reps]), steps)
    den_ms = ms_per_step(statistics.median([den.times[r] for r in reps]), steps)
    return Row(
        key,
        label,
        f"{value:.2f}x",
        f"<= {goal:.2f}x" if goal is not None else "report",
        ("PASS" if value <= goal else "MISS") if goal is not None else "-",
        f"{min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else "1 rep",
        f"{num_ms:.3f} vs {den_ms:.3f} ms/step; per repetition: " + " ".join(f"{x:.2f}" for x in ratios),
    )


def size_row(system: System) -> Row:
    sizes = system.sizes
    if len(sizes) < 2:
        return Row(f"s{system.key}", f"{system.label}: bytes", "n/a", "report", "-", "", "no probe data")
    per_step = (sizes[-1][1] - sizes[0][1]) / (sizes[-1][0] - sizes[0][0])
    quarters = [(b - a) / (m2 - m1) for (m1, a), (m2, b) in itertools.pairwise(sizes)]
    # Files grow by whole pages: allow each quarter 2 pages either way besides 25% of the mean.
    mean = sum(quarters) / len(quarters)
    slack = max(0.25 * mean, 2 * PAGE_SIZE / (sizes[1][0] - sizes[0][0]))
    linear = mean > 0 and all(abs(q - mean) <= slack for q in quarters)
    is_perdure = system.key.startswith("p")
    shown = f"{per_step / 1e3:.1f} KB/step" if per_step >= 10_000 else f"{per_step:.0f} B/step"
    return Row(
        f"s{system.key}",
        f"{system.label}: bytes per step",
        shown,
        "linear" if is_perdure else "report",
        ("PASS" if linear else "MISS") if is_perdure else ("linear" if linear else "NOT linear"),
        "",
        "per quarter: "
        + ", ".join(f"{q:.0f}" for q in quarters)
        + f" B/step; {system.total_bytes / 1e6:.2f} MB on disk after the run",
    )


GOALS = [
    ("g1", "p1", "l1", "perdure FULL / LangGraph sync, list state", 0.5),
    ("g2", "p1", "l2", "perdure FULL / LangGraph sync, DeltaChannel", 0.5),
    ("g3", "p1", "d1", "perdure FULL / DBOS, sync workflow", 1 / 3),
    ("g4", "p1", "d2", "perdure FULL / DBOS, async workflow", 1 / 3),
    ("g5", "p2", "l3", "perdure NORMAL / LangGraph sync, list, NORMAL", 0.5),
    ("x1", "p1", "r1", "perdure FULL / raw SQLite WAL FULL", None),
    ("x2", "p2", "r2", "perdure NORMAL / raw SQLite WAL NORMAL", None),
]


def build_rows(systems: list[System], settings: Settings) -> list[Row]:
    n = settings.steps
    by_key = {s.key: s for s in systems}
    plain = statistics.median(by_key["b"].times.values()) if by_key["b"].times else 0.0
    rows: list[Row] = []
    for s in systems:
        if not s.times:
            rows.append(Row(s.key, f"{s.label}: ms per step", "FAILED", "report", "-", "", s.failed))
            continue
        ms = [ms_per_step(t, n) for t in s.times.values()]
        if s.key == "b":
            detail = f"{statistics.median(ms) * 1e3:.2f} us/step"
        else:
            added = statistics.median(ms) - ms_per_step(plain, n)
            detail = f"added over plain calls {added:.3f} ms/step; {s.settings}"
        if s.failed:
            detail += f"; FAILED in a later repetition: {s.failed}"
        rows.append(
            Row(
                s.key,
                f"{s.label}: ms per step",
                f"{statistics.median(ms):.3f} ms",
                "report",
                "-",
                f"{min(ms):.3f}-{max(ms):.3f} ms",
                detail,
            )
        )
    for key, num, den, label, goal in GOALS:
        if num in by_key and den in by_key:
            row = ratio_row(key, label, by_key[num], by_key[den], goal, n)
            if row is not None:
                rows.append(row)
    rows += [size_row(s) for s in systems if s.db_file is not None and s.sizes]
    return rows


def by_repetition(systems: list[System], steps: int) -> list[str]:
    """ms per step of every row in every repetition, and by quarter in the slowest and fastest one.

    The slowest and fastest repetitions are those of the bare fsync'd commit (r1, else p1): they show
    how each system fares when the disk is slow or quick.
    """
    timed = [s for s in systems if s.times]
    reps = sorted({r for s in timed for r in s.times})
    if not timed or not reps:
        return []
    lines = ["", "Per repetition, ms per step (the disk's phase shows in r1):"]
    for s in timed:
        cells = " ".join(
            f"{ms_per_step(s.times[r], steps):7.3f}" if r in s.times else "      -" for r in reps
        )
        lines.append(f"  {s.key:3} {cells}")
    probe = next((s for s in timed if s.key == "r1"), timed[0])
    slow = max(probe.times, key=probe.times.__getitem__)
    fast = min(probe.times, key=probe.times.__getitem__)
    quarter = steps / 4
    lines.append(
        f"By quarter of the steps, ms per step: repetition {slow + 1} ({probe.key} slowest) | "
        f"repetition {fast + 1} ({probe.key} fastest):"
    )
    for s in timed:
        cells = []
        for r in (slow, fast):
            qs = s.quarters.get(r)
            cells.append(" ".join(f"{q / quarter * 1e3:6.3f}" for q in qs) if qs else "   -")
        lines.append(f"  {s.key:3} {cells[0]} | {cells[1]}")
    return lines


def render(
    rows: list[Row],
    settings: Settings,
    skipped: list[str],
    loads: tuple[float, float],
    elapsed: float,
    systems: list[System],
) -> str:
    n = settings.steps
    mode = (
        f"{'--quick: ' if settings.quick else ''}{n:,} steps, {settings.reps} repetitions in lockstep, "
        f"{TURN} steps per turn"
    )
    lines = [
        "",
        f"perdure vs peers: a {n:,}-step workflow of trivial steps (100 B result each), same process "
        f"and disk ({mode}, {elapsed:.0f} s)",
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"load {loads[0]:.1f} -> {loads[1]:.1f}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"perdure {version('perdure')}, dbos {version('dbos')}, langgraph {version('langgraph')}, "
        f"langgraph-checkpoint-sqlite {version('langgraph-checkpoint-sqlite')}",
        "ms per step = median over repetitions of (own turns from step 0 to n) / n; ratio = median of "
        "per-repetition ratios; spread = min-max",
        "",
    ]
    header = ("#", "measure", "this run", "goal", "verdict", "spread")
    table = [header] + [(r.key, r.measure, r.value, r.goal, r.verdict, r.spread) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    sep = "  "
    lines.append(sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append(sep.join("-" * w for w in widths))
    for r in rows:
        cells = (r.key, r.measure, r.value, r.goal, r.verdict, r.spread)
        lines.append(sep.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if r.detail:
            lines.append(" " * (widths[0] + len(sep)) + "   " + r.detail)
    missed = [r.key for r in rows if r.verdict == "MISS"]
    lines.append("")
    ran = {r.key for r in rows}
    not_run = [key for key, *_ in GOALS if key.startswith("g") and key not in ran]
    verdicts = f"MISSED GOALS: {', '.join(missed)}" if missed else "All goals that ran were met."
    if not_run:
        verdicts += f" Not run (peers missing): {', '.join(not_run)}."
    lines.append(verdicts)
    lines += [f"SKIPPED: {line}" for line in skipped]
    lines += [
        "",
        "Notes:",
        "  Equal durability: perdure FULL, LangGraph SqliteSaver (WAL, FULL), DBOS (rollback journal, FULL) "
        "and raw FULL",
        "  all make a step durable against power loss before the next one; NORMAL in WAL survives a process "
        "crash only.",
        "  Bytes per step: growth of db + -wal + -journal (after wal_checkpoint(TRUNCATE)) from before the "
        "first step",
        f"  to after the last, over the steps, in a separate untimed {settings.size_steps:,}-step run; "
        "per quarter: the same over each quarter",
        "  (equal within 2 pages or 25% = linear).",
        "  FULL rows wait for fsync: their ratios move with the disk's latency at the time (r1: a bare "
        "fsync'd commit);",
        "  NORMAL rows (g5, x2) compare CPU costs and are the steadiest.",
    ]
    lines += by_repetition(systems, n)
    return "\n".join(lines)


def profile_perdure(steps: int) -> str:
    """cProfile of one perdure workflow at synchronous=FULL, run on its own."""
    with fresh_dir() as directory:
        run_perdure(directory, 50, "FULL")
    with fresh_dir() as directory:
        profiler = cProfile.Profile()
        profiler.enable()
        run_perdure(directory, steps, "FULL")
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0 (benchmarks are not tests)."""
    global TURN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200 steps, 3 repetitions; about a minute")
    parser.add_argument("--profile", action="store_true", help="append a cProfile of the perdure FULL row")
    parser.add_argument("--turn", type=int, default=TURN, help=f"steps per turn in lockstep (default {TURN})")
    args = parser.parse_args(argv)
    TURN = max(args.turn, 1)
    logging.getLogger("dbos").setLevel(logging.WARNING)
    settings = Settings.make(args.quick)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    skipped: list[str] = []
    systems = build_systems(skipped)
    for line in skipped:
        print(f"SKIPPED: {line}", file=sys.stderr, flush=True)
    measure(systems, settings)
    measure_sizes(systems, settings)
    rows = build_rows(systems, settings)
    elapsed = time.perf_counter() - started
    text = render(rows, settings, skipped, (load_before, os.getloadavg()[0]), elapsed, systems)
    if args.profile:
        text += f"\n\ncProfile of one {settings.steps}-step perdure workflow (SQLite FULL), on its own:\n"
        text += profile_perdure(settings.steps)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
