"""The examples run offline as documented (`make demo` runs `examples/demo.py` itself)."""

from __future__ import annotations

import os
import subprocess
import sys

from support.paths import ROOT


def test_monitor_example_prints_events_summaries_and_the_alert() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "PERDURE_STORAGE_URL"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "monitor.py")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    live = out.split("== execution_summary")[0]
    # live events of all three executions, from another process
    assert sorted(line.split()[0] for line in live.splitlines() if "execution_started" in line) == [
        "report-east",
        "report-north",
        "report-south",
    ]
    assert live.count("unit_completed       tool:fetch_sales") == 3
    assert "execution_failed     tool:summarize ConnectionError: the east warehouse API is down" in live
    assert live.count("execution_completed") == 2
    assert "report-north  completed 5/5 units (100%)" in out
    assert "report-south  completed 5/5 units (100%)" in out
    assert "report-east   failed    3/5 units (60%)" in out
    assert "ALERT failed>=1/10m: 1 execution(s) failed: report-east" in out
