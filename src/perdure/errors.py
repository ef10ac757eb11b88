"""Typed errors raised by perdure.

Every error names the execution (and the step, where there is one) and says what to do next,
because the person reading it is usually an operator looking at a failed run in a log, not the
author of the code. All errors keep their fields through `pickle`, so they survive process pools
and task queues.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = [
    "CheckpointNotFoundError",
    "CircuitOpenError",
    "CorruptRecordError",
    "ExecutionCompletedError",
    "ExecutionAborted",
    "ExecutionCancelledError",
    "ExecutionConflictError",
    "ExecutionDeletedError",
    "ExecutionLeased",
    "ExecutionLeasedError",
    "ExecutionNotFoundError",
    "IdentityError",
    "IncompatibleSchemaError",
    "InvalidExecutionIdError",
    "InvalidResumeTokenError",
    "JournalMismatchError",
    "LeaseLostError",
    "NonIdempotentReplayError",
    "PerdureError",
    "RecoveryGaveUpError",
    "ReplicationError",
    "SerializationError",
    "StepConflictError",
    "StorageConfigurationError",
    "StorageLockedError",
    "StorageNotFoundError",
    "StorageUnavailableError",
    "ToolNotFoundError",
    "UnregisteredReferenceError",
    "UserError",
]


class PerdureError(Exception):
    """Root of every error perdure raises on purpose."""

    def __init__(self, message: str, *, execution_id: str | None = None, step: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.execution_id = execution_id
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields are not restored by BaseException's default reduce.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[PerdureError], message: str, state: dict[str, Any]) -> PerdureError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class UserError(PerdureError):
    """The library was called in a way it does not support; the message says how to call it."""


class ExecutionNotFoundError(PerdureError, KeyError):
    """No execution with this id exists in the storage."""

    def __init__(self, execution_id: str, *, backend: str = "", where: str = "") -> None:
        place = f" in {backend} storage" if backend else ""
        if where:
            place += f" {where}"
        super().__init__(
            f"Execution {execution_id!r} was not found{place}. Check the id (list them with "
            f"DurableExecution.list_all_executions(storage)) and that you opened the same storage "
            f"(path, table name or URL) the run was started with.",
            execution_id=execution_id,
        )
        self.backend = backend
        self.where = where

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class ExecutionCompletedError(PerdureError):
    """Resuming an execution that already completed: there is nothing left to run."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(
            f"Execution {execution_id!r} already completed; it cannot be resumed. Read its output with "
            f"DurableExecution.get_execution_info({execution_id!r}, storage)['output'], or start a new "
            f"execution to run the task again.",
            execution_id=execution_id,
        )


class CorruptRecordError(PerdureError):
    """A stored record could not be decoded; it is left untouched for inspection."""

    def __init__(
        self, execution_id: str, detail: str, *, step: str | None = None, location: str = ""
    ) -> None:
        where = f" at {location}" if location else ""
        part = f" (journal entry {step})" if step else ""
        super().__init__(
            f"The stored record of execution {execution_id!r}{part}{where} is corrupt: {detail}. "
            f"perdure did not modify it. Restore it from a backup, or delete the execution with "
            f"storage.delete_state({execution_id!r}) and start the task again.",
            execution_id=execution_id,
            step=step,
        )
        self.detail = detail
        self.location = location


class IncompatibleSchemaError(PerdureError):
    """A record (or a whole database) was written by a newer perdure whose schema this version cannot read.

    A record's version names its execution (`execution_id`); a database-level version (the tables'
    layout) has no execution: `execution_id` is None and `where` says which database and tables.
    """

    def __init__(
        self, execution_id: str | None, found: int, supported: int, *, where: str = "", hint: str = ""
    ) -> None:
        if where:
            message = (
                f"{where} has schema version {found}, but this perdure reads versions up to {supported}. "
                f"Upgrade perdure in this process (the stored data was left unchanged){hint}."
            )
        else:
            message = (
                f"Execution {execution_id!r} was stored with schema version {found}, but this perdure "
                f"reads versions up to {supported}. Upgrade perdure in this process (the record was left "
                f"unchanged) and resume again."
            )
        super().__init__(message, execution_id=execution_id)
        self.found = found
        self.supported = supported
        self.where = where


class SerializationError(PerdureError):
    """A step's result could not be encoded to JSON, so the step could not be journaled."""

    def __init__(self, execution_id: str, step: str, value_type: str, detail: str) -> None:
        super().__init__(
            f"Step {step!r} of execution {execution_id!r} returned a value of type {value_type} that "
            f"cannot be stored as JSON ({detail}). Return JSON-compatible data (str, int, float, bool, "
            f"None, lists, dicts, dataclasses or pydantic models) from the tool, then resume the "
            f"execution: the steps journaled before it will not run again.",
            execution_id=execution_id,
            step=step,
        )
        self.value_type = value_type


class JournalMismatchError(PerdureError):
    """The code asked to resume an execution does not match what its journal recorded.

    The agent's tools, output type, instructions or prompt changed between the original run and the
    resume (`changes` lists what, with old and new hashes), or replay reached a journaled step that
    does not match what the code asked for now. Replaying would hand recorded results to the wrong
    calls, so nothing runs.
    """

    def __init__(
        self,
        execution_id: str,
        step: str,
        expected: str,
        found: str,
        *,
        changes: list[str] | None = None,
    ) -> None:
        if changes:
            message = (
                f"Execution {execution_id!r} cannot be resumed with this agent: it differs from what the "
                f"execution recorded: {'; '.join(changes)}. Nothing ran and the execution is unchanged. "
                f"Resume it with the code it started with, or accept the change on purpose with "
                f"allow_changes={{...}} (worker: --allow-changes)."
            )
        else:
            message = (
                f"Execution {execution_id!r} cannot be replayed: journal step {step} recorded {found!r} "
                f"but the agent now asked for {expected!r}. Resume with the same task, prompt, tools and "
                f"agent configuration the execution started with (pass tools=[...] explicitly if they "
                f"moved), or start a new execution."
            )
        super().__init__(message, execution_id=execution_id, step=step)
        self.expected = expected
        self.found = found
        self.changes = list(changes or [])


class ToolNotFoundError(PerdureError):
    """A tool the execution used cannot be found when resuming it."""

    def __init__(self, execution_id: str, tool_name: str, detail: str) -> None:
        super().__init__(
            f"Execution {execution_id!r} used tool {tool_name!r}, which cannot be found to resume it: "
            f"{detail}. Pass the tool explicitly, e.g. agent.continue_durable({execution_id!r}, storage, "
            f"tools=[{tool_name}]), or import the module that defines it before resuming.",
            execution_id=execution_id,
            step=f"tool:{tool_name}",
        )
        self.tool_name = tool_name


class StepConflictError(PerdureError):
    """Another writer stored the same journal step first (two processes ran one execution)."""

    def __init__(self, execution_id: str, seq: int) -> None:
        super().__init__(
            f"Journal step {seq} of execution {execution_id!r} was already written by another process. "
            f"Two workers ran this execution at once; stop one of them and resume the execution from a "
            f"single process.",
            execution_id=execution_id,
            step=str(seq),
        )
        self.seq = seq


class StorageUnavailableError(PerdureError):
    """The storage backend could not be reached or refused the write; nothing was half-written."""

    def __init__(self, backend: str, detail: str, *, execution_id: str | None = None) -> None:
        who = f" for execution {execution_id!r}" if execution_id else ""
        super().__init__(
            f"The {backend} storage is unavailable{who}: {detail.rstrip('. ')}. The last journaled step is "
            f"intact; resume the execution once the storage is reachable again.",
            execution_id=execution_id,
        )
        self.backend = backend
        self.detail = detail


class ExecutionLeasedError(PerdureError):
    """Another worker holds the execution's lease: it is running there right now."""

    def __init__(self, execution_id: str, owner: str, expires_at: datetime | None) -> None:
        until = f" until {expires_at.isoformat()}" if expires_at is not None else ""
        super().__init__(
            f"Execution {execution_id!r} is leased by worker {owner!r}{until}: it is running there. "
            f"Do not resume it twice; wait for that worker to finish, or for its lease to expire if it "
            f"died (pass wait_for_lease= to wait, or let recover_interrupted pick it up).",
            execution_id=execution_id,
        )
        self.owner = owner
        self.expires_at = expires_at


ExecutionLeased = ExecutionLeasedError
"""Short alias used in the design documents."""


class LeaseLostError(PerdureError):
    """A worker lost its lease to another worker and must stop writing the execution."""

    def __init__(self, execution_id: str, owner: str, holder: str | None) -> None:
        now = f"worker {holder!r}" if holder else "nobody"
        super().__init__(
            f"Worker {owner!r} lost the lease of execution {execution_id!r} (now held by {now}), usually "
            f"because its heartbeat stalled past the lease time. Its write was refused so the journal "
            f"stays single-writer; the execution continues wherever the lease is held now.",
            execution_id=execution_id,
        )
        self.owner = owner
        self.holder = holder


class NonIdempotentReplayError(PerdureError):
    """A non-idempotent tool call started but its result was never journaled (crash in between)."""

    def __init__(
        self,
        execution_id: str,
        tool_name: str,
        tool_call_id: str,
        args: Any,
        *,
        seq: int | None = None,
        remedy: str | None = None,
    ) -> None:
        remedy = remedy or (
            f"Check the external system, then resume with resolutions={{{tool_call_id!r}: ...}}: "
            f"ToolResolution.done(result) if it took effect, ToolResolution.rerun() to call it again, or "
            f"ToolResolution.abort() to cancel the execution."
        )
        super().__init__(
            f"Execution {execution_id!r}: non-idempotent tool {tool_name!r} (call {tool_call_id!r}, "
            f"args {args!r}) started but its result was never recorded, so it may or may not have taken "
            f"effect. perdure will not run it again on its own. {remedy}",
            execution_id=execution_id,
            step=f"tool:{tool_name}",
        )
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id
        self.tool_args = args
        self.seq = seq


class CircuitOpenError(PerdureError):
    """The model's circuit breaker is open after repeated failures: calls fail fast until it resets."""

    def __init__(self, model: str, retry_in: float, *, execution_id: str | None = None) -> None:
        super().__init__(
            f"Circuit breaker for model {model!r} is open after repeated failures; requests fail fast for "
            f"another {retry_in:.1f}s, then one probe request is let through. The execution's journal is "
            f"intact: resume it once the provider recovers.",
            execution_id=execution_id,
        )
        self.model = model
        self.retry_in = retry_in


class ExecutionDeletedError(PerdureError):
    """The execution was deleted while a worker still ran it; its writes are refused, nothing is re-created.

    A forced delete (`delete_state(id, force=True)`) leaves a tombstone; every later write of that id
    (a journal step, a head update, a new run reusing the id) fails with this error instead of
    bringing the execution back with a partial journal.
    """

    def __init__(self, execution_id: str, *, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"Execution {execution_id!r} was deleted{extra}; the write was refused and nothing was "
            f"re-created. The attempt that was running it stops here. Start a new execution (new id) to run "
            f"the task again.",
            execution_id=execution_id,
        )


class StorageNotFoundError(PerdureError):
    """A read-only operation named a storage that does not exist; perdure created nothing."""

    def __init__(self, backend: str, location: str, *, hint: str = "") -> None:
        advice = hint or "Check the path or URL (a typo?), or start a run there first: writing creates it."
        super().__init__(f"No {backend} storage at {location}: it does not exist. {advice}")
        self.backend = backend
        self.location = location


class StorageConfigurationError(UserError):
    """The storage was configured wrongly (URL, table name, prefix, option); retrying will not help."""


class InvalidExecutionIdError(UserError):
    """An execution id that perdure refuses to use as a key, file name or SQL value."""

    def __init__(self, execution_id: str, reason: str) -> None:
        super().__init__(
            f"Invalid execution id {execution_id!r}: {reason}. Use letters, digits, '-', '_' and '.', at "
            f"most 128 characters (perdure's own ids look like 20261122135501-a1b2c3d4).",
            execution_id=execution_id,
        )


class StorageLockedError(StorageUnavailableError):
    """A storage lock stayed held past the timeout (another process is stuck holding it); retryable."""

    def __init__(self, backend: str, detail: str, *, execution_id: str | None = None) -> None:
        super().__init__(backend, detail, execution_id=execution_id)


class UnregisteredReferenceError(PerdureError):
    """A record names code (tool, output type, agent) that the running program did not register.

    Stored data never chooses code: a recorded reference is only a lookup key into what this
    process registered (`@tool`, the agents it created, `tools=` / `response_format=` passed in).
    Nothing named by the record was imported or called.
    """

    def __init__(self, execution_id: str | None, kind: str, reference: str, *, hint: str = "") -> None:
        who = f"Execution {execution_id!r} needs" if execution_id else "The record needs"
        advice = hint or (
            f"Import the module that defines it before resuming (importing registers it), or pass it "
            f"explicitly ({'tools=[...]' if kind == 'tool' else 'response_format=...'})."
        )
        super().__init__(
            f"{who} {kind} {reference!r}, which this program did not register; nothing was imported or "
            f"run. {advice}",
            execution_id=execution_id,
        )
        self.kind = kind
        self.reference = reference


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


class RecoveryGaveUpError(PerdureError):
    """Recorded on an interrupted execution that reached `max_attempts`: recovery stopped retrying it."""

    def __init__(self, execution_id: str, attempts: int) -> None:
        super().__init__(
            f"Recovery gave up after {attempts} attempts of execution {execution_id!r}: it was interrupted "
            f"every time (a worker crash, kill or timeout). Inspect it with `perdure show`, fix the cause, "
            f"then resume it by hand with agent.continue_durable({execution_id!r}, storage).",
            execution_id=execution_id,
        )
        self.attempts = attempts


class IdentityError(PerdureError):
    """Marker base: the resume was refused before anything ran; the head was not changed.

    Raised as a `ToolNotFoundError` or a `JournalMismatchError` that is also an `IdentityError`
    (see `perdure.durable.identity`).
    """


class CheckpointNotFoundError(PerdureError, KeyError):
    """No checkpoint with this id (or at this step) exists in the execution's journal."""

    def __init__(self, execution_id: str, checkpoint: str, *, hint: str = "") -> None:
        super().__init__(
            f"Execution {execution_id!r} has no checkpoint {checkpoint!r}. "
            f"{hint or 'List them with DurableExecution.list_checkpoints(execution_id, storage).'}",
            execution_id=execution_id,
        )
        self.checkpoint = checkpoint


class InvalidResumeTokenError(PerdureError):
    """A resume token was tampered with, expired, signed with another key or is malformed; nothing ran."""

    def __init__(self, reason: str, *, execution_id: str | None = None) -> None:
        super().__init__(
            f"Invalid resume token: {reason}. Nothing was resumed. Ask for a new token "
            f"(DurableExecution.resume_token(...)) signed with the key this process uses "
            f"(PERDURE_SECRET_KEY).",
            execution_id=execution_id,
        )
        self.reason = reason


class ExecutionCancelledError(PerdureError):
    """An operator cancelled the execution (`DurableExecution.cancel`, `perdure cancel`).

    Stored as the error of a `cancelled` head, and raised by the attempt that stopped for it (at a
    unit boundary: the unit that was running finished and was journaled first) and by any later
    attempt to resume it.
    """

    def __init__(self, execution_id: str, reason: str = "", requested_by: str = "") -> None:
        who = f" by {requested_by}" if requested_by else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"Execution {execution_id!r} was cancelled{who}{why}. It is never resumed; start a new "
            f"execution, or fork this one (DurableExecution.fork / `perdure fork`), to run the task again.",
            execution_id=execution_id,
        )
        self.reason = reason
        self.requested_by = requested_by


class ExecutionConflictError(PerdureError):
    """The execution is not in a state that allows the operation (e.g. approving a run that is not paused).

    Nothing was changed. The message says what state the execution is in and what to do instead.
    """

    def __init__(self, execution_id: str, message: str, *, status: str | None = None) -> None:
        super().__init__(message, execution_id=execution_id)
        self.status = status


class ReplicationError(StorageUnavailableError):
    """A write reached the primary but not the required number of replicas in time.

    A `StorageUnavailableError`, so the run ends as for a storage outage and is resumed later. The
    write may exist on the primary only: after a failover to a replica it may be missing, in which
    case the resumed run executes that one unit again; everything confirmed before it is kept.
    `required` and `acknowledged` are the replica counts asked for and confirmed (None if unknown).
    """

    def __init__(
        self,
        backend: str,
        detail: str,
        *,
        execution_id: str | None = None,
        required: int,
        acknowledged: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(backend, detail, execution_id=execution_id)
        who = f" for execution {execution_id!r}" if execution_id else ""
        got = f"; {acknowledged} acknowledged" if acknowledged is not None else ""
        within = f" within {timeout:g} s" if timeout is not None else ""
        self.message = (
            f"A {backend} write{who} was not confirmed by {required} replica(s){within}{got} "
            f"({detail.rstrip('. ')}). It is on the primary but may be lost if the primary fails now, so "
            f"the run stops here. Check that the replicas are connected and keeping "
            f"up (on Redis: INFO replication), or lower the required replicas / raise the timeout; then "
            f"resume the execution: journaled steps are replayed, and only an unconfirmed step lost in a "
            f"failover runs again."
        )
        self.args = (self.message,)
        self.required = required
        self.acknowledged = acknowledged
        self.timeout = timeout
