"""The live side of one durable execution: replay journaled units, journal new ones.

A `JournalRun` is installed (through a context variable) for the duration of one attempt of an
execution. Every durable unit pydantic-ai hands to perdure's operation backend comes here and gets
a replay key that never depends on timing (`tool:<m>/<tool_call_id>` for tool calls, `<name>#<n>`
for other units; the formats live in `perdure.durable._keys`).

A key found in the journal returns the recorded result without running the body; the first key not
found starts live execution. Each live unit is appended to the journal together with the new head
in one atomic storage write, so a crash leaves either both or neither.

Besides results, the journal holds three kinds of bookkeeping entries: a `started` marker written
before a non-idempotent tool runs (so a crash inside it is detected on resume instead of repeating
it), one `attempt` entry per failed try under a retry policy (so attempt counts survive crashes),
and `decision` entries for human decisions (approval rounds, resolutions of interrupted calls).

The module is longer than most on purpose: `JournalRun` is one state machine (the journal read at
the start, the head it advances, the key allocator, failed-attempt counts, the live unit), and
replay, live units, bookkeeping and end states all read and write that shared state. Key formats,
the step context, retries and head transitions live in their own modules.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic_ai.durable_exec import record_durable_unit

from .. import _faults
from ..errors import (
    ExecutionAborted,
    ExecutionCancelledError,
    JournalMismatchError,
    NonIdempotentReplayError,
    SerializationError,
)
from ..events import _derive as events_of
from ..events._bus import Emitter
from ..records import (
    RESULT_KINDS,
    ErrorInfo,
    ExecutionIdentity,
    ExecutionRecord,
    PendingCall,
    PendingDecision,
    StepKind,
    StepRecord,
    utcnow,
)
from ..storage.base import DurableExecutionStorage
from ._keys import (
    TOOL,
    UnitKeys,
    attempt_key,
    attempt_unit,
    decision_key,
    is_decision_for,
    is_round_key,
    is_started_marker_for,
    started_key,
)
from ._threads import AttemptThreads
from .circuit import CircuitBreaker
from .decisions import ToolResolution
from .identity import check_instructions
from .retry import RetryPolicy, call_with_retry
from .step_context import STEP, StepContext, current_step, idempotency_key

__all__ = [  # ExecutionAborted and the step context are re-exported from their old home here
    "ExecutionAborted",
    "JournalRun",
    "StepContext",
    "UnitIdentity",
    "current_run",
    "current_step",
    "idempotency_key",
    "in_unit_scope",
    "pending_call",
    "response_tokens",
    "serialization_failure",
]

logger = logging.getLogger("perdure")

_CURRENT: ContextVar[JournalRun | None] = ContextVar("perdure_current_run", default=None)


def current_run() -> JournalRun | None:
    """The execution attempt running in this context, if any."""
    return _CURRENT.get()


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
    key: str | None = None
    """A fixed journal key (a workflow's positional units, `w<n>`) instead of an ordinal one."""


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
        """Executor of this attempt's sync functions; see `perdure.durable._threads`."""
        self._persisted = False
        """Whether this attempt wrote its head yet (the attempt start is stored with the first write)."""
        self._instructions_checked = False
        self._deferred_cancel = False
        self._unsure = False
        """An append raised: the storage may have applied it anyway (see `_adopt_stored_progress`)."""
        self.cancel_requested: ExecutionCancelledError | None = None
        """Set (by the lease heartbeat) when an operator asked to cancel this execution: the next unit
        raises it instead of starting, so the run stops at a unit boundary (see `perdure.durable._cancel`)."""
        self._journal = {step.key: step for step in journal}
        self._keys = UnitKeys(self._journal)
        self._replay_remaining = sum(1 for step in journal if step.kind in RESULT_KINDS)
        self._failed_attempts: Counter[str] = Counter(
            unit for step in journal if step.kind is StepKind.ATTEMPT and (unit := attempt_unit(step.key))
        )
        self._decisions = sum(1 for step in journal if step.kind is StepKind.DECISION)
        self._live: _LiveUnit | None = None
        self._position = 0
        self._next_yield = time.monotonic() + _YIELD_EVERY
        self.batch_size = 1
        """Units journaled per storage write: above 1, finished units wait in `_pending` until there are
        this many, or until any other write (bookkeeping, a head save, the attempt's end) flushes them.
        A crash loses the waiting ones: up to `batch_size - 1` finished units run again."""
        self._pending: list[StepRecord] = []
        self._pending_heads: list[ExecutionRecord] = []
        """The head after each pending unit (a flush split by the backend's `max_batch` needs them)."""
        self._nested: Counter[tuple[str, str]] = Counter()
        self.last_key = ""
        """Key of the unit `run_unit` handled last."""
        self.workflow: str | None = None
        """The workflow this attempt runs (None: an agent run)."""
        self.on_unit: Callable[[StepRecord, bool], None] | None = None
        """Observer called after each unit with (step, replayed); used by tests and the demo."""
        self.events = Emitter()
        """Where this attempt's events go (the handle's listeners and the process's); see `perdure.events`."""

    @property
    def execution_id(self) -> str:
        """Id of the execution this attempt belongs to."""
        return self.head.execution_id

    @property
    def replaying(self) -> bool:
        """Whether journaled units remain that the run has not reached yet."""
        return self._replay_remaining > 0

    @property
    def instructions_checked(self) -> bool:
        """Whether this attempt already checked its instructions (done at its first model request)."""
        return self._instructions_checked

    def activate(self) -> Any:
        """Install this attempt as the current one; returns the token for `deactivate`."""
        return _CURRENT.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        """Undo `activate`."""
        _CURRENT.reset(token)

    def _key(self, unit: UnitIdentity) -> str:
        if unit.key is not None:
            return unit.key
        scope = _SCOPE.get()
        prefix, keys = scope if scope is not None else ("", self._keys)
        if unit.tool_call_id:
            kind = TOOL if unit.kind is StepKind.TOOL_CALL else unit.key_base
            return prefix + keys.call(kind, unit.tool_call_id, round=self.round)
        return prefix + keys.unit(unit.key_base, round=self.round)

    def recorded(self, key: str) -> StepRecord | None:
        """The journaled entry of `key` this attempt replayed, None when the unit ran live."""
        return self._journal.get(key)

    # ---- workflows: positional units and scopes of nested agent runs ------------------------------

    def next_position(self) -> int:
        """The position (1-based) of the workflow's next own unit."""
        self._position += 1
        return self._position

    async def mark_position(self, key: str, kind: StepKind, name: str, result: Any) -> None:
        """Journal a marker at a workflow position, or check the one journaled there names `name`."""
        recorded = self._journal.get(key)
        if recorded is not None:
            if recorded.name != name:
                raise JournalMismatchError(self.execution_id, str(recorded.seq), name, recorded.name)
            return
        await self._append_bookkeeping(kind, key, name, result)

    def sub_ordinal(self, unit_key: str, name: str) -> int:
        """The ordinal of the next run of agent `name` nested in the unit `unit_key` (1-based)."""
        self._nested[(unit_key, name)] += 1
        return self._nested[(unit_key, name)]

    @contextmanager
    def scoped(self, prefix: str) -> Iterator[None]:
        """Key the units run inside with `prefix` and ordinals of their own (a nested agent run)."""
        token = _SCOPE.set((prefix, UnitKeys(self._journal)))
        try:
            yield
        finally:
            _SCOPE.reset(token)

    # ---- attempt start and identity ---------------------------------------------------------------

    async def before_model_request(self, instructions_digest: str) -> None:
        """At the first model request of the attempt: check the instructions, store the attempt start.

        Runs before the request is replayed or sent. A changed instructions hash raises
        `JournalMismatchError` (unless allowed) before anything of this attempt was written.
        """
        if self._instructions_checked or _SCOPE.get() is not None:
            return  # an agent run inside a workflow: the workflow's position checks cover it
        self._instructions_checked = True
        identity = self.head.identity or ExecutionIdentity()
        updated = check_instructions(
            self.execution_id, identity, instructions_digest, self.allow_changes, attempt=self.head.attempts
        )
        if updated is not None:
            self.head = self.head.model_copy(update={"identity": updated})
        if not self._persisted or updated is not None:
            await self.save_head()

    async def flush(self) -> None:
        """Journal the finished units waiting in the batch (one storage write)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        limit = self.storage.max_batch or len(pending)
        for start in range(0, len(pending), limit):  # at most the backend's largest batch per write
            chunk = pending[start : start + limit]
            head = self.head if start + limit >= len(pending) else self._pending_heads[start + limit - 1]
            _faults.point("before_journal_write", chunk[-1].kind)
            await self._append(self.storage.append_steps_async(head, chunk))
            _faults.point("after_journal_write", chunk[-1].kind)
        self._pending_heads = []
        self._persisted = True

    async def _append(self, write: Awaitable[None]) -> None:
        """Await a journal append; when it raises, whether the storage applied it is unknown."""
        try:
            await write
        except Exception:
            self._unsure = True
            raise

    async def _adopt_stored_progress(self) -> None:
        """After an append whose outcome is unknown, count what the storage holds before writing the head.

        A server can apply an append (journal entry and head, in one transaction or script) and lose
        the reply (a socket timeout, a connection cut after COMMIT). Writing this attempt's older head
        over it would make the head count fewer entries than the journal holds, which the next resume
        refuses as corruption; the stored head's journal position and usage are taken instead, so the
        resume replays the applied unit. When the storage cannot be read, the head is not written
        either (the caller logs it), which leaves the applied append and its head consistent.
        """
        self._unsure = False
        stored = await self.storage.load_state_async(self.execution_id)
        if stored is None or stored.next_seq <= self.head.next_seq:
            return
        self.head = self.head.model_copy(
            update={
                "next_seq": stored.next_seq,
                "usage": stored.usage,
                "replay": stored.replay,
                "saved": stored.saved,
            }
        )

    async def save_head(self) -> None:
        """Store the head as it is now (the attempt start, identity updates, the attempt's end)."""
        await self.flush()
        if self._unsure:
            await self._adopt_stored_progress()
        _faults.point("before_head_save")
        await self.storage.save_state_async(self.head)
        _faults.point("after_head_save")
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

    async def _run_direct(self, body: Callable[[], Awaitable[Any]]) -> Any:
        """Run a unit's body that cannot leave a side effect in a thread: cancelled at once."""
        if self._deferred_cancel:
            raise asyncio.CancelledError
        return await body()

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
        if self.cancel_requested is not None:  # an operator's cancel: stop before this unit starts
            raise self.cancel_requested
        if time.monotonic() >= self._next_yield:  # units that never wait would starve the heartbeat
            self._next_yield = time.monotonic() + _YIELD_EVERY
            await asyncio.sleep(0)
        config = config or {}
        key = self.last_key = self._key(unit)
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
            if self.events.active:
                self.events.emit(events_of.unit_done(self.head, recorded, replayed=True))
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

        if unit.kind is StepKind.TOOL_CALL:
            _faults.point("before_tool_call", unit.name)
        if self.events.active:
            self.events.emit(
                events_of.unit_started(
                    self.head, unit.kind, unit.name, key, seq, failed + 1, unit.tool_call_id
                )
            )
        step_token = STEP.set(step_context())
        # Only a tool call or a workflow step can hold a side effect in a thread; other units skip
        # the task that costs ~35 us per unit (a model request cancelled mid-thread is paid again).
        run_body = self._run_body if unit.kind in _THREADED else self._run_direct

        async def attempt_body() -> Any:
            STEP.set(step_context())
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
        except Exception as exc:
            if self.events.active:
                duration = (utcnow() - started).total_seconds()
                error = ErrorInfo.from_exception(exc)
                attempt = self._failed_attempts[key] + 1
                self.events.emit(
                    events_of.unit_failed(
                        self.head, unit.kind, unit.name, key, seq, attempt, error, duration, unit.tool_call_id
                    )
                )
            raise
        finally:
            STEP.reset(step_token)
        if unit.kind is StepKind.MODEL_REQUEST:  # the result is in memory only, not journaled yet
            _faults.point("inside_model_request")
        elif unit.kind is StepKind.TOOL_CALL:
            _faults.point("after_tool_call", unit.name)
        elif unit.kind is StepKind.STEP:
            _faults.point("after_step", unit.name)
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
        if self.events.active:
            self.events.emit(events_of.unit_done(self.head, step, replayed=False))
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
        markers = [
            step
            for step in self._journal.values()
            if step.kind is StepKind.STARTED and is_started_marker_for(step.key, key)
        ]
        marker_result = {"tool_call_id": unit.tool_call_id, "args": _jsonable(unit.args)}
        if not markers:
            await self._append_bookkeeping(StepKind.STARTED, started_key(key), unit.name, marker_result)
            return None
        latest = max(markers, key=lambda step: step.seq)
        call_id = unit.tool_call_id or key
        tool_name = unit.name.removeprefix("tool:")
        resolution = self.resolutions.pop(call_id, None)
        if resolution is None:
            journaled = [
                step
                for step in self._journal.values()
                if step.kind is StepKind.DECISION and is_decision_for(step.key, key) and step.seq > latest.seq
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
                decision_key(key, self._decisions + 1),
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
                StepKind.STARTED, started_key(key, len(markers) + 1), unit.name, marker_result
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
        if self.events.active:
            self.events.emit(events_of.unit_done(self.head, step, replayed=False))
        return step

    async def append_decision(self, key: str, name: str, result: Any) -> None:
        """Journal an operator's decision (e.g. an approval round) before the run continues."""
        await self._append_bookkeeping(StepKind.DECISION, key, name, result)

    def latest_round(self) -> dict[str, Any] | None:
        """Inputs of the latest approval round (`round`, `messages`, `approvals`), None before any."""
        rounds = [s for s in self._journal.values() if s.kind is StepKind.DECISION and is_round_key(s.key)]
        if not rounds:
            return None
        latest = max(rounds, key=lambda s: s.seq).result
        return latest if isinstance(latest, dict) else None

    async def _journal_attempt(
        self, unit: UnitIdentity, key: str, attempt: int, exc: BaseException, delay: float
    ) -> None:
        self._failed_attempts[key] = attempt
        entry = await self._append_bookkeeping(
            StepKind.ATTEMPT,
            attempt_key(key, attempt),
            unit.name,
            {
                "attempt": attempt,
                "error": ErrorInfo.from_exception(exc).model_dump(mode="json"),
                "delay": delay,
            },
        )
        if self.events.active:
            self.events.emit(events_of.unit_retried(self.head, entry, unit.kind))
        # call_with_retry logs the retry itself (once, at INFO).

    async def _append_bookkeeping(self, kind: StepKind, key: str, name: str, result: Any) -> StepRecord:
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
        await self.flush()  # entries reach the journal in seq order
        # A decision answers the pause; markers and attempts only take a journal position.
        new_head = self.head.decided(step) if kind is StepKind.DECISION else self.head.noted(step)
        _faults.point("before_journal_write", step.kind)
        await self._append(self.storage.append_step_async(new_head, step))
        _faults.point("after_journal_write", step.kind)
        self.head = new_head
        self._persisted = True
        self._journal[key] = step
        if kind is StepKind.DECISION:
            self._decisions += 1
        return step

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
        new_head = head.advanced(step, usage, replay)
        if self.batch_size > 1 and self.storage.atomic_batches:  # else one write per unit saves nothing
            self.head = new_head
            self._pending.append(step)
            self._pending_heads.append(new_head)
            if len(self._pending) >= self.batch_size:
                await self.flush()
            return
        _faults.point("before_journal_write", step.kind)
        await self._append(self.storage.append_step_async(new_head, step))
        _faults.point("after_journal_write", step.kind)
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
        saved = self.head.saved
        if step.kind is StepKind.MODEL_REQUEST:
            update = {
                "replayed_model_requests": replay.replayed_model_requests + 1,
                "tokens_saved": replay.tokens_saved + step.tokens,
            }
            total = {"requests": saved.requests + 1, "tokens": saved.tokens + step.tokens}
        elif step.kind is StepKind.TOOL_CALL:
            update = {"replayed_tool_calls": replay.replayed_tool_calls + 1}
            total = {"tool_calls": saved.tool_calls + 1}
        else:
            update = {"replayed_other": replay.replayed_other + 1}
            total = {"other": saved.other + 1}
        # Replay counters are kept in memory and stored with the next write, so replay costs no I/O.
        self.head = self.head.model_copy(
            update={"replay": replay.model_copy(update=update), "saved": saved.model_copy(update=total)}
        )

    # ---- end states -----------------------------------------------------------------------------

    def emit_start(self) -> None:
        """Announce this attempt (`execution_started` or `execution_resumed`) to the listeners."""
        if self.events.active:
            self.events.emit(events_of.attempt_started(self.head))

    def _emit_end(self) -> None:
        if self.events.active and (event := events_of.execution_ended(self.head)) is not None:
            self.events.emit(event)

    def failure_point(self) -> tuple[int, str]:
        """The step a failure belongs to: the live unit, else the position after the last step."""
        if self._live is not None:
            return self._live.seq, self._live.name
        return self.head.next_seq, "run"

    async def mark_failed(self, exc: BaseException) -> None:
        """Store the head as `failed` at the failing step, with the error's type, message, traceback."""
        seq, name = self.failure_point()
        self.head = self.head.failed(exc, seq, name)
        await self.save_head()
        self._emit_end()
        if self.debug:
            logger.info(
                "[%s] checkpoint: step %d %s failed: %s", self.execution_id, seq, name, self.head.error
            )

    async def mark_paused(self, pending: PendingDecision, error: BaseException | None = None) -> None:
        """Store the head as `paused`, waiting for the human decision `pending` describes."""
        self.head = self.head.paused(pending, error)
        await self.save_head()
        self._emit_end()
        if self.debug:
            logger.info(
                "[%s] paused: waiting for %s of %s",
                self.execution_id,
                pending.kind,
                ", ".join(f"{c.tool_name}({c.tool_call_id})" for c in pending.calls),
            )

    async def mark_cancelled(self, exc: BaseException) -> None:
        """Store the head as `cancelled` (an operator aborted it)."""
        self.head = self.head.cancelled(exc)
        await self.save_head()
        self._emit_end()

    async def mark_completed(self, output: Any) -> None:
        """Store the head as `completed` with the run's output."""
        self.head = self.head.completed(output)
        await self.save_head()
        self._emit_end()
        if self.debug:
            logger.info("[%s] completed after %d journaled steps", self.execution_id, self.head.next_seq)


_YIELD_EVERY = 0.05
"""Seconds between forced trips through the event loop: a run of units that all complete without
waiting (fast async steps, SQLite writes, a long replay) would otherwise never let the lease
heartbeat task run, and the lease could expire under a live attempt."""
_THREADED = frozenset({StepKind.TOOL_CALL, StepKind.STEP})
"""Units whose body may run user code in a thread (see `_run_body`)."""
_SCOPE: ContextVar[tuple[str, UnitKeys] | None] = ContextVar("perdure_unit_scope", default=None)
"""Key prefix and ordinals of the agent run inside a workflow that is running in this context."""


def _jsonable(value: Any) -> Any:
    from pydantic_core import to_jsonable_python

    try:
        return to_jsonable_python(value)
    except Exception:  # arguments are informational here; never fail the run over them
        return repr(value)


def in_unit_scope() -> bool:
    """Whether an agent run inside a workflow is running in this context (its units are scoped)."""
    return _SCOPE.get() is not None


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
