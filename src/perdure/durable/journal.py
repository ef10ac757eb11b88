"""The live side of one durable execution: replay journaled units, journal new ones.

A `JournalRun` is installed (through a context variable) for the duration of one attempt of an
execution. Every durable unit pydantic-ai hands to perdure's operation backend comes here with a
replay key. Keys never depend on timing:

- a tool call is keyed by its `tool_call_id`, which comes from the (journaled) model response that
  asked for it, so it is the same on every replay;
- every other unit (model requests, validation, event handlers, discovery) is keyed by its
  operation name and its ordinal among units of that name, which is deterministic because tool
  calls run sequentially inside an execution.

A key found in the journal returns the recorded result without running the body; the first key not
found starts live execution. Each live unit is appended to the journal together with the new head
in one atomic storage write, so a crash leaves either both or neither.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic_ai.durable_exec import record_durable_unit

from ..errors import JournalMismatchError, SerializationError
from ..records import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    StepKind,
    StepRecord,
    utcnow,
)
from ..storage.base import DurableExecutionStorage

__all__ = ["JournalRun", "UnitIdentity", "current_run", "response_tokens", "serialization_failure"]

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
    ) -> None:
        self.storage = storage
        self.head = head
        self.debug = debug
        self._journal = {step.key: step for step in journal}
        self._replay_remaining = len(journal)
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
        if unit.tool_call_id:
            prefix = "tool" if unit.kind is StepKind.TOOL_CALL else unit.key_base
            return f"{prefix}:{unit.tool_call_id}"
        self._ordinals[unit.key_base] += 1
        return f"{unit.key_base}#{self._ordinals[unit.key_base]}"

    async def run_unit(self, unit: UnitIdentity, body: Callable[[], Awaitable[Any]]) -> Any:
        """Return the journaled result of `unit`, or run `body` and journal its result."""
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

        seq = self.head.next_seq
        self._live = _LiveUnit(seq=seq, name=unit.name)
        started = utcnow()
        result = await body()
        self._live = None
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
            attempt=self.head.attempts,
        )
        await self._journal_step(step)
        if self.on_unit is not None:
            self.on_unit(step, False)
        return result

    async def _journal_step(self, step: StepRecord) -> None:
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
        await self.storage.save_state_async(self.head)
        if self.debug:
            logger.info(
                "[%s] checkpoint: step %d %s failed: %s", self.execution_id, seq, name, self.head.error
            )

    async def mark_completed(self, output: Any) -> None:
        """Store the head as `completed` with the run's output."""
        self.head = self.head.model_copy(
            update={
                "status": ExecutionStatus.COMPLETED,
                "error": None,
                "output": output,
                "updated_at": utcnow(),
            }
        )
        await self.storage.save_state_async(self.head)
        if self.debug:
            logger.info("[%s] completed after %d journaled steps", self.execution_id, self.head.next_seq)


_UNSERIALIZABLE = re.compile(r"type:?\s*<class '([^']+)'>|type ([\w.]+)")


def serialization_failure(exc: Exception) -> BaseException:
    """Turn a codec failure inside a unit into perdure's typed error naming execution and step."""
    run = current_run()
    execution_id = run.execution_id if run is not None else "?"
    step = run.failure_point()[1] if run is not None else "?"
    match = _UNSERIALIZABLE.search(str(exc))
    value_type = next((g for g in match.groups() if g), "unknown") if match else "unknown"
    return SerializationError(execution_id, step, value_type, str(exc).splitlines()[0])
