"""The Redis change feed: SUBSCRIBE to the prefix's channel on one dedicated connection.

Why a module of its own: it is the one part of the backend that holds a connection open outside the
per-loop clients, for as long as a watcher follows the storage. The write scripts
(`_redis_scripts`) `PUBLISH` the execution id on `<prefix>changes` inside the script that writes,
so a message is sent exactly when the write is applied. Pub/sub delivers to connected subscribers
only: a message sent while the connection is down is lost. The feed's client therefore does not
retry on its own (redis-py would reconnect and resubscribe silently); the feed reconnects itself
and says so (`wait` returns None), or fails with `StorageUnavailableError` naming the storage. While
idle it sends a `PING` every `HEARTBEAT` seconds and treats a server that does not answer within
`socket_timeout` as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import StorageUnavailableError, UserError
from .base import ChangeFeed

if TYPE_CHECKING:
    from .redis import RedisDurableStorage

__all__ = ["HEARTBEAT", "RedisChangeFeed"]

HEARTBEAT = 5.0
"""Seconds without news after which a waiting feed checks its connection with `PING`."""
_ERRORS = (redis_errors.RedisError, OSError, TimeoutError)


class RedisChangeFeed(ChangeFeed):
    """The `ChangeFeed` of a `RedisDurableStorage` (see `perdure.storage.base`); one waiter at a time."""

    def __init__(self, storage: RedisDurableStorage, options: dict[str, Any], channel: str) -> None:
        self._storage = storage
        self._options = {**options, "retry": Retry(NoBackoff(), 0)}
        self.channel = channel
        """The channel subscribed to (`<prefix>changes`)."""
        self._client: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._open = False
        self._pending: set[str] = set()
        self._contact = 0.0
        self._pinged: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"RedisChangeFeed({self._storage!r}, channel={self.channel!r})"

    async def open(self) -> None:
        if not self._open:
            await self._connect()
            self._open = True

    async def wait(self, timeout: float) -> set[str] | None:
        if not self._open:
            raise UserError(f"{self!r} is not open: use `async with storage.change_feed() as feed:`.")
        if self._pubsub is None:  # lost earlier and not reconnected: messages may be missing
            await self._connect()
            return None
        try:
            if not self._pending:
                await self._receive(max(0.0, timeout))
            while await self._receive(0.0):  # whatever else has arrived, without waiting
                pass
            await self._check_alive()
        except _ERRORS as exc:
            await self._drop()
            try:
                await self._connect()
            except StorageUnavailableError as error:
                raise error from exc
            return None
        changed, self._pending = self._pending, set()
        return changed

    async def aclose(self) -> None:
        self._open = False
        self._pending = set()
        await self._drop()

    async def close_from_any_loop(self) -> None:
        """`aclose`, or from another loop (the storage's close): drop the connection without that loop."""
        if self._loop is None or self._loop is asyncio.get_running_loop() or self._loop.is_closed():
            await self.aclose()
            return
        self._open = False
        loop, pubsub, client = self._loop, self._pubsub, self._client
        self._client = self._pubsub = None
        if pubsub is not None and client is not None:

            async def close() -> None:
                with contextlib.suppress(*_ERRORS, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()

            with contextlib.suppress(RuntimeError):  # that loop is closing: its connections go with it
                asyncio.run_coroutine_threadsafe(close(), loop)

    # ---- connection -----------------------------------------------------------------------------

    async def _connect(self) -> None:
        client = aioredis.Redis(**self._options)
        pubsub = client.pubsub()
        try:  # subscribed once the server confirms: writes after that are heard
            async with asyncio.timeout(self._storage.socket_timeout):
                await pubsub.subscribe(self.channel)
                while (await pubsub.get_message(timeout=self._storage.socket_timeout) or {}).get(
                    "type"
                ) != "subscribe":
                    pass
        except _ERRORS as exc:
            with contextlib.suppress(*_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StorageUnavailableError(
                "redis",
                f"the change feed of {self._storage!r} cannot subscribe to channel {self.channel!r}: "
                f"{type(exc).__name__}: {reason}",
            ) from exc
        self._client, self._pubsub, self._loop = client, pubsub, asyncio.get_running_loop()
        self._contact, self._pinged = time.monotonic(), None

    async def _drop(self) -> None:
        client, pubsub = self._client, self._pubsub
        self._client = self._pubsub = None
        with contextlib.suppress(*_ERRORS, RuntimeError):
            if pubsub is not None:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            if client is not None:
                await client.aclose()

    async def _receive(self, timeout: float) -> bool:
        """Read one message (waiting up to `timeout`); whether there was one."""
        assert self._pubsub is not None
        message = await self._pubsub.get_message(timeout=timeout)
        if message is None:
            return False
        self._contact, self._pinged = time.monotonic(), None
        if message["type"] == "message":
            data = message["data"]
            self._pending.add(data.decode() if isinstance(data, bytes) else str(data))
        return True

    async def _check_alive(self) -> None:
        """PING when idle for `HEARTBEAT`; a PING unanswered for `socket_timeout` means the server is gone."""
        assert self._pubsub is not None
        now = time.monotonic()
        if self._pinged is not None and now - self._pinged > self._storage.socket_timeout:
            raise redis_errors.TimeoutError(f"no answer to PING within {self._storage.socket_timeout:g}s")
        if self._pinged is None and now - self._contact >= HEARTBEAT:
            await self._pubsub.ping()
            self._pinged = now
