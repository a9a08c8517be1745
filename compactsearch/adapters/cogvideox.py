"""CogVideoX (`CogVideoXTransformer3DModel`): ``transformer_blocks[i].attn1``, text (226) at the FRONT.

Covers CogVideoX-2B (no RoPE: absolute positions are added at patch embedding), 5B (RoPE on the video part)
and 1.5 (``patch_size_t=2``). The sequence is ``[text, video]``; every text token is a valid key. Guidance is
batched as ``[uncond, cond]``. The processor is diffusers 0.42.1's ``CogVideoXAttnProcessor2_0`` (and the fused
variant's ``to_qkv`` projection) up to post-RoPE q/k; the original calls SDPA directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compactsearch.adapters.base import Adapter, SelfAttentionProcessor

__all__ = ["CogVideoXSelfAttnProcessor", "ADAPTER"]


class CogVideoXSelfAttnProcessor(SelfAttentionProcessor):
    """CogVideoX joint self-attention with the mode switch after RoPE."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if getattr(attn, "fused_projections", False):
            qkv = attn.to_qkv(hidden_states)
            query, key, value = torch.split(qkv, qkv.shape[-1] // 3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, S, D]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        def dense() -> torch.Tensor:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                  is_causal=False)

        out = self._attend(query, key, value, dense, lambda o: o, text_tokens=text_seq_length, text_position="front")
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


def _modules(transformer) -> list:
    return [b.attn1 for b in transformer.transformer_blocks]


def _grid(transformer, args: dict) -> tuple[int, int, int]:
    _, f, _, h, w = args["hidden_states"].shape  # CogVideoX latents are [B, F, C, H, W]
    p, pt = transformer.config.patch_size, transformer.config.patch_size_t or 1
    return (f // pt, h // p, w // p)


ADAPTER = Adapter(
    name="cogvideox", transformer_class="CogVideoXTransformer3DModel", cfg="batched", text_position="front",
    description="CogVideoX 2B (no RoPE), 5B, 1.5: transformer_blocks[i].attn1, [text(226), video] text at the front",
    processor_class=CogVideoXSelfAttnProcessor, attention_modules=_modules, video_grid=_grid,
)
