"""Turn the model spellings perdure accepts into what a pydantic-ai `Agent` takes.

Users write models the way their other tools do: pydantic-ai's `"openai:gpt-4o-mini"`, the
`"openai/gpt-4o-mini"` style of LiteLLM and model routers, or `"scripted"` for the offline demo
model. Strings stay strings, because pydantic-ai builds provider models lazily and building one
here would demand API keys before the run (or a resume that only replays the journal) needs them.
"""

from __future__ import annotations

import functools

from pydantic_ai.models import Model, known_model_names

from perdure.errors import UserError
from perdure.models.scripted import ScriptedModel

__all__ = ["model_to_string", "resolve_model"]

SCRIPTED_MODEL_STRING = "perdure:scripted"
_SCRIPTED_ALIASES = frozenset({"scripted", "perdure:scripted", "perdure/scripted"})

# The provider names pydantic-ai's `infer_provider_class` knows (2.68). `known_model_names()` adds
# any newer ones at runtime; a static list is still needed because not every provider has a
# known model name.
_STATIC_PROVIDERS = frozenset(
    {
        "alibaba",
        "anthropic",
        "azure",
        "azure-responses",
        "bedrock",
        "bedrock-mantle",
        "cerebras",
        "cohere",
        "crusoe",
        "deepseek",
        "elevenlabs",
        "fireworks",
        "github",
        "github-copilot",
        "google",
        "google-cloud",
        "google-decisions",
        "google-gla",
        "google-vertex",
        "groq",
        "heroku",
        "huggingface",
        "litellm",
        "meta",
        "mistral",
        "moonshotai",
        "nebius",
        "ollama",
        "openai",
        "openai-chat",
        "openai-chatgpt",
        "openai-codex",
        "openai-decisions",
        "openai-responses",
        "openrouter",
        "ovhcloud",
        "sambanova",
        "sentence-transformers",
        "snowflake",
        "system-one",
        "together",
        "typesafe",
        "vercel",
        "vllm",
        "voyageai",
        "xai",
        "zai",
    }
)

_ACCEPTED_FORMS = (
    "'provider:model' (e.g. 'openai:gpt-4o-mini'), 'provider/model' (e.g. 'openai/gpt-4o-mini'), "
    "'scripted' (or 'perdure:scripted') for the offline ScriptedModel, or a pydantic_ai.models.Model instance"
)


@functools.cache
def _known_providers() -> frozenset[str]:
    try:
        dynamic = {name.split(":", 1)[0] for name in known_model_names() if ":" in name}
    except Exception:  # pragma: no cover - only if pydantic-ai changes the helper
        dynamic = set()
    return _STATIC_PROVIDERS | {name for name in dynamic if "/" not in name}


_FAMILY_PROVIDERS = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("claude", "anthropic"),
    ("gemini", "google"),
    ("mistral", "mistral"),
    ("grok", "xai"),
    ("deepseek", "deepseek"),
)


def _suggestion(name: str) -> str:
    """Suggest a provider prefix for a bare model name, since that is the usual mistake."""
    try:
        matches = [known for known in known_model_names() if known.endswith(f":{name}")]
    except Exception:  # pragma: no cover - only if pydantic-ai changes the helper
        matches = []
    matches = sorted((known for known in matches if not known.startswith("gateway/")), key=len)
    if matches:
        return f" Did you mean {matches[0]!r}?"
    lowered = name.lower()
    for prefix, provider in _FAMILY_PROVIDERS:
        if lowered.startswith(prefix):
            return f" Did you mean {provider + ':' + name!r}?"
    return ""


def _normalize(text: str) -> str | ScriptedModel:
    """Return the canonical string for `text` or a new ScriptedModel; raise UserError if unknown."""
    spec = text.strip()
    if spec.lower() in _SCRIPTED_ALIASES:
        return ScriptedModel()
    if spec == "test":  # pydantic-ai's own TestModel, which `Agent` builds from this string
        return spec
    if ":" in spec:
        provider, _, name = spec.partition(":")
        if not provider or not name:
            raise UserError(f"Model {text!r} has an empty provider or model name. Use {_ACCEPTED_FORMS}.")
        if provider.lower() == "perdure":
            raise UserError(
                f"Unknown perdure model {text!r}: the only one is 'perdure:scripted'. Use {_ACCEPTED_FORMS}."
            )
        return spec
    if "/" in spec:
        head, _, rest = spec.partition("/")
        provider = head.lower()
        if provider == "gateway" and "/" in rest:
            # pydantic-ai's gateway providers are themselves spelled 'gateway/<upstream>'.
            upstream, _, name = rest.partition("/")
            if upstream.lower() in _known_providers() and name:
                return f"gateway/{upstream.lower()}:{name}"
        elif provider in _known_providers() and rest:
            return f"{provider}:{rest}"
        raise UserError(
            f"Unknown model {text!r}: {head!r} is not a pydantic-ai provider. Use {_ACCEPTED_FORMS}."
        )
    raise UserError(f"Unknown model {text!r}.{_suggestion(spec)} Use {_ACCEPTED_FORMS}.")


def resolve_model(model: str | Model | None, *, default: str | None = None) -> Model | str:
    """Normalize a model given as a string or instance into something `pydantic_ai.Agent` accepts.

    Provider strings come back as canonical `provider:model` strings rather than model instances, so
    no API key or client library is needed until a request is actually made.

    Args:
        model: The model: a `Model` instance (returned unchanged), a `provider:model` or
            `provider/model` string, `"scripted"`, or None to use `default`.
        default: The model string to use when `model` is None.

    Returns:
        The `Model` instance, a new `ScriptedModel` for `"scripted"`, or the canonical string.

    Raises:
        UserError: No model was given, or the string is in none of the accepted forms.

    """
    if model is None:
        if default is None:
            raise UserError(f"No model was given. Pass model= as {_ACCEPTED_FORMS}.")
        model = default
    if isinstance(model, Model):
        return model
    if not isinstance(model, str):
        raise UserError(f"Expected a model, got {type(model).__name__}. Pass {_ACCEPTED_FORMS}.")
    return _normalize(model)


def model_to_string(model: str | Model | None) -> str | None:
    """Name `model` as a string, for records and logs; None when there is no faithful name.

    Args:
        model: A model string or instance.

    Returns:
        The canonical string for valid strings, `"perdure:scripted"` for a ScriptedModel,
        `"<system>:<model_name>"` for other models that have both, else None.

    """
    if model is None:
        return None
    if isinstance(model, ScriptedModel):
        return SCRIPTED_MODEL_STRING
    if isinstance(model, str):
        try:
            resolved = _normalize(model)
        except UserError:
            return None
        return SCRIPTED_MODEL_STRING if isinstance(resolved, ScriptedModel) else resolved
    try:
        system, name = model.system, model.model_name
    except Exception:  # a wrapper model may not know its system until it has been used
        return None
    if isinstance(system, str) and system and isinstance(name, str) and name:
        return f"{system}:{name}"
    return None
