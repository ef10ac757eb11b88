"""Redis replication (`replicas=N`): WAIT after each write the engine relies on, against real servers.

Each test starts its own primary and replica (`redis-server --replicaof`) on 127.0.0.1 (see
`support.server_redis.launch_redis_replica`); a missing redis-server skips locally and fails in CI.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable import DurableExecution, PerdureDurability
from perdure.errors import ReplicationError, StorageUnavailableError, UserError
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from perdure.storage import storage_from_url
from perdure.storage.redis import RedisDurableStorage
from support.server_redis import RedisServer, launch_redis, launch_redis_replica, unavailable

TOOLS = "abcd"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and a synced replica; both are SIGKILLed afterwards (also when paused)."""
    started: list[RedisServer] = []
    try:
        started.append(launch_redis(tmp_path / "primary"))
        started.append(launch_redis_replica(tmp_path / "replica", started[0]))
    except (RuntimeError, OSError) as exc:
        for server in started:
            server.stop(kill=True)
        unavailable(str(exc))
        raise
    yield started[0], started[1]
    for server in reversed(started):
        server.stop(kill=True)


def _wait_calls(server: RedisServer) -> int:
    return int(server.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)


def _agent(calls: Counter[str], requests: list[int], on_tool: Any = None) -> PydanticAgent[None, str]:
    """Four tool calls, one per model response, then a text answer; counts every execution."""

    def plan(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(len(messages))
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < len(TOOLS):
            return ModelResponse(parts=[ToolCallPart(TOOLS[done], {}, tool_call_id=f"call-{done}")])
        return ModelResponse(parts=[TextPart("done")])

    agent = PydanticAgent(FunctionModel(plan), name="replicated", capabilities=[PerdureDurability()])
    for name in TOOLS:
        agent.tool_plain(name=name)(_counting(name, calls, on_tool))
    return agent


def _counting(name: str, calls: Counter[str], on_tool: Any) -> Any:
    def tool() -> str:
        calls[name] += 1
        if on_tool is not None:
            on_tool(name)
        return name.upper()

    return tool


class _WorkerDied(Exception):
    """Raised by the test storage right after the step it was told to kill the primary at."""


class _KillPrimaryAfter(RedisDurableStorage):
    """Kills the primary (SIGKILL) as soon as the append of journal seq `kill_seq` returned.

    The worker stops at that instant too (`_WorkerDied`), as a worker on the dead primary's machine
    would, so no further unit starts; with `lag`, the replica is stalled (SIGSTOP) during that
    append and woken 0.2 s later, so the append had to wait for it.
    """

    def __init__(
        self, *args: Any, primary: RedisServer, replica: RedisServer, kill_seq: int, lag: bool, **kw: Any
    ):
        super().__init__(*args, **kw)
        self.primary, self.replica, self.kill_seq, self.lag = primary, replica, kill_seq, lag
        self.waited = 0.0

    async def _append(self, record: ExecutionRecord, steps: Sequence[StepRecord]) -> None:
        hit = any(step.seq == self.kill_seq for step in steps)
        timer = None
        if hit and self.lag:
            self.replica.pause()
            timer = threading.Timer(0.2, self.replica.resume)
            timer.start()
        started = time.monotonic()
        try:
            await super()._append(record, steps)
        finally:
            if timer is not None:
                timer.join()
        if hit:
            self.waited = time.monotonic() - started
            self.primary.stop(kill=True)
            raise _WorkerDied(f"worker and primary died after seq {self.kill_seq}")


@pytest.mark.parametrize(
    ("kill_seq", "lag"), [(1, False), (4, True)], ids=["after-tool-a", "after-model-3-lagging"]
)
async def test_failover_to_the_replica_keeps_every_journaled_step(
    pair: tuple[RedisServer, RedisServer], kill_seq: int, lag: bool
) -> None:
    primary, replica = pair
    calls: Counter[str] = Counter()
    requests: list[int] = []
    agent = _agent(calls, requests)
    store = _KillPrimaryAfter(
        url=primary.url,
        prefix="rep:",
        socket_timeout=1,
        replicas=1,
        replica_timeout=5,
        primary=primary,
        replica=replica,
        kill_seq=kill_seq,
        lag=lag,
    )
    with pytest.raises(Exception) as info:
        await DurableExecution(store, auto_cleanup=False, execution_id="exec-rep").run_agent_async(
            agent, "go"
        )
    assert any(isinstance(e, _WorkerDied) for e in _chain(info.value)), info.value
    if lag:
        assert store.waited >= 0.15, f"the append did not wait for the stalled replica ({store.waited:.3f} s)"
    ran_before = (Counter(calls), len(requests))
    await store.close_async()

    replica.promote()
    promoted = RedisDurableStorage(url=replica.url, prefix="rep:", socket_timeout=2)
    steps = await promoted.load_steps_async("exec-rep")
    assert [s.seq for s in steps] == list(range(kill_seq + 1)), "a journaled step is missing on the replica"
    head = await promoted.load_state_async("exec-rep")
    assert head is not None and head.next_seq == kill_seq + 1
    if head.lease_owner is not None:  # the dead worker could not release its lease
        await promoted.release_lease_async("exec-rep", head.lease_owner)

    attempt = await DurableExecution(
        promoted, auto_cleanup=False, execution_id="exec-rep"
    ).resume_agent_async(agent)
    assert attempt.output == "done"
    # every unit ran exactly once over both attempts: journaled ones were replayed from the replica
    assert calls == Counter({name: 1 for name in TOOLS}), (ran_before, calls)
    assert len(requests) == len(TOOLS) + 1, (ran_before, requests)
    journaled_tools = sum(1 for s in steps if s.kind is StepKind.TOOL_CALL)
    assert attempt.replay.replayed_tool_calls == journaled_tools
    assert attempt.replay.replayed_model_requests == len(steps) - journaled_tools
    final = await promoted.load_state_async("exec-rep")
    assert final is not None and final.status is ExecutionStatus.COMPLETED
    await promoted.close_async()


async def test_without_replicas_an_acknowledged_step_can_vanish_in_a_failover(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    """The hazard `replicas=` closes: the replica lost its link, replicas=0 writes still "succeed"."""
    primary, replica = pair
    record = ExecutionRecord(execution_id="exec-lost", next_seq=1)
    step = StepRecord(
        execution_id="exec-lost", seq=0, kind=StepKind.TOOL_CALL, name="tool:a", key="a", result=1
    )
    plain = RedisDurableStorage(url=primary.url, prefix="lost:", socket_timeout=1)
    waited = RedisDurableStorage(url=primary.url, prefix="lost:", replicas=1, replica_timeout=0.3)
    replica.pause()
    import redis

    with redis.Redis(host="127.0.0.1", port=primary.port) as client:
        client.client_kill_filter(_type="replica")  # the stalled replica is cut off from the primary
    await plain.save_state_async(record)
    await plain.append_step_async(record, step)  # returns: the step counts as journaled
    with pytest.raises(ReplicationError):
        await waited.save_state_async(record)  # with replicas=1 the same situation is an error
    primary.stop(kill=True)
    replica.resume()
    replica.promote()
    promoted = RedisDurableStorage(url=replica.url, prefix="lost:")
    assert await promoted.load_steps_async("exec-lost") == []  # gone: the acknowledged step was lost
    for store in (plain, waited, promoted):
        await store.close_async()


async def test_a_write_that_misses_its_replicas_raises_replication_error(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    store = RedisDurableStorage(url=primary.url, prefix="slow:", replicas=1, replica_timeout=0.5)
    record = ExecutionRecord(execution_id="exec-slow")
    await store.save_state_async(record)  # the replica is up: confirmed
    replica.pause()
    started = time.monotonic()
    with pytest.raises(ReplicationError) as info:
        await store.save_state_async(record)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5, elapsed
    err = info.value
    assert isinstance(err, StorageUnavailableError) and err.backend == "redis"
    assert (err.execution_id, err.required, err.acknowledged, err.timeout) == ("exec-slow", 1, 0, 0.5)
    text = str(err)
    for part in ("'exec-slow'", "1 replica(s)", "0 acknowledged", "0.5 s", "INFO replication", "resume"):
        assert part in text, (part, text)
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert (again.required, again.acknowledged, str(again)) == (1, 0, text)
    replica.resume()
    await store.save_state_async(record)  # confirmed again once the replica catches up
    await store.close_async()


async def test_a_run_whose_replica_dies_fails_clearly_and_resumes_without_rerunning(
    pair: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    primary, replica = pair
    calls: Counter[str] = Counter()
    requests: list[int] = []

    def on_tool(name: str) -> None:
        if name == "b" and calls["b"] == 1:
            replica.stop(kill=True)  # the only replica dies while tool b runs

    agent = _agent(calls, requests, on_tool)
    store = RedisDurableStorage(url=primary.url, prefix="dead:", replicas=1, replica_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        await DurableExecution(store, auto_cleanup=False, execution_id="exec-dead").run_agent_async(
            agent, "go"
        )
    elapsed = time.monotonic() - started
    errors = [e for e in _chain(info.value) if isinstance(e, ReplicationError)]
    assert errors, f"no ReplicationError in {info.value!r}"
    assert errors[0].execution_id == "exec-dead" and "1 replica(s)" in str(errors[0])
    assert elapsed < 5, elapsed
    assert calls == Counter(a=1, b=1)

    # A new replica joins; tool b's journal entry reached the primary, so resuming replays it.
    fresh = launch_redis_replica(tmp_path / "replica2", primary)
    try:
        head = await store.load_state_async("exec-dead")
        assert head is not None
        if head.lease_owner is not None:
            await store.release_lease_async("exec-dead", head.lease_owner)
        attempt = await DurableExecution(
            store, auto_cleanup=False, execution_id="exec-dead"
        ).resume_agent_async(agent)
        assert attempt.output == "done"
        assert calls == Counter({name: 1 for name in TOOLS})
        assert len(requests) == len(TOOLS) + 1
    finally:
        await store.close_async()
        fresh.stop(kill=True)


async def test_replicas_zero_sends_no_wait_and_replicas_one_waits_per_write(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, _ = pair

    async def writes(store: RedisDurableStorage, eid: str) -> None:
        record = ExecutionRecord(execution_id=eid, next_seq=1)
        await store.save_state_async(record)
        await store.acquire_lease_async(eid, "w1", 30)
        await store.renew_lease_async(eid, "w1", 30)
        leased = ExecutionRecord(execution_id=eid, next_seq=1, lease_owner="w1")
        step = StepRecord(execution_id=eid, seq=0, kind=StepKind.TOOL_CALL, name="tool:a", key="a", result=1)
        await store.append_step_async(leased, step)
        await store.request_cancel_async(eid, "stop")
        await store.release_lease_async(eid, "w1")  # maintenance: not waited
        await store.delete_state_async(eid)

    plain = RedisDurableStorage(url=primary.url, prefix="zero:")
    before = _wait_calls(primary)
    await writes(plain, "exec-zero")
    assert _wait_calls(primary) == before  # replicas=0: not one WAIT
    replicated = RedisDurableStorage(url=primary.url, prefix="one:", replicas=1)
    await writes(replicated, "exec-one")
    assert _wait_calls(primary) == before + 6  # save, acquire, renew, append, cancel, delete
    for store in (plain, replicated):
        await store.close_async()


def test_replica_options_from_constructor_and_url() -> None:
    store = storage_from_url("redis://127.0.0.1:6390/0?prefix=p:&replicas=2&replica_timeout=0.25")
    assert isinstance(store, RedisDurableStorage)
    assert (store.replicas, store.replica_timeout, store._wait_ms) == (2, 0.25, 250)
    assert store._client_options["socket_timeout"] == 5.25  # WAIT may block on top of socket_timeout
    assert "replicas=2" in repr(store)
    default = RedisDurableStorage()
    assert (default.replicas, default._client_options["socket_timeout"]) == (0, 5.0)
    assert RedisDurableStorage(replicas=1, replica_timeout=0.0001)._wait_ms == 1  # never WAIT n 0 (forever)
    for bad in ("replicas=-1", "replicas=x", "replicas=1.5", "replica_timeout=0", "replica_timeout=-2"):
        with pytest.raises(UserError, match="replica"):
            storage_from_url(f"redis://127.0.0.1/0?{bad}")
    for kwargs in ({"replicas": -1}, {"replicas": True}, {"replicas": 1.0}, {"replica_timeout": 0}):
        with pytest.raises(UserError, match="replica"):
            RedisDurableStorage(**kwargs)


def test_replication_error_is_a_storage_outage() -> None:
    err = ReplicationError("redis", "WAIT 2 100 returned 1", execution_id="e1", required=2, acknowledged=1)
    assert isinstance(err, StorageUnavailableError)
    assert "'e1'" in str(err) and "2 replica(s)" in str(err) and "1 acknowledged" in str(err)
    with contextlib.suppress(Exception):
        raise err
