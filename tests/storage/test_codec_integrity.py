"""Storage you cannot trick: checksums, damaged and oversized zstd records, values JSON would change,
typed errors for bad values and URLs, and credentials kept out of stored errors."""

from __future__ import annotations

import io
import json
import resource
import sqlite3
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from perdure import Agent, DurableExecution, Task, tool
from perdure._redact import redact
from perdure.codec import (
    JSON,
    JSON_ZSTD,
    MAX_RECORD_SIZE_ENV,
    Codec,
    decode_head,
    decode_step,
    encode_head,
    encode_step,
    json_data,
)
from perdure.durable import InMemoryDurableStorage
from perdure.errors import CorruptRecordError, SerializationError, StorageConfigurationError, UserError
from perdure.records import ErrorInfo, ExecutionRecord, ExecutionStatus, StepKind, StepRecord, TaskSnapshot
from perdure.storage import (
    DurableExecutionStorage,
    FileDurableStorage,
    SQLiteDurableStorage,
    storage_from_url,
)
from perdure.storage.base import validate_identifier
from support.storages import BACKENDS, make_factory

zstd = pytest.importorskip("zstandard")


def _head(execution_id: str, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, **fields)


def _step(execution_id: str, seq: int, result: Any, **fields: Any) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        seq=seq,
        kind=StepKind.TOOL_CALL,
        name="tool:t",
        key=f"tool:{seq}",
        result=result,
    )


# ---- 1. a checksum per record ------------------------------------------------------------------------


def test_payload_stays_readable_json_with_trailing_checksum() -> None:
    raw = encode_step(_step("e-1", 0, {"n": 1, "text": "héllo"}))
    data = json.loads(raw)
    assert data["result"] == {"n": 1, "text": "héllo"} and list(data)[-1] == "_crc"
    body = raw[: raw.rindex(b',"_crc"')] + b"}"
    assert data["_crc"] == f"{zlib.crc32(body):08x}"
    assert decode_step("e-1", 0, raw).result == {"n": 1, "text": "héllo"}
    head = encode_head(_head("e-1", metadata={"k": "v"}))
    assert decode_head("e-1", head).metadata == {"k": "v"}
    assert decode_head("e-1", head.decode()).metadata == {"k": "v"}  # text columns hand back str


def test_records_without_checksum_still_read() -> None:
    """Records written by perdure before checksums (no `_crc` key) are accepted as they are."""
    legacy_head = _head("e-old", metadata={"a": 1}).model_dump_json().encode()
    legacy_step = _step("e-old", 0, [1, 2]).model_dump_json().encode()
    assert b"_crc" not in legacy_head and not legacy_head.endswith(b'"}')
    assert decode_head("e-old", legacy_head).metadata == {"a": 1}
    assert decode_step("e-old", 0, legacy_step).result == [1, 2]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"987654321", b"987654320"),  # a digit of the result
        (b'"tool:t"', b'"tool:u"'),  # a letter of the name
        (b'"_crc":"', b'"_crd":"'),  # the checksum's key itself
        (b'"}', b'"]'),  # the closing brace (no longer JSON)
    ],
)
def test_any_changed_byte_is_corrupt(old: bytes, new: bytes) -> None:
    raw = encode_step(_step("e-1", 0, {"n": 987654321}))
    damaged = raw[::-1].replace(old[::-1], new[::-1], 1)[::-1]  # the last occurrence
    assert damaged != raw
    with pytest.raises(CorruptRecordError, match="e-1"):
        decode_step("e-1", 0, damaged)


def test_changed_checksum_digit_is_corrupt() -> None:
    raw = encode_head(_head("e-1"))
    digit = raw[-3:-2]
    damaged = raw[:-3] + (b"0" if digit != b"0" else b"1") + raw[-2:]
    with pytest.raises(CorruptRecordError, match="checksum mismatch"):
        decode_head("e-1", damaged)


def test_checksum_is_inside_compressed_payloads() -> None:
    codec = Codec(compress_above=0)
    name, payload = codec.encode(encode_step(_step("e-z", 0, {"n": 987654321})))
    assert name == JSON_ZSTD
    assert decode_step("e-z", 0, payload, codec=name).result == {"n": 987654321}
    inner = zstd.ZstdDecompressor().decompress(payload).replace(b"987654321", b"987654320")
    with pytest.raises(CorruptRecordError, match="checksum mismatch"):
        decode_step("e-z", 0, zstd.ZstdCompressor().compress(inner), codec=name)


def _flip_raw(
    kind: str,
    store: DurableExecutionStorage,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    eid: str,
    old: bytes,
    new: bytes,
) -> None:
    """Change `old` into `new` in every stored record of `eid`, through the backend's own medium."""
    if kind == "memory":
        heads: dict[str, bytes] = store._heads  # type: ignore[attr-defined]
        journals: dict[str, list[bytes]] = store._journals  # type: ignore[attr-defined]
        heads[eid] = heads[eid].replace(old, new)
        journals[eid] = [entry.replace(old, new) for entry in journals[eid]]
    elif kind == "file":
        for path in (tmp_path / "states" / eid).iterdir():
            if path.is_file():
                path.write_bytes(path.read_bytes().replace(old, new))
    elif kind.startswith("sqlite"):
        table = store.table_name  # type: ignore[attr-defined]
        with sqlite3.connect(tmp_path / "durable.db") as conn:
            for name in (table, f"{table}_steps"):
                conn.execute(
                    f"UPDATE {name} SET payload = CAST(replace(CAST(payload AS TEXT), ?, ?) AS BLOB) "
                    f"WHERE execution_id = ?",
                    (old.decode(), new.decode(), eid),
                )
    elif kind == "redis":
        import redis

        prefix = store.prefix  # type: ignore[attr-defined]
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            head_key, journal_key = f"{prefix}head:{eid}", f"{prefix}journal:{eid}"
            client.hset(head_key, "d", client.hget(head_key, "d").replace(old, new))  # type: ignore[union-attr]
            for index, entry in enumerate(client.lrange(journal_key, 0, -1)):  # type: ignore[union-attr]
                client.lset(journal_key, index, entry.replace(old, new))
        finally:
            client.close()
    elif kind == "postgres":
        import psycopg

        prefix = store.table_prefix  # type: ignore[attr-defined]
        with psycopg.connect(store.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            for name in (f"{prefix}heads", f"{prefix}steps"):
                conn.execute(
                    f"UPDATE {name} SET payload = convert_to(replace(convert_from(payload, 'UTF8'), %s, %s), "
                    f"'UTF8') WHERE execution_id = %s",
                    (old.decode(), new.decode(), eid),
                )
    else:  # pragma: no cover
        raise ValueError(kind)


@pytest.mark.parametrize("kind", BACKENDS)
def test_flipped_digit_in_stored_value_is_corrupt_record(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A digit changed in the medium (file edit, UPDATE, HSET/LSET) is refused, never replayed."""
    store = make_factory(kind, tmp_path, request)()
    try:
        for eid in ("flip-1", "good-1"):
            head = _head(eid, metadata={"amount": 123456789})
            store.save_state(head)
            store.append_step(head.model_copy(update={"next_seq": 1}), _step(eid, 0, {"n": 987654321}))
        assert store.load_steps("flip-1")[0].result == {"n": 987654321}

        _flip_raw(kind, store, tmp_path, request, "flip-1", b"987654321", b"987654320")
        _flip_raw(kind, store, tmp_path, request, "flip-1", b"123456789", b"123456788")

        with pytest.raises(CorruptRecordError, match="flip-1") as err:
            store.load_steps("flip-1")
        assert "checksum mismatch" in str(err.value)
        with pytest.raises(CorruptRecordError, match="checksum mismatch"):
            store.load_state("flip-1")
        assert [h.execution_id for h in store.list_executions()] == ["good-1"]
        good = store.load_state("good-1")
        assert good is not None and good.metadata == {"amount": 123456789}
    finally:
        store.close()


# ---- 2. damaged and oversized zstd payloads ---------------------------------------------------------


def test_damaged_zstd_payload_is_corrupt_record() -> None:
    _, payload = Codec(compress_above=0).encode(encode_head(_head("e-z", metadata={"x": "y" * 500})))
    for damaged in (payload[: len(payload) // 2], b"\x28\xb5\x2f\xfd garbage", b"not zstd at all"):
        with pytest.raises(CorruptRecordError, match="e-z"):
            decode_head("e-z", damaged, codec=JSON_ZSTD)
    with pytest.raises(CorruptRecordError, match="unknown codec"):
        decode_head("e-z", payload, codec="pickle")


def _bomb(size: int, *, declare_size: bool) -> bytes:
    """A zstd frame of `size` zero bytes, built by streaming (the zeros are never in memory at once)."""
    buf = io.BytesIO()
    compressor = zstd.ZstdCompressor(level=3, write_content_size=declare_size)
    chunk = bytes(1 << 20)
    with compressor.stream_writer(buf, size=size if declare_size else -1, closefd=False) as writer:
        for _ in range(size // len(chunk)):
            writer.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    payload = _bomb(700 << 20, declare_size=False)
    assert len(payload) < 32 * 1024
    return payload


def test_size_limit_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = encode_step(_step("e-1", 0, "x" * 5000))
    _, payload = Codec(compress_above=0).encode(raw)
    assert decode_step("e-1", 0, payload, codec=JSON_ZSTD).result == "x" * 5000
    with pytest.raises(CorruptRecordError, match="beyond the 1000-byte limit"):
        decode_step("e-1", 0, payload, codec=JSON_ZSTD, max_size=1000)
    monkeypatch.setenv(MAX_RECORD_SIZE_ENV, "2000")
    with pytest.raises(CorruptRecordError, match="beyond the 2000-byte limit"):
        decode_step("e-1", 0, payload, codec=JSON_ZSTD)
    monkeypatch.setenv(MAX_RECORD_SIZE_ENV, "lots")
    with pytest.raises(UserError, match=MAX_RECORD_SIZE_ENV):
        decode_step("e-1", 0, payload, codec=JSON_ZSTD)
    with pytest.raises(UserError, match="max_decompressed_size"):
        Codec(max_decompressed_size=0)
    assert Codec(max_decompressed_size=10).max_decompressed_size == 10


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "memory"])
def test_backends_apply_their_codec_size_limit(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A backend built with `Codec(max_decompressed_size=N)` refuses records that inflate beyond N."""
    big = make_factory(kind, tmp_path, request, Codec(compress_above=0))
    store = big()
    head = ExecutionRecord(execution_id="e-big", task=TaskSnapshot(description="y" * 5000))
    store.save_state(head)
    store.close()
    limited = make_factory(kind, tmp_path, request, Codec(compress_above=0, max_decompressed_size=1000))
    if kind in ("redis", "postgres"):  # a new namespace per factory: reuse the first store's settings
        store = big()
        store.codec = Codec(compress_above=0, max_decompressed_size=1000)
    else:
        store = limited()
    try:
        with pytest.raises(CorruptRecordError, match="1000-byte limit"):
            store.load_state("e-big")
    finally:
        store.close()


def test_declared_oversize_is_refused_without_decompressing() -> None:
    payload = _bomb(96 << 20, declare_size=True)
    started = time.perf_counter()
    with pytest.raises(CorruptRecordError, match=r"beyond the \d+-byte limit"):
        decode_head("e-b", payload, codec=JSON_ZSTD)
    assert time.perf_counter() - started < 0.05


def _plant_bomb(kind: str, store: DurableExecutionStorage, tmp_path: Path, eid: str, payload: bytes) -> None:
    if kind == "file":
        import base64

        envelope = {"codec": JSON_ZSTD, "data": base64.b64encode(payload).decode()}
        (tmp_path / "states" / eid / "head.json").write_bytes(json.dumps(envelope).encode() + b"\n")
    else:
        with sqlite3.connect(tmp_path / "durable.db") as conn:
            table = store.table_name  # type: ignore[attr-defined]
            conn.execute(
                f"UPDATE {table} SET codec = ?, payload = ? WHERE execution_id = ?", (JSON_ZSTD, payload, eid)
            )


@pytest.mark.parametrize("kind", ["file", "sqlite-normal"])
def test_zstd_bomb_is_skipped_by_list_without_inflating(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, bomb: bytes
) -> None:
    store = make_factory(kind, tmp_path, request, Codec(compress_above=0))()
    try:
        for eid in ("bomb-1", "good-1", "good-2"):
            store.save_state(_head(eid, metadata={"n": eid}))
        _plant_bomb(kind, store, tmp_path, "bomb-1", bomb)

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        tracemalloc.start()
        started = time.perf_counter()
        try:
            listed = store.list_executions()
            stats = store.get_stats()
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024

        assert sorted(h.execution_id for h in listed) == ["good-1", "good-2"]
        assert stats["total_executions"] in (2, 3)  # an index may count the unreadable head
        assert elapsed < 5, elapsed
        assert peak < 100 << 20, peak
        assert rss_growth < 100 << 20, rss_growth
        with pytest.raises(CorruptRecordError, match=r"bomb-1.*decompresses beyond the \d+-byte limit"):
            store.load_state("bomb-1")
    finally:
        store.close()


# ---- 3./4. values JSON would change, and unserializable values ----------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), {"a": [1.0, float("nan")]}])
def test_non_finite_numbers_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"e-1.*type float.*NaN or infinity") as err:
        encode_step(_step("e-1", 0, value))
    assert err.value.execution_id == "e-1" and err.value.step == "tool:t"
    with pytest.raises(SerializationError, match=r"Step 'output' of execution 'e-1'"):
        encode_head(_head("e-1", output=value))


def test_text_mentioning_nan_is_stored() -> None:
    result = {"note": "NaN and Infinity are not numbers here", "NaN": "Infinity"}
    assert decode_step("e-1", 0, encode_step(_step("e-1", 0, result))).result == result


@pytest.mark.parametrize(
    ("value", "value_type", "needle"),
    [
        ("\ud800", "str", "unpaired surrogate U+D800"),
        ({"k": ["ok", "x\udfff"]}, "str", 'at ["k"][1]'),
        (b"\xff\xfe", "bytes", "not UTF-8"),
    ],
)
def test_unencodable_strings_and_bytes_are_refused(value: Any, value_type: str, needle: str) -> None:
    with pytest.raises(SerializationError, match=f"type {value_type}") as err:
        encode_step(_step("e-1", 0, value))
    assert needle in str(err.value) and "e-1" in str(err.value)


def _nested(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def test_deep_nesting_is_named_as_such() -> None:
    with pytest.raises(SerializationError, match="nested too deeply") as err:
        encode_step(_step("e-1", 0, _nested(10_000)))
    assert "Circular" not in str(err.value)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError, match="circular reference"):
        json_data({"loop": cyclic}, execution_id="e-1", what="metadata")


def test_context_and_metadata_must_be_json() -> None:
    with pytest.raises(SerializationError, match=r"'task context' of execution 'e-1'.*type set"):
        encode_head(_head("e-1", task=TaskSnapshot(context={"tags": {"a", "b"}})))
    with pytest.raises(SerializationError, match=r"'metadata' of execution 'e-1'.*type object"):
        encode_head(_head("e-1", metadata={"who": object()}))
    with pytest.raises(SerializationError, match=r"'metadata' of execution 'e-1'.*surrogate"):
        encode_head(_head("e-1", metadata={"who": "\ud800"}))
    with pytest.raises(SerializationError, match=r"'task context' of execution 'e-1'.*surrogate"):
        encode_head(_head("e-1", task=TaskSnapshot(context={"who": "\ud800"})))
    with pytest.raises(SerializationError, match=r"'metadata' of execution 'e-2'.*type set"):
        json_data({"s": {1}}, execution_id="e-2", what="metadata")
    with pytest.raises(SerializationError, match=r"'metadata' of execution 'e-2'.*type object"):
        json_data({"o": object()}, execution_id="e-2", what="metadata")
    assert json_data({"when": 1.5, "n": [1, "x"]}, execution_id="e-2", what="metadata") == {
        "when": 1.5,
        "n": [1, "x"],
    }


@tool
def fetch_rows(source: str) -> dict[str, Any]:
    """Fetch rows."""
    return {"source": source, "rows": [1, 2, 3]}


def _failing_run(tool_fn: Any, **task: Any) -> tuple[DurableExecution, InMemoryDurableStorage, BaseException]:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    name = tool_fn.__name__
    with pytest.raises(Exception) as err:
        Agent("perdure:scripted").do(
            Task(f"Fetch then {name}", tools=[fetch_rows, tool_fn], durable_execution=durable, **task)
        )
    return durable, storage, err.value


@pytest.mark.parametrize(
    ("returned", "needle"),
    [
        (float("nan"), "NaN or infinity"),
        ({"score": float("inf")}, 'at result["score"]'),
        ("ok \ud800", "unpaired surrogate"),
        (b"\x89PNG\xff", "not UTF-8"),
        (_nested(10_000), "nested too deeply"),
    ],
    ids=["nan", "inf", "surrogate", "bytes", "deep"],
)
def test_tool_result_json_cannot_hold_fails_the_step(returned: Any, needle: str) -> None:
    @tool
    def odd_value(source: str) -> Any:
        """Returns a value JSON cannot hold exactly."""
        return returned

    durable, storage, error = _failing_run(odd_value)
    assert isinstance(error, SerializationError), error
    assert durable.execution_id in str(error) and "tool:odd_value" in str(error) and needle in str(error)
    head = storage.load_state(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.FAILED and head.step_name == "tool:odd_value"
    assert head.error is not None and head.error.type.endswith("SerializationError")
    steps = storage.load_steps(durable.execution_id)
    assert [s.name for s in steps] == ["model_request", "tool:fetch_rows", "model_request"]
    assert steps[1].result["result"]["rows"] == [1, 2, 3]


def test_non_json_task_context_names_the_execution() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    for context in ({"tags": {"x"}}, {"who": "\ud800"}, {"obj": object()}):
        with pytest.raises(SerializationError, match=durable.execution_id):
            Agent("perdure:scripted").do(
                Task("Fetch", tools=[fetch_rows], durable_execution=durable, context=context)
            )


# ---- 4. storage URLs and identifiers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://:s3cret-pw@host[:6379/0", "Malformed storage URL"),
        ("postgresql://u:s3cret-pw@[::1/db", "Malformed storage URL"),
        ("redis://:s3cret-pw@localhost:6379/0?prefix=a%00b", "NUL"),
        ("sqlite:///a%00b.db", "NUL"),
        ("file:///tmp/x%00y", "NUL"),
        ("redis://:s3cret-pw@localhost:6379/0?prefix=a&prefix=b", "prefix given more than once"),
        ("postgresql://u:s3cret-pw@localhost/db?table_prefix=a&table_prefix=b", "table_prefix given more"),
        ("sqlite:///x.db?table=a&table=b", "table given more than once"),
        ("sqlite:///x.db?table=a&table_name=b", "table and table_name both set"),
        ("sqlite:///x.db?tabel=a", "supported: busy_timeout_ms, synchronous, table, table_name"),
        ("redis://:s3cret-pw@localhost:6379/0?bogus=1", "supported: prefix"),
        ("memory://?x=1", "supported: none"),
    ],
)
def test_bad_storage_urls_are_configuration_errors(url: str, needle: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(StorageConfigurationError) as err:
        storage_from_url(url)
    assert needle in str(err.value)
    assert "s3cret-pw" not in str(err.value) and "s3cret-pw" not in repr(err.value.__cause__ or "")


@pytest.mark.parametrize("name", ["t\n", "t\r\n", "ok\nDROP", "1t", "t-x", "", "t" * 64])
def test_identifiers_refuse_trailing_newline_and_other_junk(name: str, tmp_path: Path) -> None:
    with pytest.raises(StorageConfigurationError, match="Invalid table name"):
        validate_identifier(name, "table name")
    with pytest.raises(StorageConfigurationError):
        SQLiteDurableStorage(tmp_path / "x.db", table_name=name)
    assert validate_identifier("t_1", "table name") == "t_1"


# ---- 5. credentials in stored errors ------------------------------------------------------------------

_SECRETS = [
    ("Incorrect API key provided: sk-proj-AbCdEf0123456789GhIjKl_mnOp", "sk-proj-AbCdEf0123456789"),
    ("Incorrect API key provided: sk-proj-abc...xyz9876543", "abc...xyz9876543"),
    ("x-api-key header: sk-ant-api03-Zz9Yy8Xx7Ww6Vv5Uu4Tt3-AA", "Zz9Yy8Xx7Ww6"),
    ("key sk-1234567890abcdefABCDEF was rejected", "1234567890abcdef"),
    ("headers={'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig'}", "eyJhbGciOiJIUzI1NiJ9"),
    ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
    ("curl -H 'Bearer tok_live_0123456789abcdef'", "tok_live_0123456789abcdef"),
    ("GET https://api.example.com/v1?api_key=AIzaNotReal123&q=1", "AIzaNotReal123"),
    ('payload {"api_key": "live-123456", "n": 1}', "live-123456"),
    ("apikey=abcdef123456 password=hunter2!", "hunter2!"),
    ("connect postgresql://app:p%40ss-w0rd@db.internal:5432/prod failed", "p%40ss-w0rd"),
    ("redis://:r3dis-pass@cache:6379/0 refused", "r3dis-pass"),
    ("aws AKIAIOSFODNN7EXAMPLE denied", "IOSFODNN7EXAMPLE"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345 revoked", "0123456789abcdefghij"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "11ABCDEFG0123456789"),
]


@pytest.mark.parametrize(("text", "secret"), _SECRETS)
def test_redact_removes_secrets(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned and "***" in cleaned


def test_redact_keeps_ordinary_text_and_is_fast() -> None:
    plain = "ValueError: max_tokens=5 for model gpt-4o at https://api.openai.com/v1 (sk-learn is fine)\n"
    assert redact(plain) == plain
    assert redact("postgresql://app@db/prod") == "postgresql://app@db/prod"
    big = plain * 2000 + _SECRETS[0][0]
    started = time.perf_counter()
    cleaned = redact(big)
    assert time.perf_counter() - started < 0.2
    assert "AbCdEf0123456789" not in cleaned and cleaned.count("max_tokens=5") == 2000


def test_error_info_redacts_and_stays_storable() -> None:
    try:
        raise RuntimeError("bad key sk-proj-AbCdEf0123456789GhIjKl and \ud800")
    except RuntimeError as exc:
        info = ErrorInfo.from_exception(exc)
    assert "AbCdEf0123456789" not in info.message + info.traceback
    assert "\\ud800" in info.message
    encode_head(_head("e-1", error=info))  # a lone surrogate in an error does not make the head unstorable


_LEAKED_KEY = "sk-proj-Q1w2E3r4T5y6U7i8O9p0AsDfGhJkL"


@tool
def leaky_call(source: str) -> str:
    """Calls a provider that echoes the key."""
    raise RuntimeError(f"Incorrect API key provided: {_LEAKED_KEY}. You can find your API key at ...")


def test_stored_error_does_not_contain_the_api_key() -> None:
    durable, storage, error = _failing_run(leaky_call)
    assert isinstance(error, RuntimeError)
    head = storage.load_state(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.FAILED and head.error is not None
    assert "Incorrect API key provided: sk-proj-***" in head.error.message
    assert "Q1w2E3r4" not in head.error.message and "Q1w2E3r4" not in head.error.traceback
    assert (
        "Q1w2E3r4" not in (DurableExecution.get_execution_info(durable.execution_id, storage) or {})["error"]
    )


def test_file_and_sqlite_round_trip_unchanged(tmp_path: Path) -> None:
    """The checksum changes nothing for well-formed data on the local backends."""
    for store in (FileDurableStorage(tmp_path / "f"), SQLiteDurableStorage(tmp_path / "s.db")):
        head = _head("rt-1", metadata={"nested": {"a": [1, 2.5, None, "ü"]}})
        store.save_state(head)
        store.append_step(head.model_copy(update={"next_seq": 1}), _step("rt-1", 0, {"x": "y"}))
        loaded = store.load_state("rt-1")
        assert loaded is not None and loaded.metadata == head.metadata
        assert store.load_steps("rt-1")[0].result == {"x": "y"}
        store.close()
    assert JSON == "json"
