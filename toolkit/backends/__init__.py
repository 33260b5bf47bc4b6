"""Backends: the models that answer, behind one request protocol (see base.py)."""

from toolkit.backends.base import Backend, Completion, GenRequest, Likelihood, LLRequest, NotMeasured, Settings
from toolkit.backends.local import TransformersBackend
from toolkit.backends.openai_api import OpenAIBackend

__all__ = ["Backend", "Completion", "GenRequest", "Likelihood", "LLRequest", "NotMeasured", "Settings", "load_backend"]


def load_backend(cfg, **kw) -> Backend:
    """The backend a GeneratorConfig names (not cached; see toolkit.resources for the shared ones)."""
    if cfg.backend == "openai":
        return OpenAIBackend(cfg)
    return TransformersBackend(cfg, **kw)
