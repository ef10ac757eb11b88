"""A JSON serializer for DBOS's system database, so perdure never stores or loads pickle.

DBOS's default serializer pickles every workflow input, step output, event, message and error, and
unpickles them on recovery: reading a row someone else wrote would run arbitrary code. perdure's DBOS
engine gives DBOS this serializer instead. Values are JSON; the few non-JSON values that DBOS and
pydantic-ai's DBOS steps produce are tagged so they come back as the same type:

- pydantic-ai's `ModelResponse` (the output of model-request steps), through pydantic-ai's own
  message adapter, so a replayed response is the recorded one;
- `datetime`, `bytes`, `tuple`;
- exceptions: by type name and message, rebuilt only for perdure's errors, pydantic-ai's exceptions
  and built-in exceptions; any other type comes back as `RecordedStepError` carrying the type name.

Anything else (a pydantic model or dataclass a tool returned) is stored as its JSON form
(`pydantic_core.to_jsonable_python`); a replay returns that JSON form, which is what the model was
shown anyway. DBOS itself still unpickles a record marked `py_pickle` (written by a DBOS app with the
default serializer), so point the engine only at a system database that perdure's engine writes.
"""

from __future__ import annotations

import base64
import builtins
import json
from datetime import datetime
from typing import Any

from dbos._serialization import Serializer  # public base class, re-exported nowhere else
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelResponse
from pydantic_core import to_jsonable_python

__all__ = ["PerdureJSONSerializer", "RecordedStepError"]

_TAG = "__perdure_dbos__"


class RecordedStepError(RuntimeError):
    """An error recorded by DBOS whose type perdure does not rebuild (it is never imported by name).

    Attributes:
        type_name: Qualified name of the original exception type.

    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.error_message = message


def _qualified(value: BaseException) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [_encode(item) for item in value]}
    if isinstance(value, datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, ModelResponse):
        data = json.loads(ModelMessagesTypeAdapter.dump_json([value]))
        return {_TAG: "model_response", "v": data}
    if isinstance(value, BaseException):
        return {
            _TAG: "error",
            "type": _qualified(value),
            "message": str(value),
            "state": _error_state(value),
        }
    return to_jsonable_python(value, fallback=repr)


def _error_state(value: BaseException) -> dict[str, Any]:
    """Fields of perdure errors (execution id, tool name, ...) as JSON; other errors carry none."""
    from ..errors import PerdureError

    if not isinstance(value, PerdureError):
        return {}
    return {key: to_jsonable_python(item, fallback=repr) for key, item in vars(value).items()}


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {key: _decode(item) for key, item in value.items()}
    if tag == "tuple":
        return tuple(_decode(item) for item in value["v"])
    if tag == "datetime":
        return datetime.fromisoformat(value["v"])
    if tag == "bytes":
        return base64.b64decode(value["v"])
    if tag == "model_response":
        return ModelMessagesTypeAdapter.validate_python(value["v"])[0]
    if tag == "error":
        return _rebuild_error(value["type"], value["message"], value.get("state") or {})
    raise ValueError(f"Unknown perdure DBOS record tag {tag!r}")


def _rebuild_error(type_name: str, message: str, state: dict[str, Any]) -> BaseException:
    """Rebuild an exception from an allow-list of modules; never import a name read from the database."""
    from .. import errors as perdure_errors
    from . import _dbos_tools

    module, _, name = type_name.rpartition(".")
    if module in (perdure_errors.__name__, _dbos_tools.__name__):
        source: Any = perdure_errors if module == perdure_errors.__name__ else _dbos_tools
        kind = getattr(source, name, None)
        if isinstance(kind, type) and issubclass(kind, perdure_errors.PerdureError):
            err = kind.__new__(kind)
            Exception.__init__(err, message)
            err.__dict__.update(state)
            err.message = message
            return err
    if module == "pydantic_ai.exceptions":
        import pydantic_ai.exceptions as pai_errors

        kind = getattr(pai_errors, name, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                return kind(message)
            except TypeError:
                pass
    if module == "builtins":
        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            return kind(message)
    return RecordedStepError(type_name, message)


class PerdureJSONSerializer(Serializer):
    """DBOS `Serializer` storing JSON (with a few type tags) instead of pickle."""

    def serialize(self, data: Any) -> str:
        """JSON text of `data` (see the module docstring for the tagged types)."""
        return json.dumps(_encode(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def deserialize(self, serialized_data: str) -> Any:
        """The value `serialize` stored, rebuilt without importing names read from the database."""
        return _decode(json.loads(serialized_data))

    def name(self) -> str:
        """Stored with every record, so DBOS refuses records another serializer wrote."""
        return "perdure_json"
