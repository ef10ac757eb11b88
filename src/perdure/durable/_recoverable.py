"""Which executions recovery may resume now: its options, the eligibility rule, and the listing.

Why a module of its own: choosing is read-only and cheap, and it runs far more often than resuming
(every worker poll lists the storage); resuming one execution (`perdure.durable.recovery`) takes its
lease, runs the agent and writes. The same rule, `not_eligible`, decides both from the listing and
again on the head the lease returned, so the two can never disagree. An execution is eligible when
its status is one recovery handles (`success`, in progress, by default), no live worker holds its
lease (absent, expired, or owned by a process of this host that no longer exists), and it has been
idle long enough:

- `min_idle` guards the only unleased in-progress state that is not a crash: a run that has just
  created its head and is about to take its lease (`attempts == 0`; the engine takes the lease
  before it counts an attempt). By default it applies to those only, and to `failed` executions
  (when `statuses` includes them) whose process may be about to retry them itself. An execution
  that ran before and holds no live lease was interrupted for sure and is recovered at once, which
  is what lets a worker that shut down gracefully hand its executions over immediately.
- `delay` is a back-off per execution: after its k-th resume (k = attempts - 1 >= 1) an execution
  is retried only once it has been idle for `delay * 2**(k-1)` seconds.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..errors import UserError
from ..records import ExecutionRecord, ExecutionStatus, utcnow
from ..storage.base import DurableExecutionStorage
from .leases import DEFAULT_LEASE_TTL, owner_is_dead

__all__ = ["RecoveryOptions", "find_recoverable_async", "not_eligible"]

_NEVER_RECOVERED = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.CANCELLED, ExecutionStatus.PAUSED})


@dataclass(frozen=True)
class RecoveryOptions:
    """The knobs of recovery, validated once; see `perdure.durable.recovery.recover_interrupted_async`."""

    max_attempts: int = 5
    delay: float = 0.0
    timeout: float | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL
    worker_id: str | None = None
    min_idle: float | None = None
    statuses: tuple[ExecutionStatus, ...] = (ExecutionStatus.SUCCESS,)
    """Converted from strings and validated on creation."""
    allow_changes: frozenset[str] = frozenset()
    """Identity differences a resume accepts on purpose (see `perdure.durable.identity`)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UserError(f"max_attempts must be >= 1, got {self.max_attempts!r}.")
        if self.delay < 0:
            raise UserError(f"delay must be >= 0 seconds, got {self.delay!r}.")
        if self.timeout is not None and not self.timeout > 0:
            raise UserError(f"timeout must be > 0 seconds or None, got {self.timeout!r}.")
        if not self.lease_ttl > 0:
            raise UserError(f"lease_ttl must be > 0 seconds, got {self.lease_ttl!r}.")
        if self.min_idle is not None and self.min_idle < 0:
            raise UserError(f"min_idle must be >= 0 seconds or None, got {self.min_idle!r}.")
        try:
            statuses = tuple(ExecutionStatus(s) for s in self.statuses)
        except ValueError as exc:
            raise UserError(f"statuses: {exc}; use 'success' and/or 'failed'.") from exc
        refused = sorted(s.value for s in statuses if s in _NEVER_RECOVERED)
        if refused or not statuses:
            raise UserError(
                f"statuses must name 'success' and/or 'failed', got {[s.value for s in statuses]}: paused "
                f"executions wait for a human, completed and cancelled ones are finished."
            )
        object.__setattr__(self, "statuses", statuses)

    def idle_needed(self, head: ExecutionRecord) -> float:
        """Seconds `head` must have been idle before it is resumed (grace for new runs + back-off)."""
        base = self.min_idle
        if base is None:
            fresh = head.attempts == 0 or head.status is ExecutionStatus.FAILED
            base = self.lease_ttl if fresh else 0.0
        backoff = self.delay * 2 ** (head.attempts - 2) if head.attempts >= 2 and self.delay else 0.0
        return base + backoff


def not_eligible(head: ExecutionRecord, options: RecoveryOptions) -> str | None:
    """Why `head` must not be resumed now (None when it may); called again under the lease."""
    if head.status not in options.statuses:
        return f"status is {head.status.value}"
    now = utcnow()
    expires = head.lease_expires_at
    if head.lease_owner and expires is not None and expires > now and not owner_is_dead(head.lease_owner):
        return f"leased by {head.lease_owner} until {expires.isoformat()}"
    if head.wake_at is not None and head.wake_at > now:  # a sleeping workflow: due at its wake-up time
        return f"sleeping until {head.wake_at.isoformat()}"
    idle_needed = options.idle_needed(head)
    idle = (now - head.updated_at).total_seconds()
    if idle < idle_needed:
        return f"idle for {max(idle, 0):.1f}s, waiting until {idle_needed:.1f}s"
    return None


async def find_recoverable_async(
    storage: DurableExecutionStorage,
    options: RecoveryOptions,
    *,
    exclude: Collection[str] = (),
) -> tuple[list[ExecutionRecord], dict[str, str]]:
    """Heads that look recoverable now, oldest first, and the reasons the others were skipped.

    Uses the storage's status index (`list_executions_async(status=...)`). The answer is a snapshot:
    `recover_execution_async` checks it again under the lease.
    """
    heads: list[ExecutionRecord] = []
    for status in options.statuses:
        heads.extend(await storage.list_executions_async(status=status))
    heads.sort(key=lambda h: (h.updated_at, h.execution_id))
    candidates: list[ExecutionRecord] = []
    skipped: dict[str, str] = {}
    for head in heads:
        if head.execution_id in exclude:
            continue
        reason = not_eligible(head, options)
        if reason is None:
            candidates.append(head)
        else:
            skipped[head.execution_id] = reason
    return candidates, skipped
