"""A durable pydantic-ai agent on a real OpenAI-compatible HTTP API, for provider-fault tests.

In-process tests import `build_agent`, `SCRIPT` and `PROMPT`; crash tests run it as a subprocess:
`python -c "from support import fault_app; fault_app.main([...])"` with
`argv = [prog, start|resume, STORAGE_URL, EXECUTION_ID, BASE_URL]`. It prints one JSON line
(`status`, `output` or `error`) and exits 0 when the execution completed, 1 when it failed.

Environment of the subprocess:
- `LEDGER`: file that gets one fsync'd line per tool side effect (`<PHASE> tool <name>`);
- `PHASE`: label written to the ledger (`start`, `resume`, ...);
- `MAX_RETRIES`, `RETRY_DELAY`: the model requests' `RetryPolicy`;
- `PERDURE_FAULT`: perdure's named fault points (`perdure._faults`), e.g.
  `after_journal_write@attempt:N` (SIGKILL right after failed attempt N was journaled, before the
  back-off sleep) or `before_tool_call@NAME` (SIGKILL when tool NAME starts, before its effect);
- `LEASE_TTL`: lease time of the execution, short so a resume need not wait long for a dead worker.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any

from pydantic_ai import Agent

from perdure.durable import CircuitBreaker, DurableExecution, PerdureDurability, RetryPolicy
from perdure.models.openai import openai_chat_model
from perdure.storage import storage_from_url
from support.openai_server import Reply, call, text

PROMPT = "Fetch the rows of db.csv, transform them, store them and notify the team."
SCRIPT: list[Reply] = [
    call("fetch_rows", source="db.csv"),
    call("transform_rows", rows="1,2,3"),
    call("store_rows", rows="2,4,6"),
    call("notify", message="stored 3 rows"),
    text("done: stored-3"),
]
"""Four tool turns and a final answer: an uninterrupted run makes 5 model requests."""

TOOL_CALLS: Counter[str] = Counter()
"""Side effects of this process (in-process tests read it; subprocesses also write the ledger)."""


def _effect(name: str) -> None:
    TOOL_CALLS[name] += 1
    ledger = os.environ.get("LEDGER")
    if ledger:
        with open(ledger, "a") as fh:
            fh.write(f"{os.environ.get('PHASE', '?')} tool {name}\n")
            fh.flush()
            os.fsync(fh.fileno())


def fetch_rows(source: str) -> str:
    """Fetch the rows of a data source."""
    _effect("fetch_rows")
    return "1,2,3"


def transform_rows(rows: str) -> str:
    """Double every row."""
    _effect("transform_rows")
    return ",".join(str(int(r) * 2) for r in rows.split(","))


def store_rows(rows: str) -> str:
    """Store rows and return the storage id."""
    _effect("store_rows")
    return f"stored-{len(rows.split(','))}"


def notify(message: str) -> str:
    """Notify the team."""
    _effect("notify")
    return "sent"


TOOLS = [fetch_rows, transform_rows, store_rows, notify]


def build_agent(
    base_url: str,
    *,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    timeout: float = 5.0,
    name: str = "FaultAgent",
) -> Agent[None, str]:
    """The durable agent: `OpenAIChatModel` without SDK retries, perdure's policy and breaker."""
    model = openai_chat_model("scripted-gpt", base_url=base_url, api_key="test-key", timeout=timeout)
    return Agent(
        model,
        name=name,
        tools=TOOLS,
        capabilities=[PerdureDurability(retry=retry, circuit_breaker=breaker)],
    )


def main(argv: list[str]) -> int:
    mode, url, execution_id, base_url = argv[1], argv[2], argv[3], argv[4]
    policy = RetryPolicy(
        max_retries=int(os.environ.get("MAX_RETRIES", "3")),
        retry_delay=float(os.environ.get("RETRY_DELAY", "0.01")),
        jitter=0.0,
    )
    agent = build_agent(base_url, retry=policy)
    storage = storage_from_url(url)
    durable = DurableExecution(
        storage,
        auto_cleanup=False,
        execution_id=execution_id,
        lease_ttl=float(os.environ.get("LEASE_TTL", "0.6")),
        wait_for_lease=20.0,
    )
    try:
        result = durable.run_agent(agent, PROMPT) if mode == "start" else durable.resume_agent(agent)
    except Exception as exc:
        print(json.dumps({"status": "failed", "error": type(exc).__name__, "message": str(exc)[:500]}))
        return 1
    finally:
        storage.close()
    output: Any = result.output
    print(json.dumps({"status": result.head.status.value, "output": output}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
