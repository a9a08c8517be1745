"""The public adapter registry (keyed by family name) and the model-loading seam.

`get_adapter(name)` returns a family's `Adapter`; `register_adapter` adds one (a new family is one module and
one entry). `load_pipeline(model_id, ...)` turns a recipe's ``model.id`` into a diffusers pipeline:

- a name registered with `register_model` (``tiny-random-wan``, ``tiny-random-wan22``, and
  ``tiny-random-<family>`` for the other families (`compactsearch.adapters.pipelines`): tiny random pipelines
  built locally for tests and examples; a bundled trained model registers itself the same way);
- a local directory written by ``save_pretrained``;
- a Hugging Face Hub id, read from the local cache (or downloaded when online).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from compactsearch.adapters import cogvideox, hunyuan_video, ltx, mochi, wan
from compactsearch.adapters.base import Adapter
from compactsearch.errors import InputError, lookup

__all__ = ["ADAPTERS", "get_adapter", "register_adapter", "adapter_names", "ModelBuilder", "MODELS",
           "register_model", "load_pipeline", "check_video_size", "video_grid", "video_tokens",
           "quiet_libraries",
           "DTYPES"]

ADAPTERS: dict[str, Adapter] = {}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register_adapter(adapter: Adapter) -> Adapter:
    """Add a family to the registry (a second adapter of the same name replaces the first)."""
    ADAPTERS[adapter.name] = adapter
    return adapter


def adapter_names() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name``; an InputError listing the known ones otherwise."""
    return lookup(ADAPTERS, name, "adapter")


for _mod in (wan, hunyuan_video, cogvideox, ltx, mochi):
    register_adapter(_mod.ADAPTER)


@dataclass(frozen=True)
class ModelBuilder:
    """A model ``id`` built in-process instead of loaded: ``build(dtype) -> pipeline``."""

    name: str
    adapter: str
    description: str
    build: Callable[[torch.dtype], object]


MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str, adapter: str, description: str, build: Callable[[torch.dtype], object]) -> None:
    """Make ``model.id: NAME`` in a recipe build a pipeline with ``build(dtype)``."""
    MODELS[name] = ModelBuilder(name, adapter, description, build)


def _register_family_pipelines() -> None:
    from compactsearch.adapters import pipelines

    register_model("tiny-random-wan", "wan", "tiny random WanPipeline (2 layers, 2 heads x 16), built locally, no VAE",
                   lambda dtype: pipelines.tiny_wan_pipeline(1, dtype))
    register_model("tiny-random-wan22", "wan", "tiny random two-expert WanPipeline like Wan2.2 A14B, no VAE",
                   lambda dtype: pipelines.tiny_wan_pipeline(2, dtype))
    for name, family in pipelines.tiny_model_names().items():
        spec = pipelines.FAMILIES[family]
        register_model(name, spec.adapter, f"tiny random {spec.description}, built locally, no VAE",
                       lambda dtype, family=family: pipelines.build_family_pipeline(family, "tiny", dtype))


_register_family_pipelines()


def _tiny_wan(dtype):
    from compactsearch.tinymodel.model import load_tiny_pipeline

    return load_tiny_pipeline(dtype=dtype)


register_model("compactsearch/tiny-wan", "wan",
               "the bundled tiny video DiT (8 layers, 4 heads x 64, pixel space, 8x32x32 px)", _tiny_wan)


def load_pipeline(model_id: str, adapter: str, dtype: str = "bfloat16", device: str = "cpu",
                  offload: str = "none", base_dir: Path | None = None,
                  video: tuple[int, int, int] | None = None):
    """Build or load the pipeline named by a recipe's ``model`` section, on ``device``.

    Args:
        model_id: a registered model name, a local ``save_pretrained`` directory (relative paths resolve
            against ``base_dir`` first) or a Hub id.
        adapter: the family; checked against the model.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: torch device string.
        offload: ``none``, ``model`` (``enable_model_cpu_offload``) or ``sequential``
            (``enable_sequential_cpu_offload``); both lower GPU memory and need ``accelerate``.
        video: the recipe's ``(frames, height, width)`` in pixels, checked against the model's VAE and patch
            factors (`check_video_size`) before anything runs.
    """
    family = get_adapter(adapter)
    if dtype not in DTYPES:
        raise InputError(f"model.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    if model_id in MODELS:
        builder = MODELS[model_id]
        if builder.adapter != adapter:
            raise InputError(f"model {model_id!r} is a '{builder.adapter}' model; set model.adapter: {builder.adapter}")
        pipe = builder.build(torch_dtype)
    else:
        path = Path(model_id)
        if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
            path = Path(base_dir) / path
        looks_local = path.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
        if looks_local and not path.exists():
            raise InputError(f"model.id {model_id}: no such directory; give a save_pretrained directory or a Hub id")
        with quiet_libraries():
            pipe = _from_pretrained(str(path) if path.exists() else model_id, torch_dtype)
    family.transformers(pipe)  # checks the family matches
    if video is not None:
        check_video_size(pipe, family, *video)
    pipe.set_progress_bar_config(disable=True)
    if offload == "none":
        pipe.to(device)
    elif offload in ("model", "sequential"):
        try:
            if offload == "model":
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.enable_sequential_cpu_offload(device=device)
        except (ImportError, ValueError, RuntimeError) as e:
            raise InputError(f"model.offload: {offload} failed ({str(e).splitlines()[0]}); install accelerate "
                             "(pip install accelerate) or set model.offload: none") from e
    else:
        raise InputError(f"model.offload must be none, model or sequential, got {offload!r}")
    return pipe


def _absent_components(model_id: str) -> dict:
    """``{name: None}`` for the components a local pipeline was saved without (``[null, null]`` in its
    ``model_index.json``, e.g. the VAE-less random pipelines of `compactsearch.adapters.pipelines`): diffusers
    saves them so, but loads them only when told they are absent."""
    import json

    index = Path(model_id) / "model_index.json"
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    return {k: None for k, v in entries.items()
            if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}


def _from_pretrained(model_id: str, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(model_id, torch_dtype=torch_dtype, **_absent_components(model_id))
    except (OSError, ValueError) as e:
        if Path(model_id).exists():
            raise InputError(f"model {model_id} cannot be loaded as a diffusers pipeline: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        raise InputError(
            f"weights for {model_id} not found (no local copy and the Hub is unreachable): download them with "
            f"`hf download {model_id} --local-dir DIR` on a connected machine and set model.id to DIR"
        ) from e


def _patches(transformer) -> tuple[int, int]:
    """``(temporal, spatial)`` patch size of a transformer (``patch_size_t`` or the first of a 3-tuple; 1 without)."""
    cfg = getattr(transformer, "config", None)
    p = getattr(cfg, "patch_size", None) or 1
    if isinstance(p, (tuple, list)):
        return (int(p[0]) if len(p) == 3 else 1), int(p[-1])
    return int(getattr(cfg, "patch_size_t", None) or 1), int(p)


def video_grid(pipe, family: Adapter, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The video token grid ``(t, h, w)`` of one ``frames x height x width`` call (latent frames over the
    temporal patch, latent height and width over the spatial patch)."""
    spatial, temporal = _vae_factors(pipe)
    pt, ps = _patches(family.transformers(pipe)[0])
    latent_frames = (frames - 1) // (temporal or 1) + 1
    return -(-latent_frames // pt), height // (spatial * ps), width // (spatial * ps)


def video_tokens(pipe, family: Adapter, frames: int, height: int, width: int) -> int:
    """Video tokens of one ``frames x height x width`` call (`video_grid`'s product)."""
    t, h, w = video_grid(pipe, family, frames, height, width)
    return t * h * w


def _vae_factors(pipe) -> tuple[int, int | None]:
    """``(spatial, temporal)`` compression of the pipeline's VAE, under the names the families use (Wan,
    HunyuanVideo, CogVideoX: ``vae_scale_factor_*``; LTX-Video: ``vae_*_compression_ratio``; Mochi:
    ``vae_*_scale_factor``); temporal None for image VAEs."""
    def first(*names):
        return next((int(v) for v in (getattr(pipe, n, None) for n in names) if v), None)

    spatial = first("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_spatial_scale_factor",
                    "vae_scale_factor") or 1
    return spatial, first("vae_scale_factor_temporal", "vae_temporal_compression_ratio", "vae_temporal_scale_factor")


def check_video_size(pipe, family: Adapter, frames: int, height: int, width: int) -> None:
    """Refuse recipe sizes the model cannot take: height and width must be multiples of the VAE's spatial factor
    times the transformer's patch size, and ``frames - 1`` a multiple of the VAE's temporal factor."""
    spatial, temporal = _vae_factors(pipe)
    factor = spatial * _patches(family.transformers(pipe)[0])[1]
    for name, v in (("height", height), ("width", width)):
        if v % factor:
            lo, hi = max(factor, v - v % factor), v - v % factor + factor
            raise InputError(f"recipe video.{name} {v}: this model needs a multiple of {factor} (VAE {spatial} x "
                             f"patch {factor // spatial}); use {lo} or {hi}")
    if temporal and (frames - 1) % temporal:
        t = temporal
        lo, hi = frames - (frames - 1) % t, frames - (frames - 1) % t + t
        raise InputError(f"recipe video.frames {frames}: this model needs frames - 1 to be a multiple of {t} (its "
                         f"VAE's temporal factor); use {max(lo, 1)} or {hi}")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep diffusers / transformers / huggingface_hub warnings (deprecations, "couldn't connect to the Hub",
    "accelerate not found") off stderr while loading, so a failure reads as one line; errors still show."""
    import logging

    import diffusers.utils.logging  # noqa: F401  (it sets its logger's level on first import: before we do)

    names = ("diffusers", "transformers", "huggingface_hub")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)
