"""Models perdure adds to pydantic-ai's: the offline `ScriptedModel`, and model-string resolution."""

from perdure.models.resolve import model_to_string, resolve_model
from perdure.models.scripted import ScriptedModel

__all__ = ["ScriptedModel", "model_to_string", "resolve_model"]
