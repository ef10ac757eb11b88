"""Storage in plain files: one directory per execution, a head file and an append-only journal.

Layout under `path`::

    <execution_id>/head.json       the head record (JSON, replaced atomically)
    <execution_id>/journal.jsonl   one JSON line per journal entry, append-only
    <execution_id>/lease.json      the lease (owner, expiry as epoch seconds), when one is held
    <execution_id>/cancel.json     a pending cancel request (time, reason), removed with the directory
    #tombstones/<execution_id>     tombstone of a deleted execution (its mtime is the deletion time)
    #trash/<execution_id>.<rand>   an execution directory being removed by a delete

`#` cannot appear in an execution id, so these never collide with executions. The root directory is
created by the first write; reads of a root that does not exist raise `StorageNotFoundError`.

Crash safety: a journal entry is appended with a single write and fsync'd before the head is
replaced (temp file, fsync, `os.replace`, fsync of the directory). A crash in the middle of an
append leaves a torn last line without a newline; readers ignore it and the next append cuts it off
(a complete last line that only lacks its newline is kept, and the next append finishes it). Any
other damage, such as a missing or undecodable line before the last, is `CorruptRecordError`. A
crash between the journal fsync and the head replacement leaves the new entry in the journal and the
previous head: the journal is authoritative for what ran, the head lags by one step. A batch
(`append_steps_async`, at most `max_batch` = 64 entries) is the same with several lines in the one
write and the one fsync: a crash after it leaves up to the whole batch ahead of the previous head,
and a power cut during it may leave a prefix of its lines with the last one torn, cut like any torn
line, so the journal leads the head by at most one batch (`journal_may_lead_head` = 64), never lags
it. Writers of one execution serialize on an `flock` of the journal, so two processes never
interleave lines. Lease operations take the same lock, and every head write or append reads the
lease under it: that is the write fence. The lock is polled without blocking the event loop and
given up after `lock_timeout` (`StorageLockedError`), so a stuck holder in another process cannot
freeze this one. Lease expiry is compared on the boot's monotonic clock (see `_clock`): the
directory serves the processes of one machine. A failed write removes its temp file; a full disk is
`StorageUnavailableError`, a read-only or forbidden path `StorageConfigurationError`.

A delete is atomic: under the execution's lock it checks the lease, writes the tombstone (fsync), then
renames the directory into `#trash` (one `rename`, fsync of the root), and only then removes it. A
crash at any point leaves either the live execution or a tombstoned one: readers ignore tombstoned
directories and directories with a head but no journal (what an interrupted delete of older versions
left), and `cleanup_old_executions` (and, for `#trash`, opening the storage) finishes the removal.
A writer that waited for the lock while the directory was renamed sees the tombstone and gets
`ExecutionDeletedError`.

One module (some 800 lines) for one concept: this layout and the order of its writes. Locking, the
lease fence, the journal append, the head replacement and the delete protocol are only safe
together (the fence is read under the lock that serialises appends, a writer that waited for that
lock checks the tombstone a delete wrote, a torn line is cut under the same lock), so they are kept
where they can be read side by side. Every locked operation goes through `_locked` (lease calls) or
`_writing` (head writes and appends).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import fcntl
import itertools
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from .. import _faults
from ..codec import JSON, Codec, decode_head, decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    InvalidExecutionIdError,
    LeaseLostError,
    PerdureError,
    StepConflictError,
    StorageConfigurationError,
    StorageLockedError,
    StorageNotFoundError,
    StorageUnavailableError,
    UserError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepRecord
from . import _clock
from ._query import CancelRequest, check_reason
from .base import DurableExecutionStorage, check_journal_seqs, logger, retention_keep, stored_seq

__all__ = ["FileDurableStorage"]

HEAD_FILE = "head.json"
JOURNAL_FILE = "journal.jsonl"
LEASE_FILE = "lease.json"
CANCEL_FILE = "cancel.json"
TOMBSTONES_DIR = "#tombstones"
TRASH_DIR = "#trash"
_ENVELOPE_PREFIX = b'{"codec":'
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")  # always `fullmatch`: `$` would let a trailing newline in
_CHUNK = 1 << 20
_tmp_counter = itertools.count()


def _validate_id(execution_id: str) -> str:
    """Refuse ids that could leave `path`: execution ids become directory names."""
    if not isinstance(execution_id, str) or not _ID.fullmatch(execution_id) or execution_id in (".", ".."):
        raise InvalidExecutionIdError(
            str(execution_id),
            "the file storage takes 1-200 letters, digits and the characters '_', '.', ':', '-' (it "
            "becomes a directory name: no path separators, whitespace or control characters, not '.' "
            "or '..')",
        )
    return execution_id


def _os_error(exc: OSError, execution_id: str | None) -> PerdureError:
    """The typed error of a failed file operation: disk full, unwritable path, or else unavailable."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageUnavailableError(
            "file", f"disk full, cannot write{where} ({exc.strerror}); free space", execution_id=execution_id
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR):
        return StorageConfigurationError(
            f"The file storage cannot write{where}: {exc.strerror} (read-only file system, permissions, "
            f"or a file where a directory belongs). Make the storage directory writable by this process "
            f"or choose another one; reading it still works.",
            execution_id=execution_id,
        )
    return StorageUnavailableError("file", str(exc), execution_id=execution_id)


def _wrap(codec: str, payload: bytes) -> bytes:
    """Plain JSON is stored as is (readable with any tool); compressed payloads get an envelope."""
    if codec == JSON:
        return payload
    envelope = {"codec": codec, "data": base64.b64encode(payload).decode("ascii")}
    return json.dumps(envelope, separators=(",", ":")).encode()


def _unwrap(execution_id: str, raw: bytes, *, step: int | None, location: str) -> tuple[str, bytes]:
    # Records themselves start with `{"execution_id"`, so the prefix tells envelopes apart cheaply.
    if not raw.startswith(_ENVELOPE_PREFIX):
        return JSON, raw
    try:
        envelope = json.loads(raw)
        return str(envelope["codec"]), base64.b64decode(envelope["data"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise CorruptRecordError(
            execution_id,
            f"damaged compression envelope ({exc})",
            step=None if step is None else str(step),
            location=location,
        ) from exc


class _Lease(NamedTuple):
    """A stored lease: owner, wall-clock expiry (display), and its boot and monotonic expiry."""

    owner: str
    expires: float
    boot: str | None
    mono: float | None

    def live(self) -> bool:
        return _clock.is_live(self.expires, self.mono, self.boot, _clock.lease_now())


def _parses(line: bytes) -> bool:
    """Whether a line is complete JSON: a torn line (crash mid-append) never is."""
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _execution_dirs(entries: Iterable[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
    """The entries of the root that can be execution directories (not `#trash`, `#tombstones`, files)."""
    return [e for e in entries if e.is_dir() and _ID.fullmatch(e.name) and e.name not in (".", "..")]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FileDurableStorage(DurableExecutionStorage):
    """Durable storage in a directory tree, readable with `cat` and `jq`.

    Args:
        path: Root directory; created (with its parents) by the first write. Reads of a directory
            that does not exist raise `StorageNotFoundError`; opening creates nothing.
        fsync: Flush every write to the disk. Turning it off trades power-loss safety for speed
            (a process crash is still safe, the OS keeps the written data).
        codec: Payload codec; `Codec(compress_above=...)` zstd-compresses large records.
        lock_timeout: Seconds an operation waits for an execution's lock held by another process
            before it fails with `StorageLockedError` (retryable).

    """

    backend_name = "file"
    shared_cancel_requests = True
    journal_may_lead_head = 64
    max_batch = 64
    atomic_batches = True

    def __init__(
        self,
        path: str | os.PathLike[str] = "./durable_states",
        *,
        fsync: bool = True,
        codec: Codec | None = None,
        lock_timeout: float = 10.0,
    ) -> None:
        number = isinstance(lock_timeout, int | float) and not isinstance(lock_timeout, bool)
        if not (number and lock_timeout > 0):  # also refuses NaN
            raise UserError(f"lock_timeout must be > 0 seconds, got {lock_timeout!r}.")
        self.path = Path(path)
        self.fsync = fsync
        self.codec = codec or Codec()
        self.lock_timeout = float(lock_timeout)
        self._empty_trash()  # finish deletes a crash interrupted (cheap: `#trash` is usually absent)
        # execution id -> (inode, size, complete lines, size up to the last newline) of its journal as
        # this process last saw it; a matching fstat proves nobody else appended in between, so an
        # append never has to re-read the journal.
        self._journal_cache: dict[str, tuple[int, int, int, int]] = {}
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileDurableStorage({str(self.path)!r})"

    def _dir(self, execution_id: str) -> Path:
        return self.path / _validate_id(execution_id)

    # ---- existence, tombstones, deletes ----------------------------------------------------------

    def _require_root(self) -> None:
        """Refuse to read (or delete from) a storage directory that does not exist."""
        if not self.path.is_dir():
            raise StorageNotFoundError("file", str(self.path))

    def _not_found(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(execution_id, backend=self.backend_name, where=f"at {self.path}")

    def _tombstoned(self, execution_id: str) -> bool:
        return (self.path / TOMBSTONES_DIR / execution_id).exists()

    def _tombstones(self) -> set[str]:
        try:
            return set(os.listdir(self.path / TOMBSTONES_DIR))
        except FileNotFoundError:
            return set()

    def _live(self, execution_id: str, directory: Path, tombstones: set[str] | None = None) -> bool:
        """Whether a directory holding a head is an execution, not what a delete left behind.

        A tombstone means a delete was interrupted before its rename; a head without a journal is
        what an interrupted `rmtree` of older versions left (every execution has a journal file).
        """
        deleted = execution_id in tombstones if tombstones is not None else self._tombstoned(execution_id)
        return not deleted and (directory / JOURNAL_FILE).exists()

    def _write_tombstone(self, execution_id: str) -> None:
        """Make the tombstone durable (file and directory entry) before the delete goes on."""
        tombs = self.path / TOMBSTONES_DIR
        tombs.mkdir(exist_ok=True)
        fd = os.open(tombs / execution_id, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, f"{time.time():.6f}\n".encode())
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.fsync:
            _fsync_dir(tombs)

    def _to_trash(self, directory: Path) -> Path:
        """Rename an execution directory into `#trash` (atomic): from now on it does not exist."""
        trash = self.path / TRASH_DIR
        trash.mkdir(exist_ok=True)
        target = trash / f"{directory.name}.{uuid.uuid4().hex[:12]}"
        os.rename(directory, target)
        if self.fsync:
            _fsync_dir(self.path)
        return target

    def _empty_trash(self) -> None:
        """Remove what deletes renamed into `#trash` (their own removal may have been interrupted)."""
        try:
            entries = os.listdir(self.path / TRASH_DIR)
        except OSError:  # none (the usual case), or unreadable: the next cleanup tries again
            return
        for name in entries:
            shutil.rmtree(self.path / TRASH_DIR / name, ignore_errors=True)

    async def _try_lock(self, directory: Path) -> int | None:
        """`_open_locked`, or None when a delete renamed the directory away in the middle of opening."""
        try:
            return await self._open_locked(directory)
        except (FileNotFoundError, FileExistsError):  # `mkdir(exist_ok=True)` racing the rename: EEXIST
            return None

    @staticmethod
    def _locked_current(directory: Path, fd: int) -> bool:
        """Whether the locked journal `fd` is still `directory`'s (a delete may have renamed it away)."""
        try:
            return os.stat(directory / JOURNAL_FILE).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    async def _lock_for_write(self, record: ExecutionRecord, *, create: bool) -> tuple[Path, int]:
        """Lock an execution for a head write or an append; return its directory and the locked fd.

        Refuses a deleted id (`ExecutionDeletedError`) and, unless `create` (an unleased first write
        of a new run), a missing head (`ExecutionNotFoundError`), before writing anything.
        """
        execution_id = record.execution_id
        directory = self._dir(execution_id)
        for _ in range(100):
            # Checked before locking (which creates the journal): a head without a journal is what an
            # interrupted delete left, not an execution.
            if not ((directory / HEAD_FILE).exists() and (directory / JOURNAL_FILE).exists()):
                if self._tombstoned(execution_id):
                    raise ExecutionDeletedError(execution_id)
                if not create:
                    raise self._not_found(execution_id)
                self.path.mkdir(parents=True, exist_ok=True)  # the first write creates the storage
            fd = await self._try_lock(directory)
            if fd is None:
                continue
            try:
                if self._locked_current(directory, fd):
                    if self._tombstoned(execution_id):  # deleted while this writer waited for the lock
                        if not (directory / HEAD_FILE).exists():  # recreated by `_open_locked`: undo
                            shutil.rmtree(self._to_trash(directory), ignore_errors=True)
                        raise ExecutionDeletedError(execution_id)
                    if not create and not (directory / HEAD_FILE).exists():
                        raise self._not_found(execution_id)
                    return directory, fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the directory was renamed away while we waited: look again
        raise StorageUnavailableError(
            "file", f"{directory} kept being replaced while locking it", execution_id=execution_id
        )

    async def _delete(
        self,
        execution_id: str,
        *,
        force: bool,
        older_than: datetime | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> bool:
        """Delete one execution (see `delete_state_async`).

        `older_than`: only if last updated before it and its status is not in `keep` (cleanup's
        checks, made again on the head read under the lock).
        """
        directory = self._dir(execution_id)
        if not directory.is_dir():
            return False
        fd = await self._try_lock(directory)
        if fd is None:
            return False  # renamed away meanwhile: another delete won
        try:
            if not self._locked_current(directory, fd):
                return False  # renamed away while we waited: another delete won
            if self._tombstoned(execution_id) or not (directory / HEAD_FILE).exists():
                if self._tombstoned(execution_id):  # an interrupted delete (or our `_open_locked`)
                    trash: Path | None = self._to_trash(directory)
                else:
                    trash = None
                existed = False
            else:
                if older_than is not None:
                    try:
                        head = self._read_head(execution_id, directory / HEAD_FILE)
                    except (CorruptRecordError, IncompatibleSchemaError):
                        return False
                    if head is None or head.updated_at >= older_than or head.status.value in keep:
                        return False
                lease = self._read_lease(directory)
                if lease is not None and lease.live() and not force:
                    expires = datetime.fromtimestamp(lease.expires, UTC)
                    raise ExecutionLeasedError(execution_id, lease.owner, expires)
                self._write_tombstone(execution_id)
                trash = self._to_trash(directory)
                existed = True
        finally:
            os.close(fd)
        with self._cache_lock:
            self._journal_cache.pop(execution_id, None)
        if trash is not None:
            _faults.point("delete_after_rename")
            shutil.rmtree(trash, ignore_errors=True)  # what is left, cleanup or the next open removes
        return existed

    # ---- heads ----------------------------------------------------------------------------------

    def _encode_head(self, record: ExecutionRecord) -> bytes:
        return _wrap(*self.codec.encode(encode_head(record))) + b"\n"

    def _write_head(self, directory: Path, data: bytes) -> None:
        tmp = directory / f".head-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                _write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            _faults.point("before_head_replace")
            os.replace(tmp, directory / HEAD_FILE)
        except BaseException:  # disk full, I/O error, cancelled: leave no temp file behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self.fsync:
            _fsync_dir(directory)

    def _read_head(self, execution_id: str, head_path: Path) -> ExecutionRecord | None:
        try:
            raw = head_path.read_bytes()
        except FileNotFoundError:
            return None
        codec, payload = _unwrap(execution_id, raw.rstrip(b"\n"), step=None, location=str(head_path))
        return decode_head(
            execution_id,
            payload,
            codec=codec,
            location=str(head_path),
            max_size=self.codec.max_decompressed_size,
        )

    async def _open_locked(self, directory: Path) -> int:
        """Open the journal for appending and hold its exclusive lock (released by closing the fd).

        The lock is polled (`LOCK_NB`) with sleeps in between, so the event loop keeps running
        (heartbeats, timeouts, signal handlers) and the wait can be cancelled; still held by another
        process after `lock_timeout` seconds it raises `StorageLockedError`.
        """
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / JOURNAL_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            deadline, pause = time.monotonic() + self.lock_timeout, 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageLockedError(
                        "file",
                        f"{directory / JOURNAL_FILE} stayed locked by another process for "
                        f"{self.lock_timeout:g}s (lock_timeout); a stuck writer holds it",
                        execution_id=directory.name,
                    )
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise

    # ---- leases (read and written under the journal lock) ----------------------------------------

    @staticmethod
    def _read_lease(directory: Path) -> _Lease | None:
        try:
            data = json.loads((directory / LEASE_FILE).read_bytes())
            boot, mono = data.get("boot"), data.get("mono")
            return _Lease(
                str(data["owner"]),
                float(data["expires"]),
                None if boot is None else str(boot),
                None if mono is None else float(mono),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):  # a torn lease file is an expired lease
            logger.warning("ignoring an unreadable lease file in %s", directory)
            return None

    @staticmethod
    def _write_lease(directory: Path, owner: str, until: _clock.LeaseTime) -> None:
        # No fsync: a lease lost to a power cut is an expired lease, which is what a power cut means.
        tmp = directory / f".lease-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp"
        data = {"owner": owner, "expires": until.wall, "boot": until.boot, "mono": until.mono}
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, directory / LEASE_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _fence(self, directory: Path, record: ExecutionRecord) -> None:
        lease = self._read_lease(directory)
        if lease is not None and lease.owner != record.lease_owner and lease.live():
            raise self._lease_lost(record, lease.owner)

    def _with_lease(self, head: ExecutionRecord | None, directory: Path) -> ExecutionRecord | None:
        if head is not None:
            lease = self._read_lease(directory)
            head.lease_owner = lease[0] if lease else None
            head.lease_expires_at = datetime.fromtimestamp(lease[1], UTC) if lease else None
        return head

    async def _locked_existing(self, execution_id: str) -> tuple[Path, int] | None:
        """Lock the journal of an execution that exists (None when it has no head or was deleted)."""
        directory = self._dir(execution_id)
        if not self._live(execution_id, directory) or not (directory / HEAD_FILE).exists():
            return None
        fd = await self._try_lock(directory)
        if fd is None:
            return None
        if (
            self._locked_current(directory, fd)
            and (directory / HEAD_FILE).exists()
            and not self._tombstoned(execution_id)
        ):
            return directory, fd
        os.close(fd)  # deleted (renamed away, or tombstoned) while we waited for the lock
        return None

    @contextlib.asynccontextmanager
    async def _locked(self, execution_id: str) -> AsyncIterator[Path | None]:
        """Hold the journal lock of an existing execution for the body (lease operations).

        Gives its directory, or None when it has no head or was deleted; the lock is released when
        the body ends, and file errors become typed errors (`_os_error`).
        """
        try:
            locked = await self._locked_existing(execution_id)
            if locked is None:
                yield None
                return
            directory, fd = locked
            try:
                yield directory
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(exc, execution_id) from exc

    @contextlib.asynccontextmanager
    async def _writing(self, record: ExecutionRecord, *, create: bool) -> AsyncIterator[tuple[Path, int]]:
        """Hold the lock of `_lock_for_write` for the body (head writes, appends): directory and locked fd.

        The lock is released when the body ends; a file error forgets the cached journal state (the
        journal may be half-written) and becomes a typed error (`_os_error`).
        """
        execution_id = record.execution_id
        try:
            directory, fd = await self._lock_for_write(record, create=create)
            try:
                yield directory, fd
            finally:
                os.close(fd)
        except OSError as exc:
            with self._cache_lock:
                self._journal_cache.pop(execution_id, None)
            raise _os_error(exc, execution_id) from exc

    # ---- cancel requests (a file in the execution's directory, gone when it is deleted) -----------

    async def request_cancel_async(self, execution_id: str, reason: str = "") -> bool:
        """Write `cancel.json` under the execution's lock (temp file, `os.replace`); the first stays."""
        check_reason(reason)
        if not self.path.is_dir():
            return False
        async with self._locked(execution_id) as directory:
            if directory is None:
                return False
            target = directory / CANCEL_FILE
            if target.exists():
                return True
            tmp = directory / f".cancel-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp"
            try:
                tmp.write_text(json.dumps({"requested_at": time.time(), "reason": reason}))
                if self.fsync:
                    with open(tmp, "rb") as handle:
                        os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            if self.fsync:
                _fsync_dir(directory)
            return True

    async def cancel_request_async(self, execution_id: str) -> CancelRequest | None:
        """Read `cancel.json` (one small file; a torn one counts as a request without a reason)."""
        directory = self._dir(execution_id)
        try:
            raw = (directory / CANCEL_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _os_error(exc, execution_id) from exc
        if self._tombstoned(execution_id):
            return None
        try:
            data = json.loads(raw)
            return CancelRequest(
                datetime.fromtimestamp(float(data["requested_at"]), UTC), str(data["reason"])
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("unreadable cancel request file in %s: taken as a request", directory)
            return CancelRequest(datetime.fromtimestamp((directory / CANCEL_FILE).stat().st_mtime, UTC), "")

    async def clear_cancel_request_async(self, execution_id: str) -> bool:
        if not self.path.is_dir():
            return False
        async with self._locked(execution_id) as directory:
            if directory is None:
                return False
            try:
                (directory / CANCEL_FILE).unlink()
            except FileNotFoundError:
                return False
            return True

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        ttl = self._check_ttl(ttl_seconds)
        self._require_root()  # a storage that does not exist: StorageNotFoundError, nothing created
        async with self._locked(execution_id) as directory:
            if directory is None:
                raise self._not_found(execution_id)
            lease = self._read_lease(directory)
            if lease is not None and lease.owner not in (owner, steal_from) and lease.live():
                expires = datetime.fromtimestamp(lease.expires, UTC)
                raise ExecutionLeasedError(execution_id, lease.owner, expires)
            until = _clock.lease_until(ttl)
            self._write_lease(directory, owner, until)
            head = self._read_head(execution_id, directory / HEAD_FILE)
        if head is None:
            raise self._not_found(execution_id)
        head.lease_owner, head.lease_expires_at = owner, datetime.fromtimestamp(until.wall, UTC)
        return head

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        ttl = self._check_ttl(ttl_seconds)
        async with self._locked(execution_id) as directory:
            if directory is None:
                raise LeaseLostError(execution_id, owner, None)
            lease = self._read_lease(directory)
            if lease is None or lease[0] != owner:
                raise LeaseLostError(execution_id, owner, lease[0] if lease else None)
            until = _clock.lease_until(ttl)
            self._write_lease(directory, owner, until)
        return datetime.fromtimestamp(until.wall, UTC)

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        async with self._locked(execution_id) as directory:
            if directory is None:
                return False
            lease = self._read_lease(directory)
            if lease is None or lease[0] != owner:
                return False
            (directory / LEASE_FILE).unlink()
            return True

    # ---- head writes ----------------------------------------------------------------------------

    async def save_state_async(self, record: ExecutionRecord) -> None:
        """Replace the head atomically (temp file, fsync, rename).

        Only an unleased write creates a missing head (and the storage directory); a write whose
        `lease_owner` is set needs the head to exist. A deleted id raises `ExecutionDeletedError`.
        """
        data = self._encode_head(record)
        async with self._writing(record, create=record.lease_owner is None) as (directory, _):
            self._fence(directory, record)
            self._write_head(directory, data)

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        """Read the head; None when the execution does not exist (or was deleted)."""
        directory = self._dir(execution_id)
        head = self._read_head(execution_id, directory / HEAD_FILE)
        if head is None:
            self._require_root()
            return None
        if not self._live(execution_id, directory):
            return None
        return self._with_lease(head, directory)

    async def delete_state_async(self, execution_id: str, *, force: bool = False) -> bool:
        """Delete the execution atomically (tombstone, then rename away, then remove); see the module doc.

        Refused with `ExecutionLeasedError` while another worker's lease is unexpired, unless `force`.
        """
        _validate_id(execution_id)
        self._require_root()
        try:
            return await self._delete(execution_id, force=force)
        except OSError as exc:
            raise _os_error(exc, execution_id) from exc

    async def cleanup_old_executions_async(
        self,
        older_than_days: float | None = None,
        *,
        keep_statuses: Iterable[ExecutionStatus | str] | str | None = None,
        limit: int | None = None,
    ) -> int:
        """Delete old executions not running nor kept, finish interrupted deletes, purge tombstones.

        Oldest first. Files have no index: every head is read (as `list_executions` does); each
        delete is its own locked rename, so nothing is held across executions.
        """
        cutoff = self._cutoff(older_than_days)
        keep = retention_keep(keep_statuses)
        wanted = self._cleanup_limit(limit)
        self._require_root()
        try:
            self._empty_trash()
            tombstones = self._tombstones()
            for entry in _execution_dirs(os.scandir(self.path)):
                directory = Path(entry.path)
                if entry.name in tombstones:  # a delete stopped before its rename
                    await self._delete(entry.name, force=True)
                elif (directory / HEAD_FILE).exists() and not (directory / JOURNAL_FILE).exists():
                    # An older version's delete stopped halfway: finish it (no journal to lock).
                    logger.warning("removing execution directory %s left by an interrupted delete", directory)
                    self._write_tombstone(entry.name)
                    shutil.rmtree(self._to_trash(directory), ignore_errors=True)
            for name in self._tombstones():
                path = self.path / TOMBSTONES_DIR / name
                with contextlib.suppress(FileNotFoundError):
                    gone = not (self.path / name).exists()
                    if gone and datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
                        path.unlink()
            old = sorted(
                (
                    h
                    for h in await self._iter_heads_async()
                    if h.updated_at < cutoff and h.status.value not in keep
                ),
                key=lambda h: (h.updated_at, h.execution_id),
            )
            deleted = 0
            for head in old:
                if wanted is not None and deleted >= wanted:
                    break
                with contextlib.suppress(ExecutionLeasedError):
                    deleted += await self._delete(
                        head.execution_id, force=False, older_than=cutoff, keep=keep
                    )
            return deleted
        except OSError as exc:
            raise _os_error(exc, None) from exc

    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            raise StorageNotFoundError("file", str(self.path)) from None
        tombstones = self._tombstones()
        live = [e for e in _execution_dirs(entries) if self._live(e.name, Path(e.path), tombstones)]
        return self._readable_heads(
            live, lambda e: self._with_lease(self._read_head(e.name, Path(e.path) / HEAD_FILE), Path(e.path))
        )

    # ---- journal --------------------------------------------------------------------------------

    def _journal_state(self, execution_id: str, fd: int) -> tuple[int, int]:
        """Return (complete lines, size up to the last newline), cutting off a torn last line.

        A last line that is complete but lacks its newline is kept: the newline is added.
        """
        st = os.fstat(fd)
        with self._cache_lock:
            cached = self._journal_cache.get(execution_id)
        if cached is not None and cached[:2] == (st.st_ino, st.st_size):
            count, good = cached[2], cached[3]
        else:  # written by another process (or first append here): count once, then cache
            count, good, offset = 0, 0, 0
            while chunk := os.pread(fd, _CHUNK, offset):
                newlines = chunk.count(b"\n")
                if newlines:
                    count += newlines
                    good = offset + chunk.rindex(b"\n") + 1
                offset += len(chunk)
        if st.st_size > good and _parses(os.pread(fd, st.st_size - good, good)):
            _write_all(fd, b"\n")  # a complete entry that only lacks its newline: finish its line
            if self.fsync:
                os.fsync(fd)
            count, good = count + 1, st.st_size + 1
        elif st.st_size > good:  # torn trailing line from a crash mid-append
            logger.warning(
                "cutting a torn last journal line of execution %r (%d bytes)", execution_id, st.st_size - good
            )
            os.ftruncate(fd, good)
            if self.fsync:
                os.fsync(fd)
        return count, good

    def _line(self, step: StepRecord) -> bytes:
        return _wrap(*self.codec.encode(encode_step(step))) + b"\n"

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Append one journal line (fsync) under the journal lock, then replace the head.

        Never creates the execution: without a head it raises `ExecutionNotFoundError` (or
        `ExecutionDeletedError` for a deleted id) and writes nothing.
        """
        await self._append(record, step.seq, 1, self._line(step))

    async def append_steps_async(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        """Append the lines of every entry in one `write` and one fsync, then replace the head once.

        Refusals (lease, seq, deleted, missing head) are decided under the journal lock before
        anything is written. A crash after the write leaves the journal up to `max_batch` entries
        ahead of the head (`journal_may_lead_head`); a power cut during it may leave a prefix of the
        lines, the last one torn, which readers ignore and the next append cuts off (see the module
        docstring).
        """
        batch = self._batch(record, steps)
        data = b"".join(self._line(step) for step in batch)
        await self._append(record, batch[0].seq, len(batch), data)

    async def _append(self, record: ExecutionRecord, seq: int, count: int, data: bytes) -> None:
        """Append `count` complete journal lines `data`, the first of seq `seq`, then replace the head."""
        head = self._encode_head(record)
        execution_id = record.execution_id
        async with self._writing(record, create=False) as (directory, fd):
            self._fence(directory, record)
            lines, good = self._journal_state(execution_id, fd)
            if seq != lines:
                raise StepConflictError(execution_id, seq)
            _faults.point("before_journal_line", tear=(fd, data))
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
            ino = os.fstat(fd).st_ino
            with self._cache_lock:
                size = good + len(data)
                self._journal_cache[execution_id] = (ino, size, lines + count, size)
            self._write_head(directory, head)

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        """Read the journal in order, ignoring a torn last line (see the module docstring).

        A missing line (a gap in the seqs) or an undecodable line before the last one raises
        `CorruptRecordError`.
        """
        return self._read_journal(execution_id, 0)

    async def load_steps_after_async(self, execution_id: str, after_seq: int) -> list[StepRecord]:
        """Read the lines after `after_seq`, from where this instance's last read or append ended.

        Lines are only ever appended, so the end of the complete lines this instance last saw (for
        the same file: inode, and a newline just before that offset) is where the next seq starts:
        a watcher that reads the tail after each change reads and decodes only the new lines.
        Otherwise the file is read from its start and only the lines after `after_seq` decoded.
        """
        return self._read_journal(execution_id, self._tail_start(execution_id, after_seq))

    def _read_journal(self, execution_id: str, start: int) -> list[StepRecord]:
        """The entries from seq `start` on (see `load_steps_async` for the torn last line and gaps)."""
        journal = self._dir(execution_id) / JOURNAL_FILE
        try:
            with open(journal, "rb") as fh:
                st = os.fstat(fh.fileno())
                first, offset = self._known_end(execution_id, fh.fileno(), st, start)
                data = os.pread(fh.fileno(), st.st_size - offset, offset) if offset else fh.read()
        except FileNotFoundError:
            self._require_root()
            return []
        if self._tombstoned(execution_id):  # a delete stopped before its rename
            return []
        lines = data.split(b"\n")
        complete = lines[:-1]  # the last piece is empty, or a torn line from a crash: ignored
        if len(data) == st.st_size - offset:
            good = offset + len(data) - len(lines[-1])
            with self._cache_lock:
                self._journal_cache[execution_id] = (st.st_ino, st.st_size, first + len(complete), good)
        if lines[-1] and _parses(lines[-1]):  # complete, only its newline is missing: kept
            complete.append(lines[-1])
        location = str(journal)
        steps = []
        for seq, raw in enumerate(complete[start - first :], start):
            codec, payload = _unwrap(execution_id, raw, step=seq, location=location)
            try:
                steps.append(
                    decode_step(
                        execution_id,
                        seq,
                        payload,
                        codec=codec,
                        location=f"{location}:{seq + 1}",
                        max_size=self.codec.max_decompressed_size,
                    )
                )
            except CorruptRecordError:
                found = stored_seq(payload) if codec == JSON else None
                if found is not None and found > seq:  # lines were removed: name the missing seqs
                    where = f"{location}:{seq + 1}"
                    check_journal_seqs(execution_id, [*range(start, seq), found], location=where, start=start)
                raise
        return steps

    def _known_end(self, execution_id: str, fd: int, st: os.stat_result, start: int) -> tuple[int, int]:
        """`(seq, offset)` to read the journal from for entries from seq `start`: `(0, 0)` or a known end.

        The known end is the cached count and end of the complete lines (see `_journal_cache`), when
        it is at or before `start`, the file is the same inode, and a newline ends the line before it.
        """
        if start == 0:
            return 0, 0
        with self._cache_lock:
            cached = self._journal_cache.get(execution_id)
        if cached is None or cached[0] != st.st_ino or cached[2] > start or not 0 < cached[3] <= st.st_size:
            return 0, 0
        if os.pread(fd, 1, cached[3] - 1) != b"\n":
            return 0, 0
        return cached[2], cached[3]

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        directory = self._dir(execution_id)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JOURNAL_FILE).touch()  # every execution has a journal file
        self._write_head(directory, payload)
