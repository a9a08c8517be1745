"""Tiny random transformers of every adapter family, with inputs for one forward: the adapters' unit tests.

`tiny_transformer(family, seed)` returns ``(transformer, forward kwargs)``: the family's diffusers transformer
class with a few layers, two small heads and random weights from ``seed``, and inputs that exercise what the
family's processor must get right (text in front or at the back, padded text keys, batched guidance). Test
helpers, not part of the production `compactsearch.adapters.Adapter`.
"""

from __future__ import annotations

import torch

__all__ = ["tiny_transformer", "TINY_WAN_CONFIG", "FAMILIES"]

TINY_WAN_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
    freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)


def _wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY_WAN_CONFIG).eval()
    g = torch.Generator().manual_seed(seed + 1)
    inputs = {
        "hidden_states": torch.randn(1, 4, 3, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, 12, 16, generator=g),
        "timestep": torch.tensor([500]),
        "return_dict": False,
    }
    return model, inputs


def _hunyuan_video(seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, 9:] = False  # three padded text tokens: the key mask matters
    inputs = {
        "hidden_states": torch.randn(1, 4, 2, 8, 8, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 12, 16, generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, 8, generator=g),
        "guidance": torch.tensor([3000.0]),
        "return_dict": False,
    }
    return model, inputs


def _cogvideox(seed: int = 0):
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
        patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True,
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    frames, hp, wp = 2, 4, 4
    rope = get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (hp, wp)), grid_size=(hp, wp),
                                   temporal_size=frames, device=torch.device("cpu"))
    inputs = {
        "hidden_states": torch.randn(2, frames, 4, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 8, 8, generator=g),
        "timestep": torch.tensor([500, 500]),
        "image_rotary_emb": rope,
        "return_dict": False,
    }
    return model, inputs


def _ltx(seed: int = 0):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=16,
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    f, h, w = 2, 4, 4
    inputs = {
        "hidden_states": torch.randn(2, f * h * w, 4, generator=g),
        "encoder_hidden_states": torch.randn(2, 6, 16, generator=g),
        "timestep": torch.tensor([500, 500]),
        "encoder_attention_mask": torch.ones(2, 6, dtype=torch.bool),
        "num_frames": f,
        "height": h,
        "width": w,
        "return_dict": False,
    }
    return model, inputs


def _mochi(seed: int = 0):
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    model = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=4, out_channels=None, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 10:] = False
    mask[1, 13:] = False
    inputs = {
        "hidden_states": torch.randn(2, 4, 2, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 16, 16, generator=g),
        "timestep": torch.tensor([500, 500]),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }
    return model, inputs


FAMILIES = {"wan": _wan, "hunyuan_video": _hunyuan_video, "cogvideox": _cogvideox, "ltx": _ltx, "mochi": _mochi}


def tiny_transformer(family: str, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """``(transformer, forward kwargs)`` of a tiny random model of ``family`` (an adapter name)."""
    return FAMILIES[family](seed)
