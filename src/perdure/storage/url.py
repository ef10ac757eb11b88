"""Build a storage backend from a URL, so deployments choose storage by configuration alone.

Supported: `memory://`, `file://DIR` (`file:///abs/dir`, `file://./rel/dir`), `sqlite:///rel.db` and
`sqlite:////abs/path.db` (the SQLAlchemy convention) with `?table=NAME&synchronous=NORMAL`,
`redis://` / `rediss://` (see `RedisDurableStorage.from_url`) and `postgresql://` / `postgres://`
(see `PostgresDurableStorage.from_url`). The server backends import their client lazily.
Each scheme maps to a builder in `_BUILDERS`; a new backend adds one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import UserError
from .base import DurableExecutionStorage

__all__ = ["storage_from_url"]

_Builder = Callable[[str, str, dict[str, str], dict[str, Any]], DurableExecutionStorage]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _take(url: str, query: dict[str, str], allowed: dict[str, str]) -> dict[str, Any]:
    """Map query parameters to constructor keywords, refusing unknown ones (typos fail loudly)."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise UserError(
            f"Unknown parameter(s) {', '.join(unknown)} in storage URL {url!r}; "
            f"supported: {', '.join(sorted(allowed)) or 'none'}."
        )
    return {allowed[name]: value for name, value in query.items()}


def _memory(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .memory import InMemoryDurableStorage

    _take(url, query, {})
    if path.strip("/") or options:
        raise UserError(f"memory:// takes no path or options, got {url!r} with {sorted(options)}.")
    return InMemoryDurableStorage()


def _file(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .file import FileDurableStorage

    kwargs: dict[str, Any] = _take(url, query, {"fsync": "fsync"})
    if "fsync" in kwargs:
        flag = str(kwargs["fsync"]).lower()
        if flag not in _TRUE | _FALSE:
            raise UserError(f"fsync must be true or false in storage URL {url!r}.")
        kwargs["fsync"] = flag in _TRUE
    if not path:
        raise UserError(
            f"file:// needs a directory, e.g. file:///var/lib/app/states or file://./states; got {url!r}."
        )
    return FileDurableStorage(path, **{**kwargs, **options})


def _sqlite(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .sqlite import SQLiteDurableStorage

    kwargs: dict[str, Any] = _take(
        url,
        query,
        {
            "table": "table_name",
            "table_name": "table_name",
            "synchronous": "synchronous",
            "busy_timeout_ms": "busy_timeout_ms",
        },
    )
    if "busy_timeout_ms" in kwargs:
        try:
            kwargs["busy_timeout_ms"] = int(kwargs["busy_timeout_ms"])
        except ValueError as exc:
            raise UserError(f"busy_timeout_ms must be an integer in storage URL {url!r}.") from exc
    # SQLAlchemy convention: sqlite:///rel.db is relative, sqlite:////abs.db is absolute.
    db_path = path[1:] if path.startswith("/") else path
    if not db_path:
        raise UserError(f"sqlite:// needs a database file, e.g. sqlite:///durable.db; got {url!r}.")
    return SQLiteDurableStorage(db_path, **{**kwargs, **options})


def _redis(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .redis import RedisDurableStorage  # raises UserError naming the `perdure[redis]` extra

    return RedisDurableStorage.from_url(url, **options)


def _postgres(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .postgres import PostgresDurableStorage  # raises UserError naming the `perdure[postgres]` extra

    return PostgresDurableStorage.from_url(url, **options)


_BUILDERS: dict[str, _Builder] = {
    "memory": _memory,
    "file": _file,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def storage_from_url(url: str, **options: Any) -> DurableExecutionStorage:
    """Return the storage backend a URL names.

    Args:
        url: `memory://`, `file://DIR`, `sqlite:///PATH?table=NAME&synchronous=NORMAL`,
            `redis://[:password@]host:port/db?prefix=P&ttl=S` or
            `postgresql://user@host:port/db?table_prefix=P`.
        **options: Extra keyword arguments for the backend's constructor (e.g. `codec=`); they
            override parameters given in the URL.

    Raises:
        UserError: The scheme is unknown, not available yet, or the URL is malformed.

    """
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"Not a storage URL: {url!r}. Use one of: {', '.join(f'{s}://' for s in _BUILDERS)}.")
    scheme = url.split("://", 1)[0].lower()
    builder = _BUILDERS.get(scheme)
    if builder is None:
        raise UserError(
            f"Unsupported storage URL scheme {scheme!r} in {url!r}. Supported schemes: "
            f"{', '.join(f'{s}://' for s in _BUILDERS)}."
        )
    parts = urlsplit(url)
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError as exc:
        raise UserError(f"Malformed query string in storage URL {url!r}: {exc}.") from exc
    path = unquote(parts.netloc + parts.path)
    return builder(url, path, query, options)
