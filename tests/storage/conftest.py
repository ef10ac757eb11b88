"""Fixtures of the storage suites: `fresh_storage`, the conformance kit's store factory."""

from __future__ import annotations

from support.conformance import fresh_storage  # noqa: F401 - fixture
