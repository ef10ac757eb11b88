"""The dashboard end to end in headless Chromium (Debian's, driven by Playwright), against uvicorn.

Scenarios of issue 13: load the list, filter to failed, open an execution and see its tool calls;
approve a paused call (with edited arguments) and watch the page update to `completed` without a
reload; a POST without the CSRF token is refused and changes nothing; a `<script>` payload in a tool
result is shown as text and never runs. Screenshots go to tests/artifacts/ui/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from support import ui_app
from support.ui_server import DashboardServer


def test_list_filter_and_open_an_execution(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]], page: Any, artifacts: Path
) -> None:
    _, ids = populated
    page.goto(dashboard.url + "/")
    rows = page.locator("table.executions tbody tr")
    assert rows.count() == 50  # one full page of 63
    assert page.locator("a[rel=next]").count() == 1
    for execution_id in ids.values():  # ids are never cut
        assert page.get_by_role("link", name=execution_id, exact=True).count() == 1
    assert page.locator("section.chart svg rect.bar.started").count() == 24
    page.screenshot(path=str(artifacts / "list.png"))

    page.select_option("#status-filter", "failed")  # applies at once (ui.js)
    page.wait_for_url(re.compile(r"status=failed"))
    statuses = page.locator("table.executions tbody tr .status").all_inner_texts()
    assert statuses and set(statuses) == {"failed"}
    assert page.locator("a.count.active[data-status=failed]").count() == 1

    page.get_by_role("link", name=ids["failed"], exact=True).click()
    page.wait_for_url(re.compile(re.escape(ids["failed"])))
    assert page.locator("#exec-status").inner_text() == "failed"
    error = page.locator(".error-box")
    assert "the warehouse API is down" in error.inner_text()
    calls = page.locator("#messages .msg.tool_call")
    assert calls.count() == 2
    assert "lookup" in calls.nth(0).inner_text() and "orders of ACME" in calls.nth(0).inner_text()
    assert "store" in calls.nth(1).inner_text()
    assert "lookup" in page.locator("#messages .msg.tool_return").first.inner_text()
    assert "the warehouse API is down" in page.locator("#failed-attempts").inner_text()
    timeline = page.locator("#timeline tbody tr")
    assert timeline.count() >= 4
    assert "attempt" in page.locator("#timeline").inner_text()
    page.screenshot(path=str(artifacts / "execution-failed.png"), full_page=True)

    page.goto(f"{dashboard.url}/executions/{ids['done']}")
    assert page.locator("#exec-status").inner_text() == "completed"
    assert "Stored the orders" in page.locator("#messages .msg.model").last.inner_text()
    page.screenshot(path=str(artifacts / "execution.png"), full_page=True)


def test_approve_with_edited_arguments_and_watch_it_complete(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]], page: Any, artifacts: Path
) -> None:
    _, ids = populated
    page.goto(f"{dashboard.url}/executions/{ids['paused']}")
    assert page.locator("#exec-status").inner_text() == "paused"
    call = page.locator("fieldset.call[data-call=c-transfer]")
    assert '"amount": 100' in call.locator("textarea").input_value()
    page.screenshot(path=str(artifacts / "execution-paused.png"), full_page=True)
    call.locator("textarea").fill('{"amount": 50, "to": "bob"}')
    page.locator("#send-decisions").click()
    page.wait_for_url(re.compile(r"flash="))
    # The redirect lands while the approved tool still runs (it takes TRANSFER_SECONDS).
    assert page.locator("#exec-status").inner_text() in ("running", "completed")
    page.evaluate("window.__same_page = true")
    expect(page.locator("#exec-status")).to_have_text(
        "completed", timeout=(ui_app.TRANSFER_SECONDS + 15) * 1000
    )
    assert page.evaluate("window.__same_page") is True  # updated in place by the events, no reload
    assert ui_app.transfers == [{"amount": 50, "to": "bob"}]
    assert "sent 50 to bob" in page.locator("#messages").inner_text()
    transfer_row = page.locator("#timeline tbody tr.k-tool_call")
    assert '"amount": 50' in transfer_row.inner_text()  # the arguments it ran with, as approved
    assert page.locator("#pending").count() == 0
    page.screenshot(path=str(artifacts / "execution-approved.png"), full_page=True)


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]], page: Any
) -> None:
    _, ids = populated
    target = f"{dashboard.url}/executions/{ids['done']}"
    page.goto(target)  # the browser now holds the CSRF cookie
    for form in ({}, {"csrf": "forged"}):
        refused = page.request.post(target + "/delete", form=form)
        assert refused.status == 403
        assert "CSRF" in refused.text()
    assert page.request.post(dashboard.url + "/cleanup", form={"older_than_days": "0"}).status == 403
    assert page.request.get(target + "/delete").status == 405  # GET never changes anything
    assert page.request.get(target).status == 200  # still there
    page.goto(dashboard.url + "/")
    assert page.get_by_role("link", name=ids["done"], exact=True).count() == 1


def test_a_script_in_a_tool_result_is_shown_as_text_and_never_runs(
    dashboard: DashboardServer, populated: tuple[str, dict[str, str]], page: Any
) -> None:
    _, ids = populated
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{dashboard.url}/executions/{ids['done']}")
    returned = page.locator("#messages .msg.tool_return").first
    assert "<script>document.title='pwned'" in returned.inner_text()  # visible, as text
    assert "onerror=" in returned.inner_text() and "window.__pwned=2" in returned.inner_text()
    page.wait_for_timeout(300)
    assert dialogs == []
    assert page.evaluate("window.__pwned") is None
    assert page.title() != "pwned"
    assert page.locator("#messages script, #messages img").count() == 0
