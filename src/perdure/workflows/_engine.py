"""One attempt of a workflow execution: the lease, the journal, the function run again from its start.

The same engine parts as an agent run (`perdure.durable.engine`): the lease and its heartbeat, the
pre-run checks of the head and the journal, one `JournalRun` for every unit, the attempt's end
recorded on the head. What differs: the code to run is the workflow the program registered under
the recorded name (or the one passed in), called with the recorded arguments; nested agent runs
find the same `JournalRun` and journal their units under their own position (see
`PerdureDurability.wrap_run`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..durable._attempt_end import attempt_scope
from ..durable._prechecks import check_journal, check_resumable
from ..durable.checkpoints import effective_journal
from ..durable.engine import ExecutionHandle
from ..durable.identity import normalize_allow_changes
from ..durable.journal import JournalRun
from ..errors import (
    ExecutionCompletedError,
    JournalMismatchError,
    UnregisteredReferenceError,
    UserError,
)
from ..events._bus import Emitter
from ..records import ExecutionIdentity, ExecutionRecord, StepRecord, TaskSnapshot
from ..registry import registry
from ._context import ActiveWorkflow, activate, deactivate
from ._define import Workflow

__all__ = ["execute_workflow", "start_workflow"]

logger = logging.getLogger("perdure")


async def start_workflow(
    handle: ExecutionHandle,
    workflow: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    on_unit: Callable[[StepRecord, bool], None] | None = None,
) -> Any:
    """Run `workflow(*args, **kwargs)` as execution `handle.execution_id`, resuming it if it exists."""
    if not isinstance(workflow, Workflow):
        raise UserError(f"{workflow!r} is not a workflow: decorate the async function with @workflow.")
    snapshot = TaskSnapshot(
        description=f"workflow {workflow.name}",
        agent_name=workflow.name,
        workflow=workflow.name,
        workflow_args=workflow.dump_args(args, kwargs, handle.execution_id),
        expected_steps=workflow.steps,
    )
    return await execute_workflow(handle, workflow, create=snapshot, metadata=metadata, on_unit=on_unit)


async def execute_workflow(
    handle: ExecutionHandle,
    workflow: Callable[..., Awaitable[Any]] | None,
    *,
    create: TaskSnapshot | None = None,
    metadata: Mapping[str, Any] | None = None,
    allow_changes: Iterable[str] | None = None,
    on_unit: Callable[[StepRecord, bool], None] | None = None,
    leased_head: ExecutionRecord | None = None,
) -> Any:
    """One attempt of a workflow execution (new with `create`, else resumed); returns its output.

    `workflow` None: the workflow this program registered under the execution's recorded name.
    """
    if handle._completed:
        raise ExecutionCompletedError(handle.execution_id)
    if workflow is not None and not isinstance(workflow, Workflow):
        raise UserError(f"{workflow!r} is not a workflow: decorate the async function with @workflow.")
    allow = normalize_allow_changes(allow_changes)
    head = leased_head if leased_head is not None else await handle._lease(create, metadata)
    try:
        return await _attempt(handle, workflow, head, on_unit=on_unit, allow=allow)
    finally:
        if leased_head is None:
            try:
                await handle.storage.release_lease_async(handle.execution_id, handle.worker_id)
            except Exception:  # an expiring lease is the fallback; never mask the run's outcome
                logger.warning("[%s] could not release the lease", handle.execution_id, exc_info=True)


def resolve_workflow(
    head: ExecutionRecord, workflow: Workflow[Any, Any] | None, allow: frozenset[str]
) -> Workflow[Any, Any]:
    """The workflow to run for `head`: the one passed in, else the registered one of the recorded name."""
    recorded = head.task.workflow
    if recorded is None:
        raise UserError(
            f"Execution {head.execution_id!r} is an agent run, not a workflow: resume it with "
            f"resume_agent / continue_durable."
        )
    if workflow is None:
        found = registry.workflow(recorded)
        if found is None:
            names = ", ".join(registry.workflow_names()) or "none"
            raise UnregisteredReferenceError(
                head.execution_id,
                "workflow",
                recorded,
                hint=f"Import the module that defines it (registered here: {names}), or pass it explicitly.",
            )
        return found
    if workflow.name != recorded and "workflow" not in allow:
        raise JournalMismatchError(head.execution_id, "workflow", workflow.name, recorded)
    return workflow


async def _attempt(
    handle: ExecutionHandle,
    workflow: Workflow[Any, Any] | None,
    head: ExecutionRecord,
    *,
    on_unit: Callable[[StepRecord, bool], None] | None,
    allow: frozenset[str],
) -> Any:
    definition = resolve_workflow(head, workflow, allow)
    check_resumable(head)
    args, kwargs = definition.load_args(head.task.workflow_args)
    storage = handle.storage
    journal = await storage.load_steps_async(head.execution_id)
    head = check_journal(storage, head, journal)
    journal = effective_journal(journal)  # without what a rewind superseded
    identity = head.identity or ExecutionIdentity(agent_name=definition.name)
    head = head.attempt_started(identity)
    run = JournalRun(storage, head, journal, debug=handle.debug, allow_changes=allow)
    run.on_unit = on_unit
    run.events = Emitter((handle.event_bus,))
    run.workflow = definition.name
    active_token = activate(ActiveWorkflow(run, definition.name))
    try:
        async with attempt_scope(run, storage, handle.worker_id, handle.lease_ttl):
            await run.save_head()  # the attempt start
            output = await definition.fn(*args, **kwargs)
            data = definition.dump_output(output, head.execution_id)
    finally:
        deactivate(active_token)
    await run.mark_completed(data)
    handle._completed = True
    if handle.auto_cleanup:
        await storage.delete_state_async(head.execution_id, force=True)
    return output
