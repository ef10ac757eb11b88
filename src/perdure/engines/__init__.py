"""Distributed engines: the same perdure agents on Temporal, DBOS or Prefect.

`PERDURE_ENGINE` (or `perdure.toml`'s `engine`, or `PerdureDurability(engine=...)`) chooses what
runs an agent: `embedded` (perdure's own journal, the default), `temporal`, `dbos` or `prefect`.
Each engine lives in its own module, imported only when chosen, and needs its extra
(`pip install 'perdure[temporal]'`, ...).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from typing import Any

from ..errors import UserError
from ._base import ENGINE_NAMES, Engine, EngineName, EngineOptions, EngineRun

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "EngineName",
    "EngineOptions",
    "EngineRun",
    "get_engine",
    "resolve_engine_name",
]

# engine name -> (module, class, the distribution its extra installs, import name of that distribution)
_ADAPTERS: dict[str, tuple[str, str, str]] = {
    "temporal": ("perdure.engines.temporal", "TemporalEngine", "temporalio"),
    "dbos": ("perdure.engines.dbos", "DBOSEngine", "dbos"),
    "prefect": ("perdure.engines.prefect", "PrefectEngine", "prefect"),
}

_engines: dict[tuple[str, EngineOptions], Engine] = {}
_lock = threading.Lock()


def resolve_engine_name(engine: str | None = None) -> str:
    """The engine to use: the argument, else the `engine` setting (`PERDURE_ENGINE`), else embedded."""
    if engine is None:
        from ..settings import settings

        engine = settings().engine
    name = engine.strip().lower()
    if name not in ENGINE_NAMES:
        raise UserError(
            f"Unknown perdure engine {engine!r}: choose one of {', '.join(ENGINE_NAMES)} "
            "(argument engine=, setting PERDURE_ENGINE or perdure.toml's engine)."
        )
    return name


def get_engine(engine: str | None = None, options: EngineOptions | None = None) -> Engine:
    """The process's adapter of a distributed engine (one per name and options).

    Raises:
        UserError: `embedded` (it has no adapter: `DurableExecution` is that engine), an unknown
            name, or an engine whose extra is not installed (the message names the extra).

    """
    name = resolve_engine_name(engine)
    if name == "embedded":
        raise UserError("The embedded engine has no adapter: DurableExecution runs it directly.")
    module_name, class_name, package = _ADAPTERS[name]
    if importlib.util.find_spec(package) is None:
        raise UserError(
            f"The {name} engine needs the {package!r} package: install it with "
            f"`pip install 'perdure[{name}]'`."
        )
    options = options or EngineOptions.from_settings()
    key = (name, options)
    with _lock:
        existing = _engines.get(key)
        if existing is not None:
            return existing
        adapter_class: Any = getattr(importlib.import_module(module_name), class_name)
        adapter: Engine = adapter_class(options)
        _engines[key] = adapter
        return adapter


def forget_engines() -> None:
    """Drop the cached adapters (tests that start a fresh engine per test)."""
    with _lock:
        _engines.clear()
