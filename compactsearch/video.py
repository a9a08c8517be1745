"""From a pipeline call to a video: generation at a recipe's settings, GIF / MP4 files, side by side.

Videos are ``[F, 3, H, W]`` in [0, 1]: decoded frames for pipelines with a VAE; the tiny model's own pixels; for
VAE-less test pipelines (``tiny-random-wan``) a preview of the first three latent channels, ``(x + 1) / 2``
clipped (good enough to compare dense and sparse, not to look at). A call's keyword arguments come from the
recipe (`compactsearch.profile.recipe.Recipe.call_kwargs`), with a fresh CPU generator seeded per prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compactsearch.errors import InputError

__all__ = ["pipeline_kwargs", "generate_video", "write_video", "side_by_side"]


def _latent_preview(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[F, 3, h, w]``: first three channels (repeated when fewer), ``(x + 1) / 2``."""
    x = latents[0].detach().float().cpu()
    while x.shape[0] < 3:
        x = torch.cat([x, x[:1]])
    return ((x[:3] + 1.0) / 2.0).clamp(0, 1).permute(1, 0, 2, 3)


def _latents_bcfhw(pipe, recipe, latents: torch.Tensor) -> torch.Tensor:
    """A pipeline's ``output_type="latent"`` result as ``[B, C, F, h, w]``: LTX-Video returns them packed
    ``[B, S, C]``, CogVideoX as ``[B, F, C, h, w]``."""
    name = type(pipe).__name__
    if latents.dim() == 3 and hasattr(pipe, "_unpack_latents"):  # LTX: packed tokens
        f = (recipe.frames - 1) // pipe.vae_temporal_compression_ratio + 1
        h, w = recipe.height // pipe.vae_spatial_compression_ratio, recipe.width // pipe.vae_spatial_compression_ratio
        return pipe._unpack_latents(latents, f, h, w, pipe.transformer_spatial_patch_size,
                                    pipe.transformer_temporal_patch_size)
    if name.startswith("CogVideoX") and latents.dim() == 5:
        return latents.permute(0, 2, 1, 3, 4)
    return latents


def pipeline_kwargs(recipe, prompt: str, seed: int) -> dict:
    """Keyword arguments of one pipeline call for ``recipe`` (its size, steps, guidance, extras) and a seed."""
    return recipe.call_kwargs(prompt, torch.Generator("cpu").manual_seed(seed))


def _decodes(pipe) -> bool:
    """Whether the pipeline returns pixels (it has a VAE, or it works in pixel space like the tiny model)."""
    from compactsearch.tinymodel.model import TinyVideoPipeline

    return isinstance(pipe, TinyVideoPipeline) or getattr(pipe, "vae", None) is not None


def generate_video(pipe, recipe, prompt: str, seed: int) -> torch.Tensor:
    """One video ``[F, 3, H, W]`` in [0, 1] (see the module docstring for VAE-less pipelines)."""
    kw = pipeline_kwargs(recipe, prompt, seed)
    try:
        if _decodes(pipe):
            out = pipe(**kw, output_type="pt").frames
            x = out[0] if isinstance(out, (list, tuple)) else out[0]
            x = torch.as_tensor(x).detach().float().cpu()
            if x.dim() == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
                x = x.permute(0, 3, 1, 2)
            return x.clamp(0, 1)
        return _latent_preview(_latents_bcfhw(pipe, recipe, pipe(**kw, output_type="latent").frames))
    except TypeError as e:
        raise InputError(f"the {type(pipe).__name__} call rejected an argument ({e}); check sampling.extra in the "
                         "recipe") from e


def side_by_side(*videos: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """Concatenate videos ``[F, 3, H, W]`` left to right with a white gap: ``[F, 3, H, sum(W) + gaps]``."""
    parts = []
    for i, v in enumerate(videos):
        if i:
            parts.append(torch.ones(v.shape[0], 3, v.shape[2], gap))
        parts.append(v)
    return torch.cat(parts, dim=3)


def write_video(path: Path, video: torch.Tensor, fps: int = 8, scale: int | None = None) -> Path:
    """Write ``[F, 3, H, W]`` in [0, 1] as a GIF or an MP4 (by the suffix), atomically.

    Args:
        path: ``*.gif`` (Pillow) or ``*.mp4`` (needs the ``imageio-ffmpeg`` package).
        video: the frames.
        fps: frames per second.
        scale: nearest-neighbour upscaling factor; default: enough for a 256-pixel short side (at most 8).
    """
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise InputError(f"--out {path}: write a .gif or an .mp4 file")
    F, _, H, W = video.shape
    if scale is None:
        scale = max(1, min(8, 256 // max(1, min(H, W))))
    x = video.clamp(0, 1)
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    if suffix == ".mp4":  # yuv420p wants even sizes
        x = torch.nn.functional.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    frames = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise InputError(f"writing {path.name} needs imageio-ffmpeg (pip install imageio-ffmpeg); or write "
                             "a .gif") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
