"""What the dashboard's buttons do: each one call of `perdure.operations`, shared with the CLI.

Decisions (approve, deny, resolve) are durable signals: `perdure.operations` journals them under the
execution's lease. When the last pending call of a pause is decided the execution is resumable: the
dashboard resumes it itself when it was started with `--app` (or the execution runs a workflow this
process registered), else a running `perdure worker` picks it up at its next poll.

Runs (resume, and the resume after the last decision) happen in a background task of the dashboard's
process: the page redirects at once and follows the run through server-sent events. An error raised
before the run really starts (no agent for the recorded name, a conflict) is still reported on the
page: `Operator.start` waits `QUICK_FAILURE` seconds for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from .. import operations
from ..storage import DurableExecutionStorage
from ..storage.base import cleanup_executions

__all__ = ["QUICK_FAILURE", "ActionError", "Operator", "Outcome"]

logger = logging.getLogger("perdure.ui")

QUICK_FAILURE = 1.0
"""Seconds a background run is awaited for an immediate failure before the page redirects."""


_RESOLUTIONS: dict[str, Literal["done", "rerun", "abort"]] = {
    "done": "done",
    "rerun": "rerun",
    "abort": "abort",
}


class ActionError(Exception):
    """An action the operator asked for could not be done; the message is shown on the page."""


@dataclass
class Outcome:
    """What an action did, in one line for the page (and the execution to show next, for a fork)."""

    message: str
    execution_id: str | None = None


class Operator:
    """Runs the dashboard's actions against one storage, with the `--app` agents when given."""

    def __init__(self, storage: DurableExecutionStorage, resolver: Any = None) -> None:
        self.storage = storage
        self.resolver = resolver
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_error: dict[str, str] = {}
        """The error of the latest background run of each execution, shown on its page."""

    async def start(self, execution_id: str, work: Callable[[], Awaitable[Any]], what: str) -> Outcome:
        """Run `work()` in the background; an error within `QUICK_FAILURE` seconds is raised here."""
        self.last_error.pop(execution_id, None)

        async def run() -> None:
            try:
                await work()
            except Exception as exc:
                self.last_error[execution_id] = f"{what} failed: {exc}"
                logger.warning("[%s] %s failed: %s", execution_id, what, exc)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task}, timeout=QUICK_FAILURE)
        error = self.last_error.get(execution_id)
        if error is not None:
            raise ActionError(error)
        return Outcome(f"{what}: done" if task.done() else f"{what}: running")

    async def aclose(self) -> None:
        """Cancel the background runs (their executions stay resumable: they are durable)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _can_resume(self, workflow: str | None) -> bool:
        return self.resolver is not None or workflow is not None

    async def resume(self, execution_id: str) -> Outcome:
        """Resume an interrupted or failed execution now, in this process."""
        return await self.start(
            execution_id, lambda: operations.resume(self.storage, execution_id, self.resolver), "resume"
        )

    async def _after_decisions(self, execution_id: str, ready: bool, recorded: str) -> Outcome:
        if not ready:
            return Outcome(f"{recorded}; other calls still wait for a decision")
        head = await self.storage.load_state_async(execution_id)
        if head is None or not self._can_resume(head.task.workflow):
            return Outcome(f"{recorded}; a worker resumes the execution at its next poll")
        outcome = await self.resume(execution_id)
        return Outcome(f"{recorded}; resume: {outcome.message.rpartition(': ')[2]}")

    async def decide(self, execution_id: str, decisions: dict[str, Any]) -> Outcome:
        """Per call id: `True` approves, a dict approves with these arguments, a string (or False) denies."""
        ready = False
        done: list[str] = []
        for call_id, decision in decisions.items():
            if decision is True or isinstance(decision, dict):
                args = decision if isinstance(decision, dict) else None
                outcome = await operations.approve(self.storage, execution_id, call_id, args)
            else:
                message = decision if isinstance(decision, str) and decision else None
                outcome = await operations.deny(self.storage, execution_id, call_id, message)
            ready = outcome.ready
            done.append(f"{call_id} {outcome.decision}")
        return await self._after_decisions(execution_id, ready, ", ".join(done))

    async def resolve(self, execution_id: str, call_id: str, action: str, result: Any) -> Outcome:
        """Resolve an interrupted non-idempotent call: `done` (with its result), `rerun` or `abort`."""
        if action not in _RESOLUTIONS:
            raise ActionError(f"unknown resolution {action!r}: done, rerun or abort")
        chosen = _RESOLUTIONS[action]
        outcome = await operations.resolve(
            self.storage, execution_id, call_id, chosen, result if chosen == "done" else None
        )
        if action == "abort":
            return Outcome(f"{call_id}: aborted, the execution is cancelled")
        return await self._after_decisions(execution_id, outcome.ready, f"{call_id} {outcome.decision}")

    async def cancel(self, execution_id: str) -> Outcome:
        """Cancel: now when idle, at the next unit boundary when running."""
        outcome = await operations.cancel(
            self.storage, execution_id, "cancelled from the dashboard", requested_by="perdure ui"
        )
        if outcome.state == "requested":
            return Outcome("cancel requested: the run stops at its next unit boundary")
        return Outcome(outcome.state.replace("_", " "))

    async def fork(self, execution_id: str, at_step: int) -> Outcome:
        """A new execution whose journal is this one's up to `at_step`; the page shows the fork."""
        new_id = await operations.fork(self.storage, execution_id, at_step)
        return Outcome(f"forked {execution_id} at step {at_step}", new_id)

    async def delete(self, execution_id: str) -> Outcome:
        """Delete an execution that no worker holds."""
        await operations.delete(self.storage, execution_id)
        return Outcome(f"{execution_id} deleted")

    async def cleanup(self, older_than_days: float) -> Outcome:
        """Delete executions last updated more than `older_than_days` ago (retention statuses kept)."""
        deleted = await cleanup_executions(self.storage, older_than_days)
        return Outcome(f"cleanup: {deleted} executions deleted")
