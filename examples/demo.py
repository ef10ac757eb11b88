"""`make demo`: a durable agent run that is killed, fails, and resumes in new processes.

The demo itself ships in the package (`perdure._demo`, also run by `perdure demo`); this script
runs it from a source checkout with its state in `demo_state/` at the repository root:

1. A child process starts a four-tool agent run on embedded SQLite and is SIGKILLed while its
   fourth model request is in flight.
2. The saved checkpoint is shown: last step, status, journal.
3. A second process resumes it; the journal replays the finished steps, then a tool fails with a
   downstream outage: the checkpoint records the failed step and its error.
4. A third process resumes again and completes. The demo prints what each process replayed from
   the journal and what it executed, against an uninterrupted run.
Offline: the model is perdure's scripted stand-in unless PERDURE_MODEL names a real one.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from perdure._demo import run_demo  # noqa: E402

STATE = ROOT / "demo_state"


def main() -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    return run_demo(STATE)


if __name__ == "__main__":
    sys.exit(main())
