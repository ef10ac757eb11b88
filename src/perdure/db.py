"""Seed-style databases: `Agent(model, db=SqliteDatabase(...))` makes every task durable.

A database here is a thin configuration object, not a second persistence mechanism: it opens one
of perdure's storage backends and names the *session* and *user* the agent's runs belong to. Runs
are ordinary durable executions (head record + journal) in that storage, so everything else in
perdure (`continue_durable`, `DurableExecution.list_all_executions`, the CLI, recovery) sees them;
the session and user ids are stored in each execution's `metadata`, which is how a session's runs
are listed again.
"""

from __future__ import annotations

import os
from typing import Any

from ._sync import run_sync
from .records import ExecutionRecord, ExecutionStatus
from .storage.base import DurableExecutionStorage
from .storage.sqlite import SQLiteDurableStorage

__all__ = ["Database", "SqliteDatabase"]


class Database:
    """A storage backend plus the session and user the agent's runs belong to.

    Args:
        storage: Where executions are stored (any perdure backend).
        session_id: Groups the runs of one conversation or job; recorded with each run.
        user_id: The user the runs are for; recorded with each run.

    """

    def __init__(
        self,
        storage: DurableExecutionStorage,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        self.storage = storage
        self.session_id = session_id
        self.user_id = user_id

    def metadata(self) -> dict[str, Any]:
        """What is recorded in the metadata of every execution started through this database."""
        data: dict[str, Any] = {}
        if self.session_id is not None:
            data["session_id"] = self.session_id
        if self.user_id is not None:
            data["user_id"] = self.user_id
        return data

    def _matches(self, head: ExecutionRecord, session_id: str | None, user_id: str | None) -> bool:
        meta = head.metadata
        return (session_id is None or meta.get("session_id") == session_id) and (
            user_id is None or meta.get("user_id") == user_id
        )

    async def list_runs_async(
        self,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
        *,
        all_sessions: bool = False,
    ) -> list[dict[str, Any]]:
        """Info dicts of this session's (and user's) runs, most recently updated first.

        Args:
            status: Only runs with this status (`"failed"`, `"paused"`, ...).
            limit: At most this many runs.
            all_sessions: List every run in the storage, not only this session's.

        """
        session_id = None if all_sessions else self.session_id
        user_id = None if all_sessions else self.user_id
        heads = [
            head
            for head in await self.storage.list_executions_async(status)
            if self._matches(head, session_id, user_id)
        ]
        if limit is not None:
            heads = heads[: max(limit, 0)]
        return [head.info() for head in heads]

    def list_runs(
        self,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
        *,
        all_sessions: bool = False,
    ) -> list[dict[str, Any]]:
        """Sync twin of `list_runs_async`."""
        return run_sync(self.list_runs_async(status, limit, all_sessions=all_sessions))

    def close(self) -> None:
        """Close the storage's connections (it can be reopened by creating a new database)."""
        self.storage.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(storage={self.storage!r}, session_id={self.session_id!r}, "
            f"user_id={self.user_id!r})"
        )


class SqliteDatabase(Database):
    """A session's runs in one SQLite file (the seed's `SqliteDatabase`).

    Two `SqliteDatabase`s on the same file, in one process or in several, share the same runs: a new
    agent in a new process resumes a run by its id with `agent.continue_run_async(run_id=...)`.

    Args:
        db_file: The SQLite database file; created when missing.
        session_id: Groups the runs of one conversation or job; recorded with each run.
        user_id: The user the runs are for; recorded with each run.
        table_name: Heads table of the underlying `SQLiteDurableStorage`.
        synchronous: `"FULL"` (survives power loss) or `"NORMAL"` (faster; survives process crashes).

    """

    def __init__(
        self,
        db_file: str | os.PathLike[str] = "perdure.db",
        session_id: str | None = None,
        user_id: str | None = None,
        *,
        table_name: str = "durable_executions",
        synchronous: str = "FULL",
    ) -> None:
        self.db_file = str(db_file)
        super().__init__(
            SQLiteDurableStorage(db_path=self.db_file, table_name=table_name, synchronous=synchronous),
            session_id=session_id,
            user_id=user_id,
        )

    def __repr__(self) -> str:
        return (
            f"SqliteDatabase(db_file={self.db_file!r}, session_id={self.session_id!r}, "
            f"user_id={self.user_id!r})"
        )
