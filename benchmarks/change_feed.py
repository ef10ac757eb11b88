"""What the change notification costs on the write path: append_step with and without it.

PostgreSQL writes `pg_notify(channel, execution_id)` in the statement of every head or journal write;
Redis `PUBLISH`es the id inside the write script. This script times `append_step` on the same server,
side by side in one run, with the notification (the shipped statements) and without it (the same
statements built with `notify=False` / a `Keys` that does not announce), once with no listener and
once with a change feed listening (its reads run in the same process, as a watcher would elsewhere).
It also measures the latency from a write's return to its announcement.

    python benchmarks/change_feed.py --postgres postgresql://postgres@127.0.0.1:5432/postgres \
        --redis redis://127.0.0.1:6379/0 [--steps 500] [--rounds 5]

Without a URL it starts throw-away servers the way the tests do (tests/support).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from perdure.records import ExecutionRecord, StepKind, StepRecord
from perdure.storage import DurableExecutionStorage
from perdure.storage._postgres_sql import Sql
from perdure.storage._redis_scripts import Keys


def _step(execution_id: str, seq: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name=f"tool:t{seq}",
        key=f"tool:call-{seq}",
        result={"seq": seq, "value": "x" * 200},
    )


async def _per_step(storage: DurableExecutionStorage, steps: int) -> float:
    """Milliseconds per append_step of one execution of `steps` steps."""
    execution_id = f"bench-{uuid.uuid4().hex[:8]}"
    record = ExecutionRecord(execution_id=execution_id)
    await storage.save_state_async(record)
    started = time.perf_counter()
    for seq in range(steps):
        record = record.model_copy(update={"next_seq": seq + 1, "step_index": seq})
        await storage.append_step_async(record, _step(execution_id, seq))
    return (time.perf_counter() - started) * 1000 / steps


async def _drain_forever(storage: DurableExecutionStorage) -> None:
    feed = storage.change_feed()
    assert feed is not None
    async with feed:
        while True:
            await feed.wait(1.0)


async def _latency(make: Callable[[bool], DurableExecutionStorage], samples: int = 200) -> list[float]:
    """Milliseconds from a write's return to its announcement by a feed of another instance."""
    writer, watcher = make(True), make(True)
    feed = watcher.change_feed()
    assert feed is not None
    out = []
    async with feed:
        execution_id = f"lat-{uuid.uuid4().hex[:8]}"
        record = ExecutionRecord(execution_id=execution_id)
        await writer.save_state_async(record)
        await feed.wait(0.5)
        for seq in range(samples):
            record = record.model_copy(update={"next_seq": seq + 1})
            await writer.append_step_async(record, _step(execution_id, seq))
            returned = time.perf_counter()
            while execution_id not in (await feed.wait(1.0) or set()):
                pass
            out.append((time.perf_counter() - returned) * 1000)
    await writer.close_async()
    await watcher.close_async()
    return out


async def _compare(
    name: str, make: Callable[[bool], DurableExecutionStorage], steps: int, rounds: int
) -> None:
    results: dict[str, list[float]] = {"without": [], "with": [], "with+listener": []}
    for _ in range(rounds):  # interleaved, so drift and noise hit every variant alike
        for variant in results:
            storage = make(variant != "without")
            listener = None
            if variant == "with+listener":
                listener = asyncio.create_task(_drain_forever(make(True)))
                await asyncio.sleep(0.2)
            await _per_step(storage, 20)  # warm-up: connections, layout check, script load
            results[variant].append(await _per_step(storage, steps))
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await storage.close_async()
    base = statistics.median(results["without"])
    print(f"{name}: append_step, median of {rounds} runs of {steps} steps")
    for variant, values in results.items():
        median = statistics.median(values)
        print(
            f"  {variant:<14} {median:7.3f} ms/step   ratio {median / base:5.3f}   ({median - base:+.3f} ms)"
        )
    lat = await _latency(make)
    lat.sort()
    print(
        f"  announcement latency after the write returned: median {statistics.median(lat):.3f} ms, "
        f"p99 {lat[int(len(lat) * 0.99) - 1]:.3f} ms, max {lat[-1]:.3f} ms"
    )


def _postgres(dsn: str) -> Callable[[bool], DurableExecutionStorage]:
    from perdure.storage.postgres import PostgresDurableStorage

    prefix = f"bench_{uuid.uuid4().hex[:8]}_"

    def make(notify: bool) -> DurableExecutionStorage:
        storage = PostgresDurableStorage(dsn, table_prefix=prefix)
        if not notify:
            storage._sql = Sql.build(storage._names, notify=False)
        return storage

    return make


def _redis(url: str) -> Callable[[bool], DurableExecutionStorage]:
    from perdure.storage.redis import RedisDurableStorage

    prefix = f"bench:{uuid.uuid4().hex[:8]}:"

    def make(notify: bool) -> DurableExecutionStorage:
        storage = RedisDurableStorage(url=url, prefix=prefix)
        if not notify:
            storage._keys = Keys(prefix, announce=False)
        return storage

    return make


@contextlib.contextmanager
def _servers(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.postgres and args.redis:
        yield args.postgres, args.redis
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tempfile

    from support.server_postgres import _start_server
    from support.server_redis import launch_redis

    with tempfile.TemporaryDirectory() as tmp:
        pg = None if args.postgres else _start_server()
        rd = None if args.redis else launch_redis(Path(tmp))
        try:
            yield args.postgres or pg.dsn, args.redis or rd.url  # type: ignore[union-attr]
        finally:
            if pg is not None:
                pg.stop()
            if rd is not None:
                rd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", help="PostgreSQL DSN (default: start a throw-away server)")
    parser.add_argument("--redis", help="Redis URL (default: start a throw-away server)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with _servers(args) as (dsn, url):
        asyncio.run(_compare("PostgreSQL", _postgres(dsn), args.steps, args.rounds))
        asyncio.run(_compare("Redis", _redis(url), args.steps, args.rounds))


if __name__ == "__main__":
    main()
