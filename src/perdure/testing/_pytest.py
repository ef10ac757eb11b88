"""The kit as a parametrized pytest test: one test id per property. pytest is imported when called."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._sync import run_sync
from ..errors import UserError
from ._checks import RawWriter, Reopen, StorageFactory
from ._runner import DEFAULT_LEASE_TTL, DEFAULT_TIMEOUT, run_property, select_properties

__all__ = ["pytest_suite"]


def pytest_suite(
    factory: StorageFactory | str,
    *,
    raw_writer: RawWriter | None = None,
    reopen: Reopen | None = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    xfail: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> Callable[..., None]:
    """A pytest test function checking one property per test id; assign it to a `test_*` name.

    `factory` is a storage factory, or the name of a fixture that returns one (so the factory can
    use `tmp_path`, a server fixture, or a parametrized fixture to check several backends). `xfail`
    maps property names to a reason: those tests are expected to fail (strictly: a pass is an error).
    The other arguments are those of `check_storage`::

        from perdure.testing import pytest_suite
        test_my_storage = pytest_suite(MyStorage, raw_writer=my_raw_writer)
    """
    import pytest  # only here: perdure.testing imports without pytest installed

    names = select_properties(only, skip)
    expected_failures = dict(xfail or {})
    unknown = sorted(set(expected_failures) - set(names))
    if unknown:
        raise UserError(f"xfail names properties that are not checked here: {', '.join(unknown)}.")
    params = [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(reason=expected_failures[name], strict=True)]
            if name in expected_failures
            else [],
        )
        for name in names
    ]

    def test_storage_conformance(storage_property: str, **fixtures: Any) -> None:
        make: StorageFactory = fixtures[factory] if isinstance(factory, str) else factory
        result = run_sync(
            run_property(
                storage_property,
                make,
                raw_writer=raw_writer,
                reopen=reopen,
                timeout=timeout,
                lease_ttl=lease_ttl,
            )
        )
        if result.outcome == "skipped":
            pytest.skip(f"{storage_property}: {result.message}")
        if result.outcome == "failed":
            details = f"\n\n{result.details}" if result.details else ""
            pytest.fail(f"{storage_property}: {result.message}{details}", pytrace=False)

    # pytest passes the fixtures a test names in its signature: name the factory fixture, if any.
    arguments = [inspect.Parameter("storage_property", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if isinstance(factory, str):
        arguments.append(inspect.Parameter(factory, inspect.Parameter.KEYWORD_ONLY))
    test_storage_conformance.__signature__ = inspect.Signature(arguments)  # type: ignore[attr-defined]
    test_storage_conformance = pytest.mark.parametrize("storage_property", params)(test_storage_conformance)
    test_storage_conformance.__doc__ = "One property of the perdure storage contract (perdure.testing)."
    return test_storage_conformance
