"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): self-attention ``blocks[i].attn1``, no text in the sequence.

Covers Wan2.1 T2V 1.3B/14B, Wan2.2 T2V-A14B (two experts, ``transformer`` for high noise and
``transformer_2`` for low noise, sharing layer indices: one step runs one expert) and Wan2.2 TI2V-5B (its
per-token ``(B, S)`` timestep counts steps by its maximum). Guidance runs as two forwards per step, cond then
uncond. The processor is diffusers 0.42.1's ``WanAttnProcessor`` up to post-RoPE q/k.
"""

from __future__ import annotations

import torch

from compactsearch.adapters.base import Adapter, SelfAttentionProcessor

__all__ = ["WanSelfAttnProcessor", "ADAPTER"]


def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE on ``[B, S, H, D]`` (as Wan's processor does it)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanSelfAttnProcessor(SelfAttentionProcessor):
    """Wan self-attention (``attn1``) with the compactsearch mode switch after RoPE."""

    ulysses = True

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:

        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise RuntimeError("WanSelfAttnProcessor is for self-attention (attn1) only")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))  # [B, S, H, D]
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)

        def dense() -> torch.Tensor:
            return self._dispatch(query, key, value, attention_mask)

        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dense,
                           lambda o: o.transpose(1, 2))
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _modules(transformer) -> list:
    return [block.attn1 for block in transformer.blocks]


def _grid(transformer, args: dict) -> tuple[int, int, int]:
    _, _, f, h, w = args["hidden_states"].shape
    pt, ph, pw = transformer.config.patch_size
    return (f // pt, h // ph, w // pw)


ADAPTER = Adapter(
    name="wan", transformer_class="WanTransformer3DModel", cfg="sequential", text_position="none",
    description="Wan 2.1 / 2.2 (T2V 1.3B, 14B, A14B two experts, TI2V-5B): blocks[i].attn1, no text tokens",
    processor_class=WanSelfAttnProcessor, attention_modules=_modules, video_grid=_grid,
)
