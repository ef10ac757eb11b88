"""Resume tokens: signed, expiring, URL-safe; anything altered, expired or foreign is refused.

A token leaves the program (an approval link, a webhook) and comes back to any process sharing the
storage, so it must not be forgeable, editable or usable forever. These tests drive the token layer
directly (`perdure._tokens`); nothing here touches storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest

from perdure._tokens import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_LENGTH,
    SECRET_KEY_ENV,
    TokenClaims,
    create_resume_token,
    secret_key,
    verify_resume_token,
)
from perdure.errors import InvalidExecutionIdError, InvalidResumeTokenError, UserError

KEY = "k" * 8 + "0123456789abcdef"
OTHER_KEY = b"another-secret-key-of-32-bytes!!"
NOW = datetime(2026, 11, 22, 13, 55, 1, tzinfo=UTC)
EXECUTION_ID = "20261122135501-a1b2c3d4"
CHECKPOINT = f"{EXECUTION_ID}@12"
URL_SAFE = string.ascii_letters + string.digits + "-_"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests pass keys explicitly unless they are about the environment variable.
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)


def _token(**kwargs: object) -> str:
    options: dict[str, object] = {"key": KEY, "now": NOW, "checkpoint": CHECKPOINT}
    options.update(kwargs)
    return create_resume_token(EXECUTION_ID, **options)  # type: ignore[arg-type]


def _signed(payload_bytes: bytes, key: str | bytes = KEY) -> str:
    """A token over arbitrary payload bytes, signed the way the format specifies (to probe parsing)."""
    raw = key.encode() if isinstance(key, str) else key
    payload = base64.urlsafe_b64encode(payload_bytes).rstrip(b"=").decode()
    mac = hmac.new(raw, b"perdure-resume-token-v1." + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _reason(token: object, **kwargs: object) -> InvalidResumeTokenError:
    options: dict[str, object] = {"key": KEY, "now": NOW}
    options.update(kwargs)
    with pytest.raises(InvalidResumeTokenError) as info:
        verify_resume_token(token, **options)  # type: ignore[arg-type]
    return info.value


# -- round trip and format -------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", [None, CHECKPOINT])
def test_round_trip_returns_the_claims(checkpoint: str | None) -> None:
    token = _token(checkpoint=checkpoint)
    claims = verify_resume_token(token, key=KEY, now=NOW + timedelta(days=1))
    assert claims == TokenClaims(
        execution_id=EXECUTION_ID, checkpoint=checkpoint, expires_at=NOW + DEFAULT_TOKEN_TTL, issued_at=NOW
    )
    assert claims.expires_at.tzinfo is not None and claims.expires_at.utcoffset() == timedelta(0)


def test_claims_are_frozen() -> None:
    claims = verify_resume_token(_token(), key=KEY, now=NOW)
    with pytest.raises(AttributeError):
        claims.execution_id = "other"  # type: ignore[misc]


def test_expires_in_as_seconds_or_timedelta_and_rounded_up() -> None:
    for expires_in in (3600, 3600.0, timedelta(hours=1)):
        claims = verify_resume_token(_token(expires_in=expires_in), key=KEY, now=NOW)
        assert claims.expires_at == NOW + timedelta(hours=1)
    # A sub-second lifetime from a fractional `now` still yields a token valid right now.
    fractional = NOW + timedelta(microseconds=400_000)
    token = _token(expires_in=0.1, now=fractional)
    claims = verify_resume_token(token, key=KEY, now=fractional)
    assert claims.issued_at == NOW and claims.expires_at == NOW + timedelta(seconds=1)


def test_non_utc_now_is_accepted_and_claims_are_utc() -> None:
    paris = timezone(timedelta(hours=1))
    token = _token(now=NOW.astimezone(paris))
    claims = verify_resume_token(token, key=KEY, now=NOW.astimezone(paris))
    assert claims.issued_at == NOW and claims.issued_at.tzinfo == UTC


def test_token_is_url_safe_and_compact() -> None:
    for checkpoint in (None, CHECKPOINT):
        token = _token(checkpoint=checkpoint)
        payload, signature = token.split(".")
        assert set(payload) <= set(URL_SAFE) and set(signature) <= set(URL_SAFE)
        assert "=" not in token
        assert len(signature) == 43  # 32-byte HMAC-SHA256, unpadded
        assert len(token) < 200, len(token)


def test_payload_is_the_documented_versioned_array() -> None:
    payload = _token().split(".")[0]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert body == [
        1,
        EXECUTION_ID,
        CHECKPOINT,
        int((NOW + DEFAULT_TOKEN_TTL).timestamp()),
        int(NOW.timestamp()),
    ]
    # The signature is HMAC-SHA256 over the domain prefix and the encoded payload text.
    assert _signed(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) == _token()


def test_non_ascii_ids_round_trip() -> None:
    token = create_resume_token("exécution-ü", checkpoint="ck-ß@1", key=KEY, now=NOW)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    claims = verify_resume_token(token, key=KEY, now=NOW)
    assert (claims.execution_id, claims.checkpoint) == ("exécution-ü", "ck-ß@1")


# -- tampering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", [None, CHECKPOINT])
def test_every_single_character_flip_is_rejected(checkpoint: str | None) -> None:
    token = _token(checkpoint=checkpoint)
    for position, original in enumerate(token):
        # Try several replacements per position, including neighbours that differ only in the low
        # bits (the last signature char carries unused bits that a bytes comparison would ignore).
        alphabet = URL_SAFE + "."
        index = alphabet.index(original)
        replacements = {alphabet[(index + step) % len(alphabet)] for step in (1, 2, 3, 17, 40)}
        replacements.discard(original)
        for replacement in replacements:
            altered = token[:position] + replacement + token[position + 1 :]
            err = _reason(altered)
            assert err.execution_id is None, (position, replacement, err.reason)
            assert err.reason.startswith(("signature mismatch", "malformed")), err.reason


def test_swapped_payloads_between_executions_are_rejected() -> None:
    mine = _token()
    theirs = create_resume_token("other-execution", key=KEY, now=NOW)
    spliced = f"{theirs.split('.')[0]}.{mine.split('.')[1]}"
    assert _reason(spliced).reason.startswith("signature mismatch")


@pytest.mark.parametrize("cut", [1, 2, 5, 43, 44])
def test_truncated_tokens_are_rejected(cut: int) -> None:
    token = _token()
    err = _reason(token[:-cut])
    assert err.execution_id is None


@pytest.mark.parametrize("suffix", ["A", "AA", "AAAA", ".", ".x", "=", "==", "\n", " "])
def test_extended_tokens_are_rejected(suffix: str) -> None:
    assert _reason(_token() + suffix).execution_id is None


@pytest.mark.parametrize("prefix", ["A", " ", "."])
def test_prefixed_tokens_are_rejected(prefix: str) -> None:
    assert _reason(prefix + _token()).execution_id is None


def test_wrong_key_is_a_signature_mismatch_that_does_not_name_the_execution() -> None:
    err = _reason(_token(), key=OTHER_KEY)
    assert err.reason == "signature mismatch: the token was signed with another key or altered"
    assert err.execution_id is None
    assert EXECUTION_ID not in str(err)
    assert "Nothing was resumed" in str(err)


def test_tampered_and_foreign_key_errors_are_indistinguishable() -> None:
    token = _token()
    flipped = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    assert _reason(flipped).reason == _reason(token, key=OTHER_KEY).reason


# -- expiry ----------------------------------------------------------------------------------------


def test_expired_token_is_rejected_with_its_expiry() -> None:
    token = _token(expires_in=timedelta(hours=1))
    expiry = NOW + timedelta(hours=1)
    assert verify_resume_token(token, key=KEY, now=expiry - timedelta(seconds=1)).execution_id == EXECUTION_ID
    for later in (expiry, expiry + timedelta(seconds=1), expiry + timedelta(days=365)):
        err = _reason(token, now=later)
        assert err.reason == f"expired at {expiry.isoformat()}"
        # The signature was valid, so the error may say which execution the stale token was for.
        assert err.execution_id == EXECUTION_ID


def test_default_lifetime_is_seven_days() -> None:
    token = _token()
    verify_resume_token(token, key=KEY, now=NOW + timedelta(days=7) - timedelta(seconds=1))
    assert _reason(token, now=NOW + timedelta(days=7)).reason.startswith("expired at")


def test_verify_uses_the_current_time_by_default() -> None:
    fresh = create_resume_token(EXECUTION_ID, key=KEY)
    assert verify_resume_token(fresh, key=KEY).execution_id == EXECUTION_ID
    stale = create_resume_token(EXECUTION_ID, key=KEY, now=NOW - timedelta(days=3650))
    assert _reason(stale, now=None).reason.startswith("expired at")


@pytest.mark.parametrize("expires_in", [0, -1, 0.0, -0.5, timedelta(0), timedelta(seconds=-5), float("nan")])
def test_non_positive_lifetime_is_refused(expires_in: float | timedelta) -> None:
    with pytest.raises(UserError, match="expires_in must be positive"):
        _token(expires_in=expires_in)


@pytest.mark.parametrize("expires_in", [float("inf"), timedelta.max, 1e300])
def test_unrepresentable_lifetime_is_refused(expires_in: float | timedelta) -> None:
    with pytest.raises(UserError, match="expires_in"):
        _token(expires_in=expires_in)


@pytest.mark.parametrize("expires_in", ["3600", None, True])
def test_mistyped_lifetime_is_refused(expires_in: object) -> None:
    with pytest.raises(UserError, match="expires_in must be seconds"):
        _token(expires_in=expires_in)


def test_naive_now_is_refused() -> None:
    with pytest.raises(UserError, match="timezone-aware"):
        _token(now=datetime(2026, 1, 1))
    with pytest.raises(UserError, match="timezone-aware"):
        verify_resume_token(_token(), key=KEY, now=datetime(2026, 1, 1))


# -- keys --------------------------------------------------------------------------------------------


def test_missing_key_is_a_user_error_that_says_how_to_set_one() -> None:
    with pytest.raises(UserError) as info:
        create_resume_token(EXECUTION_ID)
    message = str(info.value)
    assert SECRET_KEY_ENV in message and "is not set" in message
    assert "secrets.token_urlsafe(32)" in message
    assert not isinstance(info.value, InvalidResumeTokenError)
    with pytest.raises(UserError, match=SECRET_KEY_ENV):
        verify_resume_token(_token())


def test_empty_env_key_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, "")
    with pytest.raises(UserError, match="is empty"):
        create_resume_token(EXECUTION_ID)


@pytest.mark.parametrize("short", ["", "x", "fifteen-chars!!", b"\x00" * 15])
def test_short_explicit_key_is_refused(short: str | bytes) -> None:
    with pytest.raises(UserError, match="at least 16"):
        create_resume_token(EXECUTION_ID, key=short)
    with pytest.raises(UserError, match="at least 16"):
        secret_key(short)


def test_short_env_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, "short")
    with pytest.raises(UserError, match=f"{SECRET_KEY_ENV} environment variable is 5 bytes"):
        create_resume_token(EXECUTION_ID)


def test_mistyped_key_is_refused() -> None:
    with pytest.raises(UserError, match="str or bytes"):
        secret_key(12345678901234567890)  # type: ignore[arg-type]


def test_env_key_is_used_when_no_key_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, KEY)
    assert secret_key() == KEY.encode()
    token = create_resume_token(EXECUTION_ID, now=NOW)
    assert token == create_resume_token(EXECUTION_ID, key=KEY, now=NOW)
    assert verify_resume_token(token, now=NOW).execution_id == EXECUTION_ID
    # An explicit key overrides the environment.
    assert _reason(token, key=OTHER_KEY).reason.startswith("signature mismatch")
    explicit = create_resume_token(EXECUTION_ID, key=OTHER_KEY, now=NOW)
    assert verify_resume_token(explicit, key=OTHER_KEY, now=NOW).execution_id == EXECUTION_ID
    assert _reason(explicit, key=None).reason.startswith("signature mismatch")


def test_str_and_bytes_keys_are_equivalent() -> None:
    assert secret_key(KEY) == secret_key(KEY.encode())
    token = _token()
    assert verify_resume_token(token, key=KEY.encode(), now=NOW).execution_id == EXECUTION_ID


# -- invalid inputs at creation --------------------------------------------------------------------


@pytest.mark.parametrize("execution_id", ["", "a\nb", "nul\x00", "tab\there", 42, None])
def test_invalid_execution_ids_are_refused(execution_id: object) -> None:
    with pytest.raises(InvalidExecutionIdError):
        create_resume_token(execution_id, key=KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize("checkpoint", ["", "a\nb", 12])
def test_invalid_checkpoints_are_refused(checkpoint: object) -> None:
    with pytest.raises(UserError, match="Invalid checkpoint"):
        create_resume_token(EXECUTION_ID, checkpoint=checkpoint, key=KEY)  # type: ignore[arg-type]


def test_ids_too_long_for_a_token_are_refused_at_creation() -> None:
    with pytest.raises(UserError, match=f"over the {MAX_TOKEN_LENGTH}"):
        create_resume_token("x" * 4000, key=KEY)
    # Every token that can be created can be verified.
    long_ok = create_resume_token("x" * 1000, checkpoint="y" * 1000, key=KEY, now=NOW)
    assert len(long_ok) <= MAX_TOKEN_LENGTH
    assert verify_resume_token(long_ok, key=KEY, now=NOW).execution_id == "x" * 1000


# -- garbage input at verification ---------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "..",
        "abc",
        "abc.",
        ".abc",
        "a.b.c",
        "été.ça",
        "токен.подпись",
        "abc.def\x00",
        "abc def.ghi",
        "abc+/.def==",
        "A" * 10_000_000,
        "A" * 3000 + "." + "B" * 3000,
        "\ud800.\udfff",
    ],
    ids=lambda value: repr(value)[:30],
)
def test_garbage_is_an_invalid_token(garbage: str) -> None:
    err = _reason(garbage)
    assert err.execution_id is None
    assert err.reason.startswith(("malformed", "signature mismatch"))


@pytest.mark.parametrize("garbage", [None, b"abc.def", 12, ["a", "b"]])
def test_non_str_tokens_are_invalid_tokens(garbage: object) -> None:
    assert _reason(garbage).reason.startswith("malformed: expected a str")


def test_overlong_token_is_refused_before_any_work() -> None:
    assert _reason("A" * (MAX_TOKEN_LENGTH + 1)).reason == (
        f"malformed: longer than {MAX_TOKEN_LENGTH} characters"
    )


# -- signature before parsing ----------------------------------------------------------------------


def test_signature_is_checked_before_the_payload_is_parsed() -> None:
    # Valid base64 of invalid JSON, with a signature made under another key: the error must be about
    # the signature, proving the payload was never decoded or parsed.
    forged = _signed(b"{not json at all", key=OTHER_KEY)
    assert _reason(forged).reason.startswith("signature mismatch")
    # The same payload signed with the right key gets as far as parsing, and fails there.
    assert _reason(_signed(b"{not json at all")).reason.startswith("malformed payload")


def test_forged_payload_claiming_any_execution_is_rejected_without_naming_it() -> None:
    body = json.dumps([1, "victim", None, 2**40, 0]).encode()
    err = _reason(_signed(body, key=OTHER_KEY))
    assert err.reason.startswith("signature mismatch")
    assert err.execution_id is None and "victim" not in str(err)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "malformed payload"),
        (b"{}", "malformed payload: not a versioned array"),
        (b"[]", "malformed payload: not a versioned array"),
        (b'"text"', "malformed payload: not a versioned array"),
        (b'[2,"e",null,2000000000,1]', "unsupported token version 2"),
        (b'["1","e",null,2000000000,1]', "unsupported token version '1'"),
        (b'[true,"e",null,2000000000,1]', "unsupported token version True"),
        (b'[1,"e",null,2000000000]', "malformed payload: wrong number of fields"),
        (b'[1,"e",null,2000000000,1,"extra"]', "malformed payload: wrong number of fields"),
        (b'[1,"",null,2000000000,1]', "malformed payload: missing or mistyped fields"),
        (b"[1,7,null,2000000000,1]", "malformed payload: missing or mistyped fields"),
        (b'[1,"e",3,2000000000,1]', "malformed payload: missing or mistyped fields"),
        (b'[1,"e",null,"2000000000",1]', "malformed payload: missing or mistyped fields"),
        (b'[1,"e",null,2000000000.5,1]', "malformed payload: missing or mistyped fields"),
        (b'[1,"e",null,true,0]', "malformed payload: missing or mistyped fields"),
        (b'[1,"e",null,5,5]', "malformed payload: missing or mistyped fields"),
        (b'[1,"e",null,NaN,1]', "malformed payload"),
        (b'[1,"e",null,99999999999999999999,1]', "malformed payload: timestamp out of range"),
    ],
)
def test_authentic_but_malformed_payloads_are_refused(body: bytes, reason: str) -> None:
    err = _reason(_signed(body), now=datetime(2000, 1, 1, tzinfo=UTC))
    assert err.reason.startswith(reason), err.reason
    assert err.execution_id is None


def test_errors_survive_pickling() -> None:
    import pickle

    err = _reason(_token(expires_in=1), now=NOW + timedelta(hours=1))
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.reason, clone.execution_id, str(clone)) == (err.reason, err.execution_id, str(err))
