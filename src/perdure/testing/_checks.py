"""The registry of conformance checks, what each check is given, and how checks state a failure.

A check is an async function of a `Subject` (a fresh storage plus the optional hooks) registered
under a property name with `@check`. It raises `ConformanceFailure` (an `AssertionError`) with a
message that says which call returned what, and what the contract expected instead.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from pydantic import BaseModel

from ..records import (
    ErrorInfo,
    ExecutionIdentity,
    ExecutionRecord,
    ExecutionStatus,
    PendingCall,
    PendingDecision,
    ReplayStats,
    StepKind,
    StepRecord,
    TaskSnapshot,
    ToolRef,
    UsageTotals,
)
from ..storage.base import DurableExecutionStorage

__all__ = [
    "CHECKS",
    "Check",
    "ConformanceFailure",
    "RawWriter",
    "Reopen",
    "SkipProperty",
    "StorageFactory",
    "Subject",
    "check",
]

StorageFactory: TypeAlias = Callable[[], "DurableExecutionStorage | Awaitable[DurableExecutionStorage]"]
"""Makes a fresh, empty storage each call (a plain or an async function)."""

RawWriter: TypeAlias = Callable[[DurableExecutionStorage, str, bytes], "Awaitable[None] | None"]
"""`raw_writer(storage, execution_id, payload)`: store `payload` as the head of `execution_id` as-is.

`payload` is what `perdure.codec.encode_head` produces for a sound record, or damaged bytes; the
writer stores it where the backend keeps encoded heads, bypassing every check, and creates the
execution when it is absent (the way a bad disk, a bad restore or a newer perdure would).
"""

Reopen: TypeAlias = Callable[
    [DurableExecutionStorage], "DurableExecutionStorage | Awaitable[DurableExecutionStorage] | None"
]
"""`reopen(storage)`: a second, independent instance on the same stored data (another process's view).

Return None when the storage cannot be opened twice (e.g. it lives in one process's memory).
"""

T = TypeVar("T")


class ConformanceFailure(AssertionError):
    """A storage broke a property of the contract; the message says which call and how."""


class SkipProperty(Exception):
    """Raised by a check that cannot run against this storage (reported as skipped with the reason)."""


@dataclass
class Subject:
    """What a check works on: a fresh storage and the optional hooks given to the kit."""

    storage: DurableExecutionStorage
    raw_writer: RawWriter | None
    reopen_hook: Reopen | None
    lease_ttl: float
    opened: list[DurableExecutionStorage] = field(default_factory=list)
    """Instances a check opened with `reopen()` or `fresh()`; the runner closes them."""
    factory: StorageFactory | None = None
    """The factory the storage came from (`fresh()` makes another, independent store with it)."""

    @property
    def expiry_wait(self) -> float:
        """How long to sleep so that a lease of `lease_ttl` seconds has certainly expired."""
        return self.lease_ttl + max(0.05, self.lease_ttl / 4)

    async def expire(self, since: float | None = None) -> None:
        """Sleep until a lease of `lease_ttl` taken at loop time `since` (default: now) has expired."""
        loop = asyncio.get_running_loop()
        start = loop.time() if since is None else since
        await asyncio.sleep(max(0.0, start + self.expiry_wait - loop.time()))

    async def reopen(self) -> DurableExecutionStorage:
        """Another instance on the same data, closed by the runner after the check."""
        if self.reopen_hook is None:  # pragma: no cover - the runner skips such checks first
            raise SkipProperty("no reopen hook given")
        opened = self.reopen_hook(self.storage)
        if inspect.isawaitable(opened):
            opened = await opened
        if opened is None:
            raise SkipProperty("reopen() returned None: this storage cannot be opened twice")
        if not isinstance(opened, DurableExecutionStorage):
            raise ConformanceFailure(
                f"reopen() returned {type(opened).__name__}, not a DurableExecutionStorage"
            )
        self.opened.append(opened)
        return opened

    async def writer(self) -> DurableExecutionStorage:
        """A second instance on the same data when `reopen` gives one (another process), else this one."""
        if self.reopen_hook is None:
            return self.storage
        try:
            return await self.reopen()
        except SkipProperty:
            return self.storage

    async def fresh(self) -> DurableExecutionStorage:
        """Another fresh, empty store from the factory (another prefix or directory), closed after."""
        if self.factory is None:  # pragma: no cover - the runner always gives it
            raise SkipProperty("no storage factory given")
        made = self.factory()
        if inspect.isawaitable(made):
            made = await made
        if not isinstance(made, DurableExecutionStorage):
            raise ConformanceFailure(
                f"the factory returned {type(made).__name__}, not a DurableExecutionStorage"
            )
        self.opened.append(made)
        return made

    async def write_raw(self, execution_id: str, payload: bytes) -> None:
        """Store `payload` as the head of `execution_id` through the raw writer hook."""
        if self.raw_writer is None:  # pragma: no cover - the runner skips such checks first
            raise SkipProperty("no raw_writer given")
        done = self.raw_writer(self.storage, execution_id, payload)
        if inspect.isawaitable(done):
            await done


CheckFunction: TypeAlias = Callable[[Subject], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    """One named property of the storage contract."""

    name: str
    description: str
    function: CheckFunction
    needs: tuple[str, ...] = ()
    """Hooks the check cannot run without: "raw_writer", "reopen"."""


CHECKS: dict[str, Check] = {}
"""Every registered check by property name, in registration (= report) order."""


def check(name: str, *, needs: Iterable[str] = ()) -> Callable[[CheckFunction], CheckFunction]:
    """Register an async check under `name`; its docstring's first line describes the property."""

    def register(function: CheckFunction) -> CheckFunction:
        if name in CHECKS:  # pragma: no cover - a programming error in the kit itself
            raise ValueError(f"duplicate conformance property {name!r}")
        doc = inspect.getdoc(function) or name
        CHECKS[name] = Check(name, doc.splitlines()[0], function, tuple(needs))
        return function

    return register


# ---- expectations --------------------------------------------------------------------------------


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, BaseModel):
        text = f"{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in value.__dict__.items())})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TIMESTAMPS = frozenset({"created_at", "updated_at", "started_at", "finished_at"})


def _differences(actual: Any, expected: Any) -> str:
    """`field got X, expected Y` for each differing field of two records of the same type."""
    if not (isinstance(actual, BaseModel) and type(actual) is type(expected)):
        return f"got {_short(actual)}, expected {_short(expected)}"
    differing = [
        name for name in type(actual).model_fields if getattr(actual, name) != getattr(expected, name)
    ]
    # Timestamps differ whenever anything else does (records made at different times): list them last.
    differing.sort(key=lambda name: name in _TIMESTAMPS)
    if not differing:
        return f"got {_short(actual)}, expected {_short(expected)}"
    shown = differing if len(differing) == 1 else [n for n in differing if n not in _TIMESTAMPS] or differing
    parts = [
        f"{name} got {_short(getattr(actual, name), 80)}, expected {_short(getattr(expected, name), 80)}"
        for name in shown[:5]
    ]
    more = len(differing) - len(parts)
    return "; ".join(parts) + (f" (and {more} more fields differ)" if more else "")


def expect(condition: bool, message: str) -> None:
    """Fail the property with `message` unless `condition` holds."""
    if not condition:
        raise ConformanceFailure(message)


def expect_equal(actual: Any, expected: Any, what: str) -> None:
    """Fail unless `actual == expected`; records are compared field by field in the message."""
    if actual != expected:
        raise ConformanceFailure(f"{what}: {_differences(actual, expected)}")


async def expect_raises(
    error: type[BaseException] | tuple[type[BaseException], ...], action: Awaitable[Any], what: str
) -> BaseException:
    """Await `action` and return the error it raised; fail if it returned or raised something else."""
    names = " or ".join(e.__name__ for e in (error if isinstance(error, tuple) else (error,)))
    try:
        result = await action
    except error as exc:
        return exc
    except Exception as exc:
        raise ConformanceFailure(f"{what} raised {type(exc).__name__} ({exc}); expected {names}") from exc
    raise ConformanceFailure(f"{what} returned {_short(result)}; expected it to raise {names}")


async def expect_ok(action: Awaitable[T], what: str) -> T:
    """Await `action`, which the contract says succeeds here; fail naming the call if it raises."""
    try:
        return await action
    except Exception as exc:
        raise ConformanceFailure(
            f"{what} raised {type(exc).__name__} ({exc}); expected it to succeed"
        ) from exc


def expect_raises_sync(
    error: type[BaseException], action: Callable[[], Any], what: str
) -> BaseException:  # the sync twins
    """Call `action` and return the error it raised; fail if it returned or raised something else."""
    try:
        result = action()
    except error as exc:
        return exc
    except Exception as exc:
        raise ConformanceFailure(
            f"{what} raised {type(exc).__name__} ({exc}); expected {error.__name__}"
        ) from exc
    raise ConformanceFailure(f"{what} returned {_short(result)}; expected it to raise {error.__name__}")


# ---- records -------------------------------------------------------------------------------------


def head(execution_id: str, next_seq: int = 0, **fields: Any) -> ExecutionRecord:
    """A head record as a run writes it after `next_seq` journal entries."""
    fields.setdefault("step_index", next_seq - 1)
    fields.setdefault("step_name", f"tool:t{next_seq - 1}" if next_seq else "")
    return ExecutionRecord(execution_id=execution_id, next_seq=next_seq, **fields)


def step(execution_id: str, seq: int, result: Any = None, **fields: Any) -> StepRecord:
    """A tool-call journal entry."""
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=fields.pop("kind", StepKind.TOOL_CALL),
        name=fields.pop("name", f"tool:t{seq}"),
        key=fields.pop("key", f"tool:call-{seq}"),
        result={"seq": seq, "value": f"result {seq}"} if result is None else result,
        **fields,
    )


async def create(
    storage: DurableExecutionStorage, execution_id: str, steps: int = 0, **fields: Any
) -> ExecutionRecord:
    """A new run: the unleased first write, then `steps` journal entries; returns the last head."""
    record = head(execution_id, **fields)
    await storage.save_state_async(record)
    for seq in range(steps):
        record = head(execution_id, seq + 1, **fields)
        await storage.append_step_async(record, step(execution_id, seq))
    return record


def full_record(execution_id: str) -> ExecutionRecord:
    """A head with every field set to a non-default value, including nested and unicode data."""
    created = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    try:
        raise ValueError("tool exploded")
    except ValueError as exc:
        error = ErrorInfo.from_exception(exc)
    return ExecutionRecord(
        execution_id=execution_id,
        status=ExecutionStatus.PAUSED,
        step_index=3,
        step_name="tool:search",
        error=error,
        created_at=created,
        updated_at=created + timedelta(minutes=5, microseconds=7),
        task=TaskSnapshot(
            description="Find the answer",
            response_format="mymod:Answer",
            tools=[ToolRef(name="search", ref="mymod:search"), ToolRef(name="local")],
            model="openai:gpt-4o",
            agent_name="researcher",
            instructions="Be brief.",
            context={"user": "ann", "nested": {"k": [1, 2.5, None, True]}},
        ),
        usage=UsageTotals(requests=4, input_tokens=120, output_tokens=80, tool_calls=2),
        replay=ReplayStats(resumes=1, replayed_model_requests=2, tokens_saved=150),
        next_seq=4,
        attempts=2,
        output={"answer": 42, "items": ["a", "ü", "😀"], "none": None},
        pending=PendingDecision(
            kind="approval", calls=[PendingCall(tool_call_id="c1", tool_name="pay", args={"eur": 5})], round=2
        ),
        lease_owner="host:123",
        lease_expires_at=created + timedelta(seconds=30),
        metadata={"tenant": "acme", "tags": ["x"]},
        identity=ExecutionIdentity(agent_name="researcher", model="openai:gpt-4o", tools={"search": "ab12"}),
    )


def unleased(record: ExecutionRecord) -> ExecutionRecord:
    """`record` without lease fields: what a head write stores (only the lease methods set them)."""
    return record.model_copy(update={"lease_owner": None, "lease_expires_at": None})


async def ids(storage: DurableExecutionStorage, **query: Any) -> list[str]:
    """The execution ids `list_executions_async(**query)` returns, in its order."""
    return [h.execution_id for h in await storage.list_executions_async(**query)]


async def invisible(storage: DurableExecutionStorage, execution_id: str, why: str) -> None:
    """Fail unless reads see nothing of `execution_id` (no head, no journal, not listed)."""
    found = await storage.load_state_async(execution_id)
    expect(
        found is None, f"{why}: load_state_async({execution_id!r}) still returned a head ({_short(found)})"
    )
    journal = await storage.load_steps_async(execution_id)
    expect(journal == [], f"{why}: load_steps_async({execution_id!r}) still returned {len(journal)} entries")
    listed = await ids(storage)
    expect(execution_id not in listed, f"{why}: list_executions_async() still lists {execution_id!r}")
