"""Connections to PostgreSQL: the pool of one event loop, checking connections out, bounding a call.

Why a module of its own: these are the parts of the backend that deal with sockets and psycopg's
pool rather than with executions, and each works around something the driver does not do by itself:
the pool's maintenance workers ignore a cancellation that lands while they connect (so a loop could
never shut down), a connection the server closed while it sat idle is only noticed at its next use
(after a server restart), and a server that stopped answering cannot enforce its own
`statement_timeout`. `perdure.storage.postgres` keeps one `LoopPool` per event loop through
`perdure.storage._per_loop`, and runs every statement on a connection from `checkout` under `watchdog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import weakref
from collections.abc import Iterator
from typing import Any

from ..errors import UserError
from .base import logger

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool
    from psycopg_pool.pool_async import StopWorker
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise UserError(
        "PostgresDurableStorage needs psycopg 3 and psycopg-pool: install them with "
        "`pip install 'perdure[postgres]'`."
    ) from exc

__all__ = ["CLOSE_TIMEOUT", "Conn", "LoopPool", "NoAnswer", "Pool", "checkout", "watchdog"]

Conn = psycopg.AsyncConnection[Any]
CLOSE_TIMEOUT = 2.0
"""Seconds a pool's close waits for its connections."""


class Pool(AsyncConnectionPool[Conn]):
    """An `AsyncConnectionPool` whose maintenance workers stop when their task is cancelled.

    psycopg_pool's workers catch `CancelledError` around each maintenance task (to keep the pool
    consistent), so a cancellation that lands while one is connecting is swallowed and the worker
    goes back to waiting for work. Shutting the loop down (`asyncio.run`, a test's loop) cancels every
    task once and then waits for them, forever. This worker honours a swallowed cancellation.
    """

    @classmethod
    async def worker(cls, q: Any) -> None:
        """Run maintenance tasks until told to stop or cancelled."""
        me = asyncio.current_task()
        while True:
            task = await q.get()
            if isinstance(task, StopWorker):
                return
            try:
                await task.run()
            except Exception as exc:
                logger.warning("postgres pool maintenance task %s failed: %s", task, exc)
            if me is not None and me.cancelling():
                raise asyncio.CancelledError


class LoopPool:
    """One event loop's pool, and the connections it opened (to drop them without the loop)."""

    def __init__(self, pool: Pool, conns: weakref.WeakSet[Conn]) -> None:
        self.pool = pool
        self.conns = conns

    async def aclose(self) -> None:
        """Close the pool (on its own loop)."""
        await self.pool.close(timeout=CLOSE_TIMEOUT)

    def abandon(self) -> None:
        """Close the sockets without the loop (call only when no thread can be running it)."""
        for conn in list(self.conns):
            if not conn.closed:
                conn.pgconn.finish()


def _has_input(conn: Conn) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent a notice)."""
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - platforms without poll
    return bool(readable)


class NoAnswer(psycopg.OperationalError):
    """The server did not answer within `statement_timeout` plus a grace period (it could not enforce it)."""


def _sever(conn: Conn) -> None:
    """Shut a connection's socket down, so a read waiting on a server that stopped answering fails now.

    The pool then drops the connection. psycopg's own cancellation would first ask the stalled server
    to cancel, and wait for it.
    """
    with contextlib.suppress(OSError, psycopg.Error, ValueError):
        sock = socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)  # a dup of the fd
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


async def checkout(pool: Pool, max_size: int) -> Conn:
    """A pooled connection, skipping ones the server closed while they sat idle (after a restart).

    A cheap readability poll replaces a round trip per checkout: an idle connection only has
    input when the server sent something, which is usually its goodbye.
    """
    for _ in range(max_size + 1):
        conn = await pool.getconn()
        if not _has_input(conn):
            return conn
        try:
            await AsyncConnectionPool.check_connection(conn)
        except psycopg.Error:
            await conn.close()
            await pool.putconn(conn)  # closed: the pool replaces it
            continue
        return conn
    return await pool.getconn()


@contextlib.contextmanager
def watchdog(conn: Conn, answer_timeout: float, statement_timeout: float) -> Iterator[None]:
    """Bound the work done on `conn` by `statement_timeout` plus a grace period, on the client side.

    The server enforces `statement_timeout` itself; a server that stopped answering (stalled
    host, lost network) cannot, so past the grace period the socket is shut (`_sever`) and the
    operation fails with `NoAnswer` instead of waiting for TCP to notice.
    """
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        _sever(conn)

    timer = asyncio.get_running_loop().call_later(answer_timeout, expire)
    try:
        yield
    except psycopg.OperationalError as exc:
        if fired:
            raise NoAnswer(
                f"no answer within {answer_timeout:g}s (statement_timeout "
                f"{statement_timeout:g}s): the server or the network stalled"
            ) from exc
        raise
    finally:
        timer.cancel()
