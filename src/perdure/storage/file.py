"""Storage in plain files: one directory per execution, a head file and an append-only journal.

Layout under `path`::

    <execution_id>/head.json       the head record (JSON, replaced atomically)
    <execution_id>/journal.jsonl   one JSON line per journal entry, append-only
    <execution_id>/lease.json      the lease (owner, expiry as epoch seconds), when one is held

Crash safety: a journal entry is appended with a single write and fsync'd before the head is
replaced (temp file, fsync, `os.replace`, fsync of the directory). A crash in the middle of an
append leaves a torn last line without a newline; readers ignore it and the next append cuts it
off. A crash between the journal fsync and the head replacement leaves the new entry in the
journal and the previous head: the journal is authoritative for what ran, the head lags by one
step. Writers of one execution serialize on an `flock` of the journal, so two processes never
interleave lines. Lease operations take the same lock, and every head write or append reads the
lease under it: that is the write fence.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import itertools
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from ..codec import JSON, Codec, decode_head, decode_step, encode_head, encode_step
from ..errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    LeaseLostError,
    StepConflictError,
    StorageUnavailableError,
    UserError,
)
from ..records import ExecutionRecord, StepRecord
from .base import DurableExecutionStorage, logger

__all__ = ["FileDurableStorage"]

HEAD_FILE = "head.json"
JOURNAL_FILE = "journal.jsonl"
LEASE_FILE = "lease.json"
_ENVELOPE_PREFIX = b'{"codec":'
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_CHUNK = 1 << 20
_tmp_counter = itertools.count()


def _validate_id(execution_id: str) -> str:
    """Refuse ids that could leave `path`: execution ids become directory names."""
    if not isinstance(execution_id, str) or not _ID.match(execution_id) or execution_id in (".", ".."):
        raise UserError(
            f"Invalid execution id {execution_id!r} for file storage: use 1-200 letters, digits and "
            f"the characters '_', '.', ':', '-' (no path separators, not '.' or '..')."
        )
    return execution_id


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FileDurableStorage(DurableExecutionStorage):
    """Durable storage in a directory tree, readable with `cat` and `jq`.

    Args:
        path: Root directory; created when missing.
        fsync: Flush every write to the disk. Turning it off trades power-loss safety for speed
            (a process crash is still safe, the OS keeps the written data).
        codec: Payload codec; `Codec(compress_above=...)` zstd-compresses large records.

    """

    backend_name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str] = "./durable_states",
        *,
        fsync: bool = True,
        codec: Codec | None = None,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.codec = codec or Codec()
        self.path.mkdir(parents=True, exist_ok=True)
        # execution id -> (inode, size, complete lines, size up to the last newline) of its journal as
        # this process last saw it; a matching fstat proves nobody else appended in between, so an
        # append never has to re-read the journal.
        self._journal_cache: dict[str, tuple[int, int, int, int]] = {}
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileDurableStorage({str(self.path)!r})"

    def _dir(self, execution_id: str) -> Path:
        return self.path / _validate_id(execution_id)

    # ---- heads ----------------------------------------------------------------------------------

    def _encode_head(self, record: ExecutionRecord) -> bytes:
        return _wrap(*self.codec.encode(encode_head(record))) + b"\n"

    def _write_head(self, directory: Path, data: bytes) -> None:
        tmp = directory / f".head-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / HEAD_FILE)
        if self.fsync:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _read_head(self, execution_id: str, head_path: Path) -> ExecutionRecord | None:
        try:
            raw = head_path.read_bytes()
        except FileNotFoundError:
            return None
        codec, payload = _unwrap(execution_id, raw.rstrip(b"\n"), step=None, location=str(head_path))
        return decode_head(execution_id, payload, codec=codec, location=str(head_path))

    def _open_locked(self, directory: Path) -> int:
        """Open the journal for appending and hold its exclusive lock (released by closing the fd)."""
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / JOURNAL_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---- leases (read and written under the journal lock) ----------------------------------------

    @staticmethod
    def _read_lease(directory: Path) -> tuple[str, float] | None:
        try:
            data = json.loads((directory / LEASE_FILE).read_bytes())
            return str(data["owner"]), float(data["expires"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # a torn lease file is an expired lease
            logger.warning("ignoring an unreadable lease file in %s", directory)
            return None

    @staticmethod
    def _write_lease(directory: Path, owner: str, expires: float) -> None:
        # No fsync: a lease lost to a power cut is an expired lease, which is what a power cut means.
        tmp = directory / f".lease-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp"
        tmp.write_text(json.dumps({"owner": owner, "expires": expires}))
        os.replace(tmp, directory / LEASE_FILE)

    def _fence(self, directory: Path, record: ExecutionRecord) -> None:
        lease = self._read_lease(directory)
        if lease is not None and lease[0] != record.lease_owner and lease[1] > time.time():
            raise LeaseLostError(record.execution_id, record.lease_owner or "(no lease)", lease[0])

    def _with_lease(self, head: ExecutionRecord | None, directory: Path) -> ExecutionRecord | None:
        if head is not None:
            lease = self._read_lease(directory)
            head.lease_owner = lease[0] if lease else None
            head.lease_expires_at = datetime.fromtimestamp(lease[1], UTC) if lease else None
        return head

    def _locked_existing(self, execution_id: str) -> tuple[Path, int] | None:
        """Lock the journal of an execution that exists (None when it has no head)."""
        directory = self._dir(execution_id)
        if not (directory / HEAD_FILE).exists():
            return None
        return directory, self._open_locked(directory)

    async def acquire_lease_async(
        self, execution_id: str, owner: str, ttl_seconds: float, *, steal_from: str | None = None
    ) -> ExecutionRecord:
        ttl = self._check_ttl(ttl_seconds)
        try:
            locked = self._locked_existing(execution_id)
            if locked is None:
                raise ExecutionNotFoundError(execution_id, backend=self.backend_name)
            directory, fd = locked
            try:
                now = time.time()
                lease = self._read_lease(directory)
                if lease is not None and lease[0] not in (owner, steal_from) and lease[1] > now:
                    raise ExecutionLeasedError(execution_id, lease[0], datetime.fromtimestamp(lease[1], UTC))
                self._write_lease(directory, owner, now + ttl)
                head = self._read_head(execution_id, directory / HEAD_FILE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailableError("file", str(exc), execution_id=execution_id) from exc
        if head is None:
            raise ExecutionNotFoundError(execution_id, backend=self.backend_name)
        head.lease_owner, head.lease_expires_at = owner, datetime.fromtimestamp(now + ttl, UTC)
        return head

    async def renew_lease_async(self, execution_id: str, owner: str, ttl_seconds: float) -> datetime:
        ttl = self._check_ttl(ttl_seconds)
        try:
            locked = self._locked_existing(execution_id)
            if locked is None:
                raise LeaseLostError(execution_id, owner, None)
            directory, fd = locked
            try:
                lease = self._read_lease(directory)
                if lease is None or lease[0] != owner:
                    raise LeaseLostError(execution_id, owner, lease[0] if lease else None)
                expires = time.time() + ttl
                self._write_lease(directory, owner, expires)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailableError("file", str(exc), execution_id=execution_id) from exc
        return datetime.fromtimestamp(expires, UTC)

    async def release_lease_async(self, execution_id: str, owner: str) -> bool:
        try:
            locked = self._locked_existing(execution_id)
            if locked is None:
                return False
            directory, fd = locked
            try:
                lease = self._read_lease(directory)
                if lease is None or lease[0] != owner:
                    return False
                (directory / LEASE_FILE).unlink()
                return True
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailableError("file", str(exc), execution_id=execution_id) from exc

    # ---- head writes ----------------------------------------------------------------------------

    async def save_state_async(self, record: ExecutionRecord) -> None:
        """Replace the head atomically (temp file, fsync, rename)."""
        directory = self._dir(record.execution_id)
        data = self._encode_head(record)
        try:
            fd = self._open_locked(directory)
            try:
                self._fence(directory, record)
                self._write_head(directory, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageUnavailableError("file", str(exc), execution_id=record.execution_id) from exc

    async def load_state_async(self, execution_id: str) -> ExecutionRecord | None:
        """Read the head; None when the execution does not exist."""
        directory = self._dir(execution_id)
        return self._with_lease(self._read_head(execution_id, directory / HEAD_FILE), directory)

    async def delete_state_async(self, execution_id: str) -> bool:
        """Remove the execution directory; return whether it existed."""
        directory = self._dir(execution_id)
        with self._cache_lock:
            self._journal_cache.pop(execution_id, None)
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            return False
        return True

    async def _iter_heads_async(self) -> Iterable[ExecutionRecord]:
        heads: list[ExecutionRecord] = []
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return heads
        for entry in entries:
            if not entry.is_dir() or not _ID.match(entry.name) or entry.name in (".", ".."):
                continue
            try:
                head = self._with_lease(
                    self._read_head(entry.name, Path(entry.path) / HEAD_FILE), Path(entry.path)
                )
            except (CorruptRecordError, IncompatibleSchemaError) as exc:
                logger.warning("skipping unreadable execution record: %s", exc)
                continue
            if head is not None:
                heads.append(head)
        return heads

    # ---- journal --------------------------------------------------------------------------------

    def _journal_state(self, execution_id: str, fd: int) -> tuple[int, int]:
        """Return (complete lines, size up to the last newline), cutting off a torn last line."""
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
        if st.st_size > good:  # torn trailing line from a crash mid-append
            logger.warning(
                "cutting a torn last journal line of execution %r (%d bytes)", execution_id, st.st_size - good
            )
            os.ftruncate(fd, good)
            if self.fsync:
                os.fsync(fd)
        return count, good

    async def append_step_async(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Append one journal line (fsync) under the journal lock, then replace the head."""
        directory = self._dir(step.execution_id)
        line = _wrap(*self.codec.encode(encode_step(step))) + b"\n"
        head = self._encode_head(record)
        try:
            fd = self._open_locked(directory)
            try:
                self._fence(directory, record)
                count, good = self._journal_state(step.execution_id, fd)
                if step.seq != count:
                    raise StepConflictError(step.execution_id, step.seq)
                _write_all(fd, line)
                if self.fsync:
                    os.fsync(fd)
                ino = os.fstat(fd).st_ino
                with self._cache_lock:
                    size = good + len(line)
                    self._journal_cache[step.execution_id] = (ino, size, count + 1, size)
                self._write_head(self._dir(record.execution_id), head)
            finally:
                os.close(fd)
        except OSError as exc:
            with self._cache_lock:
                self._journal_cache.pop(step.execution_id, None)
            raise StorageUnavailableError("file", str(exc), execution_id=step.execution_id) from exc

    async def load_steps_async(self, execution_id: str) -> list[StepRecord]:
        """Read the journal in order, ignoring a torn last line."""
        journal = self._dir(execution_id) / JOURNAL_FILE
        try:
            with open(journal, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        complete = lines[:-1]  # the last piece is empty, or a torn line from a crash: ignored
        if len(data) == st.st_size:
            good = len(data) - len(lines[-1])
            with self._cache_lock:
                self._journal_cache[execution_id] = (st.st_ino, st.st_size, len(complete), good)
        location = str(journal)
        steps = []
        for seq, raw in enumerate(complete):
            codec, payload = _unwrap(execution_id, raw, step=seq, location=location)
            steps.append(
                decode_step(execution_id, seq, payload, codec=codec, location=f"{location}:{seq + 1}")
            )
        return steps

    # Test hook: let tests damage a record the way a bad disk or a bad deploy would.
    def _put_raw_head(self, execution_id: str, payload: bytes) -> None:
        directory = self._dir(execution_id)
        directory.mkdir(exist_ok=True)
        self._write_head(directory, payload)
