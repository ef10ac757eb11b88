"""List query properties (filters, keyset pages, counts, activity) and cancel request properties.

Every backend must answer `query_executions_async`, `count_executions_async` and `activity_async`
as the reference semantics of `perdure.storage._query` (the default implementation) do; the
checks state the expected ids explicitly, from a small, fixed set of executions.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import UserError
from ..records import ErrorInfo, ExecutionStatus, TaskSnapshot, utcnow
from ..storage.base import DurableExecutionStorage, ExecutionQuery
from ._checks import (
    SkipProperty,
    Subject,
    check,
    create,
    expect,
    expect_equal,
    expect_raises,
    head,
    step,
)

_S = ExecutionStatus
_BASE = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _data() -> list[dict[str, Any]]:
    """Twelve executions `q-00`..`q-11`: statuses, names, errors, created / updated times."""
    rows = []
    statuses = [_S.FAILED, _S.COMPLETED, _S.PAUSED, _S.SUCCESS]
    for i in range(12):
        status = statuses[i % 4]
        task = TaskSnapshot(agent_name="support" if i % 3 == 0 else "billing")
        if i in (4, 9):
            task = TaskSnapshot(agent_name="inner", workflow="Nightly")  # the workflow's name wins
        error = None
        if status is _S.FAILED:
            error = ErrorInfo(type="builtins.TimeoutError", message=f"Upstream Réponse {i} timed out")
        rows.append(
            {
                "execution_id": f"q-{i:02d}",
                "status": status,
                "task": task,
                "error": error,
                "created_at": _BASE + timedelta(hours=i),
                # Updated out of creation order, and q-06 / q-07 share one updated_at (tie on the id).
                "updated_at": _BASE + timedelta(days=1, minutes=(i * 7) % 12 if i not in (6, 7) else 30),
            }
        )
    return rows


async def _seed(storage: DurableExecutionStorage) -> list[dict[str, Any]]:
    rows = _data()
    for row in rows:
        fields = {k: v for k, v in row.items() if k != "execution_id"}
        await storage.save_state_async(head(row["execution_id"], **fields))
    return rows


def _expected(rows: list[dict[str, Any]], keep: Any) -> list[str]:
    chosen = [r for r in rows if keep(r)]
    chosen.sort(key=lambda r: (r["updated_at"], r["execution_id"]), reverse=True)
    return [r["execution_id"] for r in chosen]


async def _all_ids(storage: DurableExecutionStorage, query: ExecutionQuery) -> list[str]:
    page = await storage.query_executions_async(query)
    return [h.execution_id for h in page.items]


@check("query.filters")
async def _filters(s: Subject) -> None:
    """query_executions: statuses, name, since/until, search each alone and combined; newest first."""
    storage = s.storage
    rows = await _seed(storage)

    def name(r: dict[str, Any]) -> str:
        return r["task"].workflow or r["task"].agent_name

    cases: list[tuple[str, ExecutionQuery, Any]] = [
        ("no filter", ExecutionQuery(), lambda r: True),
        (
            "statuses={failed}",
            ExecutionQuery(statuses=frozenset({"failed"})),
            lambda r: r["status"] is _S.FAILED,
        ),
        (
            "statuses={paused, COMPLETED enum}",
            ExecutionQuery(statuses=frozenset({"paused", _S.COMPLETED})),
            lambda r: r["status"] in (_S.PAUSED, _S.COMPLETED),
        ),
        ("name='support'", ExecutionQuery(name="support"), lambda r: name(r) == "support"),
        ("name='Nightly' (workflow)", ExecutionQuery(name="Nightly"), lambda r: name(r) == "Nightly"),
        ("name='inner' (agent of a workflow)", ExecutionQuery(name="inner"), lambda r: False),
        ("name='supp' (exact only)", ExecutionQuery(name="supp"), lambda r: False),
        (
            "since=+3h",
            ExecutionQuery(since=_BASE + timedelta(hours=3)),
            lambda r: r["created_at"] >= _BASE + timedelta(hours=3),
        ),
        (
            "until=+5h (exclusive)",
            ExecutionQuery(until=_BASE + timedelta(hours=5)),
            lambda r: r["created_at"] < _BASE + timedelta(hours=5),
        ),
        (
            "search='Q-1' (id, any case)",
            ExecutionQuery(search="Q-1"),
            lambda r: r["execution_id"].startswith("q-1"),
        ),
        ("search='BILL' (name)", ExecutionQuery(search="BILL"), lambda r: name(r) == "billing"),
        ("search='night' (workflow name)", ExecutionQuery(search="night"), lambda r: name(r) == "Nightly"),
        (
            "search='réponse 8' (error, unicode case)",
            ExecutionQuery(search="RÉPONSE 8"),
            lambda r: r["execution_id"] == "q-08",
        ),
        (
            "search='timeouterror' (error type)",
            ExecutionQuery(search="timeouterror"),
            lambda r: r["error"] is not None,
        ),
        ("search='zzz'", ExecutionQuery(search="zzz"), lambda r: False),
        (
            "statuses={failed} + name='support' + since=+0h + until=+11h + search='timed out'",
            ExecutionQuery(
                statuses=frozenset({"failed"}),
                name="support",
                since=_BASE,
                until=_BASE + timedelta(hours=11),
                search="timed out",
            ),
            lambda r: (
                r["status"] is _S.FAILED
                and name(r) == "support"
                and _BASE <= r["created_at"] < _BASE + timedelta(hours=11)
            ),
        ),
        (
            "statuses={failed, success} + name='billing'",
            ExecutionQuery(statuses=frozenset({"failed", "success"}), name="billing"),
            lambda r: r["status"] in (_S.FAILED, _S.SUCCESS) and name(r) == "billing",
        ),
        (
            "naive since (UTC) + limit=2",
            ExecutionQuery(since=(_BASE + timedelta(hours=2)).replace(tzinfo=None), limit=2),
            lambda r: r["created_at"] >= _BASE + timedelta(hours=2),
        ),
    ]
    for what, query, keep in cases:
        expected = _expected(rows, keep)[: query.limit]
        expect_equal(await _all_ids(storage, query), expected, f"query_executions_async({what}) ids")
    page = await storage.query_executions_async(ExecutionQuery(statuses=frozenset({"failed"})))
    got = page.items[0] if page.items else None
    expect(
        got is not None and got.error is not None and got.task.agent_name is not None,
        "query_executions_async returns whole heads (error, task)",
    )
    await storage.delete_state_async("q-00")
    expect("q-00" not in await _all_ids(storage, ExecutionQuery()), "a deleted execution is still listed")
    bad_fields: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"statuses": frozenset({"nope"})}, "statuses"),
        ({"cursor": "garbage"}, "cursor"),
        ({"since": _BASE, "until": _BASE}, "until"),
    ]
    for bad, field in bad_fields:
        try:
            ExecutionQuery(**bad)
        except UserError as exc:
            expect(field in str(exc), f"the UserError of an invalid {field} names it: {exc}")
        else:
            raise AssertionError(f"an invalid ExecutionQuery.{field} was accepted")


@check("query.pagination")
async def _pagination(s: Subject) -> None:
    """next_cursor walks every row exactly once in order; rows added meanwhile shift nothing."""
    storage = s.storage
    rows = await _seed(storage)
    expected = _expected(rows, lambda r: True)
    for limit in (1, 3, 5, 12, 50):
        query, seen, pages = ExecutionQuery(limit=limit), [], 0
        while True:
            page = await storage.query_executions_async(query)
            pages += 1
            expect(len(page.items) <= limit, f"a page of limit={limit} holds {len(page.items)} heads")
            seen += [h.execution_id for h in page.items]
            if page.next_cursor is None:
                break
            expect(len(page.items) == limit, f"a page before the last holds {len(page.items)} of {limit}")
            expect(pages < 100, "next_cursor never ends")
            if pages == 2:  # executions created while an operator pages appear on the first page only
                await storage.save_state_async(head(f"q-new-{limit}", updated_at=utcnow()))
            query = dataclasses.replace(query, cursor=page.next_cursor)
        expect_equal(seen, expected, f"ids of a walk with limit={limit}")
        await storage.delete_state_async(f"q-new-{limit}")
    failed = _expected(rows, lambda r: r["status"] in (_S.FAILED, _S.PAUSED))
    query, seen = ExecutionQuery(statuses=frozenset({"failed", "paused"}), limit=2), []
    while True:
        page = await storage.query_executions_async(query)
        seen += [h.execution_id for h in page.items]
        if page.next_cursor is None:
            break
        query = dataclasses.replace(query, cursor=page.next_cursor)
    expect_equal(seen, failed, "ids of a walk of statuses={failed, paused} with limit=2")
    exact = await storage.query_executions_async(ExecutionQuery(limit=12))
    expect_equal(exact.next_cursor, None, "next_cursor of a page holding exactly the last row")


@check("count.matches_query")
async def _count(s: Subject) -> None:
    """count_executions equals the number of rows the query's walk returns (limit and cursor ignored)."""
    storage = s.storage
    rows = await _seed(storage)
    first = await storage.query_executions_async(ExecutionQuery(limit=2))
    for what, query, keep in (
        ("no filter", ExecutionQuery(limit=1), lambda r: True),
        ("a cursor", ExecutionQuery(limit=1, cursor=first.next_cursor), lambda r: True),
        (
            "statuses={failed, paused}",
            ExecutionQuery(statuses=frozenset({"failed", "paused"})),
            lambda r: r["status"] in (_S.FAILED, _S.PAUSED),
        ),
        (
            "name='billing'",
            ExecutionQuery(name="billing"),
            lambda r: (r["task"].workflow or r["task"].agent_name) == "billing",
        ),
        (
            "since + until",
            ExecutionQuery(since=_BASE + timedelta(hours=2), until=_BASE + timedelta(hours=6)),
            lambda r: _BASE + timedelta(hours=2) <= r["created_at"] < _BASE + timedelta(hours=6),
        ),
        ("search='timed out'", ExecutionQuery(search="TIMED OUT"), lambda r: r["error"] is not None),
        (
            "statuses={completed} + search='q-0'",
            ExecutionQuery(statuses=frozenset({"completed"}), search="q-0"),
            lambda r: r["status"] is _S.COMPLETED and r["execution_id"] < "q-10",
        ),
    ):
        expect_equal(
            await storage.count_executions_async(query),
            len(_expected(rows, keep)),
            f"count_executions_async({what})",
        )
    await storage.delete_state_async("q-01")
    expect_equal(
        await storage.count_executions_async(ExecutionQuery()), 11, "count_executions_async() after a delete"
    )


@check("query.search_text")
async def _search_text(s: Subject) -> None:
    """Search follows the text as it changes: an error a step write sets, rewritten, deleted.

    Also a rare substring; literal `%`, `_`, quotes and backslashes; a 3-character id prefix.
    """
    storage = s.storage
    for i in range(30):
        if i != 17:
            await storage.save_state_async(head(f"s-{i:02d}", task=TaskSnapshot(agent_name="worker")))
    await create(storage, "s-17", steps=1, task=TaskSnapshot(agent_name="worker"))

    async def found(text: str) -> tuple[list[str], int]:
        query = ExecutionQuery(search=text)
        return await _all_ids(storage, query), await storage.count_executions_async(query)

    expect_equal(await found("kaboom"), ([], 0), "search='kaboom' before any error")
    error = ErrorInfo(type="app.Boom", message='Kaboom-Ω at 50%_off "quoted" a\\b')
    worker = TaskSnapshot(agent_name="worker")
    failed = head("s-17", 2, status=_S.FAILED, error=error, task=worker)
    await storage.append_step_async(failed, step("s-17", 1))
    for text in ("KABOOM-ω", "app.boom", '"quoted"', "50%_o", "0%_", "a\\b", "_off"):
        expect_equal(await found(text), (["s-17"], 1), f"search={text!r} after a step wrote the error")
    for text in ("50%xo", "5x%_", "%x", "a_b", "kaboom-ωx"):
        expect_equal(await found(text), ([], 0), f"search={text!r} (no such substring)")
    ids = [f"s-1{i}" for i in range(10)]
    page = await _all_ids(storage, ExecutionQuery(search="S-1", limit=100))
    expect_equal(sorted(page), ids, "search='S-1' (id prefix, 3 characters)")
    other = ErrorInfo(type="app.Other", message="Different")
    rewritten = head("s-17", 2, status=_S.FAILED, error=other, task=worker)
    await storage.save_state_async(rewritten)
    expect_equal(await found("kaboom"), ([], 0), "search='kaboom' after the error was rewritten")
    expect_equal(await found("differ"), (["s-17"], 1), "search='differ' after the error was rewritten")
    await storage.delete_state_async("s-17")
    expect_equal(await found("differ"), ([], 0), "search='differ' after the execution was deleted")


@check("activity.buckets")
async def _activity(s: Subject) -> None:
    """activity: started (created_at) and failed (updated_at) per bucket, empty ones too, oldest first."""
    storage = s.storage
    now = utcnow()
    since = now - timedelta(hours=3, minutes=30)  # buckets of an hour: since, +1h, +2h, +3h (holds now)
    plan = [  # (id, created minutes after since, status, updated minutes after since)
        ("a-0", -30, _S.FAILED, 10),  # created before since: not started here, failed in bucket 0
        ("a-1", 5, _S.COMPLETED, 20),
        ("a-2", 59, _S.FAILED, 61),  # started in bucket 0, failed in bucket 1
        ("a-3", 60, _S.SUCCESS, 70),  # exactly at a bucket start: bucket 1
        ("a-4", 190, _S.FAILED, 200),
        ("a-5", -300, _S.FAILED, -200),  # before since: nowhere
    ]
    for execution_id, created, status, updated in plan:
        await storage.save_state_async(
            head(
                execution_id,
                status=status,
                created_at=since + timedelta(minutes=created),
                updated_at=since + timedelta(minutes=updated),
            )
        )
    buckets = await storage.activity_async(since, 3600)
    expect_equal(
        [(b.start, b.started, b.failed) for b in buckets],
        [
            (since, 2, 1),
            (since + timedelta(hours=1), 1, 1),
            (since + timedelta(hours=2), 0, 0),
            (since + timedelta(hours=3), 1, 1),
        ],
        "activity_async(3.5 hours ago, 3600) as (start, started, failed)",
    )
    minutes = await storage.activity_async(since + timedelta(minutes=59), 60)
    expect_equal(
        [(b.started, b.failed) for b in minutes[:3]],
        [(1, 0), (1, 0), (0, 1)],
        "activity_async(since + 59 min, 60) first three buckets",
    )
    many = await storage.activity_async(since, 2)  # thousands of buckets in one call
    expect_equal(
        (len(many) >= 6300, sum(b.started for b in many), sum(b.failed for b in many)),
        (True, 4, 3),
        "activity_async(since, 2) as (>= 6300 buckets, started, failed)",
    )
    expect_equal(await storage.activity_async(now + timedelta(hours=1)), [], "activity_async(a future since)")
    await expect_raises(UserError, storage.activity_async(since, 0), "activity_async(bucket_seconds=0)")


@check("cancel.lifecycle")
async def _cancel(s: Subject) -> None:
    """Cancel requests: request (False if unknown), read, idempotent, removed by clear, delete and cleanup."""
    storage = s.storage
    await create(storage, "c-1", steps=1)
    await create(storage, "c-2")
    expect_equal(await storage.cancel_request_async("c-1"), None, "cancel_request_async before any request")
    expect_equal(
        await storage.request_cancel_async("nope", "x"), False, "request_cancel_async of an unknown id"
    )
    expect_equal(await storage.cancel_request_async("nope"), None, "cancel_request_async of an unknown id")
    before = utcnow() - timedelta(seconds=5)
    expect_equal(
        await storage.request_cancel_async("c-1", "operator said stop"), True, "request_cancel_async"
    )
    request = await storage.cancel_request_async("c-1")
    expect(request is not None, "cancel_request_async after a request returned None")
    assert request is not None
    expect_equal(request.reason, "operator said stop", "CancelRequest.reason")
    expect(
        request.requested_at.tzinfo is not None
        and before <= request.requested_at <= utcnow() + timedelta(seconds=5),
        f"CancelRequest.requested_at {request.requested_at!r} is an aware time of now",
    )
    expect_equal(await storage.request_cancel_async("c-1", "again"), True, "a second request_cancel_async")
    expect_equal(
        await storage.cancel_request_async("c-1"),
        request,
        "the request after a second request (the first stays)",
    )
    expect_equal(await storage.cancel_request_async("c-2"), None, "a request of c-1 leaked to c-2")
    # The worker keeps writing its head: the request stays.
    await storage.save_state_async(head("c-1", 1, status=_S.SUCCESS))
    expect_equal(await storage.cancel_request_async("c-1"), request, "the request after a head write")
    expect_equal(await storage.clear_cancel_request_async("c-1"), True, "clear_cancel_request_async")
    expect_equal(await storage.cancel_request_async("c-1"), None, "cancel_request_async after clear")
    expect_equal(
        await storage.clear_cancel_request_async("c-1"), False, "a second clear_cancel_request_async"
    )
    expect_equal(await storage.request_cancel_async("c-1"), True, "request_cancel_async after a clear")
    expect_equal(
        (await storage.cancel_request_async("c-1") or request).reason,
        "",
        "the reason of a request without one",
    )
    await storage.delete_state_async("c-1")
    expect_equal(
        await storage.cancel_request_async("c-1"), None, "cancel_request_async after delete_state_async"
    )
    expect_equal(
        await storage.request_cancel_async("c-1"), False, "request_cancel_async of a deleted execution"
    )
    old = _BASE - timedelta(days=30)
    await storage.save_state_async(head("c-old", status=_S.FAILED, created_at=old, updated_at=old))
    expect_equal(await storage.request_cancel_async("c-old"), True, "request_cancel_async of c-old")
    deleted = await storage.cleanup_old_executions_async(7, keep_statuses=())
    expect(deleted >= 1, f"cleanup_old_executions_async deleted {deleted}")
    expect_equal(
        await storage.cancel_request_async("c-old"), None, "cancel_request_async after cleanup deleted it"
    )
    expect_equal(await storage.cancel_request_async("c-2"), None, "cancel_request_async of c-2")


@check("cancel.seen_by_another_instance", needs=("reopen",))
async def _cancel_shared(s: Subject) -> None:
    """Cancel requests are stored with the executions: another instance (a worker) reads and clears them."""
    storage = s.storage
    if not storage.shared_cancel_requests:
        raise SkipProperty(
            "shared_cancel_requests is False: this backend keeps cancel requests in the storage object "
            "(the default); override the cancel request methods to share them"
        )
    await create(storage, "c-1", steps=1)
    other = await s.reopen()
    expect_equal(await storage.request_cancel_async("c-1", "stop"), True, "request_cancel_async")
    seen = await other.cancel_request_async("c-1")
    expect(seen is not None and seen.reason == "stop", f"another instance read {seen!r}")
    expect_equal(
        await other.clear_cancel_request_async("c-1"), True, "clear_cancel_request_async by another instance"
    )
    expect_equal(
        await storage.cancel_request_async("c-1"), None, "the request after another instance cleared it"
    )
