"""Bytes stored with and without compression: an agent whose tools return about 100 KB of JSON each.

Run it with ``python benchmarks/compression.py`` (a few seconds).

Method
------
A ``FunctionModel`` asks for ``--calls`` tool calls (default 5), one per response, then answers. The
tool ``fetch_page`` returns about 100 KB of JSON: a page of 600 records with ids, names, tags,
numbers and a short free-text note, drawn from a seeded random generator (realistic, not a string
of zeros that any compressor squeezes to nothing). The same agent runs twice on a fresh
``SQLiteDurableStorage``: with the codec ``none`` (plain JSON, the default) and with ``zstd`` at the
default threshold (``PERDURE_COMPRESSION_MIN_BYTES`` = 1024: payloads of at least 1 KiB are
compressed, level 3). For each it prints the database file size after the run (the main file after
closing, which checkpoints the WAL; a fresh database is 0 bytes before the run, so this is its growth)
and the sum of the stored payload bytes (journal entries and head), then checks that the journaled
tool results (and the run's output) read back identical under both codecs, and equal to what
the tool returned.

Benchmarks are not tests: nothing is asserted and the exit code is always 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.codec import Codec
from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.records import StepKind
from perdure.settings import PerdureSettings
from perdure.storage.sqlite import SQLiteDurableStorage

WORDS = ["alpha", "beta", "gamma", "delta", "order", "invoice", "shipped", "pending", "refund", "customer"]


def page(number: int) -> dict[str, Any]:
    """About 100 KB of JSON: one page of records, seeded by the page number."""
    rng = random.Random(number)
    records = [
        {
            "id": f"rec-{number:03d}-{i:05d}",
            "name": f"{rng.choice(WORDS).title()} {rng.choice(WORDS)} {rng.randint(1, 9999)}",
            "tags": rng.sample(WORDS, 3),
            "amount": round(rng.uniform(1, 5000), 2),
            "quantity": rng.randint(1, 40),
            "active": rng.random() < 0.8,
            "note": " ".join(rng.choice(WORDS) for _ in range(4)),
        }
        for i in range(600)
    ]
    return {"page": number, "records": records}


def make_agent(calls: int) -> Agent[None, str]:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = len(messages) // 2
        if done < calls:
            return ModelResponse(
                parts=[ToolCallPart("fetch_page", {"number": done}, tool_call_id=f"c{done}")]
            )
        return ModelResponse(parts=[TextPart(f"read {done} pages")])

    def fetch_page(number: int) -> dict[str, Any]:
        """Fetch one page of records."""
        return page(number)

    return Agent(
        FunctionModel(respond),
        name="compression-bench",
        tools=[fetch_page],
        capabilities=[PerdureDurability()],
    )


async def run(path: Path, codec: Codec | None, calls: int) -> dict[str, Any]:
    storage = SQLiteDurableStorage(path, synchronous="NORMAL", codec=codec)
    execution = DurableExecution(storage, execution_id="bench", auto_cleanup=False)
    result = await execution.run_agent_async(make_agent(calls), "read every page")
    steps = await storage.load_steps_async("bench")
    await storage.close_async()
    with sqlite3.connect(path) as conn:
        journal = conn.execute("SELECT sum(length(payload)) FROM durable_executions_steps").fetchone()[0]
        head = conn.execute("SELECT sum(length(payload)) FROM durable_executions").fetchone()[0]
        codecs = dict(conn.execute("SELECT codec, count(*) FROM durable_executions_steps GROUP BY codec"))
    conn.close()
    return {
        "file": path.stat().st_size,
        "payloads": journal + head,
        "codecs": codecs,
        # Tool results only: model responses carry timestamps that differ from one run to the next.
        "results": [
            json.dumps(s.result["result"], sort_keys=True) for s in steps if s.kind is StepKind.TOOL_CALL
        ],
        "output": result.output,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5, help="tool calls of the run (default 5)")
    args = parser.parse_args()
    threshold = PerdureSettings.model_fields["compression_min_bytes"].default
    tool_bytes = len(json.dumps(page(0)).encode())
    print(
        f"{args.calls} tool calls, each returning {tool_bytes / 1000:.0f} KB of JSON; "
        f"zstd threshold {threshold} B"
    )
    with tempfile.TemporaryDirectory() as tmp:
        plain = await run(Path(tmp) / "none.db", None, args.calls)
        packed = await run(Path(tmp) / "zstd.db", Codec(compress_above=threshold), args.calls)
    print(f"{'codec':<6} {'db file':>12} {'payloads':>12}  journal codecs")
    for name, data in (("none", plain), ("zstd", packed)):
        print(f"{name:<6} {data['file']:>12,} {data['payloads']:>12,}  {data['codecs']}")
    print(
        f"zstd stores {packed['file'] / plain['file']:.1%} of the file and "
        f"{packed['payloads'] / plain['payloads']:.1%} of the payload bytes"
    )
    same = plain["results"] == packed["results"] and plain["output"] == packed["output"]
    same = same and plain["results"] == [json.dumps(page(i), sort_keys=True) for i in range(args.calls)]
    print(f"journaled results and output identical under both codecs: {same}")


if __name__ == "__main__":
    asyncio.run(main())
