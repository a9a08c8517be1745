"""The tiny video DiT: diffusers' `WanTransformer3DModel` with a small config, in pixel space, and its pipeline.

Architecture (`TINY_WAN_CONFIG`): patch ``(1, 2, 2)``, 8 layers, 4 heads x 64 dims (width 256), FFN 768, text
dim 128, RMS q/k norm across heads, 3 input and output channels: the "latents" are the RGB video itself
(``[B, 3, F, H, W]`` in ``[-1, 1]``), patchified by the transformer's own patch embedding; there is no VAE.
8 frames x 32 x 32 px -> a token grid of 8 x 16 x 16 = 2048 tokens per self-attention call. Because the class
is diffusers' Wan transformer, the ``wan`` adapter (the one real Wan models use) is what profiling, search and
`compactsearch.apply` exercise on it.

`TinyVideoPipeline` is a `DiffusionPipeline` with ``transformer``, ``text_encoder`` (`TinyTextEncoder`),
``tokenizer`` (`WordTokenizer`) and ``scheduler`` (`FlowMatchEulerDiscreteScheduler`). Its call takes the
keywords Wan's pipeline takes (``prompt``, ``negative_prompt``, ``height``, ``width``, ``num_frames``,
``num_inference_steps``, ``guidance_scale``, ``generator``, ``output_type``, ``callback_on_step_end``,
``max_sequence_length``), runs classifier-free guidance as two forwards per step (cond, then uncond), as Wan
does, and returns ``.frames``: ``"latent"`` ``[B, 3, F, H, W]`` in [-1, 1], ``"pt"`` ``[B, F, 3, H, W]`` in
[0, 1], ``"np"`` ``[B, F, H, W, 3]`` in [0, 1].

Weights: one safetensors file (``transformer.*`` and ``text_encoder.*`` tensors; configs in its metadata),
bundled as ``compactsearch/tinymodel/weights/tiny-wan.safetensors`` (or the file named by the environment
variable ``COMPACTSEARCH_TINY_WEIGHTS``). A recipe names it as ``model.id: compactsearch/tiny-wan``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.utils import BaseOutput

from compactsearch._io import atomic_write_with
from compactsearch.errors import InputError
from compactsearch.tinymodel.text import TextEncoderConfig, TinyTextEncoder, WordTokenizer

__all__ = [
    "TINY_WAN_CONFIG",
    "MODEL_ID",
    "WEIGHTS_FORMAT",
    "TRAIN_COMMAND",
    "TinyModelSpec",
    "TinyVideoPipeline",
    "TinyVideoOutput",
    "build_transformer",
    "build_pipeline",
    "default_weights_path",
    "save_weights",
    "load_tiny_pipeline",
]

MODEL_ID = "compactsearch/tiny-wan"
WEIGHTS_FORMAT = "compactsearch-tiny/v1"
WEIGHTS_ENV = "COMPACTSEARCH_TINY_WEIGHTS"
TRAIN_COMMAND = "python -m compactsearch.tinymodel.train --device cuda --minutes 15 --out DIR"

TINY_WAN_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=3,
    out_channels=3,
    text_dim=128,
    freq_dim=256,
    ffn_dim=768,
    num_layers=8,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=256,
)


@dataclass(frozen=True)
class TinyModelSpec:
    """What a weights file holds besides tensors: both configs, the video size it was trained on, the scheduler."""

    transformer: dict
    text: TextEncoderConfig
    frames: int = 8
    height: int = 32
    width: int = 32
    shift: float = 1.0

    def metadata(self, extra: dict | None = None) -> dict[str, str]:
        meta = {
            "format": WEIGHTS_FORMAT,
            "transformer_config": json.dumps({k: list(v) if isinstance(v, tuple) else v
                                              for k, v in self.transformer.items()}),
            "text_config": json.dumps(self.text.to_dict()),
            "video": json.dumps({"frames": self.frames, "height": self.height, "width": self.width}),
            "scheduler": json.dumps({"class": "FlowMatchEulerDiscreteScheduler", "shift": self.shift}),
        }
        for k, v in (extra or {}).items():
            meta[k] = v if isinstance(v, str) else json.dumps(v)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> TinyModelSpec:
        if meta.get("format") != WEIGHTS_FORMAT:
            raise InputError(f"{source} is not a tiny-model weights file (format {meta.get('format')!r}, expected "
                             f"{WEIGHTS_FORMAT!r}); retrain with `{TRAIN_COMMAND}`")
        try:
            tcfg = json.loads(meta["transformer_config"])
            tcfg["patch_size"] = tuple(tcfg["patch_size"])
            video = json.loads(meta["video"])
            return cls(tcfg, TextEncoderConfig(**json.loads(meta["text_config"])), video["frames"], video["height"],
                       video["width"], float(json.loads(meta["scheduler"])["shift"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{source}: damaged metadata ({e}); retrain with `{TRAIN_COMMAND}`") from e


def build_transformer(config: dict | None = None, seed: int | None = 0):
    """A `WanTransformer3DModel` with the tiny config (or ``config``); random init from ``seed`` when given."""
    if seed is not None:
        torch.manual_seed(seed)
    return WanTransformer3DModel(**(config or TINY_WAN_CONFIG))


@dataclass
class TinyVideoOutput(BaseOutput):
    """Pipeline output: ``frames`` as described by ``output_type``."""

    frames: object


class TinyVideoPipeline(DiffusionPipeline):
    """Text-to-video in pixel space with the tiny Wan transformer (see the module docstring)."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, transformer, text_encoder: TinyTextEncoder, tokenizer: WordTokenizer, scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)
        self._interrupt = False

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_prompt(self, prompts: list[str], device: torch.device, max_sequence_length: int | None = None
                      ) -> torch.Tensor:
        """Text states ``[B, L, text_dim]`` (zero at padding) for ``B`` prompts; ``L`` is at most the encoder's."""
        n = min(max_sequence_length or self.tokenizer.max_length, self.text_encoder.config.max_length)
        ids, mask = self.tokenizer(prompts, n)
        enc = self.text_encoder
        return enc(ids.to(device), mask.to(device))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int = 32,
        width: int = 32,
        num_frames: int = 8,
        num_inference_steps: int = 16,
        guidance_scale: float = 4.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        max_sequence_length: int | None = None,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        p_t, p_h, p_w = self.transformer.config.patch_size
        if height % p_h or width % p_w or num_frames % p_t:
            raise InputError(f"height, width and frames must be multiples of the patch size {p_h}, {p_w}, {p_t}; "
                             f"got {height}x{width}, {num_frames} frames")
        if output_type not in ("latent", "pt", "np"):
            raise InputError(f"output_type must be latent, pt or np, got {output_type!r}")
        device = self._execution_device
        dtype = self.transformer.dtype
        self._interrupt = False
        cond = self.encode_prompt(prompts, device, max_sequence_length).to(dtype)
        guided = guidance_scale > 1.0
        if guided:
            neg = negative_prompt if negative_prompt is not None else ""
            negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
            uncond = self.encode_prompt(negs, device, max_sequence_length).to(dtype)
        shape = (len(prompts), self.transformer.config.in_channels, num_frames, height, width)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32,
                                  device=generator.device if generator is not None else "cpu").to(device)
        else:
            latents = latents.to(device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                ts = t.expand(latents.shape[0])
                x = latents.to(dtype)
                pred = self.transformer(hidden_states=x, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
                if guided:
                    pred_u = self.transformer(hidden_states=x, timestep=ts, encoder_hidden_states=uncond,
                                              return_dict=False)[0]
                    pred = pred_u + guidance_scale * (pred - pred_u)
                latents = self.scheduler.step(pred.float(), t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs
                                                            if k in local})
                    latents = out.pop("latents", latents)
                bar.update()
        if output_type == "latent":
            video = latents
        else:
            video = ((latents + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
            if output_type == "np":
                video = video.permute(0, 1, 3, 4, 2).cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return TinyVideoOutput(frames=video)


def build_pipeline(transformer=None, text_encoder: TinyTextEncoder | None = None, shift: float = 1.0,
                   seed: int = 0) -> TinyVideoPipeline:
    """A pipeline from given modules, or random ones with the tiny configs (seeded)."""
    transformer = transformer if transformer is not None else build_transformer(seed=seed)
    if text_encoder is None:
        torch.manual_seed(seed + 1)
        text_encoder = TinyTextEncoder(TextEncoderConfig(dim=int(transformer.config.text_dim)))
    tokenizer = WordTokenizer(max_length=text_encoder.config.max_length)
    pipe = TinyVideoPipeline(transformer.eval(), text_encoder.eval(), tokenizer,
                             FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_weights_path() -> Path:
    """``$COMPACTSEARCH_TINY_WEIGHTS`` when set, else the bundled ``weights/tiny-wan.safetensors``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path(__file__).parent / "weights" / "tiny-wan.safetensors"


def save_weights(path: Path, transformer, text_encoder: TinyTextEncoder, spec: TinyModelSpec,
                 extra_meta: dict | None = None, dtype: torch.dtype = torch.bfloat16) -> int:
    """Write both modules' tensors (cast to ``dtype``) to one safetensors file atomically; returns its bytes."""
    from safetensors.torch import save_file

    tensors = {f"transformer.{k}": v.detach().to("cpu", dtype).contiguous()
               for k, v in transformer.state_dict().items()}
    tensors.update({f"text_encoder.{k}": v.detach().to("cpu", dtype).contiguous()
                    for k, v in text_encoder.state_dict().items()})
    path = Path(path)
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=spec.metadata(extra_meta)))
    return path.stat().st_size


def load_tiny_pipeline(path: Path | None = None, dtype: torch.dtype = torch.float32) -> TinyVideoPipeline:
    """The trained tiny pipeline from a weights file (default: `default_weights_path`).

    Raises:
        InputError: the file is missing (naming the training command) or is not a tiny-model weights file.
    """
    from safetensors import safe_open

    path = Path(path) if path is not None else default_weights_path()
    if not path.exists():
        raise InputError(f"the tiny model's weights {path} are missing: train them with `{TRAIN_COMMAND}` and copy "
                         f"DIR/tiny-wan.safetensors there (or set {WEIGHTS_ENV} to the file)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            spec = TinyModelSpec.from_metadata(meta, str(path))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except InputError:
        raise
    except Exception as e:  # safetensors raises several types on a damaged file
        raise InputError(f"{path} cannot be read as safetensors ({e}); retrain with `{TRAIN_COMMAND}`") from e
    transformer = build_transformer(spec.transformer, seed=None)
    text_encoder = TinyTextEncoder(spec.text)
    for prefix, module in (("transformer.", transformer), ("text_encoder.", text_encoder)):
        state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputError(f"{path} does not match the tiny model ({prefix.rstrip('.')}: "
                             f"{len(missing)} missing, {len(unexpected)} unexpected tensors); retrain it")
    pipe = build_pipeline(transformer, text_encoder, shift=spec.shift)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe
