"""Serialization of stored records: JSON, optionally zstd-compressed, never pickle.

Every payload is stored with the name of the codec that wrote it, so a reader can always tell how
to decode it and a record written with compression stays readable when compression is turned off.
Decoding validates the schema version and the shape of the record, turning any damage into a
typed `CorruptRecordError` or `IncompatibleSchemaError` instead of a stack trace from deep inside
pydantic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .errors import CorruptRecordError, IncompatibleSchemaError, UserError
from .records import SCHEMA_VERSION, ExecutionRecord, StepRecord

__all__ = [
    "JSON",
    "JSON_ZSTD",
    "Codec",
    "decode_head",
    "decode_step",
    "encode_head",
    "encode_step",
]

JSON = "json"
JSON_ZSTD = "json+zstd"


@dataclass(frozen=True)
class Codec:
    """How payloads are written: plain JSON, or zstd-compressed JSON above `compress_above` bytes.

    Compression only pays off for large tool results and long model responses; the default keeps
    every record human-readable.
    """

    compress_above: int | None = None
    level: int = 3

    def __post_init__(self) -> None:
        if self.compress_above is not None:
            _zstd()  # fail at construction, not at the first large step

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


def _raw(codec: str, payload: bytes) -> bytes:
    if codec == JSON:
        return payload
    if codec == JSON_ZSTD:
        return bytes(_zstd().ZstdDecompressor().decompress(payload))
    raise ValueError(f"unknown codec {codec!r} (pickle and other codecs are never loaded)")


def encode_head(record: ExecutionRecord) -> bytes:
    """JSON bytes of a head record."""
    return record.model_dump_json().encode()


def encode_step(step: StepRecord) -> bytes:
    """JSON bytes of a journal entry."""
    return step.model_dump_json().encode()


def _check_version(execution_id: str, data: Any) -> None:
    if isinstance(data, dict):
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise IncompatibleSchemaError(execution_id, version, SCHEMA_VERSION)


def decode_head(
    execution_id: str, payload: bytes | str, *, codec: str = JSON, location: str = ""
) -> ExecutionRecord:
    """Decode a head record, raising typed errors for damage or a newer schema."""
    try:
        raw = _raw(codec, payload.encode() if isinstance(payload, str) else payload)
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(execution_id, f"not valid JSON ({exc})", location=location) from exc
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
    execution_id: str, seq: int, payload: bytes | str, *, codec: str = JSON, location: str = ""
) -> StepRecord:
    """Decode a journal entry, raising typed errors for damage or a newer schema."""
    try:
        raw = _raw(codec, payload.encode() if isinstance(payload, str) else payload)
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(
            execution_id, f"not valid JSON ({exc})", step=str(seq), location=location
        ) from exc
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
