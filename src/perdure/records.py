"""The data model every storage backend persists.

An execution has one small *head* record (`ExecutionRecord`), overwritten as the run advances,
and an append-only *journal* of `StepRecord`s, one per completed durable unit. Writing a step
costs the size of that step plus the head, never the size of the history, which is why the head
holds counters and the latest step only and the journal holds the results.
"""

from __future__ import annotations

import secrets
import traceback as _traceback
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._redact import redact

__all__ = [
    "RESULT_KINDS",
    "SCHEMA_VERSION",
    "ErrorInfo",
    "ExecutionIdentity",
    "ExecutionRecord",
    "IdentityChange",
    "ExecutionStatus",
    "PendingCall",
    "PendingDecision",
    "ReplayStats",
    "SavedTotals",
    "StepKind",
    "StepRecord",
    "TaskSnapshot",
    "ToolRef",
    "UsageTotals",
    "new_execution_id",
    "utcnow",
]

SCHEMA_VERSION = 1
"""Version of the stored record layout; a reader refuses records with a higher version."""


def utcnow() -> datetime:
    """Timezone-aware current time; every stored timestamp is UTC."""
    return datetime.now(UTC)


def new_execution_id(now: datetime | None = None) -> str:
    """Return an id like `20261122135501-a1b2c3d4`: sortable by start time, unique by its random tail."""
    moment = (now or utcnow()).astimezone(UTC)
    return f"{moment:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


class ExecutionStatus(StrEnum):
    """Status of an execution, with the seed API's meanings."""

    SUCCESS = "success"
    """The last step succeeded and the run is still in progress (or was interrupted)."""
    PAUSED = "paused"
    """The run stopped on purpose and waits for input (for example a human approval)."""
    FAILED = "failed"
    """A step raised; `error` says which and why. Resuming retries that step."""
    COMPLETED = "completed"
    """The run finished and its output is stored."""
    CANCELLED = "cancelled"
    """An operator cancelled the run; it will not be resumed automatically."""


class StepKind(StrEnum):
    """What kind of durable unit a journal entry records."""

    MODEL_REQUEST = "model_request"
    TOOL_CALL = "tool_call"
    OTHER = "other"
    STARTED = "started"
    """Marker journaled before a non-idempotent tool runs; its key is `started:<unit key>`."""
    ATTEMPT = "attempt"
    """A failed attempt of a unit under a retry policy; its key is `attempt:<unit key>#<n>`."""
    DECISION = "decision"
    """An operator's decision (approval, denial, manual result) journaled before the run resumes."""
    STEP = "step"
    """A workflow's own unit: a `@step` result, a `sleep` wake-up time, `now()`, `random()`, a saved state."""
    AGENT = "agent"
    """Marks the position of an agent run inside a workflow; the run's units follow under its scope."""
    CHECKPOINT = "checkpoint"
    """A manual checkpoint: a description and a state payload created inside a run."""
    REWIND = "rewind"
    """An operator rewound the execution: the entries after `to_step` before this one are superseded."""


RESULT_KINDS = frozenset(
    {StepKind.MODEL_REQUEST, StepKind.TOOL_CALL, StepKind.OTHER, StepKind.STEP, StepKind.CHECKPOINT}
)
"""Journal entries that are a unit's result (the others are bookkeeping: positions, approvals, ...)."""


class _Record(BaseModel):
    # NaN and infinities serialize as the (non-JSON) constants so that `perdure.codec` sees and refuses
    # them instead of storing null.
    model_config = ConfigDict(
        extra="ignore", validate_assignment=False, use_enum_values=False, ser_json_inf_nan="constants"
    )


def _storable(text: str) -> str:
    """`text` with credentials redacted and unpaired surrogates escaped (UTF-8 cannot store them)."""
    text = redact(text)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class ErrorInfo(_Record):
    """The error a failed step raised: enough for an operator to act without the process's logs."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Capture type (qualified), message and formatted traceback of `exc`.

        Credentials in the message and the traceback (API keys, bearer tokens, passwords in URLs,
        `api_key=...`) are replaced by `***` (see `perdure._redact`): the head is readable by
        whoever can list executions, and providers echo keys in their error messages.
        """
        exc_type = type(exc)
        name = exc_type.__qualname__
        if exc_type.__module__ not in ("builtins", "__main__"):
            name = f"{exc_type.__module__}.{name}"
        return cls(
            type=name,
            message=_storable(str(exc)),
            traceback=_storable("".join(_traceback.format_exception(exc))),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class UsageTotals(_Record):
    """Model usage of an execution, counted once per journaled unit (replays do not double it)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class SavedTotals(_Record):
    """What every resume of an execution took from the journal instead of paying again, summed."""

    requests: int = 0
    tokens: int = 0
    tool_calls: int = 0
    other: int = 0


class ReplayStats(_Record):
    """What the latest resume took from the journal instead of running again."""

    resumes: int = 0
    replayed_model_requests: int = 0
    replayed_tool_calls: int = 0
    replayed_other: int = 0
    executed_model_requests: int = 0
    executed_tool_calls: int = 0
    tokens_saved: int = 0

    @property
    def replayed_units(self) -> int:
        """Units of the latest attempt answered from the journal."""
        return self.replayed_model_requests + self.replayed_tool_calls + self.replayed_other


class ToolRef(_Record):
    """A tool as recorded with the task: its name and, when it has one, an importable reference."""

    name: str
    ref: str | None = None
    """`module:qualname` of a module-level function: a lookup key into the tools the resuming program
    registered (never imported), and a hint in error messages."""


class TaskSnapshot(_Record):
    """What is needed to run the task again in another process, without pickle."""

    description: str = ""
    response_format: str | None = None
    """`module:qualname` of the output type (a lookup key among registered types), None for text."""
    tools: list[ToolRef] = Field(default_factory=list)
    model: str | None = None
    """The model as a string (`provider:name`), when it has one."""
    agent_name: str | None = None
    instructions: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    """Free-form JSON data the caller attached to the task."""
    workflow: str | None = None
    """The registered name of the workflow this execution runs (None for an agent run)."""
    workflow_args: dict[str, Any] | None = None
    """The workflow's arguments as JSON (`{"arguments": {name: value}}`), for the calls of its resumes."""
    expected_steps: int | None = None
    """How many units the run is expected to take (`Task(expected_steps=N)`, `@workflow(steps=N)`):
    the denominator of `execution_summary`'s completion percentage. None: unknown."""


class IdentityChange(_Record):
    """A deliberate difference a resume accepted (`allow_changes`), kept for the audit trail."""

    at: datetime = Field(default_factory=utcnow)
    attempt: int = 0
    changes: list[str] = Field(default_factory=list)
    """What changed, e.g. `tool 'fetch' schema 1a2b3c -> 4d5e6f`, `model a -> b`."""


class ExecutionIdentity(_Record):
    """What an execution ran, recorded at its first run and compared before every resume.

    Hashes are short SHA-256 prefixes of canonical JSON; see `perdure.durable.identity`.
    """

    agent_name: str | None = None
    model: str | None = None
    """The model of the latest attempt (a different model on resume is allowed: failover)."""
    models: list[str] = Field(default_factory=list)
    """Every model the execution ran with, in order."""
    tools: dict[str, str] = Field(default_factory=dict)
    """Function tool name -> hash of its parameters' JSON schema."""
    output_ref: str | None = None
    output_hash: str | None = None
    instructions_hash: str | None = None
    """Hash of the instructions and system prompts of the first model request (None until then)."""
    prompt_hash: str | None = None
    changes: list[IdentityChange] = Field(default_factory=list)


class PendingCall(_Record):
    """A tool call waiting for a human: an approval, or a decision about an interrupted call."""

    tool_call_id: str
    tool_name: str
    args: Any = None


class PendingDecision(_Record):
    """Why a `paused` execution waits, and what it needs to continue."""

    kind: Literal["approval", "non_idempotent"]
    """`approval`: tools that require approval; `non_idempotent`: a call interrupted mid-effect."""
    calls: list[PendingCall] = Field(default_factory=list)
    round: int = 0
    """Approval round that paused (each `continue_durable(approvals=...)` starts the next one)."""
    messages: list[Any] | None = None
    """Message history at the pause (JSON), from which the next approval round continues."""


class ExecutionRecord(_Record):
    """The one head record of an execution, overwritten after every step."""

    execution_id: str
    status: ExecutionStatus = ExecutionStatus.SUCCESS
    step_index: int = -1
    """Journal sequence of the last step written (or of the failing step when `failed`); -1 before any."""
    step_name: str = ""
    """`model_request`, `tool:<name>`, ... of that step."""
    error: ErrorInfo | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    task: TaskSnapshot = Field(default_factory=TaskSnapshot)
    usage: UsageTotals = Field(default_factory=UsageTotals)
    replay: ReplayStats = Field(default_factory=ReplayStats)
    saved: SavedTotals = Field(default_factory=SavedTotals)
    """Summed over all resumes (`replay` is the latest attempt's only)."""
    next_seq: int = 0
    """Number of journal entries; the next entry gets this sequence number."""
    attempts: int = 0
    """How many times the execution was started or resumed."""
    output: Any = None
    """The final output as JSON data, once `completed`."""
    pending: PendingDecision | None = None
    """What a `paused` execution waits for."""
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    schema_version: int = SCHEMA_VERSION
    metadata: dict[str, Any] = Field(default_factory=dict)
    identity: ExecutionIdentity | None = None
    wake_at: datetime | None = None
    """While a workflow sleeps: when it wakes. Recovery leaves it alone until then."""
    parent_id: str | None = None
    """The execution this one was forked from (`DurableExecution.fork`)."""
    forked_at: int | None = None
    """The last journal step of the parent this fork's journal copies."""
    deleted_checkpoints: list[str] = Field(default_factory=list)
    """Ids of manual checkpoints an operator deleted (journal entries are never removed)."""
    """What the execution ran (tools, output type, instructions, prompt), checked on every resume."""

    # ---- transitions: each returns the next head, this one is left unchanged ----------------------

    def attempt_started(self, identity: ExecutionIdentity | None) -> ExecutionRecord:
        """The head of a new attempt: one more attempt, fresh replay counters, the checked identity."""
        resumes = self.replay.resumes + (1 if self.attempts > 0 else 0)
        return self.model_copy(
            update={
                "attempts": self.attempts + 1,
                "replay": ReplayStats(resumes=resumes),
                "identity": identity,
                "updated_at": utcnow(),
            }
        )

    def advanced(self, step: StepRecord, usage: UsageTotals, replay: ReplayStats) -> ExecutionRecord:
        """The head after `step` (a unit's result) was journaled: `success` at that step, no error."""
        return self.model_copy(
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

    def noted(self, step: StepRecord) -> ExecutionRecord:
        """The head after a bookkeeping entry (marker, attempt): `next_seq` moves, the step shown does not."""
        return self.model_copy(update={"next_seq": step.seq + 1, "updated_at": step.finished_at})

    def decided(self, step: StepRecord) -> ExecutionRecord:
        """The head after a decision entry: it answers the pause, so back to `success`, nothing pending."""
        return self.model_copy(
            update={
                "next_seq": step.seq + 1,
                "updated_at": step.finished_at,
                "status": ExecutionStatus.SUCCESS,
                "pending": None,
                "error": None,
            }
        )

    def failed(
        self, error: BaseException, seq: int | None = None, name: str | None = None
    ) -> ExecutionRecord:
        """`failed` with `error`, at step `seq` named `name` (the step shown is kept when None)."""
        update: dict[str, Any] = {
            "status": ExecutionStatus.FAILED,
            "error": ErrorInfo.from_exception(error),
            "updated_at": utcnow(),
        }
        if seq is not None:
            update["step_index"] = seq
        if name is not None:
            update["step_name"] = name
        return self.model_copy(update=update)

    def paused(self, pending: PendingDecision, error: BaseException | None = None) -> ExecutionRecord:
        """`paused`, waiting for the human decision `pending` describes (`error`: why, if one was raised)."""
        return self.model_copy(
            update={
                "status": ExecutionStatus.PAUSED,
                "pending": pending,
                "error": ErrorInfo.from_exception(error) if error is not None else None,
                "updated_at": utcnow(),
            }
        )

    def cancelled(self, error: BaseException) -> ExecutionRecord:
        """`cancelled` (an operator aborted it), with the error that says so; nothing pending."""
        return self.model_copy(
            update={
                "status": ExecutionStatus.CANCELLED,
                "pending": None,
                "error": ErrorInfo.from_exception(error),
                "updated_at": utcnow(),
            }
        )

    def completed(self, output: Any) -> ExecutionRecord:
        """`completed` with the run's output (JSON data); no error, nothing pending."""
        return self.model_copy(
            update={
                "status": ExecutionStatus.COMPLETED,
                "error": None,
                "pending": None,
                "output": output,
                "updated_at": utcnow(),
            }
        )

    def info(self) -> dict[str, Any]:
        """The seed API's execution-info dictionary (JSON-compatible values).

        `error` is a one-line string as the seed examples print it; `error_details` carries the type,
        message and traceback separately.
        """
        data = self.model_dump(mode="json")
        data["timestamp"] = data["updated_at"]
        data["error"] = str(self.error) if self.error else None
        data["error_details"] = self.error.model_dump(mode="json") if self.error else None
        if isinstance(data.get("pending"), dict):  # the pending calls, not the stored message history
            data["pending"].pop("messages", None)
        return data


class StepRecord(_Record):
    """One journal entry: a durable unit that finished, with its recorded result."""

    execution_id: str
    seq: int
    kind: StepKind
    name: str
    """Human-readable step name: `model_request`, `tool:<name>`, or the operation name."""
    key: str
    """Replay key, stable across resumes, e.g. `model#<n>`, `tool:<m>/<tool_call_id>`, `started:<key>`;
    the formats are built and parsed in `perdure.durable._keys`."""
    result: Any = None
    """The unit's result as JSON data."""
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime = Field(default_factory=utcnow)
    attempt: int = 1
    tokens: int = 0
    """Tokens this unit used (model requests), i.e. what replaying it saves."""
