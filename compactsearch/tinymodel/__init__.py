"""The bundled tiny video DiT: procedural data, word-level text encoder, Wan transformer in pixel space.

The adapter registry (`compactsearch.adapters.registry`) knows the model id ``compactsearch/tiny-wan``: a recipe with
``model: {id: compactsearch/tiny-wan, adapter: wan}`` loads the bundled weights. The submodules
(`data`, `text`, `model`, `train`) import torch/diffusers only when used.

Public API:
    data.sample_specs, data.render, data.make_batch      procedural videos and their prompts
    text.WordTokenizer, text.TinyTextEncoder             the text stack
    model.build_pipeline, model.load_tiny_pipeline       the pipeline (random or trained)
    python -m compactsearch.tinymodel.train              the seeded training script
"""

from __future__ import annotations

__all__ = ["MODEL_ID"]

MODEL_ID = "compactsearch/tiny-wan"
