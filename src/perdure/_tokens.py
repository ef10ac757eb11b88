"""Signed resume tokens: a compact string that lets another process resume one execution.

A resume token is handed to something outside the program (an approval link, a webhook, a queue
message) and comes back later, possibly to another process that shares the same storage. Whoever
holds the token can resume that execution, so the token must be unforgeable, must not be editable
into a token for another execution or checkpoint, and must stop working after a while.

Format (version 1), all URL-safe so it fits a query string or path segment unescaped::

    <payload>.<signature>

    payload   = base64url(json([1, execution_id, checkpoint_or_null, expires_epoch, issued_epoch]))
    signature = base64url(HMAC-SHA256(key, b"perdure-resume-token-v1." + payload))

base64url is written without `=` padding. The signature covers the payload *as it appears in the
token* (the encoded text, not the decoded JSON), so any change to the payload's characters, even one
that decodes to the same bytes, fails verification. The signature is compared as its canonical text
too: the last base64 character of a 32-byte digest carries two unused bits, and comparing decoded
bytes would let that character be changed without detection. The `perdure-resume-token-v1.` prefix
separates these MACs from anything else the same key might sign.

Verification checks the signature before it decodes the payload, so nothing derived from
unauthenticated bytes (JSON, the execution id, the expiry) is ever parsed or acted on. Every failure
is an `InvalidResumeTokenError`; a signature mismatch does not say whether the key or the token was
wrong, and the error names the execution only once the signature proved the token genuine.

The key comes from the caller, the `PERDURE_SECRET_KEY` environment variable or the `secret_key` of
perdure's settings files (`perdure.settings`); there is no
default key, because a built-in key would let anyone who can read perdure's source mint tokens.
Only the standard library is used (no pickle, no eval): the payload is a JSON array of plain values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import InvalidExecutionIdError, InvalidResumeTokenError, UserError
from .records import utcnow

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "MAX_TOKEN_LENGTH",
    "MIN_KEY_BYTES",
    "SECRET_KEY_ENV",
    "TOKEN_VERSION",
    "TokenClaims",
    "create_resume_token",
    "secret_key",
    "verify_resume_token",
]

SECRET_KEY_ENV = "PERDURE_SECRET_KEY"
"""Environment variable read for the signing key when none is passed explicitly."""

MIN_KEY_BYTES = 16
"""Shortest key accepted: anything shorter can be brute-forced offline from one token."""

DEFAULT_TOKEN_TTL = timedelta(days=7)
"""Default lifetime of a token: long enough for a human approval, short enough to limit a leak."""

MAX_TOKEN_LENGTH = 4096
"""Longest token accepted; longer input is refused before any work, so junk cannot cost CPU or memory."""

TOKEN_VERSION = 1
"""Version of the payload layout; the first element of the payload array."""

_DOMAIN = b"perdure-resume-token-v1."
_B64URL = re.compile(r"[A-Za-z0-9_-]+")  # always `fullmatch`: `$` would let a trailing newline in
_KEY_HINT = (
    f"Set {SECRET_KEY_ENV} to a random secret shared by every process that creates or resumes tokens, "
    f'e.g. export {SECRET_KEY_ENV}="$(python -c "import secrets; print(secrets.token_urlsafe(32))")", '
    f"or pass key=... explicitly."
)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified resume token says: which execution, from where, and until when.

    Attributes:
        execution_id: The execution the token resumes.
        checkpoint: The checkpoint id to resume from, or None for the execution's latest state.
            Opaque here: the checkpoint layer gives it meaning.
        expires_at: When the token stops being accepted (UTC, timezone-aware, whole seconds).
        issued_at: When the token was created (UTC, timezone-aware, whole seconds).

    """

    execution_id: str
    checkpoint: str | None
    expires_at: datetime
    issued_at: datetime


def secret_key(key: str | bytes | None = None) -> bytes:
    """Return the signing key: `key` if given, else `PERDURE_SECRET_KEY` (environment, then settings files).

    There is deliberately no fallback key: a default would be the same in every installation, so
    tokens signed with it would be forgeable by anyone. A str key is used as its UTF-8 bytes.

    Args:
        key: An explicit key; overrides the environment.

    Returns:
        The key bytes, at least `MIN_KEY_BYTES` long.

    Raises:
        UserError: No key is configured (or the variable is empty), the key has the wrong type, or
            it is shorter than `MIN_KEY_BYTES` bytes.

    """
    source = "passed as key="
    if key is None:
        key = os.environ.get(SECRET_KEY_ENV)
        source = f"in the {SECRET_KEY_ENV} environment variable"
        if key is None:  # not in the environment: perdure.toml or [tool.perdure] of pyproject.toml
            from .settings import settings

            configured = settings()
            # The environment is read above, always afresh: cached settings that took the key from
            # a variable since removed must not keep it alive.
            if configured.secret_key is not None and configured.origins["secret_key"] != "environment":
                key = configured.secret_key.get_secret_value()
            source = "in perdure's settings (secret_key)"
        if not key:
            state = "is empty" if key == "" else "is not set"
            raise UserError(f"Resume tokens need a secret key, but {SECRET_KEY_ENV} {state}. {_KEY_HINT}")
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, bytes | bytearray):
        raw = bytes(key)
    else:
        raise UserError(f"The resume token key must be str or bytes, not {type(key).__name__}. {_KEY_HINT}")
    if len(raw) < MIN_KEY_BYTES:
        raise UserError(
            f"The resume token key {source} is {len(raw)} bytes; at least {MIN_KEY_BYTES} are "
            f"required so tokens cannot be forged by guessing the key. {_KEY_HINT}"
        )
    return raw


def create_resume_token(
    execution_id: str,
    *,
    checkpoint: str | None = None,
    expires_in: float | timedelta = DEFAULT_TOKEN_TTL,
    key: str | bytes | None = None,
    now: datetime | None = None,
) -> str:
    """Create a signed, URL-safe token that resumes `execution_id` (from `checkpoint`) until it expires.

    Times are stored as whole epoch seconds to keep the token short; the expiry is rounded up so a
    short lifetime never produces a token that is already expired.

    Args:
        execution_id: The execution to resume.
        checkpoint: A checkpoint id to resume from, or None for the latest state.
        expires_in: Lifetime in seconds, or a timedelta; must be positive. Defaults to 7 days.
        key: The signing key; defaults to `PERDURE_SECRET_KEY` (see `secret_key`).
        now: The issuing time (timezone-aware); defaults to the current time. For tests.

    Returns:
        The token, `<payload>.<signature>` in the base64url alphabet without padding.

    Raises:
        UserError: No usable key, a non-positive or non-finite `expires_in`, a naive `now`, an
            invalid checkpoint, or ids so long the token would exceed `MAX_TOKEN_LENGTH`.
        InvalidExecutionIdError: `execution_id` is empty, not a str, or holds control characters.

    """
    raw_key = secret_key(key)
    _check_execution_id(execution_id)
    if checkpoint is not None and (not isinstance(checkpoint, str) or not _printable(checkpoint)):
        raise UserError(
            f"Invalid checkpoint {checkpoint!r} for a resume token: pass a checkpoint id (a non-empty "
            f"string without control characters, as listed by DurableExecution.list_checkpoints) or None."
        )
    seconds = _lifetime_seconds(expires_in)
    moment = _aware(now).timestamp()
    issued = math.floor(moment)
    expires = math.ceil(moment + seconds)
    try:
        datetime.fromtimestamp(expires, UTC)
    except (OverflowError, OSError, ValueError):
        raise UserError(f"expires_in={expires_in!r} puts the token's expiry out of range.") from None
    body = json.dumps(
        [TOKEN_VERSION, execution_id, checkpoint, expires, issued], separators=(",", ":"), ensure_ascii=False
    )
    payload = _b64encode(body.encode("utf-8"))
    token = f"{payload}.{_sign(raw_key, payload)}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise UserError(
            f"The resume token for execution {execution_id!r} would be {len(token)} characters, over the "
            f"{MAX_TOKEN_LENGTH} that verification accepts: the execution or checkpoint id is too long.",
            execution_id=execution_id,
        )
    return token


def verify_resume_token(
    token: str, *, key: str | bytes | None = None, now: datetime | None = None
) -> TokenClaims:
    """Check a token's signature and expiry and return what it claims.

    The order is fixed: size and alphabet first (cheap, no decoding), then the signature (constant
    time), and only then is the payload decoded and parsed, so unauthenticated bytes are never
    interpreted.

    Args:
        token: The token as produced by `create_resume_token`. Surrounding whitespace is not
            stripped: a token is accepted exactly or not at all.
        key: The key it must be signed with; defaults to `PERDURE_SECRET_KEY` (see `secret_key`).
        now: The time to check the expiry against (timezone-aware); defaults to the current time.

    Returns:
        The verified claims.

    Raises:
        InvalidResumeTokenError: The token is malformed, was altered or signed with another key, or
            has expired. `execution_id` is set only when the signature was valid.
        UserError: No usable key is configured, or `now` is naive (a configuration error, not a
            problem with the token).

    """
    raw_key = secret_key(key)
    moment = _aware(now)
    if not isinstance(token, str):
        raise InvalidResumeTokenError(f"malformed: expected a str, got {type(token).__name__}")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidResumeTokenError(f"malformed: longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 2 or not all(_B64URL.fullmatch(part) for part in parts):
        raise InvalidResumeTokenError(
            "malformed: expected two base64url parts separated by a single '.' (payload.signature)"
        )
    payload, signature = parts
    if not hmac.compare_digest(_sign(raw_key, payload).encode("ascii"), signature.encode("ascii")):
        raise InvalidResumeTokenError("signature mismatch: the token was signed with another key or altered")
    # From here on the payload is authentic: it is exactly what `create_resume_token` wrote with
    # this key. The checks below still refuse anything unexpected instead of trusting its shape.
    claims = _parse_payload(payload)
    if moment >= claims.expires_at:
        raise InvalidResumeTokenError(
            f"expired at {claims.expires_at.isoformat()}", execution_id=claims.execution_id
        )
    return claims


def _parse_payload(payload: str) -> TokenClaims:
    """Decode an authenticated payload into claims, refusing any layout but the current version."""
    try:
        body: Any = json.loads(_b64decode(payload).decode("utf-8"), parse_constant=_refuse_constant)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidResumeTokenError(f"malformed payload: {type(exc).__name__}") from None
    if not isinstance(body, list) or not body:
        raise InvalidResumeTokenError("malformed payload: not a versioned array")
    version = body[0]
    if type(version) is not int or version != TOKEN_VERSION:
        raise InvalidResumeTokenError(
            f"unsupported token version {version!r} (this perdure reads version {TOKEN_VERSION})"
        )
    if len(body) != 5:
        raise InvalidResumeTokenError("malformed payload: wrong number of fields")
    _, execution_id, checkpoint, expires, issued = body
    if (
        not isinstance(execution_id, str)
        or not execution_id
        or not (checkpoint is None or isinstance(checkpoint, str))
        or type(expires) is not int
        or type(issued) is not int
        or expires <= issued
    ):
        raise InvalidResumeTokenError("malformed payload: missing or mistyped fields")
    try:
        expires_at = datetime.fromtimestamp(expires, UTC)
        issued_at = datetime.fromtimestamp(issued, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidResumeTokenError("malformed payload: timestamp out of range") from None
    return TokenClaims(execution_id, checkpoint, expires_at, issued_at)


def _sign(key: bytes, payload: str) -> str:
    """The canonical base64url text of the payload's MAC (compared as text; see the module doc)."""
    return _b64encode(hmac.new(key, _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _printable(value: str) -> bool:
    """True for a non-empty string without control characters (they break logs, URLs and keys)."""
    return bool(value) and not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value)


def _check_execution_id(execution_id: str) -> None:
    """Refuse ids no storage accepts; each backend still applies its own, stricter rules on resume.

    `perdure.storage.validate_identifier` is for SQL table names (letters first, 63 characters) and
    would refuse perdure's own ids, so the token layer only rejects what is never a valid id.
    """
    if not isinstance(execution_id, str) or not _printable(execution_id):
        raise InvalidExecutionIdError(
            str(execution_id), "a resume token needs a non-empty string without control characters"
        )


def _lifetime_seconds(expires_in: float | timedelta) -> float:
    if isinstance(expires_in, timedelta):
        seconds = expires_in.total_seconds()
    elif isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        seconds = float(expires_in)
    else:
        raise UserError(f"expires_in must be seconds (a number) or a timedelta, not {expires_in!r}.")
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"expires_in must be positive and finite, got {expires_in!r}.")
    return seconds


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return utcnow()
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise UserError(f"now must be a timezone-aware datetime (e.g. datetime.now(UTC)), got {now!r}.")
    return now
