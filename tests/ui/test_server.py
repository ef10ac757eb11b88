"""The dashboard over real HTTP (uvicorn in a thread), without a browser: guards, actions, live events."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from perdure.records import ExecutionStatus
from perdure.storage import storage_from_url
from support import ui_app
from support.ui_server import DashboardServer, run_async

TOKEN = "tok-7f3a9c1e5b"


def _client(server: DashboardServer, **options: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=20, **options)


def _csrf(client: httpx.Client, path: str = "/") -> str:
    page = client.get(path)
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def _head(url: str, execution_id: str) -> Any:
    async def load() -> Any:
        storage = storage_from_url(url)
        try:
            return await storage.load_state_async(execution_id)
        finally:
            await storage.close_async()

    return run_async(load)


ACTIONS = ["resume", "decide", "resolve", "cancel", "fork", "delete"]


@pytest.mark.parametrize("action", [*ACTIONS, "cleanup"])
def test_every_action_needs_the_csrf_token(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]], action: str
) -> None:
    url, ids = populated
    before = _head(url, ids["paused"])
    with _client(dashboard) as client:
        _csrf(client)  # the browser has its cookie; the forged form has no or another token
        path = "/cleanup" if action == "cleanup" else f"/executions/{ids['paused']}/{action}"
        form = {"older_than_days": "0", "at_step": "0", "decision:c-transfer": "approve"}
        for extra in ({}, {"csrf": "forged"}):
            refused = client.post(path, data=form | extra)
            assert refused.status_code == 403
    after = _head(url, ids["paused"])
    assert after is not None and after.model_dump() == before.model_dump()  # nothing changed
    assert ui_app.transfers == []


def test_actions_with_the_csrf_token(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]]
) -> None:
    url, ids = populated
    with _client(dashboard) as client:
        csrf = _csrf(client)
        forked = client.post(f"/executions/{ids['done']}/fork", data={"csrf": csrf, "at_step": "1"})
        assert forked.status_code == 303
        fork_id = re.search(r"/executions/([^?]+)\?", forked.headers["location"]).group(1)  # type: ignore[union-attr]
        assert _head(url, fork_id).parent_id == ids["done"]
        fork_page = client.get(forked.headers["location"])
        assert f"forked {ids['done']} at step 1" in fork_page.text

        resumed = client.post(
            f"/executions/{ids['failed']}/resume", data={"csrf": csrf}, follow_redirects=True
        )
        assert resumed.status_code == 200
        # `ui-clerk` from --app has a working `store`: the failed run completes from its journal.
        assert _head(url, ids["failed"]).status is ExecutionStatus.COMPLETED

        cancelled = client.post(f"/executions/{fork_id}/cancel", data={"csrf": csrf}, follow_redirects=True)
        assert "cancelled" in cancelled.text
        assert _head(url, fork_id).status is ExecutionStatus.CANCELLED

        deleted = client.post(f"/executions/{fork_id}/delete", data={"csrf": csrf})
        assert deleted.headers["location"].startswith("/?flash=")
        assert _head(url, fork_id) is None
        assert client.get(f"/executions/{fork_id}").status_code == 404

        bad = client.post(
            f"/executions/{ids['paused']}/decide",
            data={"csrf": csrf, "decision:c-transfer": "approve", "args:c-transfer": "{not json"},
            follow_redirects=True,
        )
        assert "not valid JSON" in bad.text
        assert _head(url, ids["paused"]).status is ExecutionStatus.PAUSED

        cleanup = client.post(
            "/cleanup", data={"csrf": csrf, "older_than_days": "0.5"}, follow_redirects=True
        )
        assert re.search(r"cleanup: \d+ executions deleted", cleanup.text)


def test_resume_without_agents_says_what_to_pass(populated: tuple[str, dict[str, str]]) -> None:
    url, ids = populated
    with DashboardServer(url) as server, _client(server) as client:
        csrf = _csrf(client)
        page = client.post(f"/executions/{ids['failed']}/resume", data={"csrf": csrf}, follow_redirects=True)
        assert "--app module:attr" in page.text
        # a decision is still recorded (durable); a worker resumes the run
        page = client.post(
            f"/executions/{ids['paused']}/decide",
            data={"csrf": csrf, "decision:c-transfer": "deny", "message:c-transfer": "not today"},
            follow_redirects=True,
        )
        assert "a worker resumes the execution" in page.text
    assert _head(url, ids["failed"]).status is ExecutionStatus.FAILED


def test_read_only_hides_and_refuses_actions(populated: tuple[str, dict[str, str]]) -> None:
    url, ids = populated
    with DashboardServer(url, read_only=True, resolver=ui_app.AGENTS) as server, _client(server) as client:
        page = client.get(f"/executions/{ids['paused']}")
        assert 'method="post"' not in page.text and "read-only" in page.text
        assert 'method="post"' not in client.get("/").text
        csrf = client.cookies.get("perdure_csrf")
        for action in ACTIONS:
            refused = client.post(f"/executions/{ids['paused']}/{action}", data={"csrf": csrf or ""})
            assert refused.status_code == 403
        assert client.post("/cleanup", data={"csrf": csrf or "", "older_than_days": "0"}).status_code == 403
    assert _head(url, ids["paused"]).status is ExecutionStatus.PAUSED


def test_token_login_cookie_and_header(populated: tuple[str, dict[str, str]]) -> None:
    url, ids = populated
    with DashboardServer(url, token=TOKEN) as server:
        with _client(server) as client:
            for path in (
                "/",
                f"/executions/{ids['done']}",
                f"/executions/{ids['done']}/events",
                "/static/ui.js",
            ):
                refused = client.get(path)
                assert refused.status_code == 401 and TOKEN not in refused.text
            assert client.get("/?token=wrong").status_code == 401
            login = client.get(f"/executions/{ids['done']}?token={TOKEN}")
            assert login.status_code == 303
            assert login.headers["location"] == f"/executions/{ids['done']}"  # the token leaves the URL
            cookie = client.cookies.get("perdure_ui_session")
            assert cookie and TOKEN not in cookie
            page = client.get(login.headers["location"])
            assert page.status_code == 200 and TOKEN not in page.text
        with _client(server, headers={"authorization": f"Bearer {TOKEN}"}) as client:
            assert client.get("/").status_code == 200
        with _client(server, headers={"x-perdure-token": TOKEN}) as client:
            assert client.get("/").status_code == 200


def test_security_headers_and_host_check(dashboard: DashboardServer) -> None:
    with _client(dashboard) as client:
        page = client.get("/")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert "httponly" in page.headers["set-cookie"].lower()
        assert "samesite=strict" in page.headers["set-cookie"].lower()
        assert client.get("/", headers={"host": "attacker.example:8765"}).status_code == 403  # DNS rebinding
        assert client.get("/", headers={"host": f"localhost:{dashboard.port}"}).status_code == 200


def test_list_filters_search_and_pages(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]]
) -> None:
    _, ids = populated
    with _client(dashboard) as client:
        first = client.get("/")
        seen = re.findall(r'<td class="id"><a href="/executions/([^"]+)"', first.text)
        assert len(seen) == 50
        cursor_link = re.search(r'href="(/\?[^"]*cursor=[^"]+)" rel="next"', first.text)
        assert cursor_link is not None
        second = client.get(cursor_link.group(1).replace("&amp;", "&"))
        rest = re.findall(r'<td class="id"><a href="/executions/([^"]+)"', second.text)
        assert len(rest) == 63 - 50 and not set(rest) & set(seen)
        found = client.get("/", params={"q": "warehouse API is down"})
        assert ids["failed"] in found.text
        named = client.get("/", params={"name": "ui-banker"})
        assert re.findall(r'<td class="id"><a href="/executions/([^"]+)"', named.text) == [ids["paused"]]
        assert client.get("/", params={"cursor": "garbage"}).status_code == 200  # back to page one


def test_live_events_stream_the_run(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]]
) -> None:
    _, ids = populated
    with _client(dashboard) as client:
        csrf = _csrf(client)
        with client.stream("GET", f"/executions/{ids['paused']}/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            assert next(lines) == "retry: 2000"
            decided = client.post(
                f"/executions/{ids['paused']}/decide", data={"csrf": csrf, "decision:c-transfer": "approve"}
            )
            assert decided.status_code == 303
            kinds = []
            for line in lines:
                if line.startswith("data: "):
                    kinds.append(re.search(r'"kind":"(\w+)"', line).group(1))  # type: ignore[union-attr]
                    if kinds[-1] == "execution_completed":
                        break
        assert "execution_resumed" in kinds and kinds[-1] == "execution_completed"
    assert ui_app.transfers == [{"amount": 100, "to": "bob"}]


def test_the_storage_password_is_masked(postgres_dsn: str) -> None:
    with_password = postgres_dsn.replace("postgres@", "postgres:hunter2-secret@", 1)
    assert "hunter2-secret" in with_password  # trust auth: the server ignores the password

    async def fill() -> None:
        storage = storage_from_url(with_password)
        try:
            await ui_app.populate(storage)
        finally:
            await storage.close_async()

    run_async(fill)
    with DashboardServer(with_password) as server, _client(server) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "hunter2-secret" not in page.text and "postgres:***@" in page.text
        assert "ui-banker" in page.text


def test_calls_decided_elsewhere_are_shown_decided_not_offered_again(tmp_path: Any) -> None:
    from perdure import operations as ops
    from perdure.storage.sqlite import SQLiteDurableStorage
    from support import actions_app

    path = tmp_path / "partial.db"

    async def setup() -> None:
        storage = SQLiteDurableStorage(path)
        try:
            await actions_app.start(storage, "approvals", "ap")  # waits on call-0-0 and call-0-1
            await ops.approve(storage, "ap", "call-0-0", {"amount": 50, "to": "bob"})  # `perdure approve`
        finally:
            await storage.close_async()

    run_async(setup)
    url = f"sqlite:///{path}"
    from typer.testing import CliRunner

    from perdure.cli import app

    shown = CliRunner().invoke(app, ["show", "ap", "-s", url], env={"COLUMNS": "100"})
    assert "call call-0-0  (already approved with edited arguments)" in shown.output, shown.output
    assert "call call-0-1\n" in shown.output
    with DashboardServer(url) as server, _client(server) as client:
        page = client.get("/executions/ap").text
        assert "already approved with edited arguments" in page
        assert 'name="decision:call-0-0"' not in page  # not offered again: a resubmit would conflict
        assert 'name="decision:call-0-1"' in page
        csrf = _csrf(client, "/executions/ap")
        sent = client.post(
            "/executions/ap/decide",
            data={"csrf": csrf, "decision:call-0-1": "deny", "message:call-0-1": "no"},
        )
        assert sent.status_code == 303, sent.text
    assert _head(url, "ap").status is ExecutionStatus.SUCCESS  # the round is complete: resumable
