"""A local OpenAI-compatible Chat Completions server that plays a script, with injectable faults.

It is a real HTTP server (stdlib `ThreadingHTTPServer` on 127.0.0.1, one thread per connection), so
the real `openai` SDK and pydantic-ai's `OpenAIChatModel` talk to it exactly as to a provider: the
faults are real HTTP statuses, real dropped sockets and real client timeouts.

The reply to a request is chosen by its *turn*: the number of assistant messages already in the
request's conversation. A replayed or resumed conversation therefore gets the same reply for the
same turn, whichever process sends it. Faults are queued per turn and consumed one per request
(`fail`), or stay until cleared (`fail_always`). Only `POST /v1/chat/completions` without streaming
is implemented.

Counters: `requests` counts every request received (including faulted ones), `paid` those answered
200 with `usage` (what a provider would bill, including answers the client never read because it
timed out or died), and `log` keeps `(turn, outcome)` of every request in arrival order.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["Fault", "OpenAIServer", "Reply", "ToolCall", "call", "text"]


@dataclass(frozen=True)
class ToolCall:
    """One function call the scripted assistant makes."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A scripted assistant turn: tool calls, or a final text when there are none."""

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


def text(content: str) -> Reply:
    """A final text answer."""
    return Reply(text=content)


def call(name: str, /, **arguments: Any) -> Reply:
    """A turn that calls one tool with keyword `arguments`."""
    return Reply(tool_calls=(ToolCall(name, arguments),))


FaultKind = Literal["status", "drop", "slow", "hold"]


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request instead of the scripted reply."""

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    message: str = ""

    @classmethod
    def http(cls, status: int, message: str = "") -> Fault:
        """Answer with an HTTP error status and an OpenAI-style error body."""
        return cls("status", status=status, message=message or f"scripted HTTP {status}")

    @classmethod
    def rate_limited(cls, retry_after: float) -> Fault:
        """HTTP 429 with a `Retry-After` header in (fractional) seconds."""
        return cls("status", status=429, retry_after=retry_after, message="Rate limit reached; slow down")

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without any response."""
        return cls("drop")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after `seconds` (longer than the client's timeout)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def hold(cls) -> Fault:
        """Keep the request in flight until `release()` (or stop), then answer it normally.

        Lets a test kill the client while its request is in flight at the provider.
        """
        return cls("hold")


class OpenAIServer:
    """The scripted server; use as a context manager or with `start()`/`stop()`."""

    def __init__(self, script: list[Reply], *, model: str = "scripted-gpt") -> None:
        self.script = list(script)
        self.model = model
        self.requests = 0
        self.paid = 0
        self.log: list[tuple[int, str]] = []
        self.held = threading.Event()
        """Set when a `hold` fault has caught a request."""
        self._release = threading.Event()
        self._stopping = threading.Event()
        self._faults: dict[int, deque[Fault]] = {}
        self._always: dict[int, Fault] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for the `openai` client, ending in `/v1`."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> OpenAIServer:
        """Listen on an ephemeral port of 127.0.0.1 and serve in a daemon thread."""
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still held or sleeping are abandoned."""
        self._stopping.set()
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting ---------------------------------------------------------------------------

    def fail(self, turn: int, *faults: Fault) -> None:
        """Queue `faults` for `turn`: each one replaces the reply to one request of that turn."""
        with self._lock:
            self._faults.setdefault(turn, deque()).extend(faults)

    def fail_always(self, turn: int, fault: Fault) -> None:
        """Every request of `turn` gets `fault` until `clear_faults()` (an outage)."""
        with self._lock:
            self._always[turn] = fault

    def clear_faults(self) -> None:
        """The provider recovered: no more faults anywhere."""
        with self._lock:
            self._faults.clear()
            self._always.clear()

    def release(self) -> None:
        """Let held requests be answered."""
        self._release.set()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being handled (slow answers finished); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def requests_for(self, turn: int) -> int:
        """Requests received for `turn` so far."""
        with self._lock:
            return sum(1 for t, _ in self.log if t == turn)

    # ---- internals ---------------------------------------------------------------------------

    def _next_fault(self, turn: int) -> Fault | None:
        with self._lock:
            queue = self._faults.get(turn)
            if queue:
                return queue.popleft()
            return self._always.get(turn)

    def _note(self, turn: int, outcome: str, *, paid: bool = False) -> None:
        with self._lock:
            self.log.append((turn, outcome))
            if paid:
                self.paid += 1

    def _pay(self) -> None:
        with self._lock:
            self.paid += 1

    def _completion(self, body: dict[str, Any], turn: int) -> dict[str, Any]:
        reply = self.script[turn]
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        finish = "stop"
        if reply.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_t{turn}_{i}",
                    "type": "function",
                    "function": {"name": tc.name, "arguments": json.dumps(tc.arguments)},
                }
                for i, tc in enumerate(reply.tool_calls)
            ]
            finish = "tool_calls"
        prompt_tokens = 10 + len(json.dumps(body.get("messages", []))) // 4
        completion_tokens = 5 + len(json.dumps(message)) // 8
        return {
            "id": f"chatcmpl-t{turn}-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _error_body(message: str, status: int) -> dict[str, Any]:
    kinds = {429: "rate_limit_error", 400: "invalid_request_error"}
    error_type = kinds.get(status, "server_error")
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, like real providers (the SDK pools connections)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (timeout) or died; the answer was still "sent"
            self.close_connection = True

    def do_POST(self) -> None:
        owner = self.owner
        with owner._lock:
            owner._in_flight += 1
            owner.requests += 1
        try:
            self._handle(owner)
        finally:
            with owner._idle:
                owner._in_flight -= 1
                owner._idle.notify_all()

    def _handle(self, owner: OpenAIServer) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            owner._note(-1, f"404 {self.path}")
            self._send_json(404, _error_body(f"no route {self.path}; only /v1/chat/completions", 404))
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            owner._note(-1, "400 bad json")
            self._send_json(400, _error_body("request body is not JSON", 400))
            return
        messages = body.get("messages") or []
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        if body.get("stream"):
            owner._note(turn, "400 stream")
            self._send_json(
                400, _error_body("this test server only implements non-streaming chat completions", 400)
            )
            return
        if turn >= len(owner.script):
            owner._note(turn, "400 script exhausted")
            self._send_json(400, _error_body(f"the script has no reply for turn {turn}", 400))
            return
        fault = owner._next_fault(turn)
        if fault is None:
            owner._note(turn, "ok", paid=True)
            self._send_json(200, owner._completion(body, turn))
            return
        if fault.kind == "status":
            owner._note(turn, f"http {fault.status}")
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            self._send_json(fault.status, _error_body(fault.message, fault.status), headers)
        elif fault.kind == "drop":
            owner._note(turn, "dropped")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif fault.kind == "slow":
            owner._note(turn, f"slow {fault.seconds:g}s")
            owner._stopping.wait(fault.seconds)
            owner._pay()
            self._send_json(200, owner._completion(body, turn))
        else:  # hold
            owner._note(turn, "held")
            owner.held.set()
            owner._release.wait(30)
            owner._pay()
            self._send_json(200, owner._completion(body, turn))
