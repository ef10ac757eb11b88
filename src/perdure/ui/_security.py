"""The dashboard's guards: the access token, CSRF tokens, the Host check and the response headers.

- Access token (`--token` / `PERDURE_UI_TOKEN`): every request needs it, from the session cookie set
  after a `?token=` login (the token leaves the address bar at once by a redirect), an
  `Authorization: Bearer` header or an `X-Perdure-Token` header. The cookie holds an HMAC of the
  token, never the token, and no page ever shows the token.
- Without a token the dashboard is bound to the loopback interface (the CLI refuses anything else),
  and requests whose `Host` is not a loopback name are refused, so a web page cannot reach it
  through DNS rebinding.
- CSRF: state changes are POST requests whose form carries the `csrf` field equal to the
  `perdure_csrf` cookie (random per browser, `SameSite=Strict`, HttpOnly); anything else is 403 and
  changes nothing. GET requests never change state.
- Every response forbids inline scripts and framing (Content-Security-Policy), sniffing and referrers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Guard", "csrf_ok", "csrf_value"]

SESSION_COOKIE = "perdure_ui_session"
CSRF_COOKIE = "perdure_csrf"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"perdure-ui-session", hashlib.sha256).hexdigest()


def csrf_value(request: Request) -> str:
    """The CSRF token of this browser (its cookie), or a new one the response will set."""
    value = request.cookies.get(CSRF_COOKIE) or request.scope.get("perdure_new_csrf")
    if not value:
        value = secrets.token_urlsafe(32)
        request.scope["perdure_new_csrf"] = value
    return str(value)


def csrf_ok(request: Request, submitted: object) -> bool:
    """Whether a POST's `csrf` form field matches the browser's CSRF cookie."""
    cookie = request.cookies.get(CSRF_COOKIE)
    return (
        isinstance(submitted, str)
        and bool(cookie)
        and bool(submitted)
        and hmac.compare_digest(submitted.encode(), str(cookie).encode())
    )


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


class Guard:
    """ASGI middleware: token check, Host check, CSRF cookie and security headers on every response."""

    def __init__(self, app: ASGIApp, *, token: str | None, secure_cookies: bool = False) -> None:
        self.app = app
        self.token = token
        self.session = _session_value(token) if token else None
        self.secure_cookies = secure_cookies

    def _authorized(self, request: Request) -> bool:
        assert self.token is not None and self.session is not None
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session.encode()):
            return True
        header = request.headers.get("authorization", "")
        supplied = (
            header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-perdure-token", "")
        )
        return bool(supplied) and hmac.compare_digest(supplied.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response: Response | None = None
        if self.token is None and _host_name(request.headers.get("host", "")) not in _LOCAL_HOSTS:
            response = HTMLResponse("Forbidden: not a loopback host name.", status_code=403)
        elif self.token is not None:
            supplied = request.query_params.get("token")
            if supplied is not None and request.method == "GET":
                if hmac.compare_digest(supplied.encode(), self.token.encode()):
                    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                    target = request.url.path + ("?" + urlencode(rest) if rest else "")
                    response = RedirectResponse(target, status_code=303)
                    response.set_cookie(
                        SESSION_COOKIE,
                        self.session or "",
                        httponly=True,
                        samesite="strict",
                        secure=self.secure_cookies,
                    )
                else:
                    response = HTMLResponse("Unauthorized: wrong token.", status_code=401)
            elif not self._authorized(request):
                response = HTMLResponse(
                    "Unauthorized: this dashboard needs its access token. Open it with ?token=&lt;token&gt; "
                    "or send an Authorization: Bearer header.",
                    status_code=401,
                )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                new_csrf = scope.get("perdure_new_csrf")
                if new_csrf and not request.cookies.get(CSRF_COOKIE):
                    cookie = f"{CSRF_COOKIE}={new_csrf}; Path=/; HttpOnly; SameSite=Strict"
                    headers.append(
                        (b"set-cookie", (cookie + ("; Secure" if self.secure_cookies else "")).encode())
                    )
                message = {**message, "headers": headers}
            await send(message)

        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
