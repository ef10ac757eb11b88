"""`python -m perdure.cli ...`: the `perdure` command without its console script.

Tests start the CLI this way (a subprocess with the test's interpreter and `PYTHONPATH`), and it
works wherever the package is importable, even where the `perdure` entry point is not installed.
"""

from __future__ import annotations

from . import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
