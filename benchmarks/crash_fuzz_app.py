"""Subprocess side of the crash-fuzz harness (`benchmarks/crash_fuzz.py`).

One *job* runs one attempt of one durable execution of a deterministic multi-tool agent and may
`SIGKILL` itself at a point chosen by the harness (the job's kill plan: a kind and `n`, the n-th
hit in this process). Every kind but ``delay`` is one of perdure's named fault points
(`perdure._faults`), armed through `PERDURE_FAULT` (`FAULT_POINTS` maps kinds to points):

- ``delay``: a timer thread kills the process after a random delay;
- ``model``: in the N-th live model request of this process, answered but not journaled
  (``inside_model_request``);
- ``idem-before`` / ``idem-after``: in the N-th call of the idempotent tool, before its external
  effect (``before_tool_call``), or after the effect and before the tool returns (the tool passes
  ``after_tool_side_effect``: the at-least-once window);
- ``nonidem-before`` / ``nonidem-after``: the same for the non-idempotent tool;
- ``pure``: when the N-th call of a pure tool starts;
- ``append-before`` / ``append-after`` / ``save-before`` / ``save-after``: around the N-th journal
  write (``before/after_journal_write``) or head-only write (``before/after_head_save``);
- ``lease-after``: right after the lease was acquired (``after_lease_acquire``; the next process
  must take it over);
- ``file-head`` (file backend): in the N-th head replacement (``before_head_replace``), i.e. after
  the journal line was fsync'd and before the head moved: the journal is one entry ahead;
- ``file-torn`` (file backend): the N-th journal append writes half its line, then dies
  (``before_journal_line`` with action ``torn``: what a power cut can leave; a SIGKILL alone
  cannot tear one `write`);
- ``sqlite-commit`` (SQLite backend): inside the N-th write transaction, before `COMMIT`
  (``before_commit``).

The agent (`build_agent`) is a pydantic-ai `Agent` with `PerdureDurability` and a `FunctionModel`
that makes 9 model requests and 14 tool calls, several per response:
- ``charge_card`` is idempotent: it charges through `FakePaymentAPI`, which deduplicates by
  `current_step().idempotency_key` and records every request in a ledger (fsync'd), so a repeated
  request shows up as a dedup hit, never as a second charge;
- ``send_email`` is non-idempotent (`metadata={"perdure": {"idempotent": False}}`): each call
  appends one fsync'd line to its ledger, so a double send is visible;
- ``lookup_price`` and ``compute_tax`` are pure.
The model's arguments depend on earlier tool results and its final text lists every tool result,
so the output of an execution equals that of an uninterrupted run only if replay is exact.

Every process also appends to a trace (model request index, tool call id) so the harness can check
that a resumed process never re-ran a unit that was journaled before it started.

Two ways to start jobs: ``run JOB_JSON`` (one fresh interpreter per job, prints the result as the last
stdout line) and ``serve`` (a fork server: imports everything once, then reads one job per stdin
line and runs each in a freshly forked child, replying with one JSON line per job). Before serving,
the server runs one warm-up execution on in-memory storage, so that children skip pydantic-ai's
first-run cost too; it keeps no storage, connection, event loop or thread, so a child holds nothing
of another execution: it starts like a new interpreter, only ~2 s faster on this machine.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_ai import Agent, Tool
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import _faults
from perdure.durable import DurableExecution, PerdureDurability
from perdure.durable.decisions import ToolResolution
from perdure.durable.journal import current_step
from perdure.errors import ExecutionLeasedError, NonIdempotentReplayError
from perdure.storage import storage_from_url

PROMPT = "Price the order, charge it in parts, and send the confirmation e-mails."
AGENT_NAME = "crash_fuzz_shop"
IDEMPOTENT_TOOL = "charge_card"
NON_IDEMPOTENT_TOOL = "send_email"
PURE_TOOLS = ("lookup_price", "compute_tax")
PAYMENTS_LEDGER = "payments.jsonl"
EMAILS_LEDGER = "emails.jsonl"
TRACE_FILE = "trace.log"
JOB_TIMEOUT = 120
MUTANT_ENV = "CRASH_FUZZ_MUTANT"
"""Harness self-test only: with `email-idempotent`, `send_email` is declared idempotent (so perdure
silently re-runs an interrupted send); with `no-dedup`, the payment API ignores idempotency keys.
Both must make the harness report violations."""
"""Seconds after which a job that neither finished nor died is killed by SIGALRM (a hang)."""

KILL_KINDS = (
    "delay",
    "model",
    "idem-before",
    "idem-after",
    "nonidem-before",
    "nonidem-after",
    "pure",
    "append-before",
    "append-after",
    "save-before",
    "save-after",
    "lease-after",
    "file-head",
    "file-torn",
    "sqlite-commit",
)


# ---- ledgers: the "outside world" the tools act on ---------------------------------------------


def _append_line(path: Path, line: str, *, fsync: bool) -> None:
    """Append one line with a single `write` (O_APPEND), fsync'd when asked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a ledger (a missing ledger is empty)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def receipt_for(order_id: str, amount: int) -> dict[str, Any]:
    """What the payment API answers for a charge; depends on the request only (not on the key)."""
    digest = hashlib.sha256(f"{order_id}:{amount}".encode()).hexdigest()[:10]
    return {"order_id": order_id, "amount": amount, "receipt": f"rcpt-{digest}"}


def email_result(to: str, subject: str) -> str:
    """What `send_email` returns; the operator uses it to resolve a call that took effect."""
    digest = hashlib.sha256(f"{to}|{subject}".encode()).hexdigest()[:8]
    return f"sent:{to}:{digest}"


class FakePaymentAPI:
    """An external payment API that honours idempotency keys, like Stripe's.

    Every request is appended to the ledger under an exclusive lock and fsync'd before the API
    answers: the first request of a key is recorded as an `effect` (money moved), later requests
    with the same key as `dedup` (answered from the stored result, nothing moves).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def charge(self, idempotency_key: str, order_id: str, amount: int) -> dict[str, Any]:
        """Charge `amount` for `order_id` once per idempotency key."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            seen = os.pread(fd, size, 0).decode() if size else ""
            done = any(json.loads(line).get("key") == idempotency_key for line in seen.splitlines() if line)
            done = done and os.environ.get(MUTANT_ENV) != "no-dedup"
            entry = {
                "key": idempotency_key,
                "event": "dedup" if done else "effect",
                "order_id": order_id,
                "amount": amount,
            }
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        return receipt_for(order_id, amount)


# ---- kill points ---------------------------------------------------------------------------------

FAULT_POINTS: dict[str, str] = {
    "model": "inside_model_request",
    "idem-before": f"before_tool_call@{IDEMPOTENT_TOOL}",
    "idem-after": f"after_tool_side_effect@{IDEMPOTENT_TOOL}",
    "nonidem-before": f"before_tool_call@{NON_IDEMPOTENT_TOOL}",
    "nonidem-after": f"after_tool_side_effect@{NON_IDEMPOTENT_TOOL}",
    "pure": "before_tool_call@" + "|".join(PURE_TOOLS),
    "append-before": "before_journal_write",
    "append-after": "after_journal_write",
    "save-before": "before_head_save",
    "save-after": "after_head_save",
    "lease-after": "after_lease_acquire",
    "file-head": "before_head_replace",
    "file-torn": "before_journal_line",
    "sqlite-commit": "before_commit",
}
"""The fault point (`perdure._faults`) of every kill kind but `delay`; `file-torn` uses action `torn`."""


@dataclass
class KillPlan:
    """Where this process dies: `kind` (one of `KILL_KINDS`), at its `n`-th occurrence, or after `delay`."""

    kind: str
    n: int = 1
    delay: float = 0.0

    def fault_spec(self) -> str:
        """The plan in the `PERDURE_FAULT` vocabulary ("" for `delay`, which is a timer)."""
        if self.kind == "delay":
            return ""
        return f"{FAULT_POINTS[self.kind]}:{self.n}:{'torn' if self.kind == 'file-torn' else 'kill'}"


def arm(plan: KillPlan | None) -> threading.Timer | None:
    """Arm this process's kill plan: through `PERDURE_FAULT`, or a timer for a `delay` plan."""
    os.environ[_faults.ENV_VAR] = plan.fault_spec() if plan is not None else ""
    _faults.load_env()
    if plan is None or plan.kind != "delay":
        return None
    timer = threading.Timer(plan.delay, die)
    timer.daemon = True
    timer.start()
    return timer


def die() -> None:
    """`kill -9` this process, like the OOM killer would: no cleanup, no flush, no finally."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - SIGKILL is delivered before this returns


class _State:
    """Per-process context of the running job (each job runs in its own process)."""

    ledgers: Path = Path(".")
    proc: str = "p?"
    payments: FakePaymentAPI = FakePaymentAPI(Path(PAYMENTS_LEDGER))


def _trace(*fields: object) -> None:
    # No fsync: a SIGKILL does not lose the page cache, and the trace is not an external effect.
    _append_line(_State.ledgers / TRACE_FILE, " ".join([_State.proc, *map(str, fields)]), fsync=False)


# ---- the agent ------------------------------------------------------------------------------------

ITEMS = (("widget", 3), ("gadget", 1), ("doohickey", 2))


async def lookup_price(sku: str) -> int:
    """Unit price of `sku` in cents (pure)."""
    _trace("tool", "lookup_price", current_step().tool_call_id)
    return 100 + int(hashlib.sha256(sku.encode()).hexdigest()[:4], 16) % 900


async def compute_tax(amount: int) -> int:
    """Sales tax on `amount` cents (pure)."""
    _trace("tool", "compute_tax", current_step().tool_call_id)
    return amount * 8 // 100


async def charge_card(order_id: str, amount: int) -> dict[str, Any]:
    """Charge `amount` cents for `order_id` through an API that deduplicates by idempotency key."""
    step = current_step()
    _trace("tool", IDEMPOTENT_TOOL, step.tool_call_id)
    receipt = _State.payments.charge(step.idempotency_key, order_id, amount)
    _faults.point("after_tool_side_effect", IDEMPOTENT_TOOL)
    return receipt


async def send_email(to: str, subject: str) -> str:
    """Send an e-mail; not idempotent: every call sends one more message."""
    step = current_step()
    _trace("tool", NON_IDEMPOTENT_TOOL, step.tool_call_id)
    entry = {"key": step.idempotency_key, "call": step.tool_call_id, "to": to, "subject": subject}
    _append_line(_State.ledgers / EMAILS_LEDGER, json.dumps(entry), fsync=True)
    _faults.point("after_tool_side_effect", NON_IDEMPOTENT_TOOL)
    return email_result(to, subject)


def _returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def _script(messages: list[ModelMessage]) -> list[ToolCallPart] | str:
    """The model's decision for its next response, from the tool results it has seen so far."""
    done = sum(1 for m in messages if isinstance(m, ModelResponse))
    results: list[Any] = [p.content for p in _returns(messages)]

    def call(name: str, **args: Any) -> ToolCallPart:
        return ToolCallPart(name, args)

    if done == 0:
        return [call("lookup_price", sku=sku) for sku, _ in ITEMS]
    if done == 1:
        subtotal = sum(int(price) * qty for price, (_, qty) in zip(results[:3], ITEMS, strict=True))
        return [call("compute_tax", amount=subtotal)]
    subtotal = sum(int(price) * qty for price, (_, qty) in zip(results[:3], ITEMS, strict=True))
    tax = int(results[3])
    if done == 2:
        return [
            call(IDEMPOTENT_TOOL, order_id="A-1", amount=subtotal // 2),
            call(NON_IDEMPOTENT_TOOL, to="ops@example.com", subject=f"charged part 1 of {subtotal + tax}"),
        ]
    if done == 3:
        return [call("lookup_price", sku="shipping")]
    if done == 4:
        shipping = int(results[6])
        return [
            call(IDEMPOTENT_TOOL, order_id="A-2", amount=subtotal - subtotal // 2),
            call(IDEMPOTENT_TOOL, order_id="A-3", amount=shipping),
        ]
    if done == 5:
        receipts = ",".join(r["receipt"] for r in results if isinstance(r, dict))
        return [call(NON_IDEMPOTENT_TOOL, to="customer@example.com", subject=f"receipts {receipts}")]
    if done == 6:
        return [
            call(NON_IDEMPOTENT_TOOL, to="warehouse@example.com", subject="ship order A"),
            call("compute_tax", amount=int(results[6])),
            call(NON_IDEMPOTENT_TOOL, to="accounting@example.com", subject=f"tax {tax}"),
        ]
    if done == 7:
        return [call(IDEMPOTENT_TOOL, order_id="A-4", amount=int(results[-2]))]
    return "order complete: " + json.dumps(
        [[p.tool_name, p.content] for p in _returns(messages)], sort_keys=True, separators=(",", ":")
    )


async def _respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    index = 1 + sum(1 for m in messages if isinstance(m, ModelResponse))
    _trace("model", index)
    decision = _script(messages)
    if isinstance(decision, str):
        return ModelResponse(parts=[TextPart(decision)])
    return ModelResponse(parts=list(decision))


def build_agent() -> Agent[None, str]:
    """The durable shop agent: one idempotent, one non-idempotent and two pure tools."""
    tools = [
        Tool(lookup_price),
        Tool(compute_tax),
        Tool(charge_card),
        Tool(
            send_email, metadata={"perdure": {"idempotent": os.environ.get(MUTANT_ENV) == "email-idempotent"}}
        ),
    ]
    return Agent(FunctionModel(_respond), name=AGENT_NAME, tools=tools, capabilities=[PerdureDurability()])


BASELINE_COUNTS = {"model": 9, IDEMPOTENT_TOOL: 4, NON_IDEMPOTENT_TOOL: 4, "pure": 6}
"""Units of one uninterrupted execution (checked by the harness against its baseline run)."""


# ---- one job ----------------------------------------------------------------------------------------


@dataclass
class Job:
    """What one process does: start or resume `execution_id`, maybe with resolutions, maybe dying."""

    url: str
    backend: str
    execution_id: str
    ledgers: str
    proc: str
    mode: str = "resume"
    """`start` (create the execution, `run_agent_async`) or `resume` (`resume_agent_async`)."""
    plan: dict[str, Any] | None = None
    resolutions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Operator decisions by call id: `{"action": "done", "result": ...}` or `{"action": "rerun"}`."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job from its JSON form."""
        return cls(**data)


def _resolutions(raw: dict[str, dict[str, Any]]) -> dict[str, ToolResolution]:
    out: dict[str, ToolResolution] = {}
    for call_id, item in raw.items():
        action = item["action"]
        if action == "done":
            out[call_id] = ToolResolution.done(item.get("result"))
        elif action == "rerun":
            out[call_id] = ToolResolution.rerun()
        else:
            out[call_id] = ToolResolution.abort()
    return out


async def _run_job_async(job: Job) -> dict[str, Any]:
    storage = storage_from_url(job.url)
    agent = build_agent()
    durable = DurableExecution(storage, execution_id=job.execution_id, auto_cleanup=False)
    started = time.perf_counter()
    try:
        if job.mode == "start":
            attempt = await durable.run_agent_async(agent, PROMPT)
        else:
            attempt = await durable.resume_agent_async(agent, resolutions=_resolutions(job.resolutions))
        return {
            "status": attempt.head.status.value,
            "output": attempt.output,
            "replay": attempt.head.replay.model_dump(mode="json"),
            "seconds": time.perf_counter() - started,
        }
    except NonIdempotentReplayError as exc:
        return {"status": "paused", "call": exc.tool_call_id, "seconds": time.perf_counter() - started}
    except ExecutionLeasedError as exc:
        return {"status": "leased", "error": str(exc)}
    finally:
        await storage.close_async()


def run_job(job: Job, *, alarm: bool = True) -> dict[str, Any]:
    """Run one job in this process; returns its result (or never returns: the kill plan fired).

    With `alarm`, a job still running after `JOB_TIMEOUT` seconds dies of `SIGALRM` (a hang).
    """
    plan = KillPlan(**job.plan) if job.plan else None
    _State.ledgers = Path(job.ledgers)
    _State.proc = job.proc
    _State.payments = FakePaymentAPI(_State.ledgers / PAYMENTS_LEDGER)
    _State.ledgers.mkdir(parents=True, exist_ok=True)
    if alarm:
        signal.alarm(JOB_TIMEOUT)  # a hung child dies of SIGALRM, which the harness reports
    timer = arm(plan)
    try:
        return asyncio.run(_run_job_async(job))
    except Exception as exc:
        return {
            "status": "error",
            "error_type": type(exc).__name__,
            "error": str(exc),
            "traceback": traceback.format_exc(),
        }
    finally:
        if timer is not None:
            timer.cancel()


# ---- process entry points ---------------------------------------------------------------------------


def _preload(backends: Iterable[str]) -> None:
    """Import what the children will need, so a forked child starts with warm modules."""
    from perdure.storage import file, sqlite  # noqa: F401

    for backend in backends:
        try:
            if backend == "redis":
                from perdure.storage import redis  # noqa: F401
            elif backend == "postgres":
                from perdure.storage import postgres  # noqa: F401
        except ImportError:  # reported by the child that needs it
            pass


def _warm_up() -> None:
    """Run one execution on in-memory storage so that children do not pay pydantic-ai's first-run cost.

    The first agent run of a process builds schemas and adapters lazily (~0.4 s here); a child forked
    after this run starts with them built. Nothing of the run survives: its storage is in memory and
    garbage, its ledgers are deleted, no thread is left (the tools and the model are async).
    """
    with tempfile.TemporaryDirectory(prefix="crash-fuzz-warmup-") as tmp:
        job = Job(
            url="memory://", backend="memory", execution_id="warm-up", ledgers=tmp, proc="w", mode="start"
        )
        result = run_job(job, alarm=False)
    if result.get("status") != "completed":
        raise RuntimeError(f"warm-up run failed: {result}")
    _faults.disarm()


def _fork_job(line: str) -> dict[str, Any]:
    """Run one job in a forked child; report how it ended and what it returned."""
    if threading.active_count() != 1:  # a thread in the parent would be cloned half-alive
        raise RuntimeError("the fork server must stay single-threaded")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one durable process, then _exit without the parent's cleanup
        code = 0
        try:
            os.close(read_fd)
            os.dup2(2, 1)  # stray prints must not corrupt the server's protocol on stdout
            result = run_job(Job.from_json(json.loads(line)))
            with os.fdopen(write_fd, "w") as out:
                out.write(json.dumps(result, default=str))
        except BaseException:
            traceback.print_exc()
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {
        "pid": pid,
        "killed": killed,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "result": json.loads(payload) if payload else None,
    }


def serve(backends: list[str]) -> int:
    """Fork server: one job per stdin line, one JSON reply per stdout line, until stdin closes."""
    _preload(backends)
    _warm_up()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        out.write(json.dumps(_fork_job(line)) + "\n")
        out.flush()
    return 0


def main(argv: list[str]) -> int:
    """`serve [BACKEND...]` or `run JOB_JSON`."""
    if argv and argv[0] == "serve":
        return serve(argv[1:])
    if len(argv) == 2 and argv[0] == "run":
        result = run_job(Job.from_json(json.loads(argv[1])))
        sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
        sys.stdout.flush()
        return 0
    sys.stderr.write("usage: crash_fuzz_app.py serve [BACKEND...] | run JOB_JSON\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
