"""Alerts: rules, the once-per-window semantics on every backend, webhooks against a real local HTTP
server (retries, timeouts, no secret in logs), `monitor`, the worker and the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import perdure
import perdure.alerts as alerts_module
from perdure.alerts import Alert, AlertEvaluator, AlertRule, WebhookError, monitor, monitor_sync, notify_async
from perdure.cli import app
from perdure.durable.worker import Worker
from perdure.errors import UserError
from perdure.records import ExecutionRecord, ExecutionStatus
from perdure.storage import DurableExecutionStorage, InMemoryDurableStorage, storage_from_url
from support import worker_app
from support.storages import BACKENDS, make_factory
from support.workers import CRASH_POINTS

SECRET = "hunter2-s3cret"

# ---- a real local HTTP server ------------------------------------------------------------------------


@dataclass
class Hook:
    """What the local webhook server received, and how it answers (a queue of statuses, then 200)."""

    statuses: list[int] = field(default_factory=list)
    hang: threading.Event | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def secret_url(self) -> str:
        return f"http://alerts:{SECRET}@127.0.0.1:{self.port}/services/{SECRET}?token={SECRET}"

    def wait(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count:
            assert time.monotonic() < deadline, f"{len(self.bodies)} POSTs received, wanted {count}"
            time.sleep(0.02)


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with lock:
                state.bodies.append(body)
                state.headers.append({k.lower(): v for k, v in self.headers.items()})
                state.paths.append(self.path)
                status = state.statuses.pop(0) if state.statuses else 200
            if state.hang is not None:
                state.hang.wait(30)
                return
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hang is not None:
            state.hang.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


# ---- helpers -------------------------------------------------------------------------------------


T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


async def put(
    storage: DurableExecutionStorage,
    execution_id: str,
    at: datetime,
    status: ExecutionStatus = ExecutionStatus.FAILED,
) -> None:
    await storage.save_state_async(
        ExecutionRecord(execution_id=execution_id, status=status, created_at=at, updated_at=at)
    )


def an_alert(notify: Any, **rule: Any) -> Alert:
    made = AlertRule("failed", 2, timedelta(minutes=10), notify, **rule)
    return Alert(made, 3, T0 - timedelta(minutes=10), T0, ("a", "b", "c"), T0, backend="memory")


# ---- rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"status": "broken"}, "not a status"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": 2.5}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"window": timedelta(0)}, "window"),
        ({"window": -5}, "window"),
        ({"window": "10m"}, "window"),
        ({"notify": "ftp://example.com/hook"}, "not an http(s) URL"),
        ({"notify": "hooks.example.com/x"}, "not an http(s) URL"),
        ({"notify": 42}, "callable, an http(s) URL or None"),
        ({"timeout": 0}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"backoff": -0.1}, "backoff"),
    ],
)
def test_invalid_rules_are_refused_with_a_user_error(kwargs: dict[str, Any], says: str) -> None:
    args: dict[str, Any] = {"status": "failed", **kwargs}
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")):
        AlertRule(**args)


def test_rule_parsing_defaults_and_redaction() -> None:
    rule = AlertRule(status="failed", threshold=5, window=timedelta(minutes=10), notify=print)
    assert rule.status is ExecutionStatus.FAILED and rule.name == "failed>=5/10m"
    assert AlertRule("paused", window=90).window == timedelta(seconds=90)
    parsed = AlertRule.parse("failed:3:2h")
    assert (parsed.status, parsed.threshold, parsed.window) == (ExecutionStatus.FAILED, 3, timedelta(hours=2))
    assert AlertRule.parse("cancelled").threshold == 5
    assert AlertRule.parse("failed:7").window == timedelta(minutes=10)
    for bad in ("", "failed:x", "failed:5:soon", "failed:5:10m:extra", "nope:5"):
        with pytest.raises(UserError):
            AlertRule.parse(bad)
    secret_url = f"https://bot:{SECRET}@hooks.example.com/services/{SECRET}"
    assert SECRET not in repr(AlertRule("failed", notify=secret_url))
    with pytest.raises(UserError) as refused:
        AlertRule("failed", notify=f"ftp://bot:{SECRET}@example.com/{SECRET}")
    assert SECRET not in str(refused.value)
    with pytest.raises(UserError, match="AlertRule"):
        AlertEvaluator(["failed:5"])  # type: ignore[list-item]


def test_alert_is_json_serializable() -> None:
    alert = an_alert(None)
    body = json.loads(json.dumps(alert.to_dict()))
    assert body["rule"] == {
        "name": "failed>=2/10m",
        "status": "failed",
        "threshold": 2,
        "window_seconds": 600.0,
    }
    assert body["count"] == 3 and body["execution_ids"] == ["a", "b", "c"]
    assert (
        body["window_start"] == "2030-01-01T11:50:00+00:00"
        and body["fired_at"] == "2030-01-01T12:00:00+00:00"
    )
    assert body["text"].startswith("perdure alert failed>=2/10m: 3 executions failed in the last 10m")


# ---- once per window, on every backend ---------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
async def test_fires_once_per_window_not_per_poll(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = make_factory(kind, tmp_path, request)()
    try:
        evaluator = AlertEvaluator([AlertRule("failed", 3, timedelta(minutes=10))])
        await put(storage, "old", T0 - timedelta(minutes=20))  # before the window
        await put(storage, "f1", T0 - timedelta(minutes=5))
        await put(storage, "f2", T0 - timedelta(minutes=4))
        await put(storage, "done", T0 - timedelta(minutes=3), ExecutionStatus.COMPLETED)
        await put(storage, "later", T0 + timedelta(seconds=90))  # after `now`: not yet
        assert await evaluator.check_async(storage, now=T0) == []  # 2 in the window

        await put(storage, "f3", T0 - timedelta(minutes=1))
        [alert] = await evaluator.check_async(storage, now=T0)
        assert alert.count == 3 and alert.execution_ids == ("f3", "f2", "f1")
        assert (alert.window_start, alert.window_end, alert.fired_at) == (T0 - timedelta(minutes=10), T0, T0)
        assert alert.backend == storage.backend_name and not alert.count_is_lower_bound

        # Polls within the window: still >= 3, and more failures come in, but no second alert.
        await put(storage, "f4", T0 + timedelta(minutes=2))
        for minutes in (0, 1, 5, 9.99):
            assert await evaluator.check_async(storage, now=T0 + timedelta(minutes=minutes)) == []

        # The next window holds none of the executions already reported; 2 new ones do not fire.
        assert await evaluator.check_async(storage, now=T0 + timedelta(minutes=10)) == []
        # The threshold crossed again within a window: one more alert, then silence again.
        await put(storage, "f5", T0 + timedelta(minutes=10, seconds=30))
        [again] = await evaluator.check_async(storage, now=T0 + timedelta(minutes=11))
        assert again.count == 3 and again.execution_ids == ("f5", "f4", "later")
        assert await evaluator.check_async(storage, now=T0 + timedelta(minutes=12)) == []
        assert evaluator.fired == [alert, again]
    finally:
        await storage.close_async()


async def test_count_reads_few_heads_and_reports_a_lower_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = storage_from_url(f"sqlite:///{tmp_path / 'many.db'}")
    limits: list[int | None] = []
    listing = storage.list_executions_async

    async def spy(status: Any = None, limit: int | None = None) -> list[ExecutionRecord]:
        limits.append(limit)
        return await listing(status, limit)

    monkeypatch.setattr(storage, "list_executions_async", spy)
    for i in range(300):  # many old failures: the evaluation must not read them all
        await put(storage, f"old-{i:03d}", T0 - timedelta(days=1, seconds=i))
    for i in range(3):
        await put(storage, f"new-{i}", T0 - timedelta(seconds=i))
    evaluator = AlertEvaluator([AlertRule("failed", 2, timedelta(minutes=10))])
    [alert] = await evaluator.check_async(storage, now=T0)
    assert alert.count == 3 and limits == [32]

    # A window holding more than MAX_SCAN: pages grow 32 -> 128 -> 200 (the cap), count is a bound.
    monkeypatch.setattr(alerts_module, "MAX_SCAN", 200)
    monkeypatch.setattr(alerts_module, "MAX_IDS", 4)
    limits.clear()
    wide = AlertEvaluator([AlertRule("failed", 2, timedelta(days=2))])
    [bound] = await wide.check_async(storage, now=T0)
    assert limits == [32, 128, 200]
    assert bound.count == 200 and bound.count_is_lower_bound and len(bound.execution_ids) == 4
    assert "200+ executions" in bound.text
    storage.close()


async def test_a_storage_error_is_logged_and_the_next_evaluation_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = InMemoryDurableStorage()
    calls = 0
    listing = storage.list_executions_async

    async def flaky(status: Any = None, limit: int | None = None) -> list[ExecutionRecord]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError(f"redis://user:{SECRET}@db:6379 refused")
        return await listing(status, limit)

    storage.list_executions_async = flaky  # type: ignore[method-assign]
    await put(storage, "f1", T0 - timedelta(seconds=1))
    evaluator = AlertEvaluator([AlertRule("failed", 1, 600)])
    with caplog.at_level(logging.ERROR, logger="perdure.alerts"):
        assert await evaluator.evaluate_async(storage, now=T0) == []
    assert "counting executions failed" in caplog.text and SECRET not in caplog.text
    assert len(await evaluator.evaluate_async(storage, now=T0)) == 1


# ---- webhooks against a real local HTTP server -------------------------------------------------------


async def test_webhook_posts_the_alert_as_json(hook: Hook) -> None:
    alert = an_alert(hook.url(), headers={"Authorization": f"Bearer {SECRET}"})
    await notify_async(alert)
    assert hook.bodies == [alert.to_dict()]
    assert hook.headers[0]["content-type"] == "application/json"
    assert hook.headers[0]["authorization"] == f"Bearer {SECRET}" and hook.paths == ["/hook"]


async def test_webhook_retries_after_a_server_error(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.statuses = [500, 503]
    with caplog.at_level(logging.INFO, logger="perdure.alerts"):
        await notify_async(an_alert(hook.secret_url(), retries=2, backoff=0.01))
    assert len(hook.bodies) == 3 and hook.bodies[0] == hook.bodies[2]
    assert "HTTP 500" in caplog.text and "retry 1 of 2" in caplog.text and "sent to" in caplog.text
    assert SECRET not in caplog.text


async def test_webhook_gives_up_after_its_retries_and_never_logs_the_secret(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    hook.statuses = [500, 500, 500]
    alert = an_alert(hook.secret_url(), retries=1, backoff=0)
    with pytest.raises(WebhookError, match="after 2 attempts: HTTP 500") as failed:
        await notify_async(alert)
    assert len(hook.bodies) == 2 and SECRET not in str(failed.value)

    hook.statuses = [404]  # a client error is not retried
    with pytest.raises(WebhookError, match="HTTP 404"):
        await notify_async(an_alert(hook.url(), retries=3, backoff=0))
    assert len(hook.bodies) == 3

    # Through the evaluator: logged, never raised; the URL's password, path and query stay out.
    storage = InMemoryDurableStorage()
    await put(storage, "f1", T0 - timedelta(seconds=1))
    hook.statuses = [500, 500]
    evaluator = AlertEvaluator([AlertRule("failed", 1, 600, hook.secret_url(), retries=1, backoff=0)])
    with caplog.at_level(logging.DEBUG, logger="perdure"):
        [fired] = await evaluator.evaluate_async(storage, now=T0)
    assert fired.count == 1
    assert (
        "failed after 2 attempts: HTTP 500" in caplog.text
        and f"http://127.0.0.1:{hook.port}/…" in caplog.text
    )
    assert SECRET not in caplog.text


async def test_webhook_timeout_is_honoured(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.hang = threading.Event()
    started = time.monotonic()
    with pytest.raises(WebhookError, match=r"after 2 attempts: no answer within 0.3s"):
        await notify_async(an_alert(hook.url(), timeout=0.3, retries=1, backoff=0))
    assert time.monotonic() - started < 3
    assert len(hook.bodies) == 2


async def test_unreachable_webhook_and_failing_callables_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    storage = InMemoryDurableStorage()
    await put(storage, "f1", T0 - timedelta(seconds=1))
    received: list[Alert] = []

    def boom(alert: Alert) -> None:
        raise RuntimeError(f"smtp login failed: password={SECRET}")

    async def collect(alert: Alert) -> None:
        received.append(alert)

    rules = [
        AlertRule("failed", 1, 600, "http://127.0.0.1:9/hook", retries=0, timeout=2),
        AlertRule("failed", 1, 600, boom, name="boom"),
        AlertRule("failed", 1, 600, collect, name="collect"),
        AlertRule("failed", 1, 600, received.append, name="sync"),
    ]
    with caplog.at_level(logging.ERROR, logger="perdure.alerts"):
        fired = await AlertEvaluator(rules).evaluate_async(storage, now=T0)
    assert len(fired) == 4 and sorted(a.rule.name for a in received) == ["collect", "sync"]
    assert "notify http://127.0.0.1:9/… failed" in caplog.text
    assert "alert boom: notify" in caplog.text and "RuntimeError: smtp login failed" in caplog.text
    assert SECRET not in caplog.text


# ---- monitor ---------------------------------------------------------------------------------------


async def test_monitor_fires_once_across_polls_and_stops() -> None:
    storage = InMemoryDurableStorage()
    now = datetime.now(UTC)
    for i in range(5):
        await put(storage, f"f{i}", now - timedelta(seconds=i))
    received: list[Alert] = []
    rules = [AlertRule("failed", 5, timedelta(minutes=10), received.append)]
    fired = await perdure.monitor(storage, rules, interval=0.01, iterations=5)
    assert len(fired) == 1 and received == fired and fired[0].count == 5

    stop = asyncio.Event()
    task = asyncio.create_task(monitor(storage, rules, interval=30, stop=stop))
    await asyncio.sleep(0.2)
    stop.set()
    assert len(await asyncio.wait_for(task, 5)) == 1  # a new evaluator: fires once, then waits

    with pytest.raises(UserError):
        await monitor(storage, rules, interval=0)


def test_monitor_sync_with_a_url_and_a_threading_event(tmp_path: Path, hook: Hook) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    storage = storage_from_url(url)
    now = datetime.now(UTC)
    for i in range(2):
        asyncio.run(put(storage, f"f{i}", now - timedelta(seconds=i)))
    storage.close()
    stop = threading.Event()
    stop.set()
    fired = monitor_sync(url, [AlertRule("failed", 2, 600, hook.url())], interval=0.05, stop=stop)
    assert len(fired) == 1 and hook.bodies[0]["execution_ids"] == ["f0", "f1"]


# ---- the worker ------------------------------------------------------------------------------------


async def test_worker_alerts_when_executions_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: Hook
) -> None:
    """Interrupted executions the worker gives up on (max_attempts=1) fail; the webhook gets one POST."""
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(tmp_path))
    storage = storage_from_url(f"sqlite:///{tmp_path / 'w.db'}")
    for i, point in enumerate(CRASH_POINTS):
        await worker_app.interrupt(storage, f"x-{i}", point)
    rule = AlertRule("failed", 3, timedelta(minutes=10), hook.url(), retries=1, backoff=0.01)
    worker = Worker(storage, worker_app.agent, poll_interval=0.05, max_attempts=1, alerts=[rule])
    task = asyncio.create_task(worker.run_async())
    try:
        await asyncio.to_thread(hook.wait, 1)
        await asyncio.sleep(0.3)  # several more polls: no second alert within the window
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["count"] == 3 and sorted(body["execution_ids"]) == ["x-0", "x-1", "x-2"]
    assert worker.alerts is not None and len(worker.alerts.fired) == 1
    assert sorted(worker.report.failed) == ["x-0", "x-1", "x-2"]
    assert Worker(storage, worker_app.agent).alerts is None
    storage.close()


async def test_worker_once_evaluates_alerts_when_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(tmp_path))
    storage = storage_from_url(f"sqlite:///{tmp_path / 'once.db'}")
    await worker_app.interrupt(storage, "y-0", CRASH_POINTS[0])
    received: list[Alert] = []
    worker = Worker(
        storage, worker_app.agent, max_attempts=1, alerts=[AlertRule("failed", 1, 60, received.append)]
    )
    await worker.run_async(once=True)
    assert [a.execution_ids for a in received] == [("y-0",)]
    storage.close()


# ---- the CLI ---------------------------------------------------------------------------------------


def test_cli_monitor_once_and_worker_alert_options(tmp_path: Path, hook: Hook) -> None:
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    storage = storage_from_url(url)
    now = datetime.now(UTC)
    for i in range(3):
        asyncio.run(put(storage, f"f{i}", now - timedelta(seconds=i)))
    storage.close()

    quiet = runner.invoke(app, ["monitor", "--storage", url, "--alert", "failed:4:10m", "--once"])
    assert quiet.exit_code == 0, quiet.output
    fired = runner.invoke(
        app, ["monitor", "-s", url, "--alert", "failed:3:10m", "--alert-webhook", hook.url(), "--once"]
    )
    assert fired.exit_code == 1, fired.output
    assert "3 executions failed in the last 10m" in fired.output
    assert hook.bodies and hook.bodies[0]["count"] == 3

    for args in (["--alert", "failed:x"], ["--alert", "exploded:3"], ["--alert-webhook", hook.url()], []):
        bad = runner.invoke(app, ["monitor", "-s", url, *args, "--once"])
        assert bad.exit_code == 2, (args, bad.output)
    bad_hook = runner.invoke(app, ["monitor", "-s", url, "--alert", "failed", "--alert-webhook", "file:///x"])
    assert bad_hook.exit_code == 2 and "not an http(s) URL" in bad_hook.output

    bad_worker = runner.invoke(
        app, ["worker", "-s", url, "--app", "support.worker_app:agent", "--alert", "failed:0", "--once"]
    )
    assert bad_worker.exit_code == 2 and "threshold" in bad_worker.output


def test_cli_worker_passes_alert_rules_to_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perdure.cli as cli
    from perdure.durable.recovery import RecoveryReport

    created: list[dict[str, Any]] = []

    class FakeWorker:
        def __init__(self, storage: Any, resolver: Any, **kwargs: Any) -> None:
            created.append(kwargs)

        async def run_async(self, *, once: bool = False, handle_signals: bool = False) -> RecoveryReport:
            return RecoveryReport()

    monkeypatch.setattr(cli, "Worker", FakeWorker)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    storage = storage_from_url(url)
    asyncio.run(put(storage, "done", T0, ExecutionStatus.COMPLETED))  # the storage exists
    storage.close()
    result = CliRunner().invoke(
        app,
        ["worker", "-s", url, "--app", "support.worker_app:agent", "--once", "--alert", "failed:2:30s",
         "--alert", "paused", "--alert-webhook", "https://hooks.example.com/x"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rules = created[0]["alerts"]
    assert [(r.status.value, r.threshold, r.window) for r in rules] == [
        ("failed", 2, timedelta(seconds=30)),
        ("paused", 5, timedelta(minutes=10)),
    ]
    assert {r.notify for r in rules} == {"https://hooks.example.com/x"}
