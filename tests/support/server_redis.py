"""A real redis-server on 127.0.0.1, started by the test session itself.

`redis_url` (session) starts one throw-away server (no persistence) on a free port and yields its
URL; the fixture `redis_server` (session; import `redis_server_fixture` into a test module to use
it) is the same server as a `RedisServer`, whose `stop()` / `start()` restart it on the same port
for fault tests. `launch_redis(directory, persistent=True)` starts a
separate server that writes an append-only file with `fsync` on every write, so what it
acknowledged survives a stop and restart. `launch_redis_replica(directory, primary)` starts a
replica of a running server (`--replicaof`) and waits until its link is up; `pause()` / `resume()`
(SIGSTOP / SIGCONT) stall a server without closing its connections, `promote()` turns a replica
into a primary (`REPLICAOF NO ONE`).

A server that cannot be started skips its tests locally and fails them when `CI=true`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "RedisServer",
    "launch_redis",
    "launch_redis_replica",
    "redis_server_fixture",
    "redis_url",
    "unavailable",
]

_READY_TIMEOUT = 10.0
_SESSION: RedisServer | None = None


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must exercise the Redis backend."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"redis-server unavailable in CI: {reason}")
    pytest.skip(f"redis-server unavailable: {reason}")


def _find_binary() -> str:
    """Path of `redis-server`, installing the Debian package first when missing and running as root."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install redis-server failed: {done.stderr.strip()[-500:]}")
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is still missing after apt-get install")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    """Whether the server on `port` answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(
        self,
        binary: str,
        directory: Path,
        port: int,
        *,
        persistent: bool = False,
        replica_of: int | None = None,
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.persistent = persistent
        self.replica_of = replica_of
        """Port of the primary on 127.0.0.1 this server replicates (`--replicaof`), if any."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        if self.replica_of is not None:
            persistence += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            *persistence,
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server (again) on its port and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if _ping(self.port):
                return
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.directory / "redis.log"
                tail = log.read_text()[-500:] if log.exists() else ""
                self.process = None
                raise RuntimeError(f"redis-server exited on port {self.port}: {err or tail}")
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {_READY_TIMEOUT}s")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server by its PID: SIGTERM (clean shutdown), or SIGKILL when `kill`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        self.process.send_signal(signum)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its connections (a stalled replica)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        self._signal(signal.SIGCONT)

    def info(self, section: str) -> dict[str, Any]:
        """`INFO <section>` of this server."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            return dict(client.info(section))

    def wait_synced(self, primary: RedisServer, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until this replica's link is up and `primary` lists it online (it then counts in WAIT)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.info("replication").get("master_link_status") == "up":
                listed = primary.info("replication").values()
                if any(
                    isinstance(r, dict) and r.get("port") == self.port and r.get("state") == "online"
                    for r in listed
                ):
                    return
            time.sleep(0.02)
        raise RuntimeError(
            f"replica on port {self.port} did not sync with port {self.replica_of} in {timeout}s"
        )

    def promote(self) -> None:
        """`REPLICAOF NO ONE`: this replica becomes a primary that accepts writes."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            client.replicaof("NO", "ONE")
        self.replica_of = None


def launch_redis(
    directory: Path, *, persistent: bool = False, attempts: int = 3, replica_of: int | None = None
) -> RedisServer:
    """Start a server in `directory` on a free port (retrying when another process took the port)."""
    binary = _find_binary()
    directory.mkdir(parents=True, exist_ok=True)
    error: Exception | None = None
    for _ in range(attempts):
        server = RedisServer(binary, directory, _free_port(), persistent=persistent, replica_of=replica_of)
        try:
            server.start()
        except RuntimeError as exc:
            error = exc
            continue
        return server
    raise RuntimeError(f"could not start redis-server: {error}")


def launch_redis_replica(directory: Path, primary: RedisServer) -> RedisServer:
    """Start a replica of `primary` in `directory` on a free port and wait until it has synced."""
    import redis

    with redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=2) as client:
        client.config_set("repl-diskless-sync-delay", 0)  # sync at once instead of after 5 s
    replica = launch_redis(directory, replica_of=primary.port)
    try:
        replica.wait_synced(primary)
        with redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=_READY_TIMEOUT) as client:
            client.set("perdure-test:replica-probe", 1)  # one write the replica must confirm
            confirmed = client.wait(1, int(_READY_TIMEOUT * 1000))
            client.delete("perdure-test:replica-probe")
        if confirmed < 1:
            raise RuntimeError(f"replica on port {replica.port} did not confirm a write in {_READY_TIMEOUT}s")
    except RuntimeError:
        replica.stop(kill=True)
        raise
    return replica


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a throw-away redis-server for this test session (database 0)."""
    global _SESSION
    directory = Path(tempfile.mkdtemp(prefix="perdure-redis-"))
    try:
        try:
            server = launch_redis(directory)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            unavailable(str(exc))
        _SESSION = server
        yield server.url
        server.stop()
    finally:
        _SESSION = None
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture(redis_url: str) -> RedisServer:
    """The session's server as a `RedisServer` (restarting it loses its data: no persistence)."""
    assert _SESSION is not None and _SESSION.url == redis_url
    return _SESSION
