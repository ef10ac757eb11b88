"""One of several processes racing to run the same interrupted execution (see durable/test_races.py).

`python -c "from support import race_app; race_app.main([MODE, URL, EXECUTION_ID, GO_FILE])"`: the
process imports everything, then spins until GO_FILE exists so that all racers start together, then
either resumes the execution directly (`resume`, through `DurableExecution.resume_agent`) or runs a
recovery pass (`recover`, through `DurableExecution.recover_interrupted`). The exit code says what happened.
"""

from __future__ import annotations

import os
import sys
import time

from perdure.durable import DurableExecution
from perdure.errors import ExecutionCompletedError, ExecutionLeasedError
from perdure.storage import storage_from_url
from support import worker_app

__all__ = ["COMPLETED", "LEASED", "RAN", "main"]

RAN = 0
LEASED = 3
"""Another racer held the lease: `ExecutionLeasedError` (or recovery skipped it as leased)."""
COMPLETED = 4
"""The execution was already completed when this racer got to it."""


def _wait_for(go_file: str) -> None:
    deadline = time.monotonic() + 120
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise TimeoutError(go_file)
        time.sleep(0.005)


def main(argv: list[str]) -> int:
    mode, url, execution_id, go_file = argv
    storage = storage_from_url(url)
    storage.load_state(execution_id)  # connect before the start signal
    print("ready", flush=True)
    _wait_for(go_file)
    if mode == "resume":
        durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
        try:
            durable.resume_agent(worker_app.pydantic_agent)
        except ExecutionLeasedError:
            return LEASED
        except ExecutionCompletedError:
            return COMPLETED
        return RAN
    report = DurableExecution.recover_interrupted(storage, worker_app.resolve, lease_ttl=30.0)
    print(report, report.skipped, flush=True)
    if report.recovered == [execution_id]:
        return RAN
    if report.failed or report.paused:
        return 1
    reason = report.skipped.get(execution_id, "")
    if reason.startswith("leased by"):
        return LEASED
    return COMPLETED  # not listed any more (completed) or found completed under the lease


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
