"""Resume identity: an execution records what it ran, and a resume must run the same thing.

A journal is only meaningful for the code that wrote it: replaying a tool's recorded result into an
agent that no longer has that tool, or a recorded model response into an agent with another output
type, completes the run with a wrong result and no error. So the first attempt records an
`ExecutionIdentity` in the head and every later attempt compares before any unit runs:

- **tools**: each function tool's name and a hash of its parameters' JSON schema. A recorded tool
  that is missing raises `ToolNotFoundError`; a changed schema or an added tool raises
  `JournalMismatchError` naming the tool and both hashes.
- **output**: the output type's reference and a hash of its JSON schema (`DeferredToolRequests`
  excluded: it is how approvals end a run, not a result type).
- **prompt**: a hash of the user prompt the run started with.
- **instructions**: a hash of the instructions and system prompts, taken from the first model
  request (they may be dynamic), compared at the first model request of each attempt, before that
  request is replayed or sent.
- **model**: recorded, never refused: failing over to another provider is a legitimate resume. Every
  model used is kept in `identity.models`.
- The agent's **name** is recorded (workers route executions by it) but is not compared: a
  differently named recovery agent that runs the same tools, output and instructions resumes fine.

`allow_changes={"tools", "output", "instructions", "prompt"}` accepts deliberate changes of those
kinds; each accepted change is logged and recorded in `identity.changes`, and the new values become
the recorded ones. Only function tools are fingerprinted: tools of MCP servers and dynamic toolsets
are not known before the run starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, SystemPromptPart
from pydantic_ai.tools import DeferredToolRequests

from ..errors import IdentityError, JournalMismatchError, ToolNotFoundError, UserError
from ..records import ExecutionIdentity, IdentityChange
from ..registry import object_ref

__all__ = [
    "CHANGE_KINDS",
    "IdentityError",
    "agent_identity",
    "check_identity",
    "instructions_hash",
    "normalize_allow_changes",
    "short_hash",
]

logger = logging.getLogger("perdure")

CHANGE_KINDS = frozenset({"tools", "output", "instructions", "prompt", "workflow"})
"""What `allow_changes` may name."""


class _ToolMissing(ToolNotFoundError, IdentityError):
    pass


class _Mismatch(JournalMismatchError, IdentityError):
    pass


def normalize_allow_changes(allow: Iterable[str] | str | None) -> frozenset[str]:
    """Validate `allow_changes` (a set of kinds, or a comma-separated string)."""
    if allow is None:
        return frozenset()
    items = allow.split(",") if isinstance(allow, str) else list(allow)
    kinds = frozenset(i.strip() for i in items if i and i.strip())
    unknown = sorted(kinds - CHANGE_KINDS)
    if unknown:
        raise UserError(f"allow_changes: unknown kind(s) {unknown}; use any of {sorted(CHANGE_KINDS)}.")
    return kinds


def short_hash(data: Any) -> str:
    """First 16 hex digits of the SHA-256 of `data` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _model_name(model: Any) -> str | None:
    from ..models import model_to_string

    try:
        return model_to_string(model)
    except Exception:  # a model without a string form is recorded by its class only
        return type(model).__name__ if model is not None else None


def _function_tools(agent: PydanticAgent[Any, Any]) -> dict[str, str]:
    tools: dict[str, str] = {}
    for toolset in agent.toolsets:
        members = getattr(toolset, "tools", None)
        if not isinstance(members, dict):
            continue
        for name, tool in members.items():
            tool_def = getattr(tool, "tool_def", None)
            schema = getattr(tool_def, "parameters_json_schema", None)
            tools[str(name)] = short_hash(schema)
    return tools


def _output_members(output_type: Any) -> list[Any]:
    members = list(output_type) if isinstance(output_type, list | tuple) else [output_type]
    return [m for m in members if m is not DeferredToolRequests]


def _output_identity(output_type: Any) -> tuple[str | None, str]:
    """(reference of the first non-text output type or None, hash of all output schemas)."""
    described: list[Any] = []
    ref: str | None = None
    for member in _output_members(output_type):
        if member is str:
            described.append("str")
            continue
        member_ref = object_ref(member) or repr(member)
        ref = ref or member_ref
        try:
            schema: Any = TypeAdapter(member).json_schema()
        except Exception:  # output functions, wrappers: identify them by reference
            schema = None
        described.append([member_ref, schema])
    return ref, short_hash(described)


def agent_identity(agent: PydanticAgent[Any, Any], prompt: str | None) -> ExecutionIdentity:
    """What `agent` would run on `prompt`, apart from the instructions (known at the first request)."""
    model = _model_name(agent.model)
    output_ref, output_hash = _output_identity(agent.output_type)
    return ExecutionIdentity(
        agent_name=agent.name,
        model=model,
        models=[model] if model else [],
        tools=_function_tools(agent),
        output_ref=output_ref,
        output_hash=output_hash,
        prompt_hash=short_hash(prompt) if prompt is not None else None,
    )


def instructions_hash(messages: Sequence[ModelMessage], instruction_parts: Sequence[Any] | None) -> str:
    """Hash of the instructions and system prompts a model request is about to send."""
    instructions = [str(getattr(part, "content", part)) for part in instruction_parts or ()]
    system: list[str] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            system.extend(p.content for p in message.parts if isinstance(p, SystemPromptPart))
    return short_hash([instructions, system])


def check_identity(
    execution_id: str,
    recorded: ExecutionIdentity | None,
    current: ExecutionIdentity,
    allow: frozenset[str],
    *,
    attempt: int,
) -> ExecutionIdentity:
    """Compare `current` with `recorded`; return the identity to store, or raise before anything runs.

    Raises:
        ToolNotFoundError: A recorded tool is missing (and `tools` changes are not allowed).
        JournalMismatchError: Tools, output type or prompt differ and that kind is not allowed.

    """
    if recorded is None:  # first attempt, or an execution recorded before identities existed
        return current
    changes: list[tuple[str, str]] = []
    missing = [name for name in recorded.tools if name not in current.tools]
    if missing and "tools" not in allow:
        raise _ToolMissing(
            execution_id,
            missing[0],
            f"the resuming agent has no tool named {missing[0]!r} (it has "
            f"{sorted(current.tools) or 'none'}); resume with an agent that has it, or pass "
            f"allow_changes={{'tools'}} to accept the change on purpose",
        )
    changes += [("tools", f"tool {name!r} removed") for name in missing]
    for name, digest in current.tools.items():
        old = recorded.tools.get(name)
        if old is None:
            changes.append(("tools", f"tool {name!r} added (schema {digest})"))
        elif old != digest:
            changes.append(("tools", f"tool {name!r} schema {old} -> {digest}"))
    if recorded.output_hash is not None and recorded.output_hash != current.output_hash:
        changes.append(
            (
                "output",
                f"output type {recorded.output_ref or 'str'} ({recorded.output_hash}) -> "
                f"{current.output_ref or 'str'} ({current.output_hash})",
            )
        )
    if (
        recorded.prompt_hash is not None
        and current.prompt_hash is not None
        and recorded.prompt_hash != current.prompt_hash
    ):
        changes.append(("prompt", f"prompt {recorded.prompt_hash} -> {current.prompt_hash}"))
    refused = [text for kind, text in changes if kind not in allow]
    if refused:
        raise _Mismatch(
            execution_id,
            "identity",
            "; ".join(refused),
            "the recorded identity",
            changes=refused,
        )
    accepted = [text for _, text in changes]
    models = list(recorded.models)
    if current.model and current.model not in models[-1:]:
        if models:
            accepted.append(f"model {models[-1]} -> {current.model}")
        models.append(current.model)
    history = list(recorded.changes)
    if accepted:
        logger.warning("[%s] resuming with accepted changes: %s", execution_id, "; ".join(accepted))
        history.append(IdentityChange(attempt=attempt, changes=accepted))
    return recorded.model_copy(
        update={
            "model": current.model or recorded.model,
            "models": models,
            "tools": current.tools if "tools" in allow else recorded.tools,
            "output_ref": current.output_ref if "output" in allow else recorded.output_ref,
            "output_hash": current.output_hash if "output" in allow else recorded.output_hash,
            "prompt_hash": (
                current.prompt_hash if "prompt" in allow and current.prompt_hash else recorded.prompt_hash
            ),
            "changes": history,
        }
    )


def check_instructions(
    execution_id: str, identity: ExecutionIdentity, digest: str, allow: frozenset[str], *, attempt: int
) -> ExecutionIdentity | None:
    """Compare the instructions hash of this attempt's first model request; None when unchanged."""
    if identity.instructions_hash == digest:
        return None
    if identity.instructions_hash is None:
        return identity.model_copy(update={"instructions_hash": digest})
    change = f"instructions {identity.instructions_hash} -> {digest}"
    if "instructions" not in allow:
        raise _Mismatch(execution_id, "identity", change, "the recorded identity", changes=[change])
    logger.warning("[%s] resuming with accepted change: %s", execution_id, change)
    return identity.model_copy(
        update={
            "instructions_hash": digest,
            "changes": [*identity.changes, IdentityChange(attempt=attempt, changes=[change])],
        }
    )
