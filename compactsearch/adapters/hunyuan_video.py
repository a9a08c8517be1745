"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): 20 dual-stream + 40 single-stream blocks, text at the BACK.

Self-attention modules, in global layer order: ``transformer_blocks[i].attn`` (layers ``0..19``) then
``single_transformer_blocks[j].attn`` (layers ``20+j``), 60 in all; the text token refiner under
``context_embedder`` is never touched. The joint sequence is ``[video, text]`` with the text padded to the
prompt length (256 by default) and padded keys masked out; RoPE covers the video part only. Guidance is
embedded (``guidance_scale``); true CFG (``true_cfg_scale > 1``) runs cond then uncond forwards. The
processor is diffusers 0.42.1's ``HunyuanVideoAttnProcessor2_0`` up to post-RoPE q/k.
"""

from __future__ import annotations

import torch

from compactsearch.adapters.base import Adapter, SelfAttentionProcessor, guidance_kwargs, project_heads

__all__ = ["HunyuanVideoSelfAttnProcessor", "ADAPTER"]


class HunyuanVideoSelfAttnProcessor(SelfAttentionProcessor):
    """HunyuanVideo joint self-attention with the mode switch after RoPE. Dual-stream blocks project the text with
    their own ``add_*_proj``; single-stream blocks get video and text in one ``hidden_states``."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        single = attn.add_q_proj is None
        if single and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = project_heads(attn, hidden_states)  # [B, S, H, D]
        if image_rotary_emb is not None:
            if single and encoder_hidden_states is not None:
                n = encoder_hidden_states.shape[1]
                query = torch.cat([apply_rotary_emb(query[:, :-n], image_rotary_emb, sequence_dim=1), query[:, -n:]],
                                  dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-n], image_rotary_emb, sequence_dim=1), key[:, -n:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if not single and encoder_hidden_states is not None:
            eq, ek, ev = project_heads(attn, encoder_hidden_states, added=True)
            query = torch.cat([query, eq], dim=1)
            key = torch.cat([key, ek], dim=1)
            value = torch.cat([value, ev], dim=1)

        def dense() -> torch.Tensor:
            return self._dispatch(query, key, value, attention_mask)

        n_txt = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        key_valid = None
        if attention_mask is not None and n_txt:
            key_valid = self._key_valid(attention_mask, query.shape[0])
        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dense,
                           lambda o: o.transpose(1, 2), text_tokens=n_txt, text_position="back", key_valid=key_valid)
        hidden_states = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :-n_txt], hidden_states[:, -n_txt:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _modules(transformer) -> list:
    return [b.attn for b in transformer.transformer_blocks] + [b.attn for b in transformer.single_transformer_blocks]


def _grid(transformer, args: dict) -> tuple[int, int, int]:
    _, _, f, h, w = args["hidden_states"].shape
    p, pt = transformer.config.patch_size, transformer.config.patch_size_t
    return (f // pt, h // p, w // p)


def _pipeline_kwargs(guidance: float, negative_prompt: str | None) -> dict:
    out = guidance_kwargs(guidance, negative_prompt)  # embedded guidance: one forward per step
    if negative_prompt is not None:
        out["true_cfg_scale"] = guidance  # true CFG: a second forward per step
    return out


ADAPTER = Adapter(
    name="hunyuan_video", transformer_class="HunyuanVideoTransformer3DModel", cfg="sequential", text_position="back",
    description="HunyuanVideo: 20 dual + 40 single blocks (60 layers), [video, text] with text at the back",
    processor_class=HunyuanVideoSelfAttnProcessor, attention_modules=_modules, video_grid=_grid,
    pipeline_kwargs=_pipeline_kwargs,
)
