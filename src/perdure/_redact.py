"""Redaction of credentials from text perdure stores (error messages and tracebacks).

Providers echo API keys in error messages ("Incorrect API key provided: sk-proj-..."), HTTP
clients put `Authorization` headers and URLs with passwords into exception texts, and whatever an
exception says ends up in the execution's head, readable by anyone who can list executions. Every
pattern is precompiled and runs only when its trigger word occurs; the secret is replaced by
`***` and the surrounding text (the key's name, a recognizable prefix) is kept so that the message
still says *which* credential was wrong.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "mask_url", "redact"]

REDACTED = "***"

_VALUE = r"""(?:"[^"\n]*"|'[^'\n]*'|[^\s"',;&}\]]+)"""

# (trigger words, pattern): a pattern runs only when one of its words occurs in the lowercased
# text, and starts with a literal where it can, so that `re` scans for it quickly. Group 1 is the
# text kept before the secret. (One alternation of all patterns is ~20x slower: it defeats the
# literal-prefix scan of `re`.)
_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    # scheme://user:password@host -> scheme://user:***@host (first: a password may look like anything)
    (("://",), re.compile(r"(://[^\s:/@\"'<>]*:)[^\s@/\"'<>]+(?=@)")),
    # Authorization: Bearer xyz / "authorization": "Basic xyz" / Proxy-Authorization=...
    (
        ("authorization",),
        re.compile(
            r"(authorization[\"']?\s*[:=]\s*)"
            r"(?:[\"']?(?:bearer|basic|token|digest)\s+[^\s\"',;&}\]]+[\"']?|" + _VALUE + ")",
            re.IGNORECASE,
        ),
    ),
    # Bearer xyz anywhere else (curl command lines, repr of header tuples)
    (("bearer",), re.compile(r"((?<![\w-])bearer\s+)(?!\*\*\*)[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE)),
    # api_key=..., "api_key": "...", x-api-key: ..., password=..., client_secret: ...
    (
        ("key", "token", "secret", "passw"),
        re.compile(
            r"((?<![\w-])(?:x-)?(?:api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|auth[_-]?token|"
            r"client[_-]?secret|secret[_-]?key|private[_-]?key|password|passwd)[\"']?\s*[:=]\s*)"
            r"(?!\*\*\*)" + _VALUE,
            re.IGNORECASE,
        ),
    ),
    # OpenAI (sk-..., sk-proj-..., also partly masked echoes like sk-proj-abc...xyz) and Anthropic
    # (sk-ant-...) keys; the prefix up to the key's kind is kept.
    (
        ("sk-",),
        re.compile(
            r"(sk-(?<![\w-]sk-)(?:(?:ant|proj|svcacct|admin)(?:-api\d\d)?-)?)(?:[A-Za-z0-9_*\-]|\.\.\.){10,}"
        ),
    ),
    # AWS access key ids
    (
        ("akia", "asia", "agpa", "aida", "aroa"),
        re.compile(r"(A(?:KIA|SIA|GPA|IDA|ROA))(?<!\wA...)[0-9A-Z]{16}(?!\w)"),
    ),
    # GitHub tokens
    (
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"((?<!\w)(?:gh[pousr]_|github_pat_))[A-Za-z0-9_]{20,}"),
    ),
    # Google API keys, Slack tokens
    (("aiza",), re.compile(r"(AIza)(?<!\wAIza)[0-9A-Za-z\-_]{35}")),
    (("xox",), re.compile(r"(xox[abposr]-)(?<!\wxox.-)[0-9A-Za-z\-]{10,}")),
)


def _keep(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


def redact(text: str) -> str:
    """Return `text` with API keys, tokens and passwords replaced by `***`."""
    if not text:
        return text
    lower = text.lower()
    for triggers, pattern in _RULES:
        if any(word in lower for word in triggers):
            text = pattern.sub(_keep, text)
    return text


_PASSWORD = re.compile(r"(://[^/?#@:]*:)[^/?#@]*@")


def mask_url(url: str) -> str:
    """`url` with the password of its user info replaced by `***` (for messages and logs)."""
    return _PASSWORD.sub(r"\1***@", url) if isinstance(url, str) else repr(url)
