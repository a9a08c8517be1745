"""Diffusers adapters: one per video DiT family, a public registry, and the shared processor plumbing.

Public API:
    get_adapter(name), adapter_names(), register_adapter(adapter), ADAPTERS    the registry
    Adapter, AttentionContext, AttentionCall, SelfAttentionProcessor           the plumbing
    install(pipe, adapter, ctx) -> Installation (.restore()), installed(...)   swap and restore
    load_pipeline(model_id, adapter, ...), register_model(name, ...)           the model-loading seam

Families: ``wan`` (Wan 2.1/2.2), ``hunyuan_video``, ``cogvideox``, ``ltx``, ``mochi``.
"""

from __future__ import annotations

from compactsearch.adapters.base import (
    MODES,
    Adapter,
    AttentionCall,
    AttentionContext,
    Installation,
    SelfAttentionProcessor,
    install,
    installed,
)
from compactsearch.adapters.registry import (
    ADAPTERS,
    MODELS,
    adapter_names,
    get_adapter,
    load_pipeline,
    register_adapter,
    register_model,
)

__all__ = [
    "MODES",
    "Adapter",
    "AttentionCall",
    "AttentionContext",
    "Installation",
    "SelfAttentionProcessor",
    "install",
    "installed",
    "ADAPTERS",
    "MODELS",
    "adapter_names",
    "get_adapter",
    "register_adapter",
    "register_model",
    "load_pipeline",
]
