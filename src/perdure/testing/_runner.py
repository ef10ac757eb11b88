"""Run the conformance checks: one fresh storage and one timeout per property, every property run."""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from .._sync import run_sync
from ..errors import UserError
from ..storage.base import DurableExecutionStorage
from . import _batches, _deletes, _feeds, _journal, _leases, _queries, _storage  # noqa: F401 - they register the checks
from ._checks import (
    CHECKS,
    Check,
    ConformanceFailure,
    RawWriter,
    Reopen,
    SkipProperty,
    StorageFactory,
    Subject,
)

__all__ = [
    "PROPERTIES",
    "ConformanceReport",
    "PropertyResult",
    "check_storage",
    "check_storage_sync",
    "select_properties",
]

_GROUPS = (
    *("head", "step", "journal", "batch", "delete", "list", "query", "count", "activity", "stats"),
    *("cleanup", "cancel", "lease", "sync_twins"),
    *("feed", "corrupt_record", "newer_schema", "persistence"),
)
_ORDER = sorted(
    CHECKS, key=lambda name: _GROUPS.index(name.split(".")[0]) if name.split(".")[0] in _GROUPS else 99
)

PROPERTIES: Mapping[str, str] = MappingProxyType({name: CHECKS[name].description for name in _ORDER})
"""Every property the kit checks, name -> one-line description, in report order."""

DEFAULT_TIMEOUT = 30.0
DEFAULT_LEASE_TTL = 0.3
_HERE = Path(__file__).resolve().parent

Outcome = Literal["passed", "failed", "skipped"]

_NEEDS = {
    "raw_writer": "needs raw_writer= (a backend-specific way to store raw head bytes, to damage a record)",
    "reopen": "needs reopen= (a second instance on the same stored data)",
}


@dataclass(frozen=True)
class PropertyResult:
    """The outcome of one property."""

    name: str
    outcome: Outcome
    message: str = ""
    """Why it failed (which call returned what, what was expected) or why it was skipped."""
    seconds: float = 0.0
    details: str = ""
    """The traceback, when the storage raised an error the contract does not allow."""

    def __str__(self) -> str:
        return f"{self.outcome.upper()} {self.name}" + (f": {self.message}" if self.message else "")


@dataclass(frozen=True)
class ConformanceReport:
    """What `check_storage` found: one `PropertyResult` per property, in order."""

    storage: str
    """The class name of the storage that was checked."""
    results: tuple[PropertyResult, ...]

    def _names(self, outcome: Outcome) -> tuple[str, ...]:
        return tuple(r.name for r in self.results if r.outcome == outcome)

    @property
    def passed(self) -> tuple[str, ...]:
        """Names of the properties that hold."""
        return self._names("passed")

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the properties the storage breaks."""
        return self._names("failed")

    @property
    def skipped(self) -> tuple[str, ...]:
        """Names of the properties not checked (a hook was not given)."""
        return self._names("skipped")

    @property
    def ok(self) -> bool:
        """True when no property failed (skipped ones do not count)."""
        return not self.failed

    def __getitem__(self, name: str) -> PropertyResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def summary(self) -> str:
        """One line: `all 40 properties passed`, or the counts and the failed names."""
        total = len(self.results)
        if len(self.passed) == total:
            return f"{self.storage}: all {total} properties passed"
        parts = [f"{self.storage}: {len(self.passed)} of {total} properties passed"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(self.failed)})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return ", ".join(parts)

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  {r}" for r in self.results if r.outcome != "passed"]
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise `AssertionError` naming every failed property and why, if any failed."""
        if self.failed:
            failures = "\n".join(f"  {r}" for r in self.results if r.outcome == "failed")
            raise AssertionError(
                f"{self.storage} breaks {len(self.failed)} storage contract properties: "
                f"{', '.join(self.failed)}\n{failures}"
            )


def select_properties(only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[str]:
    """Property names matching `only` (names or globs like `"lease.*"`; None: all) and not `skip`."""

    def matching(patterns: Iterable[str], what: str) -> set[str]:
        names: set[str] = set()
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            found = fnmatch.filter(CHECKS, pattern)
            if not found:
                raise UserError(
                    f"{what}={pattern!r} matches no conformance property; see perdure.testing.PROPERTIES."
                )
            names.update(found)
        return names

    wanted = set(CHECKS) if only is None else matching(only, "only")
    unwanted = matching(skip, "skip")
    return [name for name in _ORDER if name in wanted and name not in unwanted]


def _where(exc: BaseException) -> str:
    """The line of the kit's check that was running when `exc` was raised."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().parent == _HERE
    ]
    frames = [f for f in frames if not f.filename.endswith(("_runner.py", "_checks.py"))] or frames
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()})"


def _unexpected(exc: BaseException) -> tuple[str, str]:
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"raised {type(exc).__name__}: {exc}{_where(exc)}", details


async def _open(factory: StorageFactory) -> DurableExecutionStorage:
    made = factory()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, DurableExecutionStorage):
        raise ConformanceFailure(
            f"the factory returned {type(made).__name__}, not a DurableExecutionStorage (subclass "
            f"perdure.storage.DurableExecutionStorage)"
        )
    try:
        held = await made.list_executions_async(limit=1)
    except Exception:  # e.g. StorageNotFoundError: nothing written yet; a broken list fails its own property
        held = []
    if held:
        raise ConformanceFailure(
            f"the factory returned a storage that already holds executions ({held[0].execution_id!r}, ...): "
            f"it must return a fresh, empty storage each call (a new directory, database, key prefix)"
        )
    return made


async def run_property(
    name: str,
    factory: StorageFactory,
    *,
    raw_writer: RawWriter | None = None,
    reopen: Reopen | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    seen: list[str] | None = None,
) -> PropertyResult:
    """Check one property against a fresh storage from `factory` (its class name is added to `seen`)."""
    spec: Check = CHECKS[name]
    hooks = {"raw_writer": raw_writer, "reopen": reopen}
    missing = [_NEEDS[need] for need in spec.needs if hooks[need] is None]
    if missing:
        return PropertyResult(name, "skipped", "; ".join(missing))
    started = time.perf_counter()
    subject: Subject | None = None
    outcome: Outcome = "passed"
    message = details = ""
    try:
        async with asyncio.timeout(timeout):
            subject = Subject(await _open(factory), raw_writer, reopen, lease_ttl, factory=factory)
            if seen is not None:
                seen.append(type(subject.storage).__name__)
            await spec.function(subject)
    except SkipProperty as exc:
        outcome, message = "skipped", str(exc)
    except ConformanceFailure as exc:
        outcome, message = "failed", str(exc) or "assertion failed"
        if not str(exc):  # pragma: no cover - every kit failure has a message
            message, details = _unexpected(exc)
    except TimeoutError as exc:
        cancelled = exc.__context__ if isinstance(exc.__context__, asyncio.CancelledError) else exc
        outcome = "failed"
        message = f"did not finish within {timeout:g}s{_where(cancelled)}"
        details = "".join(traceback.format_exception(type(cancelled), cancelled, cancelled.__traceback__))
    except Exception as exc:
        outcome = "failed"
        message, details = _unexpected(exc)
    if subject is not None:
        for store in [*subject.opened, subject.storage]:
            try:
                async with asyncio.timeout(min(timeout, 10.0)):
                    await store.close_async()
            except Exception as exc:  # a check that passed fails when its storage cannot be closed
                if outcome != "failed":
                    outcome = "failed"
                    message, details = _unexpected(exc)
                    message = f"close_async() {message}"
    return PropertyResult(name, outcome, message, time.perf_counter() - started, details)


async def check_storage(
    factory: StorageFactory,
    *,
    raw_writer: RawWriter | None = None,
    reopen: Reopen | None = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> ConformanceReport:
    """Check a storage backend against every property of the storage contract.

    `factory()` (plain or async) must return a fresh, empty storage each call: every property runs
    on its own storage, which the kit closes afterwards. Every selected property runs, whatever
    the others did; each has `timeout` seconds (cancelled at the storage's next `await`).
    Properties that damage a record need `raw_writer(storage, execution_id, payload)`; those that
    open a store twice need `reopen(storage)`; without them they are reported as skipped. Lease
    expiry is waited for with leases of `lease_ttl` seconds.
    """
    if not timeout > 0 or not lease_ttl > 0:
        raise UserError(f"timeout and lease_ttl must be > 0, got {timeout!r} and {lease_ttl!r}.")
    results: list[PropertyResult] = []
    seen: list[str] = []
    for prop in select_properties(only, skip):
        result = await run_property(
            prop,
            factory,
            raw_writer=raw_writer,
            reopen=reopen,
            timeout=timeout,
            lease_ttl=lease_ttl,
            seen=seen,
        )
        results.append(result)
    return ConformanceReport(seen[0] if seen else "storage", tuple(results))


def check_storage_sync(
    factory: StorageFactory,
    *,
    raw_writer: RawWriter | None = None,
    reopen: Reopen | None = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> ConformanceReport:
    """Sync twin of `check_storage` (works with or without a running event loop in this thread)."""
    return run_sync(
        check_storage(
            factory,
            raw_writer=raw_writer,
            reopen=reopen,
            only=only,
            skip=skip,
            timeout=timeout,
            lease_ttl=lease_ttl,
        )
    )
