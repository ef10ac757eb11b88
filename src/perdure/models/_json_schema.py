"""Just enough JSON schema for `ScriptedModel`: follow local `$ref`s, list types, check a value.

`ScriptedModel` builds tool arguments from the tools' JSON schemas and passes earlier tool results
on where they fit, so it needs to ask "which types does this schema admit" and "does this value
validate". A full validator would be a dependency for a test double; these helpers cover what
pydantic emits for tool parameters (`$defs`/`$ref`, `anyOf`/`oneOf`/`allOf`, `const`, `enum`, type
lists, `properties`/`required`/`additionalProperties`, `items`) and treat anything else as "any".
Recursion is cut at `MAX_SCHEMA_DEPTH`, so recursive models cannot loop.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_SCHEMA_DEPTH", "admitted_types", "first_type", "fits", "resolve"]

MAX_SCHEMA_DEPTH = 8
"""How deep `$ref` chains, nested checks and synthesized values may go before giving up."""


def resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """Follow local `$ref`s (`#/$defs/Name`); anything else resolves to an empty (any) schema.

    Args:
        schema: The (sub)schema to resolve; sibling keys of a `$ref` override the target's.
        root: The whole schema, where `#/...` references point.

    Returns:
        The resolved schema, `{}` for a non-local reference or a value that is not a schema.

    """
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < MAX_SCHEMA_DEPTH:
        ref: str = schema["$ref"]
        target: Any = root
        if not ref.startswith("#"):
            return {}
        for key in [segment for segment in ref.lstrip("#").split("/") if segment]:
            target = target.get(key) if isinstance(target, dict) else None
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        schema = {**target, **siblings} if isinstance(target, dict) else siblings
        seen += 1
    return schema if isinstance(schema, dict) else {}


def admitted_types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """All JSON types a schema admits (through `anyOf`/`oneOf` and type lists)."""
    schema = resolve(schema, root)
    found: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        found.add(declared)
    elif isinstance(declared, list):
        found.update(item for item in declared if isinstance(item, str))
    if "properties" in schema and not declared:
        found.add("object")
    for combinator in ("anyOf", "oneOf"):
        for option in schema.get(combinator) or []:
            found |= admitted_types(option, root)
    return found


def first_type(schema: dict[str, Any]) -> str | None:
    """The type to synthesize a value of: the declared one, the first non-null one of a type list.

    Returns:
        The type name, `"null"` for a list of only `null` (or an empty list), `None` if undeclared.

    """
    declared = schema.get("type")
    if isinstance(declared, list):
        non_null = [item for item in declared if item != "null"]
        return non_null[0] if non_null else "null"
    return declared if isinstance(declared, str) else None


def fits(schema: Any, value: Any, root: dict[str, Any], depth: int = 0) -> bool:
    """Whether `value` validates against `schema`, as far as this simple checker can tell."""
    schema = resolve(schema, root)
    if depth > MAX_SCHEMA_DEPTH:
        return False
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return any(fits(option, value, root, depth + 1) for option in schema[combinator])
    if "allOf" in schema:
        return all(fits(option, value, root, depth + 1) for option in schema["allOf"])
    declared = schema.get("type")
    kinds = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    if not kinds:
        return "properties" not in schema or _fits_object(schema, value, root, depth)
    return any(_fits_kind(kind, schema, value, root, depth) for kind in kinds)


def _fits_kind(kind: str, schema: dict[str, Any], value: Any, root: dict[str, Any], depth: int) -> bool:
    if kind == "object":
        return _fits_object(schema, value, root, depth)
    if kind == "array":
        items = schema.get("items")
        return isinstance(value, list) and (
            not isinstance(items, dict) or all(fits(items, item, root, depth + 1) for item in value)
        )
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return False


def _fits_object(schema: dict[str, Any], value: Any, root: dict[str, Any], depth: int) -> bool:
    if not isinstance(value, dict):
        return False
    properties: dict[str, Any] = schema.get("properties") or {}
    if not properties:
        return True
    if any(key not in value for key in schema.get("required") or []):
        return False
    if schema.get("additionalProperties") is False and any(key not in properties for key in value):
        return False
    return all(
        fits(properties[key], item, root, depth + 1) for key, item in value.items() if key in properties
    )
