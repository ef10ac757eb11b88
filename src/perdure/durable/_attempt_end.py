"""How an attempt that raised is recorded and explained.

Why a module of its own: the end of a failed attempt is written to the storage that may be what just
failed, so recording it must never hide the error that ended the run (it is logged instead); and
some of pydantic-ai's errors name an internal cause (an unregistered model instance) that a perdure
user fixes elsewhere, so they are rewritten into a `UserError` saying what to pass. The engine
(`perdure.durable.engine`) uses both in its `except` clauses around the agent run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from pydantic_ai.exceptions import UserError as PydanticAIUserError

from ..errors import UserError

__all__ = ["explain_unregistered_model", "record_end"]

logger = logging.getLogger("perdure")


async def record_end(write: Awaitable[Any], execution_id: str) -> None:
    """Await the write of the attempt's end; log (never raise) when the storage fails it."""
    try:
        await write
    except Exception:  # the storage may be what failed; the original error matters more
        logger.exception("[%s] could not record the end of the attempt", execution_id)


def explain_unregistered_model(
    exc: PydanticAIUserError, execution_id: str, kwargs: Mapping[str, Any]
) -> BaseException:
    """pydantic-ai refuses a `model=` instance its durability capability does not know: say what to pass."""
    if "not registered" not in str(exc) or "model" not in str(exc).lower():
        return exc
    model = kwargs.get("model")
    return UserError(
        f"Execution {execution_id!r}: the model passed with run_agent(..., model={model!r}) is not one the "
        f"agent's durability knows, so its requests could not be journaled. Register the instance when you "
        f"create the agent: capabilities=[PerdureDurability(models=[that_model])] (the agent's own model "
        f"is registered already), then pass the same instance again. (pydantic-ai: {exc})",
        execution_id=execution_id,
    )
