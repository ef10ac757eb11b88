"""`python -m perdure._demo.child start|resume DB_PATH EXECUTION_ID`: one process of the demo.

The agent lives in `perdure._demo.agent`, imported under that name (not run as `__main__`), so its
tools are recorded as `perdure._demo.agent:<name>` and the resuming process finds them again.
"""

from __future__ import annotations

import sys

from perdure._demo.agent import main

__all__: list[str] = []

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("start", "resume"):
        sys.exit("usage: python -m perdure._demo.child start|resume DB_PATH EXECUTION_ID")
    main(sys.argv[1], sys.argv[2], sys.argv[3])
