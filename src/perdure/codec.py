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

import dataclasses
import json
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

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
_MAX_DEPTH = 255  # pydantic-core's serialization depth limit
_INF = math.inf


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


def encode_head(record: ExecutionRecord) -> bytes:
    """JSON bytes of a head record, with its checksum.

    Raises `SerializationError` when the head holds a value JSON cannot store exactly (in its
    output, task context, metadata, ...), naming the execution and the field.
    """
    for where, data in (("task context", record.task.context), ("metadata", record.metadata)):
        if data:
            problem = _scan(data, sets=False)
            if problem is not None:
                raise _refusal(record.execution_id, where, problem)
    try:
        raw = record.model_dump_json().encode()
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
        raw = step.model_dump_json().encode()
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
        problem = _scan(value, sets=False)
        if problem is None:
            return to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise _serialization_error(execution_id, what, value, exc) from exc
    raise _refusal(execution_id, what, problem)


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
            problem = _scan(value)
            if problem is not None:
                raise _refusal(execution_id, name, problem) from None
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
        return SerializationError(execution_id, step, _type_name(value), _nesting_detail(value))
    try:
        problem = _scan(value)
    except RecursionError:  # pragma: no cover - _scan is iterative; _locate stops at pydantic's depth
        problem = None
    if problem is not None:
        return _refusal(execution_id, step, problem)
    match = _UNKNOWN_TYPE.search(text)
    value_type = match.group(1) if match else _type_name(value)
    return SerializationError(
        execution_id, step, value_type, text.removeprefix("Error serializing to JSON: ")
    )


# ---- scanning values for what JSON would change ------------------------------------------------------

_LEAF = frozenset({int, bool, type(None)})


def _declares_bytes(annotation: Any) -> bool:
    """Whether a field's annotation names bytes: then the field's own serializer decides their form."""
    return annotation in (bytes, bytearray) or "bytes" in str(annotation)


@dataclass(frozen=True)
class _Problem:
    value: Any
    kind: str  # "nonfinite" | "bytes" | "surrogate" | "set"
    path: str = ""


def _bad_str(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _bad_bytes(data: bytes | bytearray) -> bool:
    if data.isascii():
        return False
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def _leaf_problem(value: Any) -> str | None:
    kind = type(value)
    if kind is float:
        return None if math.isfinite(value) else "nonfinite"
    if kind is str:
        return "surrogate" if _bad_str(value) else None
    if kind is bytes or kind is bytearray:
        return "bytes" if _bad_bytes(value) else None
    return None


def _fields(value: Any) -> list[tuple[str, Any]] | None:
    """Named children of a container or object; None for a leaf.

    `bytes` in a field declared as bytes (of a model or dataclass) are left out: the type's
    serializer owns them (`BinaryContent` stores base64 on purpose); only bytes pydantic must infer
    (in containers, `Any` and other fields) are checked.
    """
    kind = type(value)
    if kind is dict or (kind is not list and isinstance(value, dict)):
        return [(f"[{json.dumps(str(k))}]", v) for k, v in value.items()]
    if kind is list or kind is tuple or isinstance(value, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, BaseModel):
        declared = type(value).model_fields
        named = [
            (f".{k}", v)
            for k, v in value.__dict__.items()
            if not (
                type(v) in (bytes, bytearray) and k in declared and _declares_bytes(declared[k].annotation)
            )
        ]
        named.extend((f".{k}", v) for k, v in (value.__pydantic_extra__ or {}).items())
        return named
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            (f".{f.name}", v)
            for f in dataclasses.fields(value)
            if not (type(v := getattr(value, f.name, None)) in (bytes, bytearray) and _declares_bytes(f.type))
        ]
    return None


_LEAF_KIND, _MAPPING, _SEQUENCE, _MODEL, _DATACLASS = range(5)
_KINDS: dict[type, tuple[int, tuple[tuple[str, bool], ...]]] = {}


def _kind_of(kind: type) -> tuple[int, tuple[tuple[str, bool], ...]]:
    """How to find the children of instances of `kind`, cached per type (the scan's hot path)."""
    found = _KINDS.get(kind)
    if found is None:
        if issubclass(kind, dict):
            found = (_MAPPING, ())
        elif issubclass(kind, (list, tuple, set, frozenset)):
            found = (_SEQUENCE, ())
        elif issubclass(kind, BaseModel):
            found = (_MODEL, tuple((k, _declares_bytes(f.annotation)) for k, f in kind.model_fields.items()))
        elif dataclasses.is_dataclass(kind):
            found = (_DATACLASS, tuple((f.name, _declares_bytes(f.type)) for f in dataclasses.fields(kind)))
        else:
            found = (_LEAF_KIND, ())
        if len(_KINDS) < 4096:
            _KINDS[kind] = found
    return found


def _children(value: Any) -> Any:
    """Children of a container or object (fast path of `_fields`, no names); None for a leaf."""
    kind = type(value)
    if kind is dict:
        return value.values()
    if kind is list or kind is tuple:
        return value
    how, fields = _kind_of(kind)
    if how == _MAPPING:
        return value.values()
    if how == _SEQUENCE:
        return value
    if how == _LEAF_KIND:
        return None
    own = value.__dict__ if how == _MODEL else None
    children = []
    for name, typed_bytes in fields:
        child = own.get(name) if own is not None else getattr(value, name, None)
        if typed_bytes and type(child) in (bytes, bytearray):
            continue  # the field's serializer owns the form of its bytes (e.g. base64)
        children.append(child)
    if own is not None:
        if len(own) > len(fields):
            declared = {name for name, _ in fields}
            children.extend(v for k, v in own.items() if k not in declared)
        if value.__pydantic_extra__:
            children.extend(value.__pydantic_extra__.values())
    return children


def _scan(value: Any, *, sets: bool = True) -> _Problem | None:
    """The first value JSON would not store exactly, with its path; None when there is none.

    Finds NaN/inf, non-UTF-8 bytes, unpaired surrogates, and with `sets=False` sets (data the
    application reads back, where a list is a change). The scan is iterative and cycle-safe; once it
    finds something, `_locate` walks again to name the path.
    """
    kind = _leaf_problem(value)
    if kind is not None:
        return _Problem(value, kind)
    if type(value) in _LEAF or type(value) is float or type(value) is str:
        return None
    stack = [value]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if not sets and isinstance(node, (set, frozenset)):
            return _locate(value, sets)
        children = _children(node)
        if children is None:
            continue
        for child in children:
            ckind = type(child)
            if ckind is float:
                if child != child or child == _INF or child == -_INF:
                    return _locate(value, sets)
            elif ckind is str:
                if not child.isascii() and _bad_str(child):
                    return _locate(value, sets)
            elif ckind in _LEAF:
                pass
            elif ckind is bytes or ckind is bytearray:
                if _bad_bytes(child):
                    return _locate(value, sets)
            else:
                stack.append(child)
    return None


def _locate(value: Any, sets: bool) -> _Problem | None:
    """The first problem in `value` with its path, e.g. `["rows"][2].score` (the error path)."""
    seen: set[int] = set()

    def walk(node: Any, path: str, depth: int) -> _Problem | None:
        kind = _leaf_problem(node)
        if kind is not None:
            return _Problem(node, kind, path)
        if not sets and isinstance(node, (set, frozenset)):
            return _Problem(node, "set", path)
        if depth > _MAX_DEPTH + 8 or id(node) in seen:
            return None
        named = _fields(node)
        if named is None:
            return None
        seen.add(id(node))
        for step, child in named:
            found = walk(child, path + step, depth + 1)
            if found is not None:
                return found
        return None

    return walk(value, "", 0)


def _refusal(execution_id: str, step: str, problem: _Problem, prefix: str = "") -> SerializationError:
    value_type, detail = _refusal_detail(problem, prefix)
    return SerializationError(execution_id, step, value_type, detail)


def _refusal_detail(problem: _Problem, prefix: str = "") -> tuple[str, str]:
    path = (prefix + problem.path).lstrip(".")
    at = f" at {path}" if path else ""
    value = problem.value
    if problem.kind == "nonfinite":
        detail = (
            f"the number {value!r}{at} has no JSON form: JSON has no NaN or infinity and it would be "
            f"stored as null; return None or a string instead"
        )
    elif problem.kind == "bytes":
        detail = (
            f"the {len(value)} bytes{at} are not UTF-8: they would be stored as base64 text and come back "
            f"as a str; return base64 text yourself, or pydantic_ai.BinaryContent"
        )
    elif problem.kind == "surrogate":
        bad = next(ch for ch in value if 0xD800 <= ord(ch) <= 0xDFFF)
        detail = f"the string{at} contains the unpaired surrogate U+{ord(bad):04X}, which UTF-8 cannot encode"
    else:
        detail = f"the {type(value).__name__}{at} has no JSON form: it would come back as a list; use a list"
    return _type_name(value), detail


def _nesting_detail(value: Any) -> str:
    depth, cyclic = _nesting(value)
    if cyclic:
        return "the value contains a circular reference (a container that contains itself)"
    more = "more than " if depth > 1000 else ""
    return (
        f"the value is nested too deeply ({more}{min(depth, 1000)} levels of containers; JSON "
        f"serialization stops at {_MAX_DEPTH}); flatten it"
    )


def _nesting(value: Any) -> tuple[int, bool]:
    """(depth, has a cycle) of a nested structure, looking at most 1001 levels deep (error path)."""
    deepest = 0
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(value, 1, False)]
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        children = _children(node)
        if children is None:
            continue
        if id(node) in on_path:
            return depth, True
        deepest = max(deepest, depth)
        if depth > 1000:
            return deepest, False
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    return deepest, False


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class UnstorableValueError(TypeError):
    """A durable unit's result holds a value JSON cannot store exactly (mapped to `SerializationError`)."""

    def __init__(self, value_type: str, detail: str) -> None:
        # "type <name>" first: the engine's mapper reads the value's type from the message.
        super().__init__(f"type {value_type}: {detail}")
        self.value_type = value_type
        self.detail = detail


class JournalCodec:
    """The pydantic-ai `DurabilityCodec` of perdure's engine: `JSON_CODEC`, refusing silent changes.

    pydantic-ai's `JSON_CODEC` turns a tool's NaN into `null` and non-UTF-8 bytes into base64 text
    before perdure sees the result; this codec refuses such values instead (raising a `TypeError`
    that the engine turns into a failed step with a `SerializationError`), and names values nested
    too deeply as such rather than as circular references.
    """

    _json: Any = None  # pydantic-ai's JSON_CODEC, imported on first use (storage-only users skip it)

    def _json_codec(self) -> Any:
        if self._json is None:
            from pydantic_ai.durable_exec import JSON_CODEC

            self._json = JSON_CODEC
        return self._json

    def dump(self, tp: Any, value: Any) -> Any:
        """Reduce `value` to JSON data, or raise `TypeError` saying what JSON cannot hold."""
        problem = _scan(value)  # first: pydantic would turn these into null / base64 with warnings
        if problem is not None:
            raise UnstorableValueError(*_refusal_detail(problem))
        try:
            return self._json_codec().dump(tp, value)
        except (PydanticSerializationError, ValueError, RecursionError) as exc:
            text = str(exc)
            if isinstance(exc, RecursionError) or "depth exceeded" in text or "Circular reference" in text:
                raise UnstorableValueError(_type_name(_payload(value)), _nesting_detail(value)) from exc
            raise

    def load(self, tp: Any, payload: Any) -> Any:
        """Rebuild the value from its JSON data (`JSON_CODEC.load`)."""
        return self._json_codec().load(tp, payload)


JOURNAL_CODEC = JournalCodec()
"""The codec `PerdureDurability` gives pydantic-ai."""


def _payload(value: Any) -> Any:
    """The user's value inside pydantic-ai's tool-return wrapper, when there is one."""
    if dataclasses.is_dataclass(value) and type(value).__name__ == "_ToolReturn":
        return getattr(value, "result", value)
    return value


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
