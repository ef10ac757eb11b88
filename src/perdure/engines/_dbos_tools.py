"""Every function tool call of a DBOS-run agent as its own DBOS step.

pydantic-ai's `DBOSDurability` journals model requests but runs plain function tools inline in the
workflow, so a recovered workflow calls every finished tool again (measured: 25 of 25 after a kill
halfway through a 50-call run). `DBOSToolSteps` wraps each tool execution in `DBOS.run_step_async`:
a finished call is recorded, and recovery returns the recorded result instead of calling the tool.

It also carries over perdure's tool options:

- **Retries**: the tool's `RetryPolicy` (`@tool(retry=...)` or `PerdureDurability(tool_retry=...)`)
  runs inside the step with perdure's own classification, back-off and jitter (DBOS's step retries
  would retry every error). Attempts are counted per process: DBOS keeps no attempt log.
- **Idempotency keys**: `perdure.current_step()` / `idempotency_key(ctx)` work inside the tool; the
  key is `<workflow id>:tool:<DBOS step id>/<tool_call_id>`, stable across recovery because both
  parts are replayed (the step position is deterministic, the call id comes from the recorded
  model response).
- **Non-idempotent guard**: a tool marked `idempotent=False` first records a `started` marker step.
  When recovery replays the marker but finds no recorded result, the call was in flight at the
  crash: it is not run again, and the workflow fails with `DBOSNonIdempotentReplayError` naming the
  execution, the call and how to continue.

pydantic-ai's control-flow exceptions (`ModelRetry`, `ApprovalRequired`, `CallDeferred`,
`ToolFailed`) are recorded as outcomes and raised again outside the step, so a replay raises the
same signal.
"""

from __future__ import annotations

from typing import Any

from dbos import DBOS
from pydantic_ai import RunContext
from pydantic_ai.capabilities.abstract import AbstractCapability, ValidatedToolArgs, WrapToolExecuteHandler
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, ToolFailed
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import ToolDefinition

from ..durable.capability import tool_step_config
from ..durable.retry import RetryPolicy, call_with_retry
from ..durable.step_context import STEP, StepContext
from ..errors import NonIdempotentReplayError

__all__ = ["DBOSNonIdempotentReplayError", "DBOSToolSteps", "in_dbos_workflow"]


class DBOSNonIdempotentReplayError(NonIdempotentReplayError):
    """A non-idempotent tool call was in flight when a DBOS worker died; it is not run again.

    The message names what to do on DBOS: there is no `resolutions=` resume there, so the operator
    checks the external system and either forks the workflow from the call's `started` marker
    (which runs the call again) or starts a new execution.
    """

    def __init__(self, execution_id: str, tool_name: str, tool_call_id: str, args: Any, *, seq: int) -> None:
        super().__init__(
            execution_id,
            tool_name,
            tool_call_id,
            args,
            seq=seq,
            remedy=(
                f"The DBOS worker stopped during the call and the workflow failed here. Check the "
                f"external system. To call it again, fork the workflow from its started marker: "
                f"DBOS.fork_workflow({execution_id!r}, start_step={seq}) (`dbos workflow fork "
                f"{execution_id} --step {seq}`); to skip it, start a new execution."
            ),
        )


def in_dbos_workflow() -> bool:
    """Inside DBOS workflow code (not a step): where a tool call must become a step."""
    from dbos._context import get_local_dbos_context  # no public equivalent in dbos 3.4

    context = get_local_dbos_context()
    return context is not None and context.is_workflow()


def _outcome(value: Any) -> dict[str, Any]:
    return {"kind": "return", "value": value}


def _raise_outcome(outcome: dict[str, Any]) -> Any:
    """Return the recorded value, or raise the recorded pydantic-ai signal again."""
    kind = outcome.get("kind")
    if kind == "return":
        return outcome.get("value")
    if kind == "retry":
        raise ModelRetry(outcome["message"])
    if kind == "failed":
        raise ToolFailed(outcome["message"])
    if kind == "approval":
        raise ApprovalRequired(metadata=outcome.get("metadata"))
    if kind == "deferred":
        raise CallDeferred(metadata=outcome.get("metadata"), kind=outcome.get("deferred_kind", "external"))
    raise ValueError(f"Unknown recorded tool outcome {kind!r}")


class DBOSToolSteps(AbstractCapability[Any]):
    """Runs each function tool call of a DBOS workflow as one DBOS step (see the module docstring)."""

    def __init__(self, agent_name: str, *, tool_retry: RetryPolicy | None = None) -> None:
        """Configure the steps of one agent.

        Args:
            agent_name: Names the steps (`<agent>.tool:<name>`), as DBOS shows them.
            tool_retry: Default retry policy of tool calls; a tool's own `retry` wins.

        """
        self.agent_name = agent_name
        self.defaults: dict[str, Any] = {"retry": tool_retry}

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        """Record the call as a DBOS step; a recorded call returns its result without running again."""
        if not in_dbos_workflow():
            return await handler(args)
        config = tool_step_config(tool_def.name, tool_def.metadata, self.defaults)
        execution_id = DBOS.workflow_id or ""
        tool_name = call.tool_name
        call_id = call.tool_call_id
        fresh_marker = True
        if config.get("idempotent", True) is False:
            fresh_marker = False

            async def started() -> dict[str, Any]:
                nonlocal fresh_marker
                fresh_marker = True  # runs only when the marker was not recorded before
                return {"tool": tool_name, "tool_call_id": call_id}

            await DBOS.run_step_async({"name": f"{self.agent_name}.started:{tool_name}"}, started)
        policy: RetryPolicy | None = config.get("retry")
        attempts = 0

        async def body() -> dict[str, Any]:
            step_id = DBOS.step_id or 0
            if not fresh_marker:
                raise DBOSNonIdempotentReplayError(
                    execution_id, tool_name, call_id, call.args_as_dict(), seq=step_id - 1
                )
            key = f"tool:{step_id}/{call_id}"

            async def once() -> dict[str, Any]:
                nonlocal attempts
                attempts += 1
                token = STEP.set(StepContext(execution_id, key, f"tool:{tool_name}", attempts, call_id))
                try:
                    return _outcome(await handler(args))
                except ModelRetry as err:
                    return {"kind": "retry", "message": err.message}
                except ToolFailed as err:
                    return {"kind": "failed", "message": err.message}
                except ApprovalRequired as err:
                    return {"kind": "approval", "metadata": err.metadata}
                except CallDeferred as err:
                    return {"kind": "deferred", "metadata": err.metadata, "deferred_kind": err.kind}
                finally:
                    STEP.reset(token)

            if policy is None:
                return await once()

            async def forget(attempt: int, error: BaseException, delay: float) -> None:
                return None  # DBOS keeps no attempt log: the count restarts in a recovering process

            return await call_with_retry(
                once,
                policy=policy,
                breaker=None,
                failed_attempts=0,
                record_failure=forget,
                execution_id=execution_id,
                unit_name=f"tool:{tool_name}",
            )

        outcome = await DBOS.run_step_async({"name": f"{self.agent_name}.tool:{tool_name}"}, body)
        return _raise_outcome(outcome)
