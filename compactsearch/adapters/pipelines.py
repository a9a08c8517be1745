"""Random-weight pipelines of every family, built locally (no download): tiny ones for CPU tests, real-size ones
for GPU benchmarks.

`build_family_pipeline(family, size, dtype)` returns a real diffusers pipeline (``WanPipeline``,
``HunyuanVideoPipeline``, ``CogVideoXPipeline``, ``LTXPipeline``, ``MochiPipeline``) whose transformer has the
family's real architecture with random weights, and whose text encoders are small random models with the
**right output width** (what the transformer reads): a 2-layer T5 for Wan, CogVideoX, LTX and Mochi; a 3-layer
Llama (HunyuanVideo reads its third-to-last hidden state) plus a 2-layer CLIP text model for the pooled
embedding. All share one byte-level tokenizer (`tiny_tokenizer`), so distinct prompts give
distinct (right-padded) token sequences: the text masks of HunyuanVideo and Mochi really pad. There is no VAE:
run with ``output_type="latent"`` (profiling never decodes; ``generate`` previews latent channels).

Families (``FAMILIES``): ``wan22`` (two experts like Wan 2.2 T2V-A14B), ``hunyuan_video``, ``cogvideox-2b``
(no RoPE: absolute positions), ``cogvideox-5b`` (RoPE), ``ltx``, ``mochi``; plus ``wan`` (Wan 2.1) and
``wan-14b`` at real size. Sizes: ``tiny`` (2 layers, 2-4 heads; registered as ``tiny-random-<family>``
models, recipes ``recipes/tiny-random-<family>.yaml``) and ``real`` (the published transformer configs, from
diffusers' conversion scripts; for `benchmarks/e2e.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from compactsearch.errors import InputError, lookup

__all__ = ["FamilySpec", "FAMILIES", "SIZES", "build_family_pipeline", "family_transformer_config", "tiny_wan_pipeline",
           "tiny_tokenizer"]

SIZES = ("tiny", "real")


@dataclass(frozen=True)
class FamilySpec:
    """How to build one family's pipeline.

    Attributes:
        name: family key (``"hunyuan_video"``).
        adapter: compactsearch adapter name.
        description: one line.
        tiny: transformer config of the tiny size.
        real: transformer config of the real size (None: no real size).
        build: ``(spec, transformer_config, dtype, seed) -> pipeline``.
    """

    name: str
    adapter: str
    description: str
    tiny: dict
    real: dict | None
    build: Callable


# ------------------------------------------------------------------------------------------------ text stacks
def tiny_tokenizer():
    """A byte-level `PreTrainedTokenizerFast` with ``<pad>`` (0), ``</s>`` (1), ``<unk>`` (2) and 256 bytes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _t5(d_model: int, seed: int):
    """A random 2-layer T5 encoder over the byte vocabulary with output width ``d_model``."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=259, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    return T5EncoderModel(cfg).eval()


def _llama(hidden: int, seed: int):
    """A random 3-layer Llama over the byte vocabulary (HunyuanVideo reads ``hidden_states[-3]``)."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    heads = max(1, hidden // 128) if hidden >= 128 else 2
    cfg = LlamaConfig(vocab_size=259, hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                      pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return LlamaModel(cfg).eval()


def _clip(hidden: int, seed: int):
    """A random 2-layer CLIP text model whose pooled output has width ``hidden``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    heads = 4 if hidden % 4 == 0 else 1
    cfg = CLIPTextConfig(vocab_size=259, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=heads, max_position_embeddings=77, projection_dim=hidden,
                         pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return CLIPTextModel(cfg).eval()


def _finish(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return model.eval() if dtype == torch.float32 else model.to(dtype).eval()


# ------------------------------------------------------------------------------------------------ builders
def _build_wan(spec: FamilySpec, cfg: dict, dtype: torch.dtype, seed: int, experts: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    transformers = []
    for e in range(experts):
        torch.manual_seed(seed + 100 * e)
        transformers.append(_finish(WanTransformer3DModel(**cfg), dtype))
    extra = {"transformer_2": transformers[1], "boundary_ratio": 0.875} if experts == 2 else {}
    return WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=_finish(_t5(cfg["text_dim"], seed), dtype), vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformers[0], **extra)


def _build_hunyuan(spec: FamilySpec, cfg: dict, dtype: torch.dtype, seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = _finish(HunyuanVideoTransformer3DModel(**cfg), dtype)
    return HunyuanVideoPipeline(
        text_encoder=_finish(_llama(cfg["text_embed_dim"], seed), dtype), tokenizer=tiny_tokenizer(),
        transformer=transformer, vae=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=_finish(_clip(cfg["pooled_projection_dim"], seed + 1), dtype), tokenizer_2=tiny_tokenizer())


def _build_cogvideox(spec: FamilySpec, cfg: dict, dtype: torch.dtype, seed: int):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = _finish(CogVideoXTransformer3DModel(**cfg), dtype)
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction", beta_schedule="scaled_linear",
                                       beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                       set_alpha_to_one=True, snr_shift_scale=1.0)
    return CogVideoXPipeline(tokenizer=tiny_tokenizer(), text_encoder=_finish(_t5(cfg["text_embed_dim"], seed), dtype),
                             vae=None, transformer=transformer, scheduler=scheduler)


def _build_t5_flow(pipeline: str, transformer: str, text_width: str) -> Callable:
    """The builder of a pipeline of a T5 text encoder, a flow-matching scheduler and no VAE (LTX-Video, Mochi):
    diffusers' class names, and the transformer config key that gives the text width."""

    def build(spec: FamilySpec, cfg: dict, dtype: torch.dtype, seed: int):
        import diffusers

        torch.manual_seed(seed)
        model = _finish(getattr(diffusers, transformer)(**cfg), dtype)
        return getattr(diffusers, pipeline)(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                            text_encoder=_finish(_t5(cfg[text_width], seed), dtype),
                                            tokenizer=tiny_tokenizer(), transformer=model)

    return build


# ------------------------------------------------------------------------------------------------ the specs
_WAN_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                 text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
_WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
_WAN_14B = dict(_WAN_13B, num_attention_heads=40, ffn_dim=13824, num_layers=40)

_COG_TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, time_embed_dim=4,
                 text_embed_dim=32, num_layers=2, sample_width=48, sample_height=48, sample_frames=9, patch_size=2,
                 patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=64,
                 use_rotary_positional_embeddings=False)
_COG_5B = dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
               text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
               temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=True)

FAMILIES: dict[str, FamilySpec] = {}


def _spec(name: str, adapter: str, description: str, tiny: dict, real: dict | None, build: Callable) -> None:
    FAMILIES[name] = FamilySpec(name, adapter, description, tiny, real, build)


_spec("wan", "wan", "Wan 2.1 T2V (1.3B at real size)", _WAN_TINY, _WAN_13B,
      lambda s, c, d, seed: _build_wan(s, c, d, seed, 1))
_spec("wan-14b", "wan", "Wan 2.1 T2V 14B", _WAN_TINY, _WAN_14B, lambda s, c, d, seed: _build_wan(s, c, d, seed, 1))
_spec("wan22", "wan", "Wan 2.2 T2V-A14B: two experts (high / low noise), boundary 0.875", _WAN_TINY, _WAN_14B,
      lambda s, c, d, seed: _build_wan(s, c, d, seed, 2))
_spec("hunyuan_video", "hunyuan_video", "HunyuanVideo: dual + single blocks, padded text at the back",
      dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=1,
           num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
           text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6)),
      dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
           num_single_layers=40, num_refiner_layers=2, patch_size=2, patch_size_t=1, guidance_embeds=True,
           text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56)),
      _build_hunyuan)
_spec("cogvideox-2b", "cogvideox", "CogVideoX-2B: text in front, absolute positions (no RoPE)", _COG_TINY,
      dict(_COG_5B, num_attention_heads=30, num_layers=30, time_embed_dim=512, use_rotary_positional_embeddings=False),
      _build_cogvideox)
_spec("cogvideox-5b", "cogvideox", "CogVideoX-5B: text in front, 3D RoPE",
      dict(_COG_TINY, use_rotary_positional_embeddings=True), _COG_5B, _build_cogvideox)
_spec("ltx", "ltx", "LTX-Video: packed latents, no text in self-attention",
      dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
           num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=32),
      dict(in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=64, cross_attention_dim=2048,
           num_layers=28, qk_norm="rms_norm_across_heads", caption_channels=4096),
      _build_t5_flow("LTXPipeline", "LTXVideoTransformer3DModel", "caption_channels"))
_spec("mochi", "mochi", "Mochi 1: asymmetric joint attention, valid text at the back",
      dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=16,
           in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=16,
           activation_fn="swiglu", max_sequence_length=64),
      dict(patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48, pooled_projection_dim=1536,
           in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=4096, time_embed_dim=256,
           activation_fn="swiglu", max_sequence_length=256),
      _build_t5_flow("MochiPipeline", "MochiTransformer3DModel", "text_embed_dim"))


def family_transformer_config(family: str, size: str = "tiny") -> dict:
    """The transformer config of ``family`` at ``size`` (a copy)."""
    spec = _spec_of(family)
    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    cfg = spec.tiny if size == "tiny" else spec.real
    if cfg is None:
        raise InputError(f"family {family!r} has no {size} size")
    return dict(cfg)


def _spec_of(family: str) -> FamilySpec:
    return lookup(FAMILIES, family, "family", "families")


def build_family_pipeline(family: str, size: str = "tiny", dtype: torch.dtype = torch.float32, seed: int = 0,
                          overrides: dict | None = None):
    """A random-weight pipeline of ``family`` at ``size``, built in-process (no download, no VAE).

    Args:
        family: a key of `FAMILIES`.
        size: ``"tiny"`` or ``"real"``.
        dtype: parameter dtype (build under ``with torch.device("cuda"):`` to build on the GPU).
        seed: weights come from it: two builds with one seed are identical.
        overrides: transformer config entries to change (e.g. ``num_layers``).
    """
    spec = _spec_of(family)
    cfg = family_transformer_config(family, size)
    cfg.update(overrides or {})
    return spec.build(spec, cfg, dtype, seed)


def tiny_wan_pipeline(experts: int = 1, dtype: torch.dtype = torch.float32, seed: int = 0):
    """The tiny random `WanPipeline` registered as ``tiny-random-wan`` (``experts=2``: ``tiny-random-wan22``, with
    ``transformer_2`` and ``boundary_ratio=0.875`` like Wan2.2 T2V-A14B): the ``wan`` family's tiny transformer with
    4 latent channels; no VAE (run it with ``output_type="latent"``). Weights come from ``seed``."""
    return _build_wan(FAMILIES["wan"], dict(_WAN_TINY, in_channels=4, out_channels=4), dtype, seed, experts)


def tiny_model_names() -> dict[str, str]:
    """``tiny-random-<family> -> family`` for the families the registry builds here (the tiny Wan models,
    ``tiny-random-wan`` and the two-expert ``tiny-random-wan22``, are `tiny_wan_pipeline`)."""
    return {f"tiny-random-{name.replace('_', '-')}": name for name in FAMILIES if FAMILIES[name].adapter != "wan"}
