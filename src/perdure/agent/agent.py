"""`Agent`: the seed API's agent, a thin builder of durable pydantic-ai agents.

Each `do` builds a pydantic-ai `Agent` with the task's tools and output type and the
`PerdureDurability` capability, then runs it as the task's durable execution. Resuming
(`continue_durable`, `continue_run`) rebuilds the same agent from what the execution recorded: its
tools and output type are found among what this program registered (`@tool`, the tools and
`response_format` given to an `Agent` or `Task`, `perdure.register`) or passed explicitly, never
imported by the name a record gives; the model is this agent's, else the recorded one. The engine
then checks the rebuilt agent against the execution's identity before anything runs. Both resume
entry points are the same mechanism (`DurableExecution` + journal): they
differ only in how they name the run (execution id + storage, or `run_id` / `task` + the agent's
`db`) and in what a completed run gives back.

The class is composed of cohesive parts: `_core.AgentCore` (settings, building and opening),
`_entry_points.AgentEntryPoints` (the async entry points), `_calls` (attempts and outcome of one
call) and, here, the sync twins, derived from their async originals by `perdure._sync.sync_twin`
so that each signature is written once.
"""

from __future__ import annotations

from .._sync import sync_twin
from ._core import DEFAULT_REQUEST_LIMIT
from ._entry_points import AgentEntryPoints

__all__ = ["DEFAULT_REQUEST_LIMIT", "Agent"]


class Agent(AgentEntryPoints):
    """An agent that runs `Task`s, durably when the task has a `DurableExecution` or the agent a `db`.

    Args:
        model: `"provider/model"`, `"provider:model"`, `"perdure:scripted"` (offline stand-in) or a
            pydantic-ai `Model`. May be omitted when only resuming: the recorded model is used.
        name: Agent name, stored with executions (informational).
        system_prompt: Instructions for every task (alias: `instructions`).
        tools: Tools available to every task.
        debug: Log checkpoints and recovery via the `perdure` logger.
        retry: Total attempts of one `do` / `continue_*` call (the seed's meaning; default 1, i.e. no
            internal retries; `retry=1` is what the seed recommends when you implement your own
            recovery). Every further attempt *resumes* the execution from its journal, it never starts
            the task over: finished model requests and tool calls are not paid for or run again.
            Errors that a resume cannot fix (perdure's own errors, pauses, usage limits, pydantic-ai
            misuse) are raised at once. `0` is accepted as `1` for backward compatibility.
        request_limit: Maximum model requests per run (`None` for no limit).
        model_settings: pydantic-ai model settings (temperature, timeouts, ...).
        retry_policy: Durable retry policy of model requests (attempts are journaled, back-off).
        tool_retry_policy: Default durable retry policy of tool calls; `@tool(retry=...)` overrides it.
        circuit_breaker: Circuit breaker guarding the model requests.
        db: A `perdure.db` database (e.g. `SqliteDatabase`): every task becomes durable in its storage,
            with its session and user ids recorded, and `continue_run(run_id=...)` finds runs there.
        worker_id: Lease owner id of the executions this agent opens (default `host:pid:random`).
        lease_ttl: Lease time of the executions this agent opens (default: `PERDURE_LEASE_TTL`).
            A `DurableExecution` the caller attached to a task keeps its own `worker_id` and
            `lease_ttl`.
        print: Accepted for compatibility with the seed API (Upsonic's `print=`); perdure prints
            nothing by itself either way (use `debug=True` for log lines).

    """

    # ---- sync twins: each runs its `*_async` original with `run_sync` (signatures taken from it) ----

    do = sync_twin(AgentEntryPoints.do_async)
    do.__doc__ = "Sync twin of `do_async`; works inside a running event loop too."
    continue_durable = sync_twin(AgentEntryPoints.continue_durable_async)
    continue_run = sync_twin(AgentEntryPoints.continue_run_async)
