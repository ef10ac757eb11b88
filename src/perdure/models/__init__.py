"""Models perdure adds to pydantic-ai's: `ScriptedModel`, model strings, OpenAI without SDK retries."""

from perdure.models.openai import openai_chat_model
from perdure.models.resolve import model_to_string, resolve_model
from perdure.models.scripted import ScriptedModel

__all__ = ["ScriptedModel", "model_to_string", "openai_chat_model", "resolve_model"]
