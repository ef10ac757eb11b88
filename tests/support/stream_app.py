"""A durable streamed agent run in a subprocess that SIGKILLs itself mid-stream.

Used by `tests/durable/test_streaming.py`:
`python -c "from support import stream_app; stream_app.main([..., 'start'|'resume', URL, EXECUTION_ID])"`.

The model (a pydantic-ai `FunctionModel` with a `stream_function`) first calls the tool `add`, then
streams its answer in chunks. Every model request and the tool's side effect append a line to the
LEDGER file; every event the consumer receives is appended to the EVENTS file as JSON (flushed, so a
kill keeps it). With `KILL_AT_CHUNK=N` the process kills itself (SIGKILL) while streaming chunk N of
the answer, after the earlier chunks reached the consumer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from perdure.durable import DurableExecution, PerdureDurability
from perdure.storage import storage_from_url

PROMPT = "Add 2 and 3."
CHUNKS = ["The ", "sum ", "of 2 and 3 ", "is ", "5."]
LEDGER = os.environ.get("LEDGER", "")
EVENTS = os.environ.get("EVENTS", "")
PHASE = os.environ.get("PHASE", "")


def _append(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _answered(messages: list[ModelMessage]) -> bool:
    return any(
        isinstance(part, ToolReturnPart)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
    )


async def stream_model(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    _append(LEDGER, f"{PHASE} model")
    if not _answered(messages):
        yield {0: DeltaToolCall(name="add", json_args='{"a": 2, "b": 3}', tool_call_id="call-add")}
        return
    kill_at = int(os.environ.get("KILL_AT_CHUNK", "0"))
    for index, chunk in enumerate(CHUNKS, start=1):
        if index == kill_at:
            await asyncio.sleep(0.2)  # the consumer writes the chunks it got so far
            os.kill(os.getpid(), signal.SIGKILL)
        yield chunk
        await asyncio.sleep(0.01)


def build_agent() -> Agent[None, str]:
    agent = Agent(
        FunctionModel(stream_function=stream_model, model_name="stream-app"),
        name="StreamApp",
        capabilities=[PerdureDurability()],
    )

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        _append(LEDGER, f"{PHASE} tool add")
        return a + b

    return agent


def _describe(event: object) -> dict[str, object]:
    delta = getattr(event, "delta", None)
    part = getattr(event, "part", None)
    text = getattr(delta, "content_delta", None) or getattr(part, "content", None)
    return {"type": type(event).__name__, "part": type(part or delta).__name__, "text": text}


async def run(mode: str, url: str, execution_id: str) -> int:
    storage = storage_from_url(url)
    durable = DurableExecution(storage, auto_cleanup=False, execution_id=execution_id)
    agent = build_agent()
    stream = (
        durable.run_agent_stream_events(agent, PROMPT)
        if mode == "start"
        else durable.resume_agent_stream_events(agent)
    )
    async with stream:
        async for item in stream:
            _append(EVENTS, json.dumps({"phase": PHASE, "replayed": item.replayed, **_describe(item.event)}))
    assert stream.result is not None
    head = stream.result.head
    print(json.dumps({"output": stream.result.output, "replay": head.replay.model_dump(mode="json")}))
    return 0


def main(argv: list[str]) -> int:
    mode, url, execution_id = argv[1], argv[2], argv[3]
    return asyncio.run(run(mode, url, execution_id))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
