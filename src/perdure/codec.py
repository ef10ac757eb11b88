"""Serialization of stored records: JSON, optionally zstd-compressed, never pickle.

Every payload is stored with the name of the codec that wrote it, so a reader can always tell how
to decode it and a record written with compression stays readable when compression is turned off.
Decoding validates the schema version and the shape of the record, turning any damage into a
typed `CorruptRecordError` or `IncompatibleSchemaError` instead of a stack trace from deep inside
pydantic.

Integrity. Every record ends with a CRC-32 of its JSON: `{...,"_crc":"1a2b3c4d"}`, computed over
the bytes of the record without that key (the JSON object as `model_dump_json` wrote it), so a
plain JSON record stays human-readable valid JSON, and a changed byte (bit rot, a hand edit, a bad
restore) is a `CorruptRecordError` instead of a replayed value. Records written before checksums
existed carry none and are read as they are. The checksum is over bytes, which every backend keeps
as they were written (file lines, SQLite BLOB, Redis strings, PostgreSQL BYTEA); it sits inside the
compressed data of `json+zstd` records. A zstd payload that does not decompress, or that
decompresses to more than `max_decompressed_size` bytes (default 64 MiB, or the environment
variable `PERDURE_MAX_RECORD_SIZE`), is a `CorruptRecordError` too; decompression streams, so an
oversized record is never held in memory.

Values JSON cannot hold exactly. perdure refuses them rather than store something else, with a
`SerializationError` naming the execution, the step and the value's type, so the step fails (the
steps journaled before it stay) instead of replaying a different value later:

- NaN and +/-infinity (JSON has no such numbers; pydantic writes `null`, PostgreSQL `jsonb`
  refuses them, Redis clients disagree): refused. Return `None` or a string such as `"NaN"`.
- `bytes` that are not UTF-8 (pydantic would store base64 text that comes back as a `str`):
  refused; return base64 text yourself, or `pydantic_ai.BinaryContent`. UTF-8 `bytes` are stored
  as text and come back as `str`.
- strings with unpaired surrogates (a lone `U+D800`, not encodable as UTF-8): refused.
- values nested deeper than pydantic serializes (255 levels), and objects pydantic does not
  know how to serialize: refused, saying which.
- sets in task context and execution metadata: refused (they would come back as lists). A set in a
  tool result reaches the model as a JSON list, live and on replay alike.

Everything else round-trips as JSON data: a tool's result is journaled in the form the model sees,
so a replayed result is exactly the one the original run handed to the model.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

from ._values import (
    JOURNAL_CODEC,
    JournalCodec,
    nesting_detail,
    refusal,
    scan,
    type_name,
)
from .errors import CorruptRecordError, IncompatibleSchemaError, SerializationError, UserError
from .records import SCHEMA_VERSION, ExecutionRecord, StepRecord

__all__ = [
    "DEFAULT_MAX_RECORD_SIZE",
    "JOURNAL_CODEC",
    "JSON",
    "JSON_ZSTD",
    "MAX_RECORD_SIZE_ENV",
    "Codec",
    "JournalCodec",
    "decode_head",
    "decode_step",
    "encode_head",
    "encode_step",
    "json_data",
    "max_record_size",
]

JSON = "json"
JSON_ZSTD = "json+zstd"

DEFAULT_MAX_RECORD_SIZE = 64 * 1024 * 1024
"""Largest decompressed size of one `json+zstd` record accepted by default (64 MiB)."""
MAX_RECORD_SIZE_ENV = "PERDURE_MAX_RECORD_SIZE"
"""Environment variable overriding `DEFAULT_MAX_RECORD_SIZE`, in bytes."""

_CRC_PREFIX = b',"_crc":"'
_TRAILER_LEN = len(_CRC_PREFIX) + 8 + 2  # ,"_crc":"xxxxxxxx"}


def max_record_size() -> int:
    """The decompressed-size limit: `PERDURE_MAX_RECORD_SIZE` when set, else 64 MiB."""
    value = os.environ.get(MAX_RECORD_SIZE_ENV)
    if value is None or not value.strip():
        return DEFAULT_MAX_RECORD_SIZE
    try:
        size = int(value.strip().replace("_", ""))
    except ValueError:
        size = 0
    if size <= 0:
        raise UserError(f"{MAX_RECORD_SIZE_ENV} must be a positive number of bytes, got {value!r}.")
    return size


@dataclass(frozen=True)
class Codec:
    """How payloads are written: plain JSON, or zstd-compressed JSON above `compress_above` bytes.

    Compression only pays off for large tool results and long model responses; the default keeps
    every record human-readable. `max_decompressed_size` bounds what one compressed record may
    inflate to when read (None: `PERDURE_MAX_RECORD_SIZE`, else 64 MiB); pass it to
    `decode_head` / `decode_step` as `max_size=codec.max_decompressed_size`.
    """

    compress_above: int | None = None
    level: int = 3
    max_decompressed_size: int | None = None

    def __post_init__(self) -> None:
        if self.compress_above is not None:
            _zstd()  # fail at construction, not at the first large step
        if self.max_decompressed_size is not None and (
            not isinstance(self.max_decompressed_size, int) or self.max_decompressed_size <= 0
        ):
            raise UserError(
                f"Codec(max_decompressed_size=...) must be a positive number of bytes, got "
                f"{self.max_decompressed_size!r}."
            )

    def encode(self, raw: bytes) -> tuple[str, bytes]:
        """Return `(codec name, payload)` for JSON bytes."""
        if self.compress_above is not None and len(raw) > self.compress_above:
            return JSON_ZSTD, _zstd().ZstdCompressor(level=self.level).compress(raw)
        return JSON, raw


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError(
            "Compression needs the 'zstandard' package: install it with `pip install perdure[zstd]`."
        ) from exc
    return zstandard


class _Damaged(Exception):
    """Internal: why a payload cannot be read (becomes a CorruptRecordError with the record's place)."""


def _inflate(payload: bytes, limit: int) -> bytes:
    """Decompress a zstd frame without ever holding more than `limit` + 1 MiB of output."""
    zstd = _zstd()
    try:
        declared = zstd.frame_content_size(payload)
        if declared > limit:
            raise _Damaged(f"its zstd data decompresses beyond the {limit}-byte limit ({declared} bytes)")
        if declared >= 0:  # the frame says its size: zstd refuses to write more than that
            return bytes(zstd.ZstdDecompressor().decompress(payload))
        chunks: list[bytes] = []
        total = 0
        with zstd.ZstdDecompressor().stream_reader(payload) as reader:
            while chunk := reader.read(min(1 << 20, limit + 1 - total)):
                total += len(chunk)
                if total > limit:
                    chunks.clear()  # the traceback keeps this frame alive: do not keep the output too
                    raise _Damaged(f"its zstd data decompresses beyond the {limit}-byte limit")
                chunks.append(chunk)
        return b"".join(chunks)
    except zstd.ZstdError as exc:
        raise _Damaged(f"its zstd data is damaged ({exc})") from exc


def _open(codec: str, payload: bytes | str, max_size: int | None) -> bytes:
    """The verified JSON bytes of a stored payload."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    if codec == JSON_ZSTD:
        raw = _inflate(raw, max_size if max_size is not None else max_record_size())
    elif codec != JSON:
        raise _Damaged(f"unknown codec {codec!r} (pickle and other codecs are never loaded)")
    _verify(raw)
    return raw


def _seal(raw: bytes) -> bytes:
    """Append the `_crc` key: `{...}` becomes `{...,"_crc":"<crc32 of {...}>"}`."""
    if raw == b"{}":  # pragma: no cover - records always have fields
        return b'{"_crc":"%08x"}' % zlib.crc32(raw)
    return raw[:-1] + _CRC_PREFIX + b'%08x"}' % zlib.crc32(raw)


def _verify(raw: bytes) -> None:
    # Records without a checksum were written before perdure had them. Their last field is never a
    # string (a head ends with `metadata`/`identity`, a step with `tokens`), so a payload ending in
    # `"}` claims a checksum and a damaged trailer is detected rather than read as "no checksum".
    end = raw.rstrip()
    if not end.endswith(b'"}'):
        return
    if len(end) < _TRAILER_LEN + 1 or end[-_TRAILER_LEN : -_TRAILER_LEN + len(_CRC_PREFIX)] != _CRC_PREFIX:
        raise _Damaged("its checksum trailer is damaged")
    stored = end[-10:-2]
    view = memoryview(end)[:-_TRAILER_LEN]
    computed = b"%08x" % zlib.crc32(b"}", zlib.crc32(view))
    if computed != stored:
        raise _Damaged(
            f"checksum mismatch (stored {stored.decode(errors='replace')}, content hashes to "
            f"{computed.decode()}): a byte changed after it was written"
        )


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise _Damaged("it is nested too deeply to be a perdure record") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Damaged(f"not valid JSON ({exc})") from exc


# ---- encoding ------------------------------------------------------------------------------------


_CLEAN: tuple[Any, Any] = (None, None)
"""The task context and metadata objects last found clean (kept alive, so identity is meaningful)."""


def _to_json(model: BaseModel) -> bytes:
    """`model.model_dump_json().encode()` without the round trip through `str` (the step hot path)."""
    return model.__pydantic_serializer__.to_json(model)


def encode_head(record: ExecutionRecord) -> bytes:
    """JSON bytes of a head record, with its checksum.

    Raises `SerializationError` when the head holds a value JSON cannot store exactly (in its
    output, task context, metadata, ...), naming the execution and the field.
    """
    global _CLEAN
    context, metadata = record.task.context, record.metadata
    if (context or metadata) and not (_CLEAN[0] is context and _CLEAN[1] is metadata):
        for where, data in (("task context", context), ("metadata", metadata)):
            if data:
                problem = scan(data, sets=False)
                if problem is not None:
                    raise refusal(record.execution_id, where, problem)
        # Every head of an attempt shares these objects (`model_copy` is shallow): scan them once.
        _CLEAN = (context, metadata)
    try:
        raw = _to_json(record)
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        field, value = _failing_head_field(record)
        raise _serialization_error(record.execution_id, field, value, exc) from exc
    if b"NaN" in raw or b"Infinity" in raw:
        _refuse_non_finite(raw, record.execution_id, _head_fields(record))
    return _seal(raw)


def encode_step(step: StepRecord) -> bytes:
    """JSON bytes of a journal entry, with its checksum.

    Raises `SerializationError` when the result holds a value JSON cannot store exactly.
    """
    try:
        raw = _to_json(step)
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise _serialization_error(step.execution_id, step.name, step.result, exc) from exc
    if b"NaN" in raw or b"Infinity" in raw:
        _refuse_non_finite(raw, step.execution_id, [(step.name, step.result)])
    return _seal(raw)


def json_data(value: Any, *, execution_id: str, what: str) -> Any:
    """`value` as JSON data (`to_jsonable_python`), refusing what JSON cannot hold exactly.

    For data the caller attaches to an execution (metadata, task context): sets, NaN and
    infinities, non-UTF-8 bytes, unpaired surrogates, unknown objects and too-deep nesting raise
    `SerializationError(execution_id, what, value type, detail)`.
    """
    try:
        problem = scan(value, sets=False)
        if problem is None:
            return to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise _serialization_error(execution_id, what, value, exc) from exc
    raise refusal(execution_id, what, problem)


class _NonFinite(Exception):
    pass


def _reject_constant(constant: str) -> Any:
    raise _NonFinite(constant)


def _refuse_non_finite(raw: bytes, execution_id: str, parts: Iterable[tuple[str, Any]]) -> None:
    """`raw` mentions NaN or Infinity: refuse it if it holds such a number (not merely such text)."""
    try:
        json.loads(raw, parse_constant=_reject_constant)
    except _NonFinite as exc:
        for name, value in parts:
            problem = scan(value)
            if problem is not None:
                raise refusal(execution_id, name, problem) from None
        raise SerializationError(execution_id, "?", "float", f"{exc} has no JSON form") from None


def _head_fields(record: ExecutionRecord) -> Iterator[tuple[str, Any]]:
    """The head's parts, most likely culprits first, named as an operator would name them."""
    yield "output", record.output
    yield "metadata", record.metadata
    yield "task context", record.task.context
    for name in type(record).model_fields:
        if name not in ("output", "metadata", "task"):
            yield name, getattr(record, name)
    yield "task", record.task


def _failing_head_field(record: ExecutionRecord) -> tuple[str, Any]:
    for name, value in _head_fields(record):
        try:
            if isinstance(value, BaseModel):
                value.model_dump_json()
            else:
                to_json(value)
        except (PydanticSerializationError, ValueError, TypeError, RecursionError):
            return name, value
    return record.step_name or "head", record


_UNKNOWN_TYPE = re.compile(r"type:?\s*<class '([^']+)'>")


def _serialization_error(execution_id: str, step: str, value: Any, exc: BaseException) -> SerializationError:
    """The typed error for a pydantic serialization failure of `value`."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, RecursionError) or "depth exceeded" in text or "Circular reference" in text:
        return SerializationError(execution_id, step, type_name(value), nesting_detail(value))
    try:
        problem = scan(value)
    except RecursionError:  # pragma: no cover - scan is iterative; _locate stops at pydantic's depth
        problem = None
    if problem is not None:
        return refusal(execution_id, step, problem)
    match = _UNKNOWN_TYPE.search(text)
    value_type = match.group(1) if match else type_name(value)
    return SerializationError(
        execution_id, step, value_type, text.removeprefix("Error serializing to JSON: ")
    )


# ---- decoding ------------------------------------------------------------------------------------


def _check_version(execution_id: str, data: Any) -> None:
    if isinstance(data, dict):
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise IncompatibleSchemaError(execution_id, version, SCHEMA_VERSION)


def decode_head(
    execution_id: str,
    payload: bytes | str,
    *,
    codec: str = JSON,
    location: str = "",
    max_size: int | None = None,
) -> ExecutionRecord:
    """Decode a head record, raising typed errors for damage or a newer schema.

    `max_size` bounds the decompressed size of a `json+zstd` payload (None: `max_record_size()`).
    """
    try:
        data = _loads(_open(codec, payload, max_size))
    except _Damaged as exc:
        raise CorruptRecordError(execution_id, str(exc), location=location) from exc.__cause__
    _check_version(execution_id, data)
    try:
        record = ExecutionRecord.model_validate(data)
    except ValidationError as exc:
        raise CorruptRecordError(
            execution_id,
            f"unexpected shape ({exc.error_count()} field errors: {_first(exc)})",
            location=location,
        ) from exc
    if record.execution_id != execution_id:
        raise CorruptRecordError(
            execution_id, f"it holds execution {record.execution_id!r} instead", location=location
        )
    return record


def decode_step(
    execution_id: str,
    seq: int,
    payload: bytes | str,
    *,
    codec: str = JSON,
    location: str = "",
    max_size: int | None = None,
) -> StepRecord:
    """Decode a journal entry, raising typed errors for damage or a newer schema."""
    try:
        data = _loads(_open(codec, payload, max_size))
    except _Damaged as exc:
        raise CorruptRecordError(execution_id, str(exc), step=str(seq), location=location) from exc.__cause__
    _check_version(execution_id, data)
    try:
        step = StepRecord.model_validate(data)
    except ValidationError as exc:
        raise CorruptRecordError(
            execution_id, f"unexpected shape ({_first(exc)})", step=str(seq), location=location
        ) from exc
    if step.execution_id != execution_id or step.seq != seq:
        raise CorruptRecordError(
            execution_id,
            f"entry says execution {step.execution_id!r} step {step.seq}",
            step=str(seq),
            location=location,
        )
    return step


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', '')}"
