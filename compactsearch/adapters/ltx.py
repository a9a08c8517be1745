"""LTX-Video (`LTXVideoTransformer3DModel`): self-attention ``transformer_blocks[i].attn1``, video only.

The pipeline packs latents to ``[B, S, C]`` and passes the latent grid as ``num_frames``/``height``/``width``;
RoPE is applied before the head split on ``[B, S, H*D]``. Guidance is batched as ``[uncond, cond]``. The
processor is diffusers 0.42.1's ``LTXVideoAttnProcessor`` up to post-RoPE q/k.
"""

from __future__ import annotations

import torch

from compactsearch.adapters.base import Adapter, SelfAttentionProcessor

__all__ = ["LTXSelfAttnProcessor", "ADAPTER"]


class LTXSelfAttnProcessor(SelfAttentionProcessor):
    """LTX-Video self-attention (``attn1``) with the mode switch after RoPE."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        if encoder_hidden_states is not None:
            raise RuntimeError("LTXSelfAttnProcessor is for self-attention (attn1) only")
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))  # [B, S, H, D]
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        def dense() -> torch.Tensor:
            return self._dispatch(query, key, value, attention_mask)

        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dense,
                           lambda o: o.transpose(1, 2))
        hidden_states = out.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _modules(transformer) -> list:
    return [b.attn1 for b in transformer.transformer_blocks]


def _grid(transformer, args: dict) -> tuple[int, int, int]:
    p, pt = transformer.config.patch_size, transformer.config.patch_size_t
    try:
        return (int(args["num_frames"]) // pt, int(args["height"]) // p, int(args["width"]) // p)
    except (KeyError, TypeError) as e:
        raise RuntimeError("LTXVideoTransformer3DModel must be called with num_frames, height and width") from e


ADAPTER = Adapter(
    name="ltx", transformer_class="LTXVideoTransformer3DModel", cfg="batched", text_position="none",
    description="LTX-Video (2B, 13B): transformer_blocks[i].attn1, packed latents, no text tokens",
    processor_class=LTXSelfAttnProcessor, attention_modules=_modules, video_grid=_grid,
)
