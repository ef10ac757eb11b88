"""A bounded pool of sqlite3 connections shared by every thread of a process, one user at a time.

A connection per thread kept until `close()` costs three file descriptors (database, `-wal`, `-shm`)
per thread that ever touched the storage: a process running an execution per thread ran out of
descriptors. Here a thread checks a connection out for one operation and back in right after; at most
`max_size` exist, so descriptors stay bounded however many threads come and go. Connections are
opened with `check_same_thread=False` and used by one thread at a time. A thread that uses the pool
again while it holds a connection (a nested helper) gets the same one: storage operations never
await while they hold it, so no other coroutine can slip in between. Nothing is opened until the
first checkout, and a forked child drops the parent's connections instead of sharing them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import StorageLockedError

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """At most `max_size` connections made by `connect`; a checkout waits up to `timeout` seconds."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], max_size: int, timeout: float, where: str
    ) -> None:
        self._connect = connect
        self.max_size = max_size
        self.timeout = timeout
        self._where = where
        self._idle: list[sqlite3.Connection] = []
        self._count = 0  # connections of the current generation, idle or in use
        self._generation = 0
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._local = threading.local()

    @property
    def size(self) -> int:
        """Connections open now (idle or in use)."""
        return self._count

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Check a connection out for the duration of the `with` block."""
        held: sqlite3.Connection | None = getattr(self._local, "held", None)
        if held is not None:
            yield held
            return
        conn, generation = self._checkout()
        self._local.held = conn
        try:
            yield conn
        finally:
            self._local.held = None
            self._checkin(conn, generation)

    def _checkout(self) -> tuple[sqlite3.Connection, int]:
        deadline: float | None = None
        with self._cond:
            if self._pid != os.getpid():  # forked: never use the parent's connections (nor close them)
                self._idle, self._count, self._pid = [], 0, os.getpid()
                self._generation += 1
            while not self._idle and self._count >= self.max_size:
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageLockedError(
                        "sqlite",
                        f"{self._where}: all {self.max_size} connections stayed in use for "
                        f"{self.timeout:g}s; raise max_connections or busy_timeout_ms",
                    )
                self._cond.wait(remaining)
            generation = self._generation
            if self._idle:
                return self._idle.pop(), generation
            self._count += 1
        try:
            return self._connect(), generation
        except BaseException:
            with self._cond:
                if generation == self._generation:
                    self._count -= 1
                self._cond.notify()
            raise

    def _checkin(self, conn: sqlite3.Connection, generation: int) -> None:
        healthy = True
        if conn.in_transaction:  # only after an error that could not roll back: do not reuse it
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            healthy = not conn.in_transaction
        with self._cond:
            current = generation == self._generation and self._pid == os.getpid()
            if current and healthy:
                self._idle.append(conn)
                self._cond.notify()
                return
            if current:
                self._count -= 1
                self._cond.notify()
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def close(self) -> None:
        """Close the idle connections; those in use close when they are checked in. Reusable after."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._count = 0
            self._generation += 1
            self._cond.notify_all()
        for conn in idle:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
