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


def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Mochi's RoPE on ``[B, S, H, D]``; with ``out`` (same shape, any strides) written there instead."""
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    if out is not None:
        torch.stack([cos, sin], dim=-1, out=out.unflatten(-1, (-1, 2)))
        return out
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _joint(video: torch.Tensor, text: torch.Tensor, rotary=None) -> torch.Tensor:
    """``[video, text]`` along tokens as one ``[B, S + T, H, D]`` tensor, RoPE applied to the video part as it is
    written (one pass over the video tokens, where RoPE and then a concatenation take two)."""
    B, S, H, D = video.shape
    joint = video.new_empty(B, S + text.shape[1], H, D)
    if rotary is None:
        joint[:, :S] = video
    else:
        _apply_rotary(video, *rotary, out=joint[:, :S])
    joint[:, S:] = text
    return joint


def _dense(attention_mask: torch.Tensor, query, key, value, eq, ek, ev) -> torch.Tensor:
    """The original attention (diffusers' ``MochiAttnProcessor2_0``): per batch item SDPA over ``[video, valid
    text]``, padded back to ``[B, H, S + T, D]``. Inputs ``[B, H, S or T, D]``, post-RoPE."""
    total_length = query.size(2) + eq.size(2)
    outs = []
    for idx in range(query.shape[0]):
        valid = torch.nonzero(attention_mask[idx][None, :].flatten(), as_tuple=False).flatten()
        vq = torch.cat([query[idx : idx + 1], eq[idx : idx + 1, :, valid, :]], dim=2)
        vk = torch.cat([key[idx : idx + 1], ek[idx : idx + 1, :, valid, :]], dim=2)
        vv = torch.cat([value[idx : idx + 1], ev[idx : idx + 1, :, valid, :]], dim=2)
        o = F.scaled_dot_product_attention(vq, vk, vv, dropout_p=0.0, is_causal=False)
        outs.append(F.pad(o, (0, 0, 0, total_length - o.size(2))))
    return torch.cat(outs, dim=0)


class MochiSelfAttnProcessor(SelfAttentionProcessor):
    """Mochi joint self-attention with the mode switch after RoPE."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        query, key, value = project_heads(attn, hidden_states)  # [B, S, H, D]
        eq, ek, ev = project_heads(attn, encoder_hidden_states, added=True)
        S, T = query.size(1), eq.size(1)
        if self.ctx.mode == "dense":  # the original computation, through the mode switch (timers see the call)
            if image_rotary_emb is not None:
                query = _apply_rotary(query, *image_rotary_emb)
                key = _apply_rotary(key, *image_rotary_emb)
            parts = [x.transpose(1, 2) for x in (query, key, value, eq, ek, ev)]  # [B, H, S or T, D]
            out = self._attend(*parts[:3], lambda: _dense(attention_mask, *parts), lambda o: o)
        else:  # the joint sequence, built once (RoPE written straight into it)
            jq, jk, jv = (_joint(x, e, r) for x, e, r in ((query, eq, image_rotary_emb), (key, ek, image_rotary_emb),
                                                        (value, ev, None)))
            jq, jk, jv = jq.transpose(1, 2), jk.transpose(1, 2), jv.transpose(1, 2)  # [B, H, S + T, D]
            parts = (jq[:, :, :S], jk[:, :, :S], jv[:, :, :S], jq[:, :, S:], jk[:, :, S:], jv[:, :, S:])
            key_valid = self._key_valid(attention_mask, jq.shape[0], offset=S)
            out = self._attend(jq, jk, jv, lambda: _dense(attention_mask, *parts), lambda o: o, text_tokens=T,
                               text_position="back", key_valid=key_valid)
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states, encoder_hidden_states = hidden_states.split_with_sizes((S, T), dim=1)
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
