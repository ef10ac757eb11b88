"""The crash-and-resume demo of `perdure demo` and `make demo`, shipped inside the package.

A four-tool agent run on embedded SQLite is SIGKILLed mid-run in one process, resumed in a second
that hits a downstream failure, and completed by a third; the demo prints what each process
replayed from the journal and what it executed. It runs offline (perdure's scripted stand-in for a
model) unless `PERDURE_MODEL` names a real one.

Modules: `agent` (the demo's agent and its tools), `child` (`python -m perdure._demo.child`, the
entry of each child process; it imports `agent`, so the tools are recorded as
`perdure._demo.agent:<name>` and any process that imports the package finds them again) and `run`
(the parent that starts the children and prints the checkpoint and the figures). Private: the
output is for people, and may change.
"""

from __future__ import annotations

from .run import run_demo

__all__ = ["run_demo"]
