"""Session fixtures `postgres_server` and `postgres_dsn`: a real PostgreSQL on 127.0.0.1.

The server is a throw-away cluster (`initdb` into a temp dir, trust auth, a free non-default port,
`fsync=on` so durability tests mean something) started once per test session and stopped at its end.
PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` system user.
Locally a server that cannot be started skips the tests that need it, with the reason; with `CI=true`
it fails them, because CI must exercise every backend.
"""

from __future__ import annotations

import contextlib
import os
import pwd
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

__all__ = ["PostgresServer", "ReplicatedPostgres", "postgres_dsn", "postgres_server", "start_replicated"]

_SYSTEM_USER = "postgres"
_START_TIMEOUT = 30


class PostgresServer:
    """A PostgreSQL cluster in a temp dir that tests can stop and start again (same data, same port)."""

    def __init__(self, bindir: Path, root: Path, port: int, run_as: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.logfile = root / "server.log"
        self.port = port
        self.run_as = run_as
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        if self.run_as is None:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", self.run_as, "--", *args]
        return ["su", self.run_as, "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in args)]

    def _run(self, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run(
            self._cmd(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stdout.decode(errors='replace')}"
                f"\n{self.log_tail()}"
            )

    def init(self) -> None:
        """Create the cluster (trust auth for local tests only; `--no-sync` only skips initdb's own flush)."""
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        """Start (or restart) the server on the same port and data dir; return once it accepts clients."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=on "
            f"-c max_connections=300 -c shared_buffers=32MB"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "-o",
            options,
            "start",
            timeout=_START_TIMEOUT + 10,
        )

    def stop(self) -> None:
        """Stop the server at once (`-m fast`: clients are disconnected, committed data is kept)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-m", "fast", "stop")

    def is_running(self) -> bool:
        """Whether the postmaster of this cluster is up."""
        return (self.datadir / "postmaster.pid").exists()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _bindir() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _install_postgres() -> None:
    """As root on Debian/Ubuntu, install the server packages (they do not start a server here)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300, check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        env=env,
        capture_output=True,
        timeout=600,
        check=True,
    )


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SYSTEM_USER],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return pwd.getpwnam(_SYSTEM_USER)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _start_server() -> PostgresServer:
    is_root = os.geteuid() == 0
    bindir = _bindir()
    if bindir is None and is_root and shutil.which("apt-get"):
        _install_postgres()
        bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install `postgresql`")
    root = Path(tempfile.mkdtemp(prefix="perdure-pg-"))
    run_as = None
    if is_root:
        user = _system_user()
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = _SYSTEM_USER
    server = PostgresServer(bindir, root, _free_port(), run_as)
    try:
        server.init()
        server.start()
    except BaseException:
        _remove(server)
        raise
    return server


def _remove(server: PostgresServer) -> None:
    if server.is_running():
        with contextlib.suppress(Exception):
            server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


_shared: dict[str, Any] = {"server": None, "error": None, "users": 0}


def _acquire_shared() -> PostgresServer:
    """The one server of this session: both fixtures share it, whichever is requested first starts it."""
    if _shared["server"] is None and _shared["error"] is None:
        try:
            _shared["server"] = _start_server()
        except Exception as exc:
            _shared["error"] = f"PostgreSQL server could not be started: {type(exc).__name__}: {exc}"
    if _shared["server"] is None:
        if os.environ.get("CI") == "true":
            pytest.fail(_shared["error"])
        pytest.skip(_shared["error"])
    _shared["users"] += 1
    server: PostgresServer = _shared["server"]
    if not server.is_running():  # a fault test left it stopped: bring it back
        server.start()
    return server


def _release_shared() -> None:
    _shared["users"] -= 1
    if _shared["users"] == 0 and _shared["server"] is not None:
        _remove(_shared["server"])
        _shared["server"] = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole session, with `.dsn`, `.stop()` and `.start()`."""
    server = _acquire_shared()
    try:
        yield server
    finally:
        _release_shared()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """libpq URL of the session's server: `postgresql://postgres@127.0.0.1:PORT/postgres`."""
    server = _acquire_shared()
    try:
        yield server.dsn
    finally:
        _release_shared()


# ---- a primary and a streaming standby ------------------------------------------------------------


class ReplicatedPostgres:
    """A primary and a streaming standby (`pg_basebackup -R`) on 127.0.0.1, each in its own temp dir.

    The primary sends WAL to the standby, whose `cluster_name` (`standby_name`) is what the primary's
    `synchronous_standby_names` names, so that commits under `synchronous_commit=remote_apply` wait
    until the standby has applied them. The standby's copy of the configuration does not name a
    synchronous standby: once promoted it commits on its own, as a lone survivor must.
    """

    standby_name = "perdure_standby"

    def __init__(self, primary: PostgresServer, standby: PostgresServer) -> None:
        self.primary = primary
        self.standby = standby

    def _psql(self, server: PostgresServer, sql: str) -> None:
        server._run(
            str(server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql,
        )  # fmt: skip

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster (a crashed host); its backends exit when they notice."""
        pid = int((self.primary.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        (self.primary.datadir / "postmaster.pid").unlink(missing_ok=True)

    def promote(self) -> None:
        """Promote the standby (`pg_ctl promote -w`): it accepts writes once this returns."""
        self.standby._run(
            str(self.standby.bindir / "pg_ctl"), "-D", str(self.standby.datadir), "-w", "promote"
        )

    def start_standby(self) -> None:
        """Start the standby (it reconnects to the primary and replays what it missed)."""
        self.standby.start()

    def close(self) -> None:
        """Stop both servers and remove their files."""
        for server in (self.standby, self.primary):
            _remove(server)


def start_replicated() -> ReplicatedPostgres:
    """Start a primary with a synchronous streaming standby; raise with the reason when that fails.

    As root both clusters belong to the `postgres` system user, as the session's server does.
    """
    is_root = os.geteuid() == 0
    bindir = _bindir()
    if bindir is None and is_root and shutil.which("apt-get"):
        _install_postgres()
        bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install `postgresql`")
    roots = [
        Path(tempfile.mkdtemp(prefix="perdure-pg-primary-")),
        Path(tempfile.mkdtemp(prefix="perdure-pg-standby-")),
    ]
    run_as = None
    if is_root:
        user = _system_user()
        for root in roots:
            os.chown(root, user.pw_uid, user.pw_gid)
        run_as = _SYSTEM_USER
    primary = PostgresServer(bindir, roots[0], _free_port(), run_as)
    standby = PostgresServer(bindir, roots[1], _free_port(), run_as)
    pair = ReplicatedPostgres(primary, standby)
    try:
        primary.init()
        # initdb's pg_hba.conf already trusts replication connections from 127.0.0.1.
        with (primary.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\nwal_level = replica\nmax_wal_senders = 4\nwal_keep_size = 64MB\n")
        primary.start()
        standby._run(
            str(bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(standby.datadir), "-R", "-X", "stream", "--no-sync", "-c", "fast",
        )  # fmt: skip
        with (standby.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ncluster_name = '{pair.standby_name}'\nhot_standby = on\n")
        standby.start()
        # Only now, so the standby's copy of the configuration does not wait for a standby of its own.
        pair._psql(primary, f"ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({pair.standby_name})'")
        pair._psql(primary, "SELECT pg_reload_conf()")
        deadline = time.monotonic() + _START_TIMEOUT
        while True:  # wait until the primary counts the standby as synchronous
            with psycopg_connect(primary.dsn) as conn:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (pair.standby_name,),
                ).fetchone()
            if row is not None and row[0] == "sync":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby did not become synchronous: {standby.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        pair.close()
        raise
    return pair


def psycopg_connect(dsn: str) -> Any:
    """A plain autocommit psycopg connection (imported here: psycopg is an optional dependency)."""
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
