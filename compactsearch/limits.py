"""The memory limit: refuse shapes whose tensors would not fit, before anything is allocated.

Every loader that takes a geometry from a file (config, profile.yaml, recipe) calls one function here with the
shape it read. The estimate is the largest working set one layer needs anywhere in the tool, in bytes:

- block-level tensors of a layer: block mass / dense block mask / key lists, ``[H, NB, NB]`` at 4 bytes, three
  of them at once (``NB`` = blocks of the sequence, text included), plus a profile's per-prompt mass
  ``[P, H, NB, NB]``;
- q, k, v of one layer at fp32, ``3 * H * N * D * 4`` (the kernel check draws them for every head on a GPU);
- for a recipe, the decoded video ``frames * 3 * height * width`` at fp32, four copies (dense, sparse, a side by
  side, the GIF frames).

The limit is `MEMORY_LIMIT_GIB` GiB (64 by default; ``COMPACTSEARCH_MEMORY_LIMIT_GIB`` overrides it). For
scale, the largest shape in the README (Wan 2.1 14B 720p, 75,600 tokens, 40 heads x 128) needs 4.8 GB by this
estimate; a typo such as ``frames: 1000000000`` needs exabytes and is refused with a line naming the field.
Sizes are also capped one by one (`CAPS`): no real model comes near them, and a cap reads better than an
estimate when a single number is absurd.
"""

from __future__ import annotations

import math
import os

from compactsearch.errors import InputError

__all__ = ["MEMORY_LIMIT_GIB", "CAPS", "memory_limit_bytes", "attention_bytes", "check_attention_shape",
           "check_video_shape", "check_caps"]

MEMORY_LIMIT_GIB = 64.0

# One-by-one caps on sizes read from files (tokens after patching, pixels, counts).
CAPS = {
    "frames": 4096,
    "height": 4096,
    "width": 4096,
    "text_tokens": 65536,
    "layers": 1024,
    "heads": 1024,
    "head_dim": 1024,
    "steps": 100000,
    "video.height": 16384,
    "video.width": 16384,
    "video.frames": 16384,
    "sampling.steps": 100000,
    "sampling.max_sequence_length": 65536,
}


def memory_limit_bytes() -> int:
    """The limit in bytes: ``COMPACTSEARCH_MEMORY_LIMIT_GIB`` when set (a positive number), else 64 GiB."""
    raw = os.environ.get("COMPACTSEARCH_MEMORY_LIMIT_GIB")
    gib = MEMORY_LIMIT_GIB
    if raw:
        try:
            gib = float(raw)
        except ValueError:
            raise InputError(f"COMPACTSEARCH_MEMORY_LIMIT_GIB must be a number of GiB, got {raw!r}") from None
        if not math.isfinite(gib) or gib <= 0:
            raise InputError(f"COMPACTSEARCH_MEMORY_LIMIT_GIB must be a positive number of GiB, got {raw!r}")
    return int(gib * 2**30)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_caps(values: dict[str, int], where: str) -> None:
    """Raise `InputError` for the first value above its cap (``where`` prefixes the key, e.g. ``geometry``)."""
    for key, v in values.items():
        cap = CAPS.get(key)
        if cap is not None and isinstance(v, int) and v > cap:
            name = f"{where}.{key}" if where else key
            raise InputError(f"{name}: {v} is above the limit of {cap}; is it a typo? (see the memory limit in "
                             "README.md)")


def attention_bytes(seq_len: int, block_size: int, heads: int, head_dim: int, prompts: int = 0) -> int:
    """Estimated bytes of one layer's largest working set (module docstring); ``prompts`` per-prompt mass
    tensors ``[P, H, NB, NB]`` (a profile's) come on top."""
    nb = math.ceil(seq_len / block_size)
    return (3 + prompts) * heads * nb * nb * 4 + 3 * heads * seq_len * head_dim * 4


def check_attention_shape(seq_len: int, block_size: int, heads: int, head_dim: int, what: str,
                          prompts: int = 0) -> None:
    """Refuse a layer shape whose working set exceeds the memory limit; ``what`` names the file."""
    need = attention_bytes(seq_len, block_size, heads, head_dim, prompts)
    limit = memory_limit_bytes()
    if need > limit:
        raise InputError(f"{what}: {seq_len} tokens x {heads} heads x head dim {head_dim} (blocks of {block_size}) "
                         f"need about {_gb(need)} per layer, above the memory limit of {_gb(limit)}; check "
                         "geometry and heads (COMPACTSEARCH_MEMORY_LIMIT_GIB raises the limit)")


def check_video_shape(frames: int, height: int, width: int, what: str) -> None:
    """Refuse a pixel video whose frames exceed the memory limit; ``what`` names the file."""
    need = 4 * frames * 3 * height * width * 4
    limit = memory_limit_bytes()
    if need > limit:
        raise InputError(f"{what}: video {frames} frames of {height}x{width} needs about {_gb(need)} for its frames, "
                         f"above the memory limit of {_gb(limit)}; check video.frames/height/width "
                         "(COMPACTSEARCH_MEMORY_LIMIT_GIB raises the limit)")
