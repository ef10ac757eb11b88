"""`perdure ui`'s list page over 100,000 executions, on SQLite and PostgreSQL: server time, render included.

Run it with ``.venv/bin/python benchmarks/ui_list_100k.py`` (``--count 20000`` for a quick look,
``--backends sqlite``). Without ``--postgres-dsn`` it starts a throw-away PostgreSQL on 127.0.0.1
with the test suite's launch helper. The executions are loaded as `benchmarks/list_100k.py` loads
them (its loaders: SQLite ``executemany``, PostgreSQL ``COPY``, then ``ANALYZE``).

Timed (median and max of ``--repeat`` requests, milliseconds): a full GET of the dashboard's pages
through its ASGI application in this process (``httpx.ASGITransport``: the guards, the storage
reads and the Jinja2 rendering, no network): the first page unfiltered, filtered by status, by
search text, by name, the next page via its cursor, and one execution page. Each list page is one
`query_executions_async` (50 rows), one `count_executions_async`, one `get_stats_async` and one
`activity_async` (24 hourly buckets). Goal: < 300 ms per list page (printed, not asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT / "src", ROOT / "tests", HERE):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402

from list_100k import load_postgres, load_sqlite, postgres_dsn  # noqa: E402
from perdure.storage import DurableExecutionStorage  # noqa: E402
from perdure.ui import create_app  # noqa: E402

GOAL_MS = 300.0


async def measure(store: DurableExecutionStorage, repeat: int) -> list[tuple[str, float, float, int]]:
    app = create_app(store)
    rows: list[tuple[str, float, float, int]] = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        first = await client.get("/")
        assert first.status_code == 200, first.status_code
        next_link = re.search(r'href="(/\?[^"]*cursor=[^"]+)" rel="next"', first.text)
        assert next_link is not None
        one_id = re.search(r'<td class="id"><a href="/executions/([^"]+)"', first.text)
        assert one_id is not None
        pages = {
            "list, first page": "/",
            "list, status=failed": "/?status=failed",
            "list, search 'timeout'": "/?q=timeout",
            "list, name=agent-3": "/?name=agent-3",
            "list, next page (cursor)": next_link.group(1).replace("&amp;", "&"),
            "execution page": f"/executions/{one_id.group(1)}",
        }
        for label, path in pages.items():
            times = []
            size = 0
            for _ in range(repeat):
                began = time.perf_counter()
                response = await client.get(path)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (path, response.status_code)
                size = len(response.content)
            rows.append((label, statistics.median(times), max(times), size))
    return rows


def report(backend: str, count: int, rows: list[tuple[str, float, float, int]]) -> None:
    print(f"\n{backend}: {count:,} executions")
    print(f"  {'page':<28} {'median ms':>10} {'max ms':>8} {'bytes':>8}  goal < {GOAL_MS:.0f} ms")
    for label, median, peak, size in rows:
        verdict = "ok" if median < GOAL_MS else "SLOW"
        print(f"  {label:<28} {median:>10.1f} {peak:>8.1f} {size:>8}  {verdict}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-dsn", default=None)
    args = parser.parse_args()
    wanted = set(args.backends.split(","))
    if "sqlite" in wanted:
        workdir = tempfile.mkdtemp(prefix="perdure-ui-bench-")
        try:
            began = time.perf_counter()
            store = load_sqlite(str(Path(workdir) / "ui.db"), args.count)
            print(
                f"sqlite: loaded {args.count:,} executions in {time.perf_counter() - began:.1f} s", flush=True
            )
            try:
                report("sqlite", args.count, await measure(store, args.repeat))
            finally:
                await store.close_async()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if "postgres" in wanted:
        with postgres_dsn(args.postgres_dsn) as dsn:
            began = time.perf_counter()
            pg: Any = await load_postgres(dsn, args.count)
            print(
                f"postgres: loaded {args.count:,} executions in {time.perf_counter() - began:.1f} s",
                flush=True,
            )
            try:
                report("postgres", args.count, await measure(pg, args.repeat))
            finally:
                await pg.close_async()


if __name__ == "__main__":
    asyncio.run(main())
