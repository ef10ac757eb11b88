"""The lease contract (see storage/base.py) against every built-in backend, through the conformance kit.

The `lease.*` properties of `perdure.testing`: acquire, exclusivity, takeover on expiry, renew,
release, `steal_from` compare-and-swap, leases kept by head writes, fencing of stale writers, and
leases seen by a second instance. Leases expire after 0.3 s in the checks that wait for an expiry.
"""

from __future__ import annotations

from perdure.storage import InMemoryDurableStorage
from perdure.testing import pytest_suite
from support.conformance import IN_PROCESS_ONLY, reopen_builtin

test_lease_contract = pytest_suite("fresh_storage", reopen=reopen_builtin, only=["lease.*"])
test_memory_lease_contract = pytest_suite(InMemoryDurableStorage, only=["lease.*"], skip=IN_PROCESS_ONLY)
