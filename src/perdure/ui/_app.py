"""The dashboard's Starlette application: pages, live updates and actions.

Pages are rendered on the server by Jinja2 with autoescape on: every value from the storage is
HTML-escaped, so a tool result holding `<script>` is shown as text, and the Content-Security-Policy
(`_security`) forbids inline scripts anyway. The one script, `static/ui.js`, swaps in the server's
fresh rendering of the execution page when its server-sent events (from `perdure.watch`) say that
something changed, and asks for confirmation before destructive actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._redact import mask_url
from ..errors import PerdureError, UserError
from ..events import watch
from ..records import ExecutionStatus, utcnow
from ..storage import DurableExecutionStorage, storage_from_url
from . import _queries
from ._actions import ActionError, Operator, Outcome
from ._security import Guard, csrf_ok, csrf_value
from ._view import execution_view, preview

__all__ = ["create_app"]

logger = logging.getLogger("perdure.ui")

_HERE = Path(__file__).parent
_STATUSES = [s.value for s in ExecutionStatus]
_HEARTBEAT = 15.0
_FLASH_KEEP = 200


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda d: f"{d.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if d else ""
    env.filters["ms"] = lambda v: f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s"
    env.filters["preview"] = preview
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.filters["tojson_text"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    return env


def _chart(points: list[_queries.ActivityPoint]) -> dict[str, Any]:
    """Bar geometry of the started/failed per hour chart (inline SVG, drawn by the template)."""
    width, height, top, bottom, left = 720, 150, 12, 22, 34
    peak = max([p.started for p in points] + [p.failed for p in points] + [1])
    scale = 10 ** max(len(str(peak)) - 1, 0)
    ceiling = math.ceil(peak / scale) * scale
    plot_h = height - top - bottom
    slot = (width - left) / max(len(points), 1)
    bars = []
    for i, point in enumerate(points):
        x = left + i * slot
        s_h = plot_h * point.started / ceiling
        f_h = plot_h * point.failed / ceiling
        bars.append(
            {
                "x": round(x + 2, 1),
                "w": round(slot / 2 - 2, 1),
                "s_y": round(top + plot_h - s_h, 1),
                "s_h": round(s_h, 1),
                "f_x": round(x + slot / 2, 1),
                "f_y": round(top + plot_h - f_h, 1),
                "f_h": round(f_h, 1),
                "label": f"{point.start:%H:00}",
                "show_label": i % 3 == 0,
                "started": point.started,
                "failed": point.failed,
                "title": f"{point.start:%Y-%m-%d %H:00}Z: {point.started} started, {point.failed} failed",
            }
        )
    return {
        "width": width,
        "height": height,
        "top": top,
        "left": left,
        "base": top + plot_h,
        "ceiling": ceiling,
        "mid": ceiling / 2,
        "mid_y": top + plot_h / 2,
        "bars": bars,
        "started": sum(p.started for p in points),
        "failed": sum(p.failed for p in points),
    }


class _Dashboard:
    def __init__(
        self,
        storage: DurableExecutionStorage | str,
        *,
        resolver: Any,
        read_only: bool,
        storage_label: str,
        token: str | None,
    ) -> None:
        self._storage_arg = storage
        self._storage: DurableExecutionStorage | None = storage if not isinstance(storage, str) else None
        self.resolver = resolver
        self.read_only = read_only
        self.storage_label = storage_label
        self.token_required = token is not None
        self.templates = _environment()
        self.flashes: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.operator: Operator | None = None

    @property
    def storage(self) -> DurableExecutionStorage:
        if self._storage is None:
            self._storage = storage_from_url(str(self._storage_arg))
        return self._storage

    @property
    def ops(self) -> Operator:
        if self.operator is None:
            self.operator = Operator(self.storage, self.resolver)
        return self.operator

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        _ = self.storage
        try:
            yield
        finally:
            if self.operator is not None:
                await self.operator.aclose()
            if isinstance(self._storage_arg, str) and self._storage is not None:
                await self._storage.close_async()

    # ---- rendering -------------------------------------------------------------------------------

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        flash = self.flashes.pop(request.query_params.get("flash", ""), None)
        html = self.templates.get_template(template).render(
            request=request,
            csrf=csrf_value(request),
            read_only=self.read_only,
            storage_label=self.storage_label,
            statuses=_STATUSES,
            flash=flash,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def _flash(self, kind: str, message: str) -> str:
        key = secrets.token_urlsafe(8)
        self.flashes[key] = (kind, message)
        while len(self.flashes) > _FLASH_KEEP:
            self.flashes.popitem(last=False)
        return key

    def redirect(self, path: str, kind: str, message: str) -> RedirectResponse:
        separator = "&" if "?" in path else "?"
        return RedirectResponse(f"{path}{separator}flash={self._flash(kind, message)}", status_code=303)

    # ---- pages -----------------------------------------------------------------------------------

    async def list_page(self, request: Request) -> Response:
        params = request.query_params
        status_text = params.get("status", "")
        status = ExecutionStatus(status_text) if status_text in _STATUSES else None
        search = params.get("q", "").strip()[:200]
        name = params.get("name", "").strip()[:200]
        cursor = params.get("cursor") or None
        storage = self.storage
        filtered = bool(name or search)

        async def listing() -> _queries.ListPage:
            try:
                return await _queries.list_page(
                    storage, status=status, search=search, name=name, cursor=cursor, count=filtered
                )
            except UserError:  # a cursor edited by hand: the first page
                return await _queries.list_page(
                    storage, status=status, search=search, name=name, cursor=None, count=filtered
                )

        # Independent reads, concurrent: the page costs the slowest of them, not their sum.
        page, (total, by_status), points = await asyncio.gather(
            listing(), _queries.counts(storage), _queries.activity(storage, utcnow())
        )
        if page.total is None:  # only a status (or nothing) filtered: the status counts say it
            page.total = by_status.get(status.value, 0) if status is not None else total
        chart = _chart(points)
        now = utcnow()
        rows = [(head, _queries.is_running(head, now)) for head in page.items]

        def link(**changes: str | None) -> str:
            merged = {"status": status_text, "q": search, "name": name, "cursor": cursor or ""} | changes
            return "/?" + urlencode({k: v for k, v in merged.items() if v})

        return self.render(
            request,
            "list.html",
            rows=rows,
            page=page,
            status=status_text,
            search=search,
            name=name,
            name_link=lambda n: link(name=n, cursor=None),
            total=total,
            by_status=by_status,
            chart=chart,
            next_link=link(cursor=page.next_cursor) if page.next_cursor else None,
            first_link=link(cursor=None) if cursor else None,
            status_link=lambda s: link(status=s, cursor=None),
        )

    async def _execution_context(self, execution_id: str) -> dict[str, Any] | None:
        head, journal = await _queries.load_execution(self.storage, execution_id)
        if head is None:
            return None
        view = execution_view(head, journal)
        last_error = self.operator.last_error.get(execution_id) if self.operator else None
        return {"view": view, "head": head, "last_error": last_error}

    async def execution_page(self, request: Request) -> Response:
        execution_id = request.path_params["execution_id"]
        context = await self._execution_context(execution_id)
        if context is None:
            return self.render(request, "missing.html", status_code=404, execution_id=execution_id)
        return self.render(request, "execution.html", **context)

    async def execution_live(self, request: Request) -> Response:
        execution_id = request.path_params["execution_id"]
        context = await self._execution_context(execution_id)
        if context is None:
            return self.render(request, "missing.html", status_code=404, execution_id=execution_id)
        return self.render(request, "_execution_body.html", **context)

    async def execution_events(self, request: Request) -> Response:
        """Server-sent events: one `data:` line per `perdure.watch` event of the execution."""
        execution_id = request.path_params["execution_id"]
        storage = self.storage

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            events = watch(execution_id, storage, follow=True)
            try:
                iterator = events.__aiter__()
                while True:
                    try:
                        event = await asyncio.wait_for(iterator.__anext__(), timeout=_HEARTBEAT)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keep-alive\n\n"
                        continue
                    except StopAsyncIteration:
                        yield "event: end\ndata: {}\n\n"
                        return
                    data = event.model_dump_json()
                    yield f"data: {data}\n\n"
            except PerdureError as exc:
                yield f"event: end\ndata: {json.dumps({'error': str(exc)})}\n\n"
            finally:
                await events.aclose()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    # ---- actions ---------------------------------------------------------------------------------

    async def _checked_form(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        if self.read_only:
            return None, HTMLResponse("Forbidden: the dashboard is read-only.", status_code=403)
        form = await request.form()
        if not csrf_ok(request, form.get("csrf")):
            return None, HTMLResponse("Forbidden: missing or wrong CSRF token.", status_code=403)
        return {k: v for k, v in form.multi_items() if isinstance(v, str)}, None

    async def _act(
        self,
        request: Request,
        work: Callable[[dict[str, Any]], Awaitable[Outcome]],
        back: str,
        done: str | None = None,
    ) -> Response:
        form, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        assert form is not None
        try:
            outcome = await work(form)
        except (ActionError, PerdureError, ValueError) as exc:
            return self.redirect(back, "error", str(exc))
        if outcome.execution_id:
            return self.redirect(f"/executions/{quote(outcome.execution_id, safe='')}", "ok", outcome.message)
        return self.redirect(done or back, "ok", outcome.message)

    async def action(self, request: Request) -> Response:
        execution_id = request.path_params["execution_id"]
        name = request.path_params["action"]
        back = f"/executions/{quote(execution_id, safe='')}"
        ops = self.ops

        async def work(form: dict[str, Any]) -> Outcome:
            if name == "resume":
                return await ops.resume(execution_id)
            if name == "decide":
                return await ops.decide(execution_id, _decisions(form))
            if name == "resolve":
                call_id = form.get("call_id", "")
                action = form.get("action", "")
                result = _json_field(form.get("result", ""), "result") if action == "done" else None
                return await ops.resolve(execution_id, call_id, action, result)
            if name == "cancel":
                return await ops.cancel(execution_id)
            if name == "fork":
                return await ops.fork(execution_id, int(form.get("at_step", "")))
            if name == "delete":
                return await ops.delete(execution_id)
            raise ActionError(f"unknown action {name!r}")

        back_after = "/" if name == "delete" else back  # a deleted execution has no page
        return await self._act(request, work, back, done=back_after)

    async def cleanup(self, request: Request) -> Response:
        async def work(form: dict[str, Any]) -> Outcome:
            days = float(form.get("older_than_days", "7"))
            if not days >= 0:
                raise ActionError("older than: a number of days, 0 or more")
            return await self.ops.cleanup(days)

        return await self._act(request, work, "/")


def _json_field(text: str, what: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionError(
            f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def _decisions(form: dict[str, Any]) -> dict[str, Any]:
    """Each pending call's decision from the form fields `decision:<id>`, `args:<id>` and `message:<id>`."""
    decisions: dict[str, Any] = {}
    for key, value in form.items():
        if not key.startswith("decision:"):
            continue
        call_id = key.removeprefix("decision:")
        if value == "approve":
            args_text = form.get(f"args:{call_id}", "")
            original = form.get(f"original:{call_id}", "")
            if args_text.strip() and args_text.strip() != original.strip():
                args = _json_field(args_text, f"arguments of {call_id}")
                if not isinstance(args, dict):
                    raise ActionError(f"arguments of {call_id}: a JSON object")
                decisions[call_id] = args
            else:
                decisions[call_id] = True
        elif value == "deny":
            decisions[call_id] = form.get(f"message:{call_id}", "").strip() or False
        else:
            raise ActionError(f"call {call_id}: choose approve or deny")
    if not decisions:
        raise ActionError("no decision in the form")
    return decisions


def create_app(
    storage: DurableExecutionStorage | str,
    *,
    token: str | None = None,
    read_only: bool = False,
    resolver: Any = None,
    secure_cookies: bool = False,
) -> Any:
    """The dashboard as an ASGI application (serve it with uvicorn; `perdure ui` does).

    Args:
        storage: A storage, or its URL (opened when the application starts, closed when it stops).
        token: The access token every request must carry (required by `perdure ui` off loopback).
        read_only: Hide the actions and refuse their requests (403).
        resolver: What `perdure worker --app` takes: the agents and workflows that resume runs.
        secure_cookies: Mark cookies `Secure` (behind HTTPS).

    Returns:
        The ASGI application.

    """
    label = mask_url(storage if isinstance(storage, str) else repr(storage))
    dashboard = _Dashboard(storage, resolver=resolver, read_only=read_only, storage_label=label, token=token)
    routes = [
        Route("/", dashboard.list_page),
        Route("/executions/{execution_id}", dashboard.execution_page),
        Route("/executions/{execution_id}/live", dashboard.execution_live),
        Route("/executions/{execution_id}/events", dashboard.execution_events),
        Route("/executions/{execution_id}/{action}", dashboard.action, methods=["POST"]),
        Route("/cleanup", dashboard.cleanup, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=dashboard.lifespan)
    app.state.dashboard = dashboard
    return Guard(app, token=token, secure_cookies=secure_cookies)


_ = datetime
