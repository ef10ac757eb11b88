"""Values JSON cannot hold exactly: finding them before they are stored as something else.

`perdure.codec` refuses NaN, infinities, non-UTF-8 bytes, lone surrogates, sets in context or
metadata and values nested too deeply (see its docstring for why each). This module finds them: a
scan of the value that stops at the first problem and names its path and type, and `JournalCodec`,
the pydantic-ai durability codec that runs the scan before pydantic-ai's JSON codec would turn such
values into `null` or base64 text on the way to the journal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from .errors import SerializationError

__all__ = [
    "JOURNAL_CODEC",
    "JournalCodec",
    "UnstorableValueError",
    "nesting_detail",
    "refusal",
    "refusal_detail",
    "scan",
    "type_name",
]

_MAX_DEPTH = 255  # pydantic-core's serialization depth limit
_INF = math.inf


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


def scan(value: Any, *, sets: bool = True) -> _Problem | None:
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


def refusal(execution_id: str, step: str, problem: _Problem, prefix: str = "") -> SerializationError:
    value_type, detail = refusal_detail(problem, prefix)
    return SerializationError(execution_id, step, value_type, detail)


def refusal_detail(problem: _Problem, prefix: str = "") -> tuple[str, str]:
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
    return type_name(value), detail


def nesting_detail(value: Any) -> str:
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


def type_name(value: Any) -> str:
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
        problem = scan(value)  # first: pydantic would turn these into null / base64 with warnings
        if problem is not None:
            raise UnstorableValueError(*refusal_detail(problem))
        try:
            data = self._json_codec().dump(tp, value)
        except (PydanticSerializationError, ValueError, RecursionError) as exc:
            text = str(exc)
            if isinstance(exc, RecursionError) or "depth exceeded" in text or "Circular reference" in text:
                raise UnstorableValueError(type_name(_payload(value)), nesting_detail(value)) from exc
            raise
        if _is_model_response(value):
            _drop_defaults(value, data)
        return data

    def load(self, tp: Any, payload: Any) -> Any:
        """Rebuild the value from its JSON data (`JSON_CODEC.load`)."""
        return self._json_codec().load(tp, payload)


_MODEL_RESPONSE: Any = None
_SCALAR_DEFAULTS = (type(None), int, float, bool)


def _is_model_response(value: Any) -> bool:
    global _MODEL_RESPONSE
    if _MODEL_RESPONSE is None:
        from pydantic_ai.messages import ModelResponse

        _MODEL_RESPONSE = ModelResponse
    return isinstance(value, _MODEL_RESPONSE)


def _drop_defaults(value: Any, data: Any) -> None:
    """Remove from `data` (the JSON dump of `value`) the fields that hold their `None`/number default.

    Only for model responses (pydantic-ai's own dataclasses), never for tool results: a stored model
    response is then about half its size (most of its fields are `None` or `0`), which keeps a
    journal entry inside one SQLite page. Loading fills the dropped fields with the same defaults, so
    the rebuilt response equals the one the model returned; records with every field stay readable.
    A field is dropped only when its declared default is a plain `None`, number or bool, the value
    is exactly that default (same type) and the dump wrote it under the field's own name; fields
    with a factory or a `Field(...)` default, strings (discriminators such as `part_kind`) and the
    contents of dicts are kept as they are.
    """
    kind = type(value)
    if type(data) is dict:
        fields = _DEFAULTS.get(kind)
        if fields is None:
            fields = _defaults_of(kind)
        for name, default in fields:
            if name not in data:
                continue
            item = getattr(value, name, None)
            dumped = data[name]
            if (
                default is not _NESTED
                and type(item) is type(default)
                and item == default
                and type(dumped) is type(default)
                and dumped == default
            ):
                del data[name]
            elif type(dumped) is dict or type(dumped) is list:
                _drop_defaults(item, dumped)
    elif type(data) is list and (kind is list or kind is tuple) and len(value) == len(data):
        for item, dumped in zip(value, data, strict=True):
            _drop_defaults(item, dumped)


_NESTED: Any = object()
"""Marks a field without a plain scalar default: never dropped, only searched for nested fields."""
_DEFAULTS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _defaults_of(kind: type) -> tuple[tuple[str, Any], ...]:
    """Each field of dataclass `kind` with its plain `None`/number/bool default (or `_NESTED`), cached.

    Other types (dicts of arguments, details) have no fields to drop: an empty tuple, cached too.
    """
    fields = (
        tuple(
            (f.name, f.default if type(f.default) in _SCALAR_DEFAULTS else _NESTED)
            for f in dataclasses.fields(kind)
        )
        if dataclasses.is_dataclass(kind)
        else ()
    )
    if len(_DEFAULTS) < 4096:
        _DEFAULTS[kind] = fields
    return fields


JOURNAL_CODEC = JournalCodec()
"""The codec `PerdureDurability` gives pydantic-ai."""


def _payload(value: Any) -> Any:
    """The user's value inside pydantic-ai's tool-return wrapper, when there is one."""
    if dataclasses.is_dataclass(value) and type(value).__name__ == "_ToolReturn":
        return getattr(value, "result", value)
    return value
