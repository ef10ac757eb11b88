"""Redis-specific tests of RedisDurableStorage against a real redis-server (see support/server_redis.py)."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.codec import Codec, decode_head
from perdure.durable import DurableExecution, PerdureDurability
from perdure.errors import (
    CorruptRecordError,
    IncompatibleSchemaError,
    LeaseLostError,
    StepConflictError,
    StorageUnavailableError,
    UserError,
)
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from perdure.storage import storage_from_url
from perdure.storage.redis import RedisDurableStorage
from support.server_redis import RedisServer, launch_redis, redis_server_fixture, unavailable  # noqa: F401

STATUSES = [s.value for s in ExecutionStatus]


def _record(execution_id: str, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, **fields)


def _step(execution_id: str, seq: int, result: Any = None) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name=f"tool:t{seq}",
        key=f"tool:call-{seq}",
        result={"seq": seq} if result is None else result,
    )


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisDurableStorage]:
    storage = RedisDurableStorage(url=redis_server.url, prefix=prefix)
    yield storage
    await storage.close_async()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain synchronous client, to look at the keys as they are stored."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _snapshot(raw: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under `prefix` with its full content (test-only SCAN)."""
    state: dict[bytes, Any] = {}
    for key in raw.scan_iter(match=f"{prefix}*", count=1000):
        kind = raw.type(key)
        if kind == b"hash":
            state[key] = raw.hgetall(key)
        elif kind == b"list":
            state[key] = raw.lrange(key, 0, -1)
        elif kind == b"zset":
            state[key] = raw.zrange(key, 0, -1, withscores=True)
        else:
            state[key] = (kind, raw.dump(key))
    return state


def _full_scan(raw: redis.Redis, prefix: str) -> list[ExecutionRecord]:
    """Every readable head, read straight from the head keys (test-only SCAN)."""
    heads = []
    for key in raw.scan_iter(match=f"{prefix}head:*", count=1000):
        execution_id = key.decode()[len(f"{prefix}head:") :]
        codec, payload = raw.hmget(key, ["c", "d"])
        try:
            heads.append(decode_head(execution_id, payload, codec=codec.decode()))
        except (CorruptRecordError, IncompatibleSchemaError):
            continue
    return heads


def _readable(raw: redis.Redis, prefix: str, execution_id: str) -> bool:
    payload = raw.hget(f"{prefix}head:{execution_id}", "d")
    try:
        return payload is not None and decode_head(execution_id, payload) is not None
    except CorruptRecordError:
        return False


# ---- construction and URLs ----------------------------------------------------------------------


def test_from_url_parses_every_part() -> None:
    store = RedisDurableStorage.from_url("redis://:s%40cret@db.internal:6390/3?prefix=app:runs:&ttl=60")
    assert (store.host, store.port, store.db) == ("db.internal", 6390, 3)
    assert store.prefix == "app:runs:" and store.ttl == 60.0
    assert store._client_options["password"] == "s@cret" and store._client_options["ssl"] is False
    assert "s@cret" not in repr(store) and "s%40cret" not in repr(store)
    tls = RedisDurableStorage.from_url("rediss://user:pw@example.com/0?socket_timeout=2.5")
    assert tls._client_options["ssl"] is True and tls._client_options["username"] == "user"
    assert tls.socket_timeout == 2.5 and tls.port == 6379 and tls.prefix == "durable:state:"
    assert tls.ttl is None


def test_defaults_and_storage_from_url_dispatch() -> None:
    default = RedisDurableStorage()
    assert (default.host, default.port, default.db, default.prefix) == (
        "localhost",
        6379,
        0,
        "durable:state:",
    )
    codec = Codec(compress_above=10)
    store = storage_from_url("redis://localhost/2?prefix=x:", codec=codec, ttl=5)
    assert isinstance(store, RedisDurableStorage)
    assert store.db == 2 and store.prefix == "x:" and store.codec is codec and store.ttl == 5.0
    assert isinstance(storage_from_url("rediss://h:7000"), RedisDurableStorage)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://localhost:6379/0?colour=red", "colour"),
        ("redis://localhost:6379/0?ttl=abc", "ttl"),
        ("redis://localhost:6379/0?ttl=0", "ttl"),
        ("redis://localhost:6379/0?ttl=-5", "ttl"),
        ("redis://localhost:6379/0?socket_timeout=0", "socket_timeout"),
        ("redis://localhost:6379/0?prefix=", "prefix"),
        ("redis://localhost:6379/0?prefix=a%20b", "prefix"),
        ("redis://localhost:6379/0?prefix=a%0Ab", "prefix"),
        ("redis://localhost:6379/zero", "database number"),
        ("redis://localhost:notaport/0", "port"),
        ("redis://localhost:6379/0?prefix=a&&", "Malformed"),
    ],
)
def test_from_url_errors(url: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        storage_from_url(url)


def test_constructor_validation() -> None:
    for bad in ("", "has space", "new\nline", "tab\t"):
        with pytest.raises(UserError, match="prefix"):
            RedisDurableStorage(prefix=bad)
    with pytest.raises(UserError, match="ttl"):
        RedisDurableStorage(ttl=0)
    with pytest.raises(UserError, match="port"):
        RedisDurableStorage(port=0)
    with pytest.raises(UserError, match="database"):
        RedisDurableStorage(db=-1)
    with pytest.raises(UserError, match="from_url"):
        RedisDurableStorage(url="redis://localhost/0?prefix=x:")
    with pytest.raises(UserError, match=r"redis:// or rediss://"):
        RedisDurableStorage(url="http://localhost/0")


# ---- atomicity ------------------------------------------------------------------------------------


async def test_refused_writes_change_nothing(
    store: RedisDurableStorage, raw: redis.Redis, prefix: str
) -> None:
    record = _record("exec-a", next_seq=1)
    await store.save_state_async(_record("exec-a"))  # appends never create the execution
    await store.append_step_async(record, _step("exec-a", 0))
    record = record.model_copy(update={"next_seq": 2, "status": ExecutionStatus.PAUSED})
    await store.append_step_async(record, _step("exec-a", 1))
    await store.acquire_lease_async("exec-a", "w1", 30)
    before = _snapshot(raw, prefix)
    assert before[f"{prefix}idx:status:paused".encode()] != []

    intruder = record.model_copy(update={"status": ExecutionStatus.COMPLETED, "lease_owner": "w1"})
    for seq in (0, 1, 5):  # an existing seq, and one that would leave a hole
        with pytest.raises(StepConflictError):
            await store.append_step_async(intruder, _step("exec-a", seq, {"other": True}))
    stale = intruder.model_copy(update={"lease_owner": "w0"})
    with pytest.raises(LeaseLostError) as info:
        await store.append_step_async(stale, _step("exec-a", 2))
    assert info.value.holder == "w1"
    with pytest.raises(LeaseLostError):
        await store.save_state_async(stale)
    assert _snapshot(raw, prefix) == before

    # The holder writes through; status indexes move with the head in the same script.
    await store.append_step_async(intruder, _step("exec-a", 2))
    assert raw.zscore(f"{prefix}idx:status:completed", "exec-a") is not None
    assert raw.zscore(f"{prefix}idx:status:paused", "exec-a") is None


async def test_retried_append_of_the_same_entry_is_idempotent(store: RedisDurableStorage) -> None:
    record, step = _record("exec-r", next_seq=1), _step("exec-r", 0)
    await store.save_state_async(_record("exec-r"))
    await store.append_step_async(record, step)
    # A client retry of a write whose reply was lost sends the very same bytes again.
    await store.append_step_async(record, step)
    assert await store.load_steps_async("exec-r") == [step]
    await store.append_step_async(record.model_copy(update={"next_seq": 2}), _step("exec-r", 1))
    with pytest.raises(StepConflictError):  # not the last entry any more: a real conflict
        await store.append_step_async(record, step)


async def test_a_batch_is_one_script_call_and_a_retried_batch_is_done(
    store: RedisDurableStorage, raw: redis.Redis
) -> None:
    await store.save_state_async(_record("exec-b"))
    steps = [_step("exec-b", seq) for seq in range(600)]  # more than one RPUSH slice (256 values)
    record = _record("exec-b", next_seq=600)
    evalsha = _calls(raw, "evalsha")
    await store.append_steps_async(record, steps)
    assert _calls(raw, "evalsha") == evalsha + 1
    assert await store.load_steps_async("exec-b") == steps
    # A client retry of a batch whose reply was lost sends the very same bytes: done already.
    await store.append_steps_async(record, steps[-3:])
    await store.append_steps_async(record, steps)
    assert len(await store.load_steps_async("exec-b")) == 600
    with pytest.raises(StepConflictError) as info:  # other entries for journaled seqs: a conflict
        await store.append_steps_async(record, [_step("exec-b", 598, "other"), steps[599]])
    assert info.value.seq == 598
    with pytest.raises(StepConflictError):  # not last any more: no retry
        await store.append_steps_async(record, steps[:2])
    assert await store.load_steps_async("exec-b") == steps


async def test_stats_and_list_equal_a_full_scan_after_random_transitions(
    store: RedisDurableStorage, raw: redis.Redis, prefix: str
) -> None:
    rng = random.Random(20261122)
    ids = [f"exec-{i:02d}" for i in range(12)]
    next_seq: Counter[str] = Counter()
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def record(eid: str, status: str) -> ExecutionRecord:
        moment = base + timedelta(seconds=rng.randrange(0, 50))  # ties are frequent on purpose
        return _record(eid, status=ExecutionStatus(status), updated_at=moment, next_seq=next_seq[eid])

    async def check() -> None:
        heads = _full_scan(raw, prefix)
        expected = Counter(h.status.value for h in heads)
        stats = await store.get_stats_async()
        assert stats["by_status"] == {s: expected[s] for s in STATUSES}
        assert stats["total_executions"] == len(heads)
        newest = sorted(heads, key=lambda h: (h.updated_at, h.execution_id), reverse=True)
        assert [h.execution_id for h in await store.list_executions_async()] == [
            h.execution_id for h in newest
        ]
        for status in STATUSES:
            listed = await store.list_executions_async(status, limit=3)
            assert [h.execution_id for h in listed] == [
                h.execution_id for h in newest if h.status.value == status
            ][:3]

    current = {eid: eid for eid in ids}  # a deleted id stays tombstoned: its slot moves to a new id
    for n in range(300):
        slot, op = rng.choice(ids), rng.random()
        eid = current[slot]
        status = rng.choice(STATUSES)
        if op < 0.35:
            await store.save_state_async(record(eid, status))
        elif op < 0.75:
            if not raw.exists(f"{prefix}head:{eid}"):  # appends never create the execution
                await store.save_state_async(record(eid, status))
            step = _step(eid, next_seq[eid])
            next_seq[eid] += 1
            await store.append_step_async(record(eid, status), step)
        elif op < 0.85:
            await store.delete_state_async(eid)
            current[slot] = f"{slot}.{n}"
        elif op < 0.92:
            if _readable(raw, prefix, eid):
                await store.acquire_lease_async(eid, "w1", 30)
                await store.save_state_async(record(eid, status).model_copy(update={"lease_owner": "w1"}))
                await store.release_lease_async(eid, "w1")
        else:
            store._put_raw_head(eid, b'{"execution_id": "damaged')
        if n % 30 == 29:
            await check()
    await check()
    # No orphan index entries: every indexed id has a head key.
    indexed = {m.decode() for m in raw.zrange(f"{prefix}idx:all", 0, -1)}
    heads = {k.decode()[len(f"{prefix}head:") :] for k in raw.scan_iter(match=f"{prefix}head:*")}
    assert indexed == heads


async def test_limit_counts_readable_heads_only(store: RedisDurableStorage) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(3):
        await store.save_state_async(_record(f"good-{i}", updated_at=base + timedelta(minutes=i)))
    store._put_raw_head("damaged", b"\x00 not json")  # indexed as the newest execution
    listed = await store.list_executions_async(limit=2)
    assert [h.execution_id for h in listed] == ["good-2", "good-1"]


async def test_compressed_records_roundtrip(redis_server: RedisServer, raw: redis.Redis, prefix: str) -> None:
    big = {"text": "abc " * 5000}
    store = RedisDurableStorage(url=redis_server.url, prefix=prefix, codec=Codec(compress_above=1024))
    await store.save_state_async(_record("exec-z"))
    await store.append_step_async(_record("exec-z", next_seq=1), _step("exec-z", 0, {"small": 1}))
    await store.append_step_async(_record("exec-z", next_seq=2, output=big), _step("exec-z", 1, big))
    entries = raw.lrange(f"{prefix}journal:exec-z", 0, -1)
    assert entries[0].startswith(b"json:{") and entries[1].startswith(b"json+zstd:")
    assert len(entries[1]) < len(str(big)) / 10
    assert raw.hget(f"{prefix}head:exec-z", "c") == b"json+zstd"
    await store.close_async()
    plain = RedisDurableStorage(url=redis_server.url, prefix=prefix)  # readable without compression
    assert [s.result for s in await plain.load_steps_async("exec-z")] == [{"small": 1}, big]
    head = await plain.load_state_async("exec-z")
    assert head is not None and head.output == big
    await plain.close_async()


# ---- ttl ------------------------------------------------------------------------------------------


async def test_ttl_expires_finished_executions_only(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    store = RedisDurableStorage(url=redis_server.url, prefix=prefix, ttl=1)
    try:
        for eid in ("done", "broken", "waiting", "running"):  # appends never create the execution
            await store.save_state_async(_record(eid))
        await store.append_step_async(_record("done", next_seq=1), _step("done", 0))
        await store.save_state_async(_record("done", status=ExecutionStatus.COMPLETED, next_seq=1))
        await store.acquire_lease_async("done", "w1", 60)  # the lease expires with the execution
        await store.save_state_async(_record("stopped", status=ExecutionStatus.CANCELLED))
        for eid, status in [("broken", "failed"), ("waiting", "paused"), ("running", "success")]:
            await store.append_step_async(
                _record(eid, status=ExecutionStatus(status), next_seq=1), _step(eid, 0)
            )
        # A finished execution written again with another status loses its expiry.
        await store.save_state_async(_record("revived", status=ExecutionStatus.COMPLETED))
        await store.save_state_async(_record("revived", status=ExecutionStatus.SUCCESS))
        for key in ("head:done", "journal:done", "lease:done", "head:stopped"):
            assert 0 < raw.pttl(f"{prefix}{key}") <= 1000, key
        for key in ("head:broken", "journal:waiting", "head:running", "head:revived"):
            assert raw.pttl(f"{prefix}{key}") == -1, key
        before = await store.get_stats_async()
        assert before["total_executions"] == 6
        assert before["by_status"]["completed"] == 1 and before["by_status"]["cancelled"] == 1

        await asyncio.sleep(1.3)
        assert await store.load_state_async("done") is None
        assert await store.load_steps_async("done") == []
        assert raw.exists(f"{prefix}lease:done") == 0
        # list skips heads that are gone and forgets their index entries ...
        listed = {h.execution_id for h in await store.list_executions_async()}
        assert listed == {"broken", "waiting", "running", "revived"}
        assert raw.zscore(f"{prefix}idx:all", "done") is None
        # ... and stats forgets the rest (by the expiry index) before counting.
        after = await store.get_stats_async()
        assert after["total_executions"] == 4
        assert after["by_status"] == {"success": 2, "paused": 1, "failed": 1, "completed": 0, "cancelled": 0}
        for status in ("completed", "cancelled"):
            assert raw.zcard(f"{prefix}idx:status:{status}") == 0
        assert raw.zcard(f"{prefix}idx:expiry") == 0 and raw.zcard(f"{prefix}idx:all") == 4
    finally:
        await store.close_async()


# ---- hot paths ------------------------------------------------------------------------------------


def _calls(raw: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = raw.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_hot_paths_never_scan_the_keyspace(store: RedisDurableStorage, raw: redis.Redis) -> None:
    before = {cmd: _calls(raw, cmd) for cmd in ("keys", "scan")}
    evalsha = _calls(raw, "evalsha")
    for i in range(5):
        await store.save_state_async(_record(f"e{i}"))
        await store.append_step_async(_record(f"e{i}", next_seq=1), _step(f"e{i}", 0))
        await store.save_state_async(_record(f"e{i}", status=ExecutionStatus.COMPLETED, next_seq=1))
    await store.acquire_lease_async("e0", "w", 10)
    await store.renew_lease_async("e0", "w", 10)
    await store.release_lease_async("e0", "w")
    assert len(await store.list_executions_async(limit=3)) == 3
    assert len(await store.list_executions_async("completed")) == 5
    assert (await store.get_stats_async())["total_executions"] == 5
    assert await store.load_state_async("e1") is not None
    assert len(await store.load_steps_async("e1")) == 1
    assert await store.cleanup_old_executions_async(0) == 5
    assert await store.delete_state_async("e0") is False
    assert {cmd: _calls(raw, cmd) for cmd in ("keys", "scan")} == before
    assert _calls(raw, "evalsha") > evalsha  # the writes went through the scripts


async def test_lease_expiry_uses_the_server_clock(store: RedisDurableStorage, raw: redis.Redis) -> None:
    await store.save_state_async(_record("exec-l"))
    seconds, micros = raw.time()
    head = await store.acquire_lease_async("exec-l", "w1", 30)
    assert head.lease_expires_at is not None
    server_now = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)
    assert timedelta(seconds=29.9) < head.lease_expires_at - server_now < timedelta(seconds=31)
    stored = raw.hget(f"{store.prefix}lease:exec-l", "e")
    assert stored is not None and int(stored) == (
        head.lease_expires_at - datetime(1970, 1, 1, tzinfo=UTC)
    ) // (timedelta(microseconds=1))


async def test_foreign_data_under_the_prefix_is_a_user_error(
    store: RedisDurableStorage, raw: redis.Redis, prefix: str
) -> None:
    raw.set(f"{prefix}head:exec-x", "not a hash")
    with pytest.raises(UserError, match="prefix"):
        await store.save_state_async(_record("exec-x"))


# ---- connections and faults -----------------------------------------------------------------------


async def test_unreachable_server_is_storage_unavailable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        store = RedisDurableStorage("127.0.0.1", port, socket_timeout=1)
        with pytest.raises(StorageUnavailableError) as info:
            await store.load_state_async("exec-1")
        assert info.value.backend == "redis" and info.value.execution_id == "exec-1"
        assert f"127.0.0.1:{port}" in info.value.detail
        with pytest.raises(StorageUnavailableError):
            await store.append_step_async(_record("exec-1", next_seq=1), _step("exec-1", 0))
        with pytest.raises(StorageUnavailableError):
            store.get_stats()
        await store.close_async()


async def test_close_releases_connections_and_store_reopens(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    def connected() -> int:
        return int(raw.info("clients")["connected_clients"])

    baseline = connected()
    store = RedisDurableStorage(url=redis_server.url, prefix=prefix)
    await asyncio.gather(*(store.save_state_async(_record(f"e{i}")) for i in range(4)))
    assert connected() > baseline
    await store.close_async()
    await store.close_async()  # idempotent
    for _ in range(50):
        if connected() == baseline:
            break
        await asyncio.sleep(0.01)
    assert connected() == baseline
    assert await store.load_state_async("e1") is not None  # a later call opens a new client
    assert store.load_state("e2") is not None  # and the sync twin one on its own loop
    store.close()
    await store.close_async()


def test_sync_calls_from_short_lived_threads_do_not_pile_up_connections(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    def connected() -> int:
        return int(raw.info("clients")["connected_clients"])

    store = RedisDurableStorage(url=redis_server.url, prefix=prefix)
    baseline = connected()
    for i in range(8):  # each thread gets an event loop of its own for the sync twin, then dies
        worker = threading.Thread(target=store.save_state, args=(_record(f"e{i}"),))
        worker.start()
        worker.join()
        assert connected() <= baseline + 2  # the previous thread's client was reaped
    assert store.get_stats()["total_executions"] == 8
    store.close()
    assert connected() <= baseline


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


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A separate server with an fsync'd append-only file, so a restart keeps acknowledged writes."""
    try:
        server = launch_redis(tmp_path / "aof", persistent=True)
    except (RuntimeError, OSError) as exc:
        unavailable(str(exc))
        raise
    yield server
    server.stop()


async def test_server_dies_mid_run_then_execution_resumes(persistent_redis: RedisServer) -> None:
    server = persistent_redis
    calls: Counter[str] = Counter()
    requests: list[int] = []
    kill = {"b": True}

    def plan(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(len(messages))
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < 3:
            return ModelResponse(parts=[ToolCallPart("abc"[done], {}, tool_call_id=f"call-{done}")])
        return ModelResponse(parts=[TextPart("done")])

    agent = PydanticAgent(FunctionModel(plan), name="faulty", capabilities=[PerdureDurability()])

    @agent.tool_plain
    def a() -> str:
        calls["a"] += 1
        return "A"

    @agent.tool_plain
    def b() -> str:
        calls["b"] += 1
        if kill["b"]:
            server.stop(kill=True)  # the server dies while the tool runs
        return "B"

    @agent.tool_plain
    def c() -> str:
        calls["c"] += 1
        return "C"

    store = RedisDurableStorage(url=server.url, prefix="fault:", socket_timeout=2)
    durable = DurableExecution(store, auto_cleanup=False, execution_id="exec-fault")
    with pytest.raises(Exception) as info:
        await durable.run_agent_async(agent, "go")
    unavailable = [e for e in _chain(info.value) if isinstance(e, StorageUnavailableError)]
    assert unavailable, f"no StorageUnavailableError in {info.value!r}"
    assert unavailable[0].backend == "redis" and unavailable[0].execution_id == "exec-fault"
    assert calls == Counter(a=1, b=1)

    server.start()  # same port; the append-only file brings back every acknowledged write
    steps = await store.load_steps_async("exec-fault")
    assert [s.name for s in steps] == ["model_request", "tool:a", "model_request"]
    head = await store.load_state_async("exec-fault")
    assert head is not None and head.next_seq == 3
    if head.lease_owner is not None:  # the failed attempt could not release its lease: let it lapse
        await store.release_lease_async("exec-fault", head.lease_owner)

    kill["b"] = False
    first_requests = len(requests)
    attempt = await DurableExecution(store, auto_cleanup=False, execution_id="exec-fault").resume_agent_async(
        agent
    )
    assert attempt.output == "done"
    # a ran once in total (journaled); b's result was never journaled, so it ran again (the documented
    # at-least-once boundary); c ran once; the two journaled model requests were not paid again.
    assert calls == Counter(a=1, b=2, c=1)
    assert first_requests == 2 and len(requests) - first_requests == 2
    assert attempt.replay.replayed_model_requests == 2 and attempt.replay.replayed_tool_calls == 1
    final = await store.load_state_async("exec-fault")
    assert final is not None and final.status is ExecutionStatus.COMPLETED
    assert len(await store.load_steps_async("exec-fault")) == 7
    await store.close_async()
