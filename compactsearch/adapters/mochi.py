"""Mochi (`MochiTransformer3DModel`): ``transformer_blocks[i].attn1``, valid text appended at the BACK.

Text has its own projections; per batch item only the valid (unmasked) text tokens join the sequence
``[video, valid text]``. Here the sequence is seen as ``[video, text padded to the prompt length]`` with the
padded keys masked (``key_valid``), so every call has the same geometry. RoPE uses learned per-head
frequencies on video q/k. Guidance is batched as ``[uncond, cond]``. ``MochiAttention`` has no
``set_processor``: processors are assigned. The processor is diffusers 0.42.1's ``MochiAttnProcessor2_0`` up
to post-RoPE q/k; the original calls SDPA directly, one batch item at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compactsearch.adapters.base import Adapter, SelfAttentionProcessor, project_heads

__all__ = ["MochiSelfAttnProcessor", "ADAPTER"]


def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


class MochiSelfAttnProcessor(SelfAttentionProcessor):
    """Mochi joint self-attention with the mode switch after RoPE."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        query, key, value = project_heads(attn, hidden_states)  # [B, S, H, D]
        eq, ek, ev = project_heads(attn, encoder_hidden_states, added=True)
        if image_rotary_emb is not None:
            query = _apply_rotary(query, *image_rotary_emb)
            key = _apply_rotary(key, *image_rotary_emb)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, H, S, D]
        eq, ek, ev = eq.transpose(1, 2), ek.transpose(1, 2), ev.transpose(1, 2)
        sequence_length, encoder_sequence_length = query.size(2), eq.size(2)
        total_length = sequence_length + encoder_sequence_length

        def dense() -> torch.Tensor:
            outs = []
            for idx in range(query.shape[0]):
                valid = torch.nonzero(attention_mask[idx][None, :].flatten(), as_tuple=False).flatten()
                vq = torch.cat([query[idx : idx + 1], eq[idx : idx + 1, :, valid, :]], dim=2)
                vk = torch.cat([key[idx : idx + 1], ek[idx : idx + 1, :, valid, :]], dim=2)
                vv = torch.cat([value[idx : idx + 1], ev[idx : idx + 1, :, valid, :]], dim=2)
                o = F.scaled_dot_product_attention(vq, vk, vv, dropout_p=0.0, is_causal=False)
                outs.append(F.pad(o, (0, 0, 0, total_length - o.size(2))))
            return torch.cat(outs, dim=0)

        if self.ctx.mode == "dense":  # through the mode switch (timers see the call), without the joint tensors
            out = self._attend(query, key, value, dense, lambda o: o)
        else:
            key_valid = self._key_valid(attention_mask, query.shape[0], offset=sequence_length)
            out = self._attend(torch.cat([query, eq], 2), torch.cat([key, ek], 2), torch.cat([value, ev], 2), dense,
                               lambda o: o, text_tokens=encoder_sequence_length, text_position="back",
                               key_valid=key_valid)
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states, encoder_hidden_states = hidden_states.split_with_sizes(
            (sequence_length, encoder_sequence_length), dim=1
        )
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _modules(transformer) -> list:
    return [b.attn1 for b in transformer.transformer_blocks]


def _grid(transformer, args: dict) -> tuple[int, int, int]:
    _, _, f, h, w = args["hidden_states"].shape
    p = transformer.config.patch_size
    return (f, h // p, w // p)


ADAPTER = Adapter(
    name="mochi", transformer_class="MochiTransformer3DModel", cfg="batched", text_position="back",
    description="Mochi 1: transformer_blocks[i].attn1, [video, valid text] with text at the back",
    processor_class=MochiSelfAttnProcessor, attention_modules=_modules, video_grid=_grid,
)
