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

from .._redact import mask_url
from ..errors import StorageConfigurationError, UserError
from .base import DurableExecutionStorage

__all__ = ["mask_url", "storage_from_url"]

_Builder = Callable[[str, str, dict[str, str], dict[str, Any]], DurableExecutionStorage]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _take(url: str, query: dict[str, str], allowed: dict[str, str]) -> dict[str, Any]:
    """Map query parameters to constructor keywords, refusing unknown ones (typos fail loudly)."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise StorageConfigurationError(
            f"Unknown parameter(s) {', '.join(unknown)} in storage URL {mask_url(url)!r}; "
            f"supported: {', '.join(sorted(allowed)) or 'none'}."
        )
    taken: dict[str, Any] = {}
    for name, value in query.items():
        keyword = allowed[name]
        if keyword in taken:
            aliases = sorted(n for n in query if allowed[n] == keyword)
            raise StorageConfigurationError(
                f"Parameters {' and '.join(aliases)} both set {keyword} in storage URL {mask_url(url)!r}; "
                f"give one of them."
            )
        taken[keyword] = value
    return taken


def _memory(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .memory import InMemoryDurableStorage

    _take(url, query, {})
    if path.strip("/") or options:
        raise StorageConfigurationError(
            f"memory:// takes no path or options, got {mask_url(url)!r} with {sorted(options)}."
        )
    return InMemoryDurableStorage()


def _file(url: str, path: str, query: dict[str, str], options: dict[str, Any]) -> DurableExecutionStorage:
    from .file import FileDurableStorage

    kwargs: dict[str, Any] = _take(url, query, {"fsync": "fsync", "lock_timeout": "lock_timeout"})
    if "lock_timeout" in kwargs:
        try:
            kwargs["lock_timeout"] = float(kwargs["lock_timeout"])
        except ValueError as exc:
            raise StorageConfigurationError(
                f"lock_timeout must be a number of seconds in storage URL {mask_url(url)!r}."
            ) from exc
    if "fsync" in kwargs:
        flag = str(kwargs["fsync"]).lower()
        if flag not in _TRUE | _FALSE:
            raise StorageConfigurationError(f"fsync must be true or false in storage URL {mask_url(url)!r}.")
        kwargs["fsync"] = flag in _TRUE
    if not path:
        raise StorageConfigurationError(
            f"file:// needs a directory, e.g. file:///var/lib/app/states or file://./states; got "
            f"{mask_url(url)!r}."
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
            raise StorageConfigurationError(
                f"busy_timeout_ms must be an integer in storage URL {mask_url(url)!r}."
            ) from exc
    # SQLAlchemy convention: sqlite:///rel.db is relative, sqlite:////abs.db is absolute.
    db_path = path[1:] if path.startswith("/") else path
    if not db_path:
        raise StorageConfigurationError(
            f"sqlite:// needs a database file, e.g. sqlite:///durable.db; got {mask_url(url)!r}."
        )
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


def _configured(scheme: str, query: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    """`options` plus the defaults perdure's settings give where neither they nor the URL say.

    `PERDURE_COMPRESSION` / `PERDURE_COMPRESSION_MIN_BYTES` become the `codec=` of every backend
    but memory; `PERDURE_TTL` the `ttl=` of Redis.
    """
    from ..codec import Codec
    from ..settings import settings

    configured = settings()
    extra: dict[str, Any] = {}
    codec = configured.codec_options()
    if codec and scheme != "memory" and "codec" not in options:
        extra["codec"] = Codec(**codec)
    if configured.ttl is not None and scheme in ("redis", "rediss") and "ttl" not in query | options:
        extra["ttl"] = configured.ttl
    return {**extra, **options}


def storage_from_url(url: str, **options: Any) -> DurableExecutionStorage:
    """Return the storage backend a URL names.

    Args:
        url: `memory://`, `file://DIR`, `sqlite:///PATH?table=NAME&synchronous=NORMAL`,
            `redis://[:password@]host:port/db?prefix=P&ttl=S` or
            `postgresql://user@host:port/db?table_prefix=P&synchronous_commit=remote_apply`.
        **options: Extra keyword arguments for the backend's constructor (e.g. `codec=`); they
            override parameters given in the URL. Without `codec=`, the codec follows
            `PERDURE_COMPRESSION` and `PERDURE_COMPRESSION_MIN_BYTES`; a Redis URL without `ttl`
            takes `PERDURE_TTL` (see `perdure.settings`).

    Raises:
        StorageConfigurationError: The scheme is unknown, the URL is malformed (brackets, a NUL
            character), a parameter is unknown or given twice. Messages show the URL with its
            password replaced by `***`.

    """
    if not isinstance(url, str) or "://" not in url:
        raise StorageConfigurationError(
            f"Not a storage URL: {mask_url(url)!r}. Use one of: {', '.join(f'{s}://' for s in _BUILDERS)}."
        )
    shown = mask_url(url)
    scheme = url.split("://", 1)[0].lower()
    builder = _BUILDERS.get(scheme)
    if builder is None:
        raise StorageConfigurationError(
            f"Unsupported storage URL scheme {scheme!r} in {shown!r}. Supported schemes: "
            f"{', '.join(f'{s}://' for s in _BUILDERS)}."
        )
    if "\x00" in url or "\x00" in unquote(url):
        raise StorageConfigurationError(f"Storage URL {shown!r} contains a NUL character (%00); remove it.")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StorageConfigurationError(
            f"Malformed storage URL {shown!r}: {exc} (a '[' or ']' outside an IPv6 address?). "
            f"Percent-encode special characters, e.g. '[' as %5B."
        ) from exc
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise StorageConfigurationError(f"Malformed query string in storage URL {shown!r}: {exc}.") from exc
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StorageConfigurationError(
            f"Parameter(s) {', '.join(repeated)} given more than once in storage URL {shown!r}; give each "
            f"parameter once."
        )
    path = unquote(parts.netloc + parts.path)
    options = _configured(scheme, dict(pairs), options)
    try:
        return builder(url, path, dict(pairs), options)
    except UserError as exc:
        if shown == url or url not in exc.message:
            raise
        # A backend quoted the URL with its password: say the same without it.
        raise StorageConfigurationError(exc.message.replace(url, shown)) from None
