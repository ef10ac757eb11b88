"""Run (or join) one refund execution on whatever engine the settings choose: `python run.py ID`."""

from __future__ import annotations

import asyncio
import sys

from perdure.durable import DurableExecution


async def main(execution_id: str) -> None:
    import app  # builds the agent: it binds to the configured engine now

    run = await DurableExecution(execution_id=execution_id, auto_cleanup=False).run_agent_async(
        app.agent, "Refund order 42"
    )
    print(run.output)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
