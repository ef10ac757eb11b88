"""Journal keys: the one place that builds and parses them.

Every journal entry has a key, and keys are persisted: a journal written by one version of perdure
is replayed by later ones, so these formats are a compatibility contract (pinned by
`tests/test_journal_keys.py`). Keys never depend on timing:

- a tool call is keyed `tool:<m>/<tool_call_id>`: `m` is the ordinal of the (journaled) model
  response that asked for it and `tool_call_id` comes from that response, so the key is the same on
  every replay, and unique even when a model reuses a `tool_call_id` in a later response. A repeat
  inside one response gets `#2`, `#3`, ... Other units tied to a tool call (argument validation)
  use their own prefix the same way: `validate:<m>/<tool_call_id>`. Journals written before this
  format (`tool:<tool_call_id>`, `validate:<tool_call_id>`) are still replayed;
- every other unit (model requests, event handlers, discovery) is keyed `<base>#<n>`: its
  operation's base name (`model` for model requests) and its ordinal among units of that base,
  deterministic because tool calls run sequentially inside an execution;
- in approval round N > 0 (each round is a new pydantic-ai run whose ordinals start again) unit
  keys are prefixed: `r<N>/<key>`;
- a workflow's own units are keyed by position: `w<n>` for its n-th step, agent run, sleep,
  `now()`, `random()` or state (the entry's name says which, and a replay that asks for another name
  at that position is refused); the units of the agent run at position n are keyed `w<n>/<key>`
  (`w2/model#1`, `w2/tool:1/<tool_call_id>`), so two agents' units never collide;
- bookkeeping entries name the unit they are about: `started:<key>` (then `started:<key>#2`, ...)
  before each try of a non-idempotent tool call, `attempt:<key>#<n>` for the n-th failed try under a
  retry policy, `decision:<key>#<d>` for an operator's resolution (`d`: the execution's d-th
  decision), and `round:<N>` for the decisions that start approval round N;
- a manual checkpoint is keyed like any unit of base `checkpoint` (`checkpoint#<n>`, or its workflow
  position `w<n>`); an operator's rewind is `rewind#<n>`.

One ambiguity is inherent to the format: the second `started` marker of `tool:1/c` and the first
marker of the repeated call `tool:1/c#2` are both `started:tool:1/c#2`. It needs a model that
repeats a call id inside one response *and* an operator's re-run of a non-idempotent call.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Container
from dataclasses import dataclass

__all__ = [
    "MODEL_REQUEST",
    "TOOL",
    "CallKey",
    "UnitKeys",
    "attempt_key",
    "attempt_unit",
    "call_key",
    "decision_key",
    "is_decision_for",
    "is_round_key",
    "is_started_marker_for",
    "legacy_call_key",
    "parse_call_key",
    "round_key",
    "rewind_key",
    "round_prefix",
    "started_key",
    "started_units",
    "unit_key",
    "workflow_key",
    "workflow_scope",
]

MODEL_REQUEST = "model"
"""Base of model request keys: `model#1`, `model#2`, ...; also what `m` in `tool:<m>/<id>` counts."""

TOOL = "tool"
"""Prefix of tool call keys."""

_STARTED = "started:"
_ATTEMPT = "attempt:"
_DECISION = "decision:"
_ROUND = "round:"
_BOOKKEEPING = (_STARTED, _ATTEMPT, _DECISION, _ROUND)
_ORDINAL = re.compile(r"#(\d+)$")
_CALL = re.compile(r"^(?:r(?P<round>\d+)/)?(?P<kind>[^:/#]+):(?:(?P<response>\d+)/)?(?P<rest>.+)$")


# ---- building ------------------------------------------------------------------------------------


def round_prefix(round: int) -> str:
    """`r<round>/` in approval rounds after the first, else nothing."""
    return f"r{round}/" if round else ""


def unit_key(base: str, ordinal: int, *, round: int = 0) -> str:
    """`<base>#<ordinal>` (`r<round>/` first in later approval rounds), e.g. `model#3`."""
    return f"{round_prefix(round)}{base}#{ordinal}"


def call_key(kind: str, response: int, tool_call_id: str, *, round: int = 0, repeat: int = 1) -> str:
    """`<kind>:<response>/<tool_call_id>`, `#<repeat>` after the first in one response, e.g. `tool:2/c1`."""
    key = f"{round_prefix(round)}{kind}:{response}/{tool_call_id}"
    return f"{key}#{repeat}" if repeat > 1 else key


def workflow_key(position: int) -> str:
    """`w<position>`: the key of a workflow's `position`-th own unit (1-based)."""
    return f"w{position}"


def workflow_scope(position: int) -> str:
    """`w<position>/`: the prefix of the keys of the agent run at that position of a workflow."""
    return f"{workflow_key(position)}/"


def legacy_call_key(kind: str, tool_call_id: str) -> str:
    """`<kind>:<tool_call_id>`: the key of a call in journals written before per-response keys."""
    return f"{kind}:{tool_call_id}"


def started_key(key: str, n: int = 1) -> str:
    """`started:<key>` for the first try of a non-idempotent call, `started:<key>#<n>` for later ones."""
    return f"{_STARTED}{key}#{n}" if n > 1 else f"{_STARTED}{key}"


def attempt_key(key: str, n: int) -> str:
    """`attempt:<key>#<n>`: the n-th failed try of unit `key` (journaled before its back-off)."""
    return f"{_ATTEMPT}{key}#{n}"


def decision_key(key: str, n: int) -> str:
    """`decision:<key>#<n>`: an operator's resolution of unit `key`, the execution's n-th decision."""
    return f"{_DECISION}{key}#{n}"


def rewind_key(n: int) -> str:
    """`rewind#<n>`: the execution's n-th rewind (see `perdure.durable.checkpoints`)."""
    return f"rewind#{n}"


def round_key(round: int) -> str:
    """`round:<round>`: the decisions (and history) that start approval round `round`."""
    return f"{_ROUND}{round}"


# ---- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallKey:
    """The parts of a tool call's key (`response` is None for a legacy `tool:<id>` key)."""

    kind: str
    tool_call_id: str
    response: int | None = None
    round: int = 0
    repeat: int = 1


def parse_call_key(key: str) -> CallKey | None:
    """The parts of a call key built by `call_key` or `legacy_call_key`; None for unit and bookkeeping keys.

    Meant for the keys of tool call (and validation) entries: an operation name containing `:` would
    parse too, so check the entry's kind first.

    A `#<n>` suffix is read as a repeat inside one response only on per-response keys; a legacy key
    keeps it as part of the call id.
    """
    match = _CALL.match(key)
    if match is None or match["kind"] + ":" in _BOOKKEEPING:
        return None
    rest = match["rest"]
    response = int(match["response"]) if match["response"] is not None else None
    repeat = 1
    if response is not None:
        ordinal = _ORDINAL.search(rest)
        if ordinal is not None and int(ordinal[1]) > 1:
            rest, repeat = rest[: ordinal.start()], int(ordinal[1])
    return CallKey(
        kind=match["kind"],
        tool_call_id=rest,
        response=response,
        round=int(match["round"]) if match["round"] is not None else 0,
        repeat=repeat,
    )


def _suffix_of(key: str, prefix: str) -> str | None:
    return key[len(prefix) :] if key.startswith(prefix) else None


def is_started_marker_for(marker: str, key: str) -> bool:
    """Whether `marker` is a `started` marker of unit `key` (its first or a later try)."""
    rest = _suffix_of(marker, _STARTED + key)
    return rest is not None and (rest == "" or (rest[:1] == "#" and rest[1:].isdigit()))


def started_units(marker: str) -> tuple[str, ...]:
    """The unit keys a `started:` marker may be about; () for other keys.

    `started:<key>` is about `<key>`; when `<key>` ends with `#<n>` the marker may also be a later
    try's marker of the key without it (the format cannot tell, see the module docstring).
    """
    rest = _suffix_of(marker, _STARTED)
    if not rest:
        return ()
    ordinal = _ORDINAL.search(rest)
    if ordinal is None or int(ordinal[1]) < 2:
        return (rest,)
    return rest, rest[: ordinal.start()]


def attempt_unit(key: str) -> str | None:
    """The unit key an `attempt:<key>#<n>` entry counts a failure of; None for other keys."""
    rest = _suffix_of(key, _ATTEMPT)
    if rest is None or _ORDINAL.search(rest) is None:
        return None
    return rest.rsplit("#", 1)[0]


def is_decision_for(decision: str, key: str) -> bool:
    """Whether `decision` is a `decision:<key>#<n>` entry about unit `key`."""
    rest = _suffix_of(decision, _DECISION + key + "#")
    return rest is not None and rest.isdigit()


def is_round_key(key: str) -> bool:
    """Whether `key` is a `round:<N>` entry."""
    rest = _suffix_of(key, _ROUND)
    return rest is not None and rest.isdigit()


# ---- assigning keys during a run -----------------------------------------------------------------


class UnitKeys:
    """Assigns the replay key of each unit of one attempt, in the order the units run.

    Args:
        journaled: The keys already in the journal (a live view: entries appended later count too);
            a call whose per-response key is absent but whose legacy `tool:<id>` key (or its
            `started:tool:<id>` marker) is present gets the legacy key, once.

    """

    def __init__(self, journaled: Container[str]) -> None:
        self._journaled = journaled
        self._ordinals: defaultdict[str, int] = defaultdict(int)
        self._calls: Counter[str] = Counter()
        self._legacy_used: set[str] = set()

    def unit(self, base: str, *, round: int = 0) -> str:
        """The key of the next unit of `base` (`model#<n>`, `<operation>#<n>`)."""
        self._ordinals[base] += 1
        return unit_key(base, self._ordinals[base], round=round)

    def call(self, kind: str, tool_call_id: str, *, round: int = 0) -> str:
        """The key of a tool call (or a unit of `kind` tied to one) asked for by the latest model response."""
        key = call_key(kind, self._ordinals[MODEL_REQUEST], tool_call_id, round=round)
        self._calls[key] += 1
        if self._calls[key] > 1:  # the same id twice in one response
            key = call_key(
                kind, self._ordinals[MODEL_REQUEST], tool_call_id, round=round, repeat=self._calls[key]
            )
        legacy = legacy_call_key(kind, tool_call_id)
        if (
            key not in self._journaled
            and (legacy in self._journaled or started_key(legacy) in self._journaled)
            and legacy not in self._legacy_used
        ):
            self._legacy_used.add(legacy)  # a journal written before per-response keys
            return legacy
        return key
