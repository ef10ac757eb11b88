r"""Untrusted storage text made safe to print: visible escapes, plain-text cells, exact JSON.

Everything the CLI prints from a storage (ids, names, errors, task descriptions) is untrusted: a
record may carry terminal escape sequences (an OSC 52 clipboard write, a screen clear), C1 controls,
bidirectional overrides ("Trojan source") or Rich markup. Keeping every way of turning such text into
output in this one module means a command cannot print storage text unescaped by accident: it goes
through `safe_text` (plain lines), `_cell` (table cells Rich never parses as markup), `_json`
(`--json`) or `_SafeFormatter` (worker logs).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from rich.text import Text

__all__ = ["_SafeFormatter", "_cell", "_json", "safe_lines", "safe_text"]

# C0 (tab and newline included: a record must not forge lines), DEL, C1 (8-bit CSI/OSC/...), lone
# surrogates (unencodable), line/paragraph separators and bidirectional overrides ("Trojan source").
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# What json.dumps(ensure_ascii=False) leaves raw: it escapes C0 itself.
_UNSAFE_JSON = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    r"""The escape shown for one unsafe character: `\n`, `\r`, `\t`, else `\xNN` or `\uNNNN`.

    Python-style escapes keep the character identifiable (an operator can tell `\x1b` from `\x07`)
    while being inert in any terminal.
    """
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def safe_text(value: object) -> str:
    r"""`value` as text with every control character replaced by a visible escape (`\x1b`, `\n`).

    For text that comes from a storage (ids, names, errors, descriptions): it may hold terminal
    escape sequences. The result is still raw text, not Rich markup: print it with `typer.echo` or
    wrap it in `rich.text.Text` (`_cell`), never pass it to Rich as markup.

    Args:
        value: Any value; non-strings are converted with `str` first.

    Returns:
        The text, safe to write to a terminal, with printable characters (non-ASCII included) kept.

    """
    return _UNSAFE.sub(_visible, value if isinstance(value, str) else str(value))


def safe_lines(value: object) -> str:
    r"""Like `safe_text`, but keeping line breaks (`\n`, `\r\n`): for an output or a traceback.

    Every other control character, a lone `\r` included, is still shown as a visible escape.
    """
    text = value if isinstance(value, str) else str(value)
    return "\n".join(safe_text(line) for line in text.replace("\r\n", "\n").split("\n"))


def _cell(value: object, *, fold: bool = False) -> Text:
    """A table cell Rich never parses as markup: one line, ellipsized, or (`fold`) wrapped, never cut."""
    if fold:
        return Text(safe_text(value), no_wrap=False, overflow="fold")
    return Text(safe_text(value), no_wrap=True, overflow="ellipsis")


def _json(data: Any, *, compact: bool = False) -> str:
    r"""Exact JSON, non-ASCII kept readable, every control character escaped.

    `--json` output is read by programs, so it must stay exact JSON: escaping with JSON's own `\uNNNN`
    (not `safe_text`) keeps the decoded values unchanged while the text stays inert in a terminal.
    """
    if compact:  # one object per line (JSON Lines)
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False)
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _SafeFormatter(logging.Formatter):
    """A log formatter that escapes control characters in messages and tracebacks (worker logs)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Format, then escape: the message may carry execution ids or errors from a storage."""
        return safe_text(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        """Escape each traceback line, keeping the line breaks."""
        return "\n".join(safe_text(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:
        """Escape each stack line, keeping the line breaks."""
        return "\n".join(safe_text(line) for line in super().formatStack(stack_info).split("\n"))
