import sys

import app  # importing app registers its @tool functions; nothing is imported from the store

if len(sys.argv) > 1:
    execution_id = sys.argv[1]
else:  # the newest execution still in progress ("success" = in progress or interrupted)
    execution_id = app.storage.list_executions(status="success", limit=1)[0].execution_id

out = app.agent.continue_durable(execution_id, app.storage, return_output=True)
print(out.output)
print(f"replayed {out.replay.replayed_tool_calls} tool calls, executed {out.replay.executed_tool_calls}")
