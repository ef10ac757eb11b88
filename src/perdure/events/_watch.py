"""`perdure.watch`: the events of executions run by other processes, read from the storage.

Why events are derived from stored records instead of being sent by the worker: what the storage
holds is the truth, so a watcher that starts late, loses its connection or misses a notification
still sees every unit once it looks again. The watcher keeps, per execution, the journal position,
attempt count and status it has seen; on a change it reads the head and the journal entries after
that position (`load_steps_after_async`, whose cost does not grow with the history) and turns them
into the same event models the engine emits in-process.

How a change is noticed: PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub) announce every write, so an
event arrives a few milliseconds after the worker's write commits; memory, file and SQLite storages
are polled (`poll_interval`, default 0.2 s: an event arrives within about that long plus a read).
With a change feed the watcher still re-reads every `resync_interval` seconds, which covers a
notification lost while the feed reconnected.

What a watcher in another process cannot see, because it is never stored: `unit_replayed` (a
resume answering units from the journal writes nothing per unit; the resume itself shows as
`execution_resumed`), `unit_failed` (shown as `execution_failed` with the error, or as
`unit_retried` for a try a retry policy repeats), and `unit_started` except for non-idempotent
tool calls (whose `started` marker is journaled before they run). `DurableExecution(on_event=...)`
in the worker's process sees all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from ..errors import StorageNotFoundError
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, utcnow
from ..storage.base import DurableExecutionStorage
from . import _derive
from ._models import EXECUTION_END_KINDS, Event

__all__ = ["Watch", "resolve_storage", "watch"]

DEFAULT_POLL_INTERVAL = 0.2
"""Seconds between two reads of a storage without a change feed (memory, file, SQLite)."""
DEFAULT_RESYNC_INTERVAL = 5.0
"""Seconds between two full re-reads when a change feed announces writes."""
_WATCHED_STATUSES = (ExecutionStatus.SUCCESS, ExecutionStatus.PAUSED, ExecutionStatus.FAILED)
"""Statuses of executions that may still change (a completed or cancelled one never does)."""


@dataclass
class _Seen:
    """What the watcher has already reported of one execution."""

    next_seq: int = 0
    attempts: int = 0
    status: ExecutionStatus | None = None
    updated_at: datetime | None = None

    @classmethod
    def of(cls, head: ExecutionRecord) -> _Seen:
        return cls(head.next_seq, head.attempts, head.status, head.updated_at)

    def unchanged(self, head: ExecutionRecord) -> bool:
        return (
            head.next_seq == self.next_seq
            and head.attempts == self.attempts
            and head.status == self.status
            and head.updated_at == self.updated_at
        )


def _events(seen: _Seen, head: ExecutionRecord, steps: list[StepRecord]) -> list[Event]:
    """The events between what was seen and `head` with its new journal entries `steps`."""
    out: list[Event] = []
    if head.attempts > seen.attempts:  # the head is newer than the attempt's start: no step shown
        update: dict[str, Any] = {"step_index": None, "step_name": None, "status": "success"}
        if head.attempts == 1:  # when the first attempt started is known; a later one's is not stored
            update["at"] = head.created_at
        out.append(_derive.attempt_started(head).model_copy(update=update))
    for step in steps:
        if step.kind in _derive.RESULT_KINDS:
            out.append(_derive.unit_done(head, step, replayed=False))
        elif step.kind is StepKind.ATTEMPT:
            out.append(_derive.unit_retried(head, step))
        elif step.kind is StepKind.STARTED:
            unit = step.key.removeprefix("started:")
            call_id = step.result.get("tool_call_id") if isinstance(step.result, dict) else None
            marker = _derive.unit_started(head, StepKind.TOOL_CALL, step.name, unit, step.seq, 1, call_id)
            out.append(marker.model_copy(update={"at": step.finished_at}))
    ended = head.status != seen.status or head.attempts > seen.attempts
    if ended and (event := _derive.execution_ended(head)) is not None:
        out.append(event)
    return out


class Watch:
    """An async iterator of events read from a storage; see `watch`.

    Use it in `async for`, and close it (`await w.aclose()`, or `async with watch(...) as w`) when you
    stop early: with PostgreSQL or Redis it holds a listening connection.
    """

    def __init__(
        self,
        storage: DurableExecutionStorage,
        execution_id: str | None,
        *,
        follow: bool,
        from_start: bool,
        poll_interval: float,
        resync_interval: float,
        owned: bool = False,
    ) -> None:
        self.storage = storage
        self._owned = owned
        self.execution_id = execution_id
        self.follow = follow
        self.from_start = from_start
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self._seen: dict[str, _Seen] = {}
        self._watermark: datetime | None = None
        self._since: datetime | None = None
        self._feed: Any = None
        self._gen: AsyncIterator[Event] | None = None

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def __anext__(self) -> Event:
        return await self.__aiter__().__anext__()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching and release the listening connection (idempotent)."""
        gen, self._gen = self._gen, None
        if gen is not None:
            await gen.aclose()  # type: ignore[attr-defined]
        await self._close_feed()

    async def _close_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.__aexit__(None, None, None)

    # ---- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> AsyncIterator[Event]:
        try:
            await self._open_feed()
            await self._baseline()
            if self.execution_id is not None and self.from_start:
                for event in await self._check(self.execution_id):
                    yield event
                    if self._ends(event):
                        return
            while True:
                changed = await self._wait()
                for execution_id in changed:
                    for event in await self._check(execution_id):
                        yield event
                        if self._ends(event):
                            return
                if self.execution_id is not None and self.execution_id not in self._seen:
                    return  # deleted
        finally:
            await self._close_feed()
            if self._owned:  # opened from a URL for this watch
                await self.storage.close_async()

    def _ends(self, event: Event) -> bool:
        return self.execution_id is not None and not self.follow and event.kind in EXECUTION_END_KINDS

    async def _open_feed(self) -> None:
        factory = getattr(self.storage, "change_feed", None)
        feed = factory() if callable(factory) else None
        if feed is not None:
            self._feed = await feed.__aenter__()

    async def _baseline(self) -> None:
        """Remember the state every watched execution is in now: only later changes are reported."""
        if self.execution_id is not None:
            head = await self.storage.load_state_async(self.execution_id)
            if head is None:
                raise self.storage.not_found_error(self.execution_id)
            self._seen[self.execution_id] = _Seen() if self.from_start else _Seen.of(head)
            return
        self._since = utcnow()
        newest: datetime | None = None
        try:
            for status in _WATCHED_STATUSES:
                for head in await self.storage.list_executions_async(status=status):
                    self._seen[head.execution_id] = _Seen.of(head)
                    newest = head.updated_at if newest is None else max(newest, head.updated_at)
            recent = await self.storage.list_executions_async(limit=1)
        except StorageNotFoundError:  # a file or SQLite store its first run has not created yet
            return
        if recent:
            newest = recent[0].updated_at if newest is None else max(newest, recent[0].updated_at)
        self._watermark = newest

    async def _wait(self) -> list[str]:
        """Execution ids that may have changed: announced by the feed, or found by a poll."""
        if self._feed is not None:
            announced: set[str] | None = await self._feed.wait(self.resync_interval)
            if announced:
                if self.execution_id is not None:
                    return [self.execution_id] if self.execution_id in announced else []
                return sorted(announced)
            # None: the feed reconnected and may have lost announcements; an empty set: a quiet
            # period. Either way, re-read what may have changed.
        else:
            await asyncio.sleep(self.poll_interval)
        if self.execution_id is not None:
            return [self.execution_id]
        return await self._recently_updated()

    async def _recently_updated(self) -> list[str]:
        """Ids of executions updated since the newest update seen (most recent first listing)."""
        limit = 64
        while True:
            try:
                heads = await self.storage.list_executions_async(limit=limit)
            except StorageNotFoundError:  # not created yet
                return []
            fresh = [h for h in heads if self._watermark is None or h.updated_at >= self._watermark]
            if len(fresh) < len(heads) or len(heads) < limit:
                break
            limit *= 4
        if fresh:
            newest = max(h.updated_at for h in fresh)
            self._watermark = newest if self._watermark is None else max(self._watermark, newest)
        return [h.execution_id for h in sorted(fresh, key=lambda h: h.updated_at)]

    async def _check(self, execution_id: str) -> list[Event]:
        """Read one execution and return the events since it was last seen."""
        head = await self.storage.load_state_async(execution_id)
        if head is None:
            self._seen.pop(execution_id, None)
            return []
        seen = self._seen.get(execution_id)
        if seen is None:
            # Not among the executions that could change when the watch started: new since (all of
            # it is news), or one that had ended before (nothing to report).
            new = self._since is not None and head.created_at >= self._since
            seen = _Seen() if new else _Seen.of(head)
        if self._watermark is None or head.updated_at > self._watermark:
            self._watermark = head.updated_at
        if seen.unchanged(head):
            return []
        steps: list[StepRecord] = []
        if head.next_seq > seen.next_seq:
            steps = await _steps_after(self.storage, execution_id, seen.next_seq - 1)
            # Entries written after the head was read are reported with the next head, not twice.
            steps = [step for step in steps if step.seq < head.next_seq]
        self._seen[execution_id] = _Seen.of(head)
        return _events(seen, head, steps)


async def _steps_after(
    storage: DurableExecutionStorage, execution_id: str, after_seq: int
) -> list[StepRecord]:
    reader = getattr(storage, "load_steps_after_async", None)
    if reader is not None:
        steps: list[StepRecord] = await reader(execution_id, after_seq)
        return steps
    return [s for s in await storage.load_steps_async(execution_id) if s.seq > after_seq]


def watch(
    execution_id: str | None = None,
    storage: DurableExecutionStorage | str | None = None,
    *,
    follow: bool = False,
    from_start: bool = False,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    resync_interval: float = DEFAULT_RESYNC_INTERVAL,
) -> Watch:
    """Watch the events of one execution, or of all, as other processes run them.

    Example:
        ```python
        async for event in perdure.watch(execution_id, "sqlite:///runs.db"):
            print(event.kind, event.step_name)
        ```

    Args:
        execution_id: The execution to watch; None watches every execution of the storage (new
            ones included) and never ends by itself.
        storage: A storage, a storage URL, or None for `PERDURE_STORAGE_URL`.
        follow: Keep watching one execution after an attempt ended (paused, failed, completed,
            cancelled); by default the iteration ends after that event. It always ends when the
            execution is deleted (runs with `auto_cleanup=True` are deleted as they complete: watch
            those with `auto_cleanup=False` to see `execution_completed`).
        from_start: Report one execution's stored history first (its units, retries, last status),
            then the live events; by default only what happens after the call.
        poll_interval: Seconds between reads of storages without a change feed.
        resync_interval: With a change feed (PostgreSQL, Redis): seconds of quiet after which the
            watcher re-reads anyway.

    Raises:
        ExecutionNotFoundError: `execution_id` is not in the storage (when the iteration starts).

    """
    if not poll_interval > 0 or not resync_interval > 0:
        from ..errors import UserError

        raise UserError(
            f"poll_interval and resync_interval must be > 0, got {poll_interval!r}, {resync_interval!r}."
        )
    return Watch(
        resolve_storage(storage, "perdure.watch"),
        execution_id,
        owned=not isinstance(storage, DurableExecutionStorage),
        follow=follow,
        from_start=from_start,
        poll_interval=poll_interval,
        resync_interval=resync_interval,
    )


def resolve_storage(storage: DurableExecutionStorage | str | None, what: str) -> DurableExecutionStorage:
    """`storage` itself, the storage a URL names, or the one of `PERDURE_STORAGE_URL`."""
    if isinstance(storage, DurableExecutionStorage):
        return storage
    from ..settings import settings
    from ..storage.url import storage_from_url

    url = storage if storage is not None else settings().storage_url
    if url is None:
        from ..errors import UserError

        raise UserError(
            f"{what} needs a storage: pass storage=... (a storage or a URL such as "
            "'sqlite:///runs.db') or set PERDURE_STORAGE_URL."
        )
    return storage_from_url(url)
