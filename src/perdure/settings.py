"""perdure's settings: one object read from arguments, the environment and TOML files.

Every setting has an environment variable `PERDURE_<NAME>` and a key `<name>` in a `perdure.toml`
file or in the `[tool.perdure]` table of a `pyproject.toml`, both looked up in the current directory
when the settings are loaded. Precedence, highest first: explicit arguments (`load_settings(...)`,
or an argument such as `DurableExecution(storage=...)` that makes the setting irrelevant), the
environment, `perdure.toml`, `pyproject.toml`, the defaults.

    storage_url                default storage of `DurableExecution()`, the CLI and the worker
    compression                `zstd` or `none`: default codec of storages built from a URL
    compression_min_bytes      payloads of at least this many bytes are compressed (with zstd)
    retention_days             days `cleanup_old_executions()`, `perdure cleanup` and the worker keep
    retention_keep             statuses those cleanups never delete (comma-separated, e.g. `failed,paused`)
    ttl                        seconds before Redis records expire; completed executions' expiry (worker)
    secret_key                 key signing resume tokens (at least 16 bytes)
    lease_ttl                  default lease seconds of an execution
    log_level                  level of the `perdure` logger set by the CLI and the worker
    engine                     `embedded` (default), `temporal`, `dbos` or `prefect`: what runs agents
    temporal_address           HOST:PORT of the Temporal frontend (engine `temporal`)
    temporal_namespace         Temporal namespace (engine `temporal`)
    temporal_task_queue        Temporal task queue of perdure's workflows (engine `temporal`)
    temporal_activity_timeout  seconds an activity may run per attempt (engine `temporal`, default 60)
    temporal_heartbeat_timeout seconds without a heartbeat before an activity is retried elsewhere
    temporal_sticky_timeout    seconds a workflow task waits for the worker that ran it last
    temporal_max_history       history events after which a run continues as new (engine `temporal`)
    dbos_database_url          DBOS system database, `sqlite:///...` or `postgresql://...` (engine `dbos`)
    dbos_queue                 DBOS queue that clients enqueue runs on and workers take them from

`settings()` returns the cached settings of this process (`settings(reload=True)` reads them
again, `reset_settings()` makes the next call read them); `describe()` lists each setting's
effective value (secrets masked) and where it came from, as `perdure config` prints it. An
invalid value raises `UserError` naming the setting, its environment variable and where the value
came from.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import UserError
from .records import ExecutionStatus

__all__ = [
    "ENV_PREFIX",
    "PERDURE_TOML",
    "PerdureSettings",
    "SettingRow",
    "describe",
    "apply_log_level",
    "load_settings",
    "reset_settings",
    "settings",
]

ENV_PREFIX = "PERDURE_"
"""Prefix of every setting's environment variable (`PERDURE_STORAGE_URL`, ...)."""
PERDURE_TOML = "perdure.toml"
"""Name of perdure's own settings file, looked up in the current directory."""

_MIN_KEY_BYTES = 16  # perdure._tokens.MIN_KEY_BYTES (not imported: _tokens reads these settings)
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

ARGUMENT = "argument"
ENVIRONMENT = "environment"
PYPROJECT = "pyproject.toml"
DEFAULT = "default"


class PerdureSettings(BaseSettings):
    """perdure's settings; construct it with `load_settings` to get errors naming the setting."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        pyproject_toml_table_header=("tool", "perdure"),
    )

    storage_url: str | None = Field(
        default=None, description="Default storage URL of DurableExecution(), the CLI and the worker."
    )
    compression: Literal["zstd", "none"] = Field(
        default="none", description="Codec of storages built from a URL: zstd or none."
    )
    compression_min_bytes: int = Field(
        default=1024, ge=0, description="Payloads of at least this many bytes are compressed."
    )
    retention_days: float | None = Field(
        default=None, gt=0, description="Days to keep executions (cleanup default; worker cleanup)."
    )
    retention_keep: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Statuses cleanups never delete, comma-separated (e.g. failed,paused).",
    )
    ttl: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Seconds before Redis records expire (default ttl of redis:// URLs); perdure worker "
            "deletes completed executions this long after they completed."
        ),
    )
    secret_key: SecretStr | None = Field(default=None, description="Key signing resume tokens.")
    lease_ttl: float = Field(default=30.0, gt=0, description="Default lease seconds of an execution.")
    log_level: str | None = Field(
        default=None, description="Level of the perdure logger (DEBUG, INFO, WARNING, ERROR)."
    )

    engine: Literal["embedded", "temporal", "dbos", "prefect"] = Field(
        default="embedded",
        description="What runs agents: embedded (perdure's own journal), temporal, dbos or prefect.",
    )
    temporal_address: str = Field(
        default="127.0.0.1:7233", description="HOST:PORT of the Temporal frontend (engine temporal)."
    )
    temporal_namespace: str = Field(default="default", description="Temporal namespace (engine temporal).")
    temporal_task_queue: str = Field(
        default="perdure", description="Task queue of perdure's Temporal workflows (engine temporal)."
    )
    temporal_activity_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds an activity may run per attempt [default 60] (engine temporal).",
    )
    temporal_heartbeat_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds without heartbeat before an activity is retried elsewhere (engine temporal).",
    )
    temporal_sticky_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a workflow task waits for its last worker [Temporal: 10] (engine temporal).",
    )
    temporal_max_history: int | None = Field(
        default=None,
        gt=0,
        description="History events after which a run continues as new [when Temporal suggests] (temporal).",
    )
    dbos_database_url: str | None = Field(
        default=None,
        description="DBOS system database URL, sqlite:///... or postgresql://... (engine dbos).",
    )

    dbos_queue: str | None = Field(
        default=None,
        description="DBOS queue clients enqueue runs on; perdure worker --engine dbos runs them (dbos).",
    )

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("storage_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and "://" not in value:
            raise ValueError("expected a storage URL such as sqlite:///durable.db or file://./states")
        return value

    @field_validator("compression", "engine", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("compression")
    @classmethod
    def _check_zstd(cls, value: str) -> str:
        if value == "zstd" and importlib.util.find_spec("zstandard") is None:
            raise ValueError("zstd compression needs the 'zstandard' package: pip install perdure[zstd]")
        return value

    @field_validator("retention_keep", mode="before")
    @classmethod
    def _check_keep(cls, value: Any) -> Any:
        return keep_statuses(value)

    @field_validator("secret_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        size = len(value.get_secret_value().encode("utf-8"))
        if size < _MIN_KEY_BYTES:
            raise ValueError(f"must be at least {_MIN_KEY_BYTES} bytes, got {size}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        level = value.strip().upper()
        if level not in _LEVELS:
            raise ValueError(f"expected one of {', '.join(_LEVELS)}")
        return level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then `perdure.toml`, then `[tool.perdure]` of pyproject."""
        return tuple(source for _, source in _sources(settings_cls, init_settings, env_settings))

    @property
    def origins(self) -> dict[str, str]:
        """Where each setting came from: argument, environment, perdure.toml, pyproject.toml, default."""
        return {name: self._origins.get(name, DEFAULT) for name in type(self).model_fields}

    def codec_options(self) -> dict[str, Any]:
        """Keyword arguments of `perdure.codec.Codec` for these compression settings."""
        if self.compression == "zstd":
            # Codec compresses payloads longer than `compress_above`: "at least min bytes".
            return {"compress_above": self.compression_min_bytes - 1}
        return {}


def _sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> list[tuple[str, PydanticBaseSettingsSource]]:
    """The sources in precedence order, each with the name `describe` shows for it."""
    own, project = Path.cwd() / PERDURE_TOML, Path.cwd() / "pyproject.toml"
    try:
        own_source = TomlConfigSettingsSource(settings_cls, toml_file=own)
        project_source = PyprojectTomlConfigSettingsSource(settings_cls, toml_file=project)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(
            f"Cannot read perdure's settings: invalid TOML in {own} or {project}: {exc}."
        ) from None
    return [
        (ARGUMENT, init_settings),
        (ENVIRONMENT, env_settings),
        (PERDURE_TOML, own_source),
        (PYPROJECT, project_source),
    ]


def keep_statuses(value: Any) -> tuple[str, ...]:
    """Statuses to keep from `failed,paused`, a list of names or `ExecutionStatus`es; sorted, unique.

    None or empty keeps nothing. `ValueError` names an unknown status and lists the known ones.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise ValueError(f"expected statuses such as 'failed,paused', got {value!r}")
    known = [s.value for s in ExecutionStatus]
    kept: set[str] = set()
    for item in items:
        name = item.value if isinstance(item, ExecutionStatus) else str(item).strip().lower()
        if not name:
            continue
        if name not in known:
            raise ValueError(f"unknown status {name!r}; expected some of {', '.join(known)}")
        kept.add(name)
    return tuple(sorted(kept))


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**arguments: Any) -> PerdureSettings:
    """Read the settings now: `arguments` (field names) over the environment, files and defaults.

    Raises:
        UserError: A value is invalid, a file is not valid TOML, or a file names an unknown setting;
            the message names the setting, its environment variable and where the value came from.

    """
    origins: dict[str, str] = {}
    try:
        sources = _sources(
            PerdureSettings,
            InitSettingsSource(PerdureSettings, init_kwargs=arguments),
            EnvSettingsSource(PerdureSettings),
        )
        for origin, source in reversed(sources):  # lowest first, so higher sources overwrite
            origins.update(dict.fromkeys(source(), origin))
        loaded = PerdureSettings(**arguments)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            origin = origins.get(field, DEFAULT)
            if error["type"] == "extra_forbidden":
                known = ", ".join(PerdureSettings.model_fields)
                problems.append(f"unknown setting {field!r} in {origin} (known: {known})")
                continue
            shown = "***" if field == "secret_key" else repr(error.get("input"))
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{_env_name(field)} ({field}, from {origin}) = {shown}: {message}")
        raise UserError("Invalid perdure setting: " + "; ".join(problems) + ".") from None
    loaded._origins = origins
    return loaded


_lock = threading.Lock()
_cached: PerdureSettings | None = None


def settings(*, reload: bool = False) -> PerdureSettings:
    """The settings of this process, read on first use (or again with `reload=True`).

    Raises:
        UserError: A setting is invalid (see `load_settings`).

    """
    global _cached
    with _lock:
        if _cached is None or reload:
            _cached = None  # a failed reload must not leave the old settings looking current
            _cached = load_settings()
        return _cached


def reset_settings() -> None:
    """Forget the cached settings: the next `settings()` reads the environment and files again."""
    global _cached
    with _lock:
        _cached = None


@dataclass(frozen=True, slots=True)
class SettingRow:
    """One line of `perdure config`: a setting, its effective value (secrets masked), its origin."""

    name: str
    env: str
    value: str | None
    """The effective value as text (secrets `********`, URL passwords `***`); None when unset."""
    source: str


def _shown(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return "********"
    if name == "storage_url":
        from ._redact import mask_url

        return mask_url(str(value))
    if isinstance(value, tuple):
        return ",".join(value) or None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe(current: PerdureSettings | None = None) -> list[SettingRow]:
    """Every setting with its effective value (secrets and URL passwords masked) and its origin.

    Args:
        current: The settings to describe; the process's `settings()` when omitted.

    """
    current = current if current is not None else settings()
    origins = current.origins
    return [
        SettingRow(name, _env_name(name), _shown(name, getattr(current, name)), origins[name])
        for name in type(current).model_fields
    ]


def apply_log_level(current: PerdureSettings | None = None) -> None:
    """Set the `perdure` logger's level from `log_level`, when it is set."""
    level = (current if current is not None else settings()).log_level
    if level is not None:
        logging.getLogger("perdure").setLevel(level)
