"""PostgreSQL synchronous replication: `PostgresDurableStorage(synchronous_commit="remote_apply")`.

Each test starts its own primary and streaming standby (`pg_basebackup -R`) on 127.0.0.1 with
`support.server_postgres.start_replicated`; the primary names the standby in
`synchronous_standby_names`. Locally a PostgreSQL that cannot be started skips these tests with the
reason; with `CI=true` it fails them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import DurableExecution, PerdureDurability
from perdure.errors import StorageUnavailableError, UserError
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from perdure.storage import storage_from_url
from perdure.storage.postgres import PostgresDurableStorage
from support.server_postgres import ReplicatedPostgres, start_replicated


@pytest.fixture
def replicated() -> Iterator[ReplicatedPostgres]:
    try:
        pair = start_replicated()
    except Exception as exc:
        reason = f"PostgreSQL primary + standby could not be started: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield pair
    finally:
        pair.close()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def _step(execution_id: str, seq: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name=f"tool:t{seq}",
        key=f"tool:call-{seq}",
        result={"seq": seq},
    )


def _head(execution_id: str, seq: int) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, next_seq=seq + 1, step_index=seq)


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                yield from _causes(inner)
        exc = exc.__cause__ or exc.__context__


def test_synchronous_commit_is_validated_and_read_from_urls() -> None:
    dsn = "postgresql://postgres@127.0.0.1:1/postgres"
    for value in ("off", "local", "remote_write", "on", "remote_apply", "REMOTE_APPLY"):
        assert PostgresDurableStorage(dsn, synchronous_commit=value).synchronous_commit == value.lower()
    assert PostgresDurableStorage(dsn).synchronous_commit is None
    for wrong in ("remote-apply", "true", "", "on; DROP TABLE x", 1):
        with pytest.raises(UserError, match="synchronous_commit must be one of"):
            PostgresDurableStorage(dsn, synchronous_commit=wrong)  # type: ignore[arg-type]
    store = storage_from_url(f"{dsn}?synchronous_commit=remote_apply&application_name=x")
    assert isinstance(store, PostgresDurableStorage)
    assert store.synchronous_commit == "remote_apply"
    assert "synchronous_commit" not in store.dsn and "application_name=x" in store.dsn
    with pytest.raises(UserError, match="synchronous_commit"):
        storage_from_url(f"{dsn}?synchronous_commit=always")


async def test_setting_is_per_session(replicated: ReplicatedPostgres) -> None:
    dsn = replicated.primary.dsn
    store = PostgresDurableStorage(dsn, table_prefix=_prefix(), synchronous_commit="remote_apply", min_size=2)
    default = PostgresDurableStorage(dsn, table_prefix=_prefix())
    try:
        seen = set()
        for _ in range(3):  # every pooled connection, not only the first
            async with store._connection() as conn:
                seen.add((await (await conn.execute("SHOW synchronous_commit")).fetchone())[0])  # type: ignore[index]
        assert seen == {"remote_apply"}
        async with default._connection() as conn:  # the server's own setting is left alone elsewhere
            assert (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0] == "on"  # type: ignore[index]
        with psycopg.connect(dsn, autocommit=True) as other:
            assert other.execute("SHOW synchronous_commit").fetchone() == ("on",)
        await store.save_state_async(ExecutionRecord(execution_id="e"))
        await store.append_step_async(_head("e", 0), _step("e", 0))
        # remote_apply: visible on the standby as soon as the write returned
        with psycopg.connect(replicated.standby.dsn, autocommit=True) as standby:
            rows = standby.execute(
                f"SELECT seq FROM {store.table_prefix}steps WHERE execution_id = 'e'"
            ).fetchall()
        assert rows == [(0,)]
    finally:
        await store.close_async()
        await default.close_async()


async def test_commit_waiting_for_a_stopped_standby_fails_cleanly(replicated: ReplicatedPostgres) -> None:
    store = PostgresDurableStorage(
        replicated.primary.dsn,
        table_prefix=_prefix(),
        synchronous_commit="remote_apply",
        statement_timeout=1.0,
    )
    try:
        await store.save_state_async(ExecutionRecord(execution_id="e"))
        await store.append_step_async(_head("e", 0), _step("e", 0))
        replicated.standby.stop()
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as info:
            await asyncio.wait_for(store.append_step_async(_head("e", 1), _step("e", 1)), timeout=15)
        elapsed = time.monotonic() - started
        # statement_timeout does not bound the wait for the standby; the client's watchdog does (+2 s)
        assert 1.5 < elapsed < 5, elapsed
        message = str(info.value)
        assert "synchronous_commit=remote_apply" in message and "synchronous_standby_names" in message
        assert info.value.execution_id == "e"
        # The standby comes back: it replays what it missed, and the storage works again.
        # The primary committed step 1 locally and kept waiting for the standby (the client gave up, the
        # server did not): once the standby is back and has applied it, the write is visible. An
        # unacknowledged write is thus ambiguous, as for any StorageUnavailableError.
        replicated.start_standby()
        deadline = time.monotonic() + 10
        while [s.seq for s in await store.load_steps_async("e")] != [0, 1]:
            assert time.monotonic() < deadline, "step 1 never became visible after the standby returned"
            await asyncio.sleep(0.05)
        await store.append_step_async(_head("e", 2), _step("e", 2))  # synchronous again
        with psycopg.connect(replicated.standby.dsn, autocommit=True) as standby:
            rows = standby.execute(f"SELECT seq FROM {store.table_prefix}steps ORDER BY seq").fetchall()
        assert rows == [(0,), (1,), (2,)]
    finally:
        await store.close_async()


async def test_kill_primary_after_a_step_promote_standby_resume(replicated: ReplicatedPostgres) -> None:
    prefix = _prefix()
    primary = PostgresDurableStorage(
        replicated.primary.dsn,
        table_prefix=prefix,
        synchronous_commit="remote_apply",
        connect_timeout=0.5,
        statement_timeout=2.0,
    )
    calls: Counter[str] = Counter()
    model_calls: list[int] = []
    plan = ["lookup", "charge", "notify", "archive"]

    def fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = [
            p.tool_name
            for m in messages
            if isinstance(m, ModelRequest)
            for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]
        model_calls.append(len(returned))
        if len(returned) < len(plan):
            return ModelResponse(parts=[ToolCallPart(plan[len(returned)], {"n": len(returned)})])
        return ModelResponse(parts=[TextPart(f"done: {','.join(returned)}")])

    agent = PydanticAgent(FunctionModel(fn), name="pg-replicated", capabilities=[PerdureDurability()])

    for name in plan:

        def tool(n: int, _name: str = name) -> str:
            calls[_name] += 1
            return f"{_name} ok"

        agent.tool_plain(name=name)(tool)

    journaled: list[str] = []

    def on_unit(step: StepRecord, replayed: bool) -> None:
        journaled.append(step.key)
        if step.kind is StepKind.TOOL_CALL and step.name.endswith("charge"):
            replicated.kill_primary()  # the write of `charge` returned: the primary's host dies now

    durable = DurableExecution(primary, auto_cleanup=False, lease_ttl=30)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(
            durable.run_agent_async(agent, "charge the customer", on_unit=on_unit), timeout=20
        )
    unavailable = [e for e in _causes(info.value) if isinstance(e, StorageUnavailableError)]
    assert unavailable, f"expected StorageUnavailableError in the chain of {info.value!r}"
    await primary.close_async()
    # model, lookup, model, charge: each returned only once the standby had applied it
    assert calls == Counter(lookup=1, charge=1)
    assert len(journaled) == 4

    replicated.promote()
    survivor = PostgresDurableStorage(
        replicated.standby.dsn, table_prefix=prefix, synchronous_commit="remote_apply"
    )
    try:
        steps = await survivor.load_steps_async(durable.execution_id)
        assert [s.key for s in steps] == journaled  # nothing journaled was lost
        resumed = DurableExecution(
            survivor, auto_cleanup=False, execution_id=durable.execution_id, worker_id=durable.worker_id
        )
        replayed: list[bool] = []
        attempt = await asyncio.wait_for(
            resumed.resume_agent_async(agent, on_unit=lambda s, r: replayed.append(r)), timeout=20
        )
        assert attempt.output == "done: lookup,charge,notify,archive"
        assert calls == Counter(lookup=1, charge=1, notify=1, archive=1)  # no unit ran twice
        # The model request in flight when the primary died was never journaled, so it is asked
        # again; each of the 4 journaled units ran once and was replayed, not re-run.
        assert model_calls == [0, 1, 2, 2, 3, 4]
        assert replayed[:4] == [True] * 4 and not any(replayed[4:])
        head = await survivor.load_state_async(durable.execution_id)
        assert head is not None and head.status is ExecutionStatus.COMPLETED
        assert len(await survivor.load_steps_async(durable.execution_id)) == 9
    finally:
        await survivor.close_async()
