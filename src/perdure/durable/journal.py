"""The live side of one durable execution: replay journaled units, journal new ones.

A `JournalRun` is installed (through a context variable) for the duration of one attempt of an
execution. Every durable unit pydantic-ai hands to perdure's operation backend comes here with a
replay key. Keys never depend on timing:

- a tool call is keyed `tool:<m>/<tool_call_id>`: `m` is the ordinal of the (journaled) model
  response that asked for it and `tool_call_id` comes from that response, so the key is the same on
  every replay, and unique even when a model reuses a `tool_call_id` in a later response (a repeat
  inside one response gets `#2`, `#3`, ...). Journals written before this format (`tool:<id>`)
  are still replayed;
- every other unit (model requests, validation, event handlers, discovery) is keyed by its
  operation name and its ordinal among units of that name, which is deterministic because tool
  calls run sequentially inside an execution.

A key found in the journal returns the recorded result without running the body; the first key not
found starts live execution. Each live unit is appended to the journal together with the new head
in one atomic storage write, so a crash leaves either both or neither.

Besides results, the journal holds three kinds of bookkeeping entries: a `started` marker written
before a non-idempotent tool runs (so a crash inside it is detected on resume instead of repeating
it), one `attempt` entry per failed try under a retry policy (so attempt counts survive crashes),
and `decision` entries for human decisions (approval rounds, resolutions of interrupted calls).
Units of approval round N > 0 are keyed `r<N>/<name>#<n>`: each round is a new pydantic-ai run
whose ordinals start again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.durable_exec import record_durable_unit

from ..errors import (
    JournalMismatchError,
    NonIdempotentReplayError,
    PerdureError,
    SerializationError,
    UserError,
)
from ..records import (
    ErrorInfo,
    ExecutionIdentity,
    ExecutionRecord,
    ExecutionStatus,
    PendingCall,
    PendingDecision,
    StepKind,
    StepRecord,
    utcnow,
)
from ..storage.base import DurableExecutionStorage
from .decisions import ToolResolution
from .identity import check_instructions
from .retry import CircuitBreaker, RetryPolicy, call_with_retry
from .threads import AttemptThreads

__all__ = [
    "ExecutionAborted",
    "JournalRun",
    "StepContext",
    "UnitIdentity",
    "current_run",
    "current_step",
    "idempotency_key",
    "pending_call",
    "response_tokens",
    "serialization_failure",
]

logger = logging.getLogger("perdure")

_CURRENT: ContextVar[JournalRun | None] = ContextVar("perdure_current_run", default=None)
_STEP: ContextVar[StepContext | None] = ContextVar("perdure_current_step", default=None)


def current_run() -> JournalRun | None:
    """The execution attempt running in this context, if any."""
    return _CURRENT.get()


@dataclass(frozen=True)
class StepContext:
    """The durable unit running right now, as seen from inside a tool (or model request)."""

    execution_id: str
    key: str
    """Replay key of the unit, stable across resumes (`tool:<tool_call_id>` for tool calls)."""
    name: str
    """`tool:<name>`, `model_request`, ..."""
    attempt: int
    """1 for the first try; retries (also those of crashed processes) count up from the journal."""
    tool_call_id: str | None = None

    @property
    def idempotency_key(self) -> str:
        """A key to pass to external APIs that deduplicate requests (payments, emails, queues).

        It is the same on every retry and every resume of this unit, and different for every other
        unit, so an API that honours idempotency keys applies the effect once even when the
        unit runs again after a crash between the effect and its journal write.
        """
        return f"{self.execution_id}:{self.key}"


def current_step() -> StepContext:
    """The unit running in this context; call it inside a tool of a durable execution.

    Raises:
        UserError: Called outside a durable unit (e.g. a tool run by a plain, non-durable agent).

    """
    step = _STEP.get()
    if step is None:
        raise UserError(
            "perdure.current_step() is only available inside a tool or model request of a durable "
            "execution (run the agent through perdure's Agent or DurableExecution.run_agent)."
        )
    return step


def idempotency_key(ctx: RunContext[Any]) -> str:
    """The idempotency key of the tool call `ctx` belongs to (same value as `current_step()`'s).

    The key is `<execution id>:tool:<m>/<tool_call_id>` (`m`: the ordinal of the model response
    that asked for the call), stable across retries and resumes and unique per call.
    """
    step = _STEP.get()
    if not ctx.run_id or not ctx.tool_call_id or step is None or step.tool_call_id != ctx.tool_call_id:
        raise UserError(
            "idempotency_key(ctx) needs the RunContext of a tool call inside a durable execution."
        )
    return step.idempotency_key


class ExecutionAborted(PerdureError):
    """An operator resolved an interrupted call with `ToolResolution.abort()`; the run stops here."""

    def __init__(self, execution_id: str, tool_name: str, tool_call_id: str) -> None:
        super().__init__(
            f"Execution {execution_id!r} was cancelled by the operator's resolution of {tool_name!r} "
            f"(call {tool_call_id!r}). It will not be resumed; start a new execution to run the task again.",
            execution_id=execution_id,
            step=f"tool:{tool_name}",
        )
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id


@dataclass(frozen=True)
class UnitIdentity:
    """What the engine knows about a unit before running it."""

    kind: StepKind
    name: str
    """Step name shown to users: `model_request`, `tool:<name>`, or the operation name."""
    key_base: str
    """Ordinal namespace for units without a stable id."""
    tool_call_id: str | None = None
    args: Any = None
    """Tool arguments (tool calls), shown to operators when a call needs a decision."""


@dataclass
class _LiveUnit:
    seq: int
    name: str


def response_tokens(result: Any) -> tuple[int, int]:
    """Input and output tokens of a journaled model response (0, 0 for anything else)."""
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


class JournalRun:
    """One attempt of one execution: the journal to replay and the head to advance."""

    def __init__(
        self,
        storage: DurableExecutionStorage,
        head: ExecutionRecord,
        journal: list[StepRecord],
        *,
        debug: bool = False,
        round: int = 0,
        resolutions: Mapping[str, ToolResolution] | None = None,
        allow_changes: frozenset[str] = frozenset(),
    ) -> None:
        self.storage = storage
        self.head = head
        self.debug = debug
        self.round = round
        self.resolutions = dict(resolutions or {})
        self.allow_changes = allow_changes
        self.threads = AttemptThreads()
        """Executor of this attempt's sync functions; see `perdure.durable.threads`."""
        self._persisted = False
        """Whether this attempt wrote its head yet (the attempt start is stored with the first write)."""
        self._instructions_checked = False
        self._deferred_cancel = False
        self._call_keys: Counter[str] = Counter()
        self._legacy_used: set[str] = set()
        self._journal = {step.key: step for step in journal}
        self._replay_remaining = sum(1 for step in journal if step.kind in _RESULT_KINDS)
        self._failed_attempts: Counter[str] = Counter(
            step.key[len("attempt:") :].rsplit("#", 1)[0] for step in journal if step.kind is StepKind.ATTEMPT
        )
        self._decisions = sum(1 for step in journal if step.kind is StepKind.DECISION)
        self._ordinals: defaultdict[str, int] = defaultdict(int)
        self._live: _LiveUnit | None = None
        self.on_unit: Callable[[StepRecord, bool], None] | None = None
        """Observer called after each unit with (step, replayed); used by tests and the demo."""

    @property
    def execution_id(self) -> str:
        """Id of the execution this attempt belongs to."""
        return self.head.execution_id

    @property
    def replaying(self) -> bool:
        """Whether journaled units remain that the run has not reached yet."""
        return self._replay_remaining > 0

    def activate(self) -> Any:
        """Install this attempt as the current one; returns the token for `deactivate`."""
        return _CURRENT.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        """Undo `activate`."""
        _CURRENT.reset(token)

    def _key(self, unit: UnitIdentity) -> str:
        round_prefix = f"r{self.round}/" if self.round else ""
        if unit.tool_call_id:
            kind = "tool" if unit.kind is StepKind.TOOL_CALL else unit.key_base
            key = f"{round_prefix}{kind}:{self._ordinals['model']}/{unit.tool_call_id}"
            self._call_keys[key] += 1
            if self._call_keys[key] > 1:  # the same id twice in one response
                key = f"{key}#{self._call_keys[key]}"
            legacy = f"{kind}:{unit.tool_call_id}"
            if key not in self._journal and legacy in self._journal and legacy not in self._legacy_used:
                self._legacy_used.add(legacy)  # a journal written before per-response keys
                return legacy
            return key
        self._ordinals[unit.key_base] += 1
        return f"{round_prefix}{unit.key_base}#{self._ordinals[unit.key_base]}"

    # ---- attempt start and identity ---------------------------------------------------------------

    async def before_model_request(self, instructions_digest: str) -> None:
        """At the first model request of the attempt: check the instructions, store the attempt start.

        Runs before the request is replayed or sent. A changed instructions hash raises
        `JournalMismatchError` (unless allowed) before anything of this attempt was written.
        """
        if self._instructions_checked:
            return
        self._instructions_checked = True
        identity = self.head.identity or ExecutionIdentity()
        updated = check_instructions(
            self.execution_id, identity, instructions_digest, self.allow_changes, attempt=self.head.attempts
        )
        if updated is not None:
            self.head = self.head.model_copy(update={"identity": updated})
        if not self._persisted or updated is not None:
            await self.save_head()

    async def save_head(self) -> None:
        """Store the head as it is now (the attempt start, identity updates)."""
        await self.storage.save_state_async(self.head)
        self._persisted = True

    async def _run_body(self, body: Callable[[], Awaitable[Any]]) -> Any:
        """Run a unit's body; a cancellation that arrives while its thread runs waits for the thread.

        Async bodies are cancelled at once. A body running in a thread (a sync tool) cannot be
        interrupted: the unit waits for it, its result is journaled, and the cancellation is raised
        after that (`_deferred_cancel`), so the lease is never released while the unit still acts.
        """
        if self._deferred_cancel:  # a cancellation is pending: start nothing new
            raise asyncio.CancelledError
        inner = asyncio.ensure_future(body())
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            if not self.threads.busy:
                inner.cancel()
                await asyncio.gather(inner, return_exceptions=True)
                raise
            logger.warning(
                "[%s] cancelled while a unit runs in a thread (threads cannot be interrupted): keeping "
                "the lease until it returns and journaling its result first",
                self.execution_id,
            )
            while not inner.done():
                try:
                    await asyncio.shield(inner)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
            self._deferred_cancel = True
            return inner.result()

    async def run_unit(
        self,
        unit: UnitIdentity,
        body: Callable[[], Awaitable[Any]],
        config: Mapping[str, Any] | None = None,
    ) -> Any:
        """Return the journaled result of `unit`, or run `body` and journal its result.

        `config` is the unit's perdure config (agent defaults merged with the tool's `perdure`
        metadata): `idempotent` (tools, default True), `retry` (a `RetryPolicy`) and
        `circuit_breaker` (a `CircuitBreaker`, model requests).
        """
        config = config or {}
        key = self._key(unit)
        recorded = self._journal.get(key)
        if recorded is not None:
            if recorded.name != unit.name:
                raise JournalMismatchError(self.execution_id, str(recorded.seq), unit.name, recorded.name)
            self._replay_remaining -= 1
            self._count_replay(recorded)
            record_durable_unit(executed=False)
            if self.debug:
                logger.info(
                    "[%s] replayed step %d %s from the journal",
                    self.execution_id,
                    recorded.seq,
                    recorded.name,
                )
            if self.on_unit is not None:
                self.on_unit(recorded, True)
            return recorded.result

        if unit.kind is StepKind.TOOL_CALL and config.get("idempotent", True) is False:
            resolved = await self._guard_non_idempotent(unit, key)
            if resolved is not None:
                return resolved.result

        seq = self.head.next_seq
        self._live = _LiveUnit(seq=seq, name=unit.name)
        started = utcnow()
        policy: RetryPolicy | None = config.get("retry")
        breaker: CircuitBreaker | None = config.get("circuit_breaker")
        failed = self._failed_attempts[key]

        def step_context() -> StepContext:  # the attempt number moves with each journaled failure
            return StepContext(
                self.execution_id, key, unit.name, self._failed_attempts[key] + 1, unit.tool_call_id
            )

        step_token = _STEP.set(step_context())
        run_body = self._run_body

        async def attempt_body() -> Any:
            _STEP.set(step_context())
            return await run_body(body)

        async def record_failure(attempt: int, exc: BaseException, delay: float) -> None:
            await self._journal_attempt(unit, key, attempt, exc, delay)
            if self._deferred_cancel:  # cancelled while this try ran in its thread: no further try
                raise asyncio.CancelledError

        try:
            if policy is None and breaker is None:
                result = await run_body(body)
            else:
                result = await call_with_retry(
                    attempt_body,
                    policy=policy,
                    breaker=breaker,
                    failed_attempts=failed,
                    record_failure=record_failure,
                    execution_id=self.execution_id,
                    unit_name=unit.name,
                )
        finally:
            _STEP.reset(step_token)
        self._live = None
        seq = self.head.next_seq  # bookkeeping entries (attempts) may have taken positions meanwhile
        record_durable_unit(executed=True)
        step = StepRecord(
            execution_id=self.execution_id,
            seq=seq,
            kind=unit.kind,
            name=unit.name,
            key=key,
            result=result,
            started_at=started,
            finished_at=utcnow(),
            attempt=self._failed_attempts[key] + 1,
        )
        await self._journal_step(step)
        if self.on_unit is not None:
            self.on_unit(step, False)
        if self._deferred_cancel:  # the unit finished in its thread after a cancellation: honour it now
            raise asyncio.CancelledError
        return result

    async def _guard_non_idempotent(self, unit: UnitIdentity, key: str) -> StepRecord | None:
        """Before a non-idempotent call: detect an interrupted earlier try, else mark this one started.

        Each try gets its own marker (`started:<key>`, then `started:<key>#2`, ...). A marker
        without a result means a try was interrupted. The operator's decision for it comes from
        `resolutions`, or from the journal when a decision was already journaled after that marker
        (the process died right after journaling it): a decision is applied once, never asked twice.

        Returns the step to use as the call's result when the call was resolved as done; None when
        the call should run now.
        """
        prefix = f"started:{key}"
        markers = [
            step
            for step in self._journal.values()
            if step.kind is StepKind.STARTED and (step.key == prefix or step.key.startswith(prefix + "#"))
        ]
        marker_result = {"tool_call_id": unit.tool_call_id, "args": _jsonable(unit.args)}
        if not markers:
            await self._append_bookkeeping(StepKind.STARTED, prefix, unit.name, marker_result)
            return None
        latest = max(markers, key=lambda step: step.seq)
        call_id = unit.tool_call_id or key
        tool_name = unit.name.removeprefix("tool:")
        resolution = self.resolutions.pop(call_id, None)
        if resolution is None:
            journaled = [
                step
                for step in self._journal.values()
                if step.kind is StepKind.DECISION
                and step.key.startswith(f"decision:{key}#")
                and step.seq > latest.seq
            ]
            if not journaled:
                raise NonIdempotentReplayError(
                    self.execution_id, tool_name, call_id, unit.args, seq=latest.seq
                )
            decided = max(journaled, key=lambda step: step.seq).result
            resolution = ToolResolution(decided["action"], decided.get("result"))
        else:
            await self._append_bookkeeping(
                StepKind.DECISION,
                f"decision:{key}#{self._decisions + 1}",
                unit.name,
                {"tool_call_id": call_id, "action": resolution.action, "result": resolution.result},
            )
        if resolution.action == "abort":
            raise ExecutionAborted(self.execution_id, tool_name, call_id)
        if resolution.action == "rerun":
            logger.info(
                "[%s] re-running interrupted call %s of %s on the operator's decision",
                self.execution_id,
                call_id,
                tool_name,
            )
            # A fresh marker: if this try is interrupted too, it needs a decision of its own.
            await self._append_bookkeeping(
                StepKind.STARTED, f"{prefix}#{len(markers) + 1}", unit.name, marker_result
            )
            return None
        step = StepRecord(
            execution_id=self.execution_id,
            seq=self.head.next_seq,
            kind=StepKind.TOOL_CALL,
            name=unit.name,
            key=key,
            # pydantic-ai's wire form of a tool call's outcome, as the codec journals a real return.
            result={"result": resolution.result, "kind": "tool_return"},
            attempt=self._failed_attempts[key] + 1,
        )
        record_durable_unit(executed=False)
        await self._journal_step(step, executed=False)
        if self.on_unit is not None:
            self.on_unit(step, False)
        return step

    async def append_decision(self, key: str, name: str, result: Any) -> None:
        """Journal an operator's decision (e.g. an approval round) before the run continues."""
        await self._append_bookkeeping(StepKind.DECISION, key, name, result)

    def latest_round(self) -> dict[str, Any] | None:
        """Inputs of the latest approval round (`round`, `messages`, `approvals`), None before any."""
        rounds = [
            s for s in self._journal.values() if s.kind is StepKind.DECISION and s.key.startswith("round:")
        ]
        if not rounds:
            return None
        latest = max(rounds, key=lambda s: s.seq).result
        return latest if isinstance(latest, dict) else None

    async def _journal_attempt(
        self, unit: UnitIdentity, key: str, attempt: int, exc: BaseException, delay: float
    ) -> None:
        self._failed_attempts[key] = attempt
        await self._append_bookkeeping(
            StepKind.ATTEMPT,
            f"attempt:{key}#{attempt}",
            unit.name,
            {
                "attempt": attempt,
                "error": ErrorInfo.from_exception(exc).model_dump(mode="json"),
                "delay": delay,
            },
        )
        # call_with_retry logs the retry itself (once, at INFO).

    async def _append_bookkeeping(self, kind: StepKind, key: str, name: str, result: Any) -> None:
        """Journal a marker, attempt or decision entry; it moves `next_seq` but not the step shown."""
        now = utcnow()
        step = StepRecord(
            execution_id=self.execution_id,
            seq=self.head.next_seq,
            kind=kind,
            name=name,
            key=key,
            result=result,
            started_at=now,
            finished_at=now,
        )
        update: dict[str, Any] = {"next_seq": step.seq + 1, "updated_at": now}
        if kind is StepKind.DECISION:  # a decision answers the pause
            update.update(status=ExecutionStatus.SUCCESS, pending=None, error=None)
        new_head = self.head.model_copy(update=update)
        await self.storage.append_step_async(new_head, step)
        self.head = new_head
        self._persisted = True
        self._journal[key] = step
        if kind is StepKind.DECISION:
            self._decisions += 1

    async def _journal_step(self, step: StepRecord, *, executed: bool = True) -> None:
        head = self.head
        usage = head.usage
        replay = head.replay
        if step.kind is StepKind.MODEL_REQUEST:
            tokens_in, tokens_out = response_tokens(step.result)
            step.tokens = tokens_in + tokens_out
            usage = usage.model_copy(
                update={
                    "requests": usage.requests + 1,
                    "input_tokens": usage.input_tokens + tokens_in,
                    "output_tokens": usage.output_tokens + tokens_out,
                }
            )
            replay = replay.model_copy(update={"executed_model_requests": replay.executed_model_requests + 1})
        elif step.kind is StepKind.TOOL_CALL:
            usage = usage.model_copy(update={"tool_calls": usage.tool_calls + 1})
            if executed:  # a call resolved as done by an operator took effect, but not here
                replay = replay.model_copy(update={"executed_tool_calls": replay.executed_tool_calls + 1})
        new_head = head.model_copy(
            update={
                "status": ExecutionStatus.SUCCESS,
                "step_index": step.seq,
                "step_name": step.name,
                "error": None,
                "updated_at": step.finished_at,
                "next_seq": step.seq + 1,
                "usage": usage,
                "replay": replay,
            }
        )
        await self.storage.append_step_async(new_head, step)
        self.head = new_head
        self._persisted = True
        if self.debug:
            logger.info(
                "[%s] checkpoint: step %d %s journaled (status=success)",
                self.execution_id,
                step.seq,
                step.name,
            )

    def _count_replay(self, step: StepRecord) -> None:
        replay = self.head.replay
        if step.kind is StepKind.MODEL_REQUEST:
            update = {
                "replayed_model_requests": replay.replayed_model_requests + 1,
                "tokens_saved": replay.tokens_saved + step.tokens,
            }
        elif step.kind is StepKind.TOOL_CALL:
            update = {"replayed_tool_calls": replay.replayed_tool_calls + 1}
        else:
            update = {"replayed_other": replay.replayed_other + 1}
        # Replay counters are kept in memory and stored with the next write, so replay costs no I/O.
        self.head = self.head.model_copy(update={"replay": replay.model_copy(update=update)})

    # ---- end states -----------------------------------------------------------------------------

    def failure_point(self) -> tuple[int, str]:
        """The step a failure belongs to: the live unit, else the position after the last step."""
        if self._live is not None:
            return self._live.seq, self._live.name
        return self.head.next_seq, "run"

    async def mark_failed(self, exc: BaseException) -> None:
        """Store the head as `failed` at the failing step, with the error's type, message, traceback."""
        seq, name = self.failure_point()
        self.head = self.head.model_copy(
            update={
                "status": ExecutionStatus.FAILED,
                "step_index": seq,
                "step_name": name,
                "error": ErrorInfo.from_exception(exc),
                "updated_at": utcnow(),
            }
        )
        await self.save_head()
        if self.debug:
            logger.info(
                "[%s] checkpoint: step %d %s failed: %s", self.execution_id, seq, name, self.head.error
            )

    async def mark_paused(self, pending: PendingDecision, error: BaseException | None = None) -> None:
        """Store the head as `paused`, waiting for the human decision `pending` describes."""
        self.head = self.head.model_copy(
            update={
                "status": ExecutionStatus.PAUSED,
                "pending": pending,
                "error": ErrorInfo.from_exception(error) if error is not None else None,
                "updated_at": utcnow(),
            }
        )
        await self.save_head()
        if self.debug:
            logger.info(
                "[%s] paused: waiting for %s of %s",
                self.execution_id,
                pending.kind,
                ", ".join(f"{c.tool_name}({c.tool_call_id})" for c in pending.calls),
            )

    async def mark_cancelled(self, exc: BaseException) -> None:
        """Store the head as `cancelled` (an operator aborted it)."""
        self.head = self.head.model_copy(
            update={
                "status": ExecutionStatus.CANCELLED,
                "pending": None,
                "error": ErrorInfo.from_exception(exc),
                "updated_at": utcnow(),
            }
        )
        await self.save_head()

    async def mark_completed(self, output: Any) -> None:
        """Store the head as `completed` with the run's output."""
        self.head = self.head.model_copy(
            update={
                "status": ExecutionStatus.COMPLETED,
                "error": None,
                "pending": None,
                "output": output,
                "updated_at": utcnow(),
            }
        )
        await self.save_head()
        if self.debug:
            logger.info("[%s] completed after %d journaled steps", self.execution_id, self.head.next_seq)


_RESULT_KINDS = frozenset({StepKind.MODEL_REQUEST, StepKind.TOOL_CALL, StepKind.OTHER})


def _jsonable(value: Any) -> Any:
    from pydantic_core import to_jsonable_python

    try:
        return to_jsonable_python(value)
    except Exception:  # arguments are informational here; never fail the run over them
        return repr(value)


def pending_call(exc: NonIdempotentReplayError) -> PendingCall:
    """The pending entry an operator sees for an interrupted non-idempotent call."""
    return PendingCall(tool_call_id=exc.tool_call_id, tool_name=exc.tool_name, args=_jsonable(exc.tool_args))


_UNSERIALIZABLE = re.compile(r"type:?\s*<class '([^']+)'>|type ([\w.]+)")


def serialization_failure(exc: Exception) -> BaseException:
    """Turn a codec failure inside a unit into perdure's typed error naming execution and step."""
    run = current_run()
    execution_id = run.execution_id if run is not None else "?"
    step = run.failure_point()[1] if run is not None else "?"
    match = _UNSERIALIZABLE.search(str(exc))
    value_type = next((g for g in match.groups() if g), "unknown") if match else "unknown"
    return SerializationError(execution_id, step, value_type, str(exc).splitlines()[0])
