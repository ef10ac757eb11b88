"""OpenAI chat models without hidden SDK retries.

Provider SDKs retry on their own (the `openai` SDK twice by default), invisibly to the journal and
multiplying perdure's retries. `openai_chat_model` builds a model whose SDK client never retries,
so every HTTP attempt is a journaled perdure attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._checks import is_number
from ..errors import UserError

if TYPE_CHECKING:
    from pydantic_ai.models.openai import OpenAIChatModel

__all__ = ["openai_chat_model"]


def openai_chat_model(
    model_name: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    default_headers: Mapping[str, str] | None = None,
) -> OpenAIChatModel:
    """A pydantic-ai `OpenAIChatModel` whose `openai` client never retries on its own.

    The `openai` SDK retries failed requests twice by default. Under a durable `RetryPolicy` those
    retries would stack invisibly (3 HTTP attempts per journaled attempt) and slip past the journal,
    the attempt count and the circuit breaker. With `max_retries=0` every HTTP attempt is one
    perdure attempt, journaled and bounded by the policy.

    Args:
        model_name: The model, e.g. `"gpt-4o-mini"` or a local server's model name.
        base_url: The API base URL ending in `/v1`; `OPENAI_BASE_URL` or OpenAI's when None.
        api_key: The API key; `OPENAI_API_KEY` when None.
        timeout: Seconds per HTTP attempt; the SDK's default (10 minutes) when None.
        default_headers: Extra headers sent with every request.

    """
    from openai import NOT_GIVEN, AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    if timeout is not None and not (is_number(timeout) and timeout > 0):
        raise UserError(f"openai_chat_model(timeout=...) must be > 0 seconds or None, got {timeout!r}.")
    client = AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=float(timeout) if timeout is not None else NOT_GIVEN,
        default_headers=dict(default_headers) if default_headers else None,
    )
    return OpenAIChatModel(model_name, provider=OpenAIProvider(openai_client=client))
