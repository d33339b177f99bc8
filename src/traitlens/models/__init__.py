"""Which model, and where inside it? Loading any HF causal LM (embedded SmolLM2 by
default) and naming its hook points uniformly: ``resid[l]``, ``mlp_act[l]``,
``attn_out[l]``."""

from traitlens.models.adapter import ArchitectureAdapter, HookPoint, detect_adapter
from traitlens.models.chat import ChatFormatter, FormattedPrompt
from traitlens.models.hooks import hooks_installed
from traitlens.models.loading import (
    EMBEDDED_MODEL_NAME,
    ModelIdentity,
    TraitModel,
    embedded_gguf_path,
    load_model,
)

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "ArchitectureAdapter",
    "ChatFormatter",
    "FormattedPrompt",
    "HookPoint",
    "ModelIdentity",
    "TraitModel",
    "detect_adapter",
    "embedded_gguf_path",
    "hooks_installed",
    "load_model",
]
