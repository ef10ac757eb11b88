"""Named fault points: where crash tests make perdure die, fail or stall on purpose.

The library calls `point("name")` at a few places that matter for crash safety (around journal
writes, inside a model request, around tool calls, inside storage writes). Nothing is armed in
production, and then a point costs one function call and one check of a module global.

Arming, from one vocabulary, in the environment of the process (read once at import; `load_env()`
reads it again)::

    PERDURE_FAULT=point[@target][:nth][:action]     several: comma-separated

- `point`: a name of `POINTS` (anything else is refused when arming);
- `target`: only hits with this target count (e.g. the tool name of `before_tool_call`);
  alternatives separated by `|` (`before_tool_call@lookup|compute`);
- `nth`: the fault fires at the n-th counted hit of its point in this process (default 1), once;
- `action` (default `kill`): `kill` (SIGKILL to this process: no cleanup, no flush, like the OOM
  killer), `exit` or `exit:CODE` (`os._exit`, default code `EXIT_CODE`), `raise` (`FaultInjected`,
  a `BaseException` that the engine does not catch, like the process dying), `raise:NAME` (a
  builtin exception such as `OSError`, or `package.module.Class`, built with one message argument),
  `sleep:SECONDS` (blocks the calling thread, event loop included), and `torn` for the points that
  write a record (`TEARABLE`): write the first half of it, then SIGKILL.

Examples: `PERDURE_FAULT=after_tool_side_effect@charge` (SIGKILL right after `charge`'s effect),
`PERDURE_FAULT=after_journal_write@attempt:2` (SIGKILL once the second failed attempt is journaled),
`PERDURE_FAULT=before_commit:3:raise:OSError,lease_renew:sleep:2`.

From tests, in-process::

    with _faults.armed("before_journal_write", nth=2, action="raise") as fault:
        ...
    assert fault.fired

or `arm(...)` / `arm_spec("...")` and `disarm(...)`. A `Fault` counts its hits even when it never
fires (`nth` larger than the hits), which is how a test proves that a point is reached.

Each point and where it fires is documented in `POINTS`. The unit points (model request, tool call,
journal write) fire for live units only: a unit replayed from the journal passes none of them.
"""

from __future__ import annotations

import builtins
import importlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ACTIONS",
    "ENV_VAR",
    "EXIT_CODE",
    "POINTS",
    "TEARABLE",
    "Fault",
    "FaultInjected",
    "FaultSpecError",
    "active",
    "arm",
    "arm_spec",
    "armed",
    "disarm",
    "load_env",
    "parse",
    "point",
]

ENV_VAR = "PERDURE_FAULT"
"""The environment variable read at import (see the module docstring for its vocabulary)."""

EXIT_CODE = 86
"""Exit status of the `exit` action without a code (distinct from errors and from signals)."""

POINTS: Mapping[str, str] = MappingProxyType(
    {
        "before_journal_write": (
            "Engine (`JournalRun`): before `append_step_async` of a journal entry and its new head: a unit's "
            "result, a non-idempotent tool's `started` marker, a failed `attempt`, an operator `decision`. "
            "Target: the entry's kind (`model_request`, `tool_call`, `other`, `started`, `attempt`, "
            "`decision`)."
        ),
        "after_journal_write": (
            "Engine (`JournalRun`): right after `append_step_async` returned: entry and head are stored, "
            "the unit has not returned yet. Target: the entry's kind, as for `before_journal_write`."
        ),
        "inside_model_request": (
            "Engine (`JournalRun.run_unit`): a live model request unit got its response, which is neither "
            "journaled nor returned yet (a crash here pays for the request again on resume)."
        ),
        "before_tool_call": (
            "Engine (`JournalRun.run_unit`): a live tool call is about to run its body (after a "
            "non-idempotent tool's `started` marker was journaled). Target: the tool name."
        ),
        "after_tool_call": (
            "Engine (`JournalRun.run_unit`): the tool body returned; its result is not journaled yet (the "
            "at-least-once window). Target: the tool name."
        ),
        "after_step": (
            "Engine (`JournalRun.run_unit`): a workflow's step body returned; its result is not journaled "
            "yet (a crash here runs the step again on resume). Target: the step name."
        ),
        "before_sleep_wait": (
            "Workflows (`sleep`): the wake-up time is journaled and the head carries `wake_at`; the "
            "process is about to wait (a crash here is a crash during the sleep)."
        ),
        "after_tool_side_effect": (
            "Called by tools themselves (test apps), right after their external effect, before they "
            "return. Target: the tool name the tool passes."
        ),
        "before_head_save": (
            "Engine: before a head-only write (`save_state_async`): creating the execution, the start of "
            "an attempt, identity updates, end states (failed, paused, cancelled, completed)."
        ),
        "after_head_save": "Engine: right after such a head-only write returned.",
        "after_lease_acquire": (
            "Engine (`DurableExecution`): the attempt holds the execution's lease; nothing of it ran yet."
        ),
        "lease_renew": (
            "Lease heartbeat: before each renewal, inside its error handling (`raise:OSError` is a failed "
            "renewal that is retried; `sleep:S` delays renewals so the lease can expire)."
        ),
        "before_head_replace": (
            "File backend: the new head is written and fsync'd to its temp file, before `os.replace` "
            "moves it onto head.json (after a step's journal line was fsync'd: the journal leads the head)."
        ),
        "before_journal_line": (
            "File backend: before the single `write` that appends a journal line. Action `torn` writes "
            "the first half of the line, then SIGKILLs (what a power cut can leave)."
        ),
        "delete_after_rename": (
            "File backend: a delete renamed the execution's directory into #trash (its tombstone is "
            "written) and has not removed it yet."
        ),
        "before_commit": (
            "SQLite backend: inside a write transaction (a step, a head, a lease, a delete, schema "
            "creation), just before `COMMIT`."
        ),
    }
)
"""Every fault point, with where it fires. Arming any other name is refused."""

TEARABLE = frozenset({"before_journal_line"})
"""Points that pass the bytes they are about to write, so that `torn` can write half of them."""

ACTIONS = ("kill", "exit", "raise", "sleep", "torn")


class FaultInjected(BaseException):
    """Raised by the `raise` action: not an `Exception`, so the engine records no failure for it."""


class FaultSpecError(ValueError):
    """A fault specification that names an unknown point or action, or has a malformed field."""


@dataclass(eq=False)
class Fault:
    """One armed fault: fire `action` at the `nth` hit of `point` (hits matching `target`)."""

    point: str
    action: str = "kill"
    nth: int = 1
    target: frozenset[str] | None = None
    arg: str | None = None
    """`exit` code, `raise` exception name or `sleep` seconds, as written."""
    from_env: bool = False
    hits: int = 0
    """Hits counted so far (counting goes on after the fault fired)."""
    fired: bool = False
    _exception: type[BaseException] = field(default=FaultInjected, repr=False)
    _number: float = field(default=0.0, repr=False)

    @property
    def spec(self) -> str:
        """The fault written in the `PERDURE_FAULT` vocabulary."""
        target = "@" + "|".join(sorted(self.target)) if self.target else ""
        action = self.action if self.arg is None else f"{self.action}:{self.arg}"
        return f"{self.point}{target}:{self.nth}:{action}"


_armed: tuple[Fault, ...] = ()
"""Armed faults; empty in production, which is the whole cost of `point` then."""
_lock = threading.Lock()
_NTH = re.compile(r"[+-]?\d+")


def point(name: str, target: str | None = None, *, tear: tuple[int, bytes] | None = None) -> None:
    """Pass fault point `name` (one of `POINTS`); fires the armed fault that is due here, if any.

    `target` says which hits a targeted fault counts (a tool name, a journal entry kind; a `tool:`
    prefix is ignored). `tear` is `(fd, bytes about to be written)` at the `TEARABLE` points.
    """
    if _armed:
        _hit(name, target, tear)


def _hit(name: str, target: str | None, tear: tuple[int, bytes] | None) -> None:
    if name not in POINTS:  # only checked once something is armed: a typo in a call site
        raise FaultSpecError(f"fault point {name!r} is not registered in perdure._faults.POINTS")
    if target is not None:
        target = str(target).removeprefix("tool:").removeprefix("step:")
    due: Fault | None = None
    with _lock:
        for fault in _armed:
            if fault.point != name or (fault.target is not None and target not in fault.target):
                continue
            fault.hits += 1
            if due is None and not fault.fired and fault.hits == fault.nth:
                fault.fired = True
                due = fault
    if due is not None:
        _fire(due, target, tear)


def _announce(fault: Fault, target: str | None) -> None:
    where = fault.point if target is None else f"{fault.point}@{target}"
    os.write(2, f"perdure._faults: {fault.action} at {where} (hit {fault.nth}, pid {os.getpid()})\n".encode())


def _fire(fault: Fault, target: str | None, tear: tuple[int, bytes] | None) -> None:
    if fault.action in ("kill", "exit", "torn"):
        _announce(fault, target)
    if fault.action == "kill":
        _die()
    if fault.action == "torn":
        if tear is not None:
            fd, data = tear
            os.write(fd, data[: max(1, len(data) // 2)])
        _die()
    if fault.action == "exit":
        os._exit(int(fault._number))
    if fault.action == "sleep":
        time.sleep(fault._number)
        return
    where = fault.point if target is None else f"{fault.point}@{target}"
    raise fault._exception(f"fault injected at {where} (hit {fault.nth})")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the signal is delivered before this returns
    os._exit(EXIT_CODE)  # pragma: no cover


# ---- arming -------------------------------------------------------------------------------------


def _exception(name: str, spec: str) -> type[BaseException]:
    module, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attr) if module else getattr(builtins, name, None)
    except (ImportError, AttributeError, ValueError) as exc:
        raise FaultSpecError(f"{spec!r}: cannot import exception {name!r} ({exc})") from exc
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise FaultSpecError(f"{spec!r}: {name!r} is not an exception class")
    try:
        found("probe")
    except Exception as exc:
        raise FaultSpecError(f"{spec!r}: {name} cannot be built from one message argument ({exc})") from exc
    return found


def _make(
    name: str, target: str | None, nth: int, action: str, arg: str | None, spec: str, *, from_env: bool
) -> Fault:
    if name not in POINTS:
        raise FaultSpecError(f"{spec!r}: unknown fault point {name!r}; known points: {', '.join(POINTS)}")
    targets = None
    if target is not None:
        targets = frozenset(t.strip().removeprefix("tool:").removeprefix("step:") for t in target.split("|"))
        if "" in targets:
            raise FaultSpecError(f"{spec!r}: empty target after '@'")
    if nth < 1:
        raise FaultSpecError(f"{spec!r}: nth must be 1 or more, got {nth}")
    fault = Fault(name, action, nth, targets, arg, from_env)
    if action == "kill" or action == "torn":
        if arg is not None:
            raise FaultSpecError(f"{spec!r}: {action!r} takes no argument")
        if action == "torn" and name not in TEARABLE:
            raise FaultSpecError(f"{spec!r}: 'torn' only applies to {', '.join(sorted(TEARABLE))}")
    elif action == "exit":
        try:
            fault._number = EXIT_CODE if arg is None else int(arg)
        except ValueError:
            raise FaultSpecError(f"{spec!r}: exit code must be an integer, got {arg!r}") from None
        if not 0 <= fault._number <= 255:
            raise FaultSpecError(f"{spec!r}: exit code must be 0-255, got {arg}")
    elif action == "raise":
        if arg is not None:
            fault._exception = _exception(arg, spec)
    elif action == "sleep":
        try:
            fault._number = float(arg if arg is not None else "nan")
        except ValueError:
            fault._number = float("nan")
        if not fault._number >= 0:  # also NaN: a missing or malformed duration
            raise FaultSpecError(f"{spec!r}: 'sleep' needs seconds >= 0, as in 'sleep:0.5'")
    else:
        raise FaultSpecError(f"{spec!r}: unknown action {action!r}; actions: {', '.join(ACTIONS)}")
    return fault


def _parse_one(item: str, *, from_env: bool) -> Fault:
    head, *fields = item.split(":")
    name, at, target = head.strip().partition("@")
    nth = 1
    if fields and _NTH.fullmatch(fields[0].strip()):
        nth = int(fields.pop(0))
    action = fields.pop(0).strip() if fields else "kill"
    if not action:
        raise FaultSpecError(f"{item!r}: empty action")
    if len(fields) > 1:
        raise FaultSpecError(f"{item!r}: too many ':' fields (point[@target][:nth][:action[:arg]])")
    arg = fields[0].strip() if fields else None
    return _make(name, target if at else None, nth, action, arg, item, from_env=from_env)


def parse(spec: str, *, from_env: bool = False) -> list[Fault]:
    """Parse a `PERDURE_FAULT` value into (unarmed) faults; raises `FaultSpecError` when malformed."""
    faults = [_parse_one(item.strip(), from_env=from_env) for item in spec.split(",") if item.strip()]
    if spec.strip() and not faults:
        raise FaultSpecError(f"{spec!r}: no fault in it")
    return faults


def _add(faults: list[Fault]) -> None:
    global _armed
    with _lock:
        _armed = (*_armed, *faults)


def arm_spec(spec: str) -> list[Fault]:
    """Arm every fault of a `PERDURE_FAULT`-style value; returns them (for `disarm`)."""
    faults = parse(spec)
    _add(faults)
    return faults


def arm(
    name: str, *, action: str, nth: int = 1, target: str | None = None, arg: str | float | None = None
) -> Fault:
    """Arm one fault at point `name`; `action` may carry its argument (`"sleep:0.5"`) or pass `arg`."""
    action, _, inline = action.partition(":")
    raw = inline or (None if arg is None else str(arg))
    spec = f"{name}{'@' + target if target else ''}:{nth}:{action}{':' + raw if raw else ''}"
    fault = _make(name, target, nth, action, raw, spec, from_env=False)
    _add([fault])
    return fault


def disarm(*faults: Fault) -> None:
    """Disarm these faults, or every armed fault (the environment's too) when none is given."""
    global _armed
    with _lock:
        _armed = tuple(f for f in _armed if faults and all(f is not g for g in faults))


@contextmanager
def armed(
    name: str, *, action: str, nth: int = 1, target: str | None = None, arg: str | float | None = None
) -> Iterator[Fault]:
    """Arm one fault for the duration of a `with` block (see `arm`); yields it."""
    fault = arm(name, action=action, nth=nth, target=target, arg=arg)
    try:
        yield fault
    finally:
        disarm(fault)


def active() -> tuple[Fault, ...]:
    """The armed faults, oldest first."""
    return _armed


def load_env(environ: Mapping[str, str] | None = None) -> list[Fault]:
    """(Re-)arm the faults of `PERDURE_FAULT`, replacing those armed from it before."""
    global _armed
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    faults = parse(value, from_env=True)
    with _lock:
        _armed = (*(f for f in _armed if not f.from_env), *faults)
    return faults


load_env()
