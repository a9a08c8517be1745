"""Planted profiles: block mass made from known patterns plus noise, for search tests and benchmarks.

``planted_mass(layout, pattern, recall=0.96)`` puts random weight on the blocks ``pattern_block_mask`` allows
(optionally decaying with temporal tile distance) and spreads random noise over the other blocks, scaled per
query row so the planted pattern keeps ``recall`` of every row that it does not cover entirely; rows are then
normalised to the query block's token count, as a real profile's are. ``planted_profile`` stacks such heads into
a `Profile` (optionally with per-prompt tensors: independent noise per prompt around the same pattern).

The head kinds of `kind_pattern`: ``local``, ``cross``, ``global``, ``decay`` (time-decaying: narrower windows
at larger distances, mass falling with distance) and ``far`` (skips its own frame group's neighbours: a wide
window at dt 0 plus a thin band at one larger distance range).

Sink kinds are kept apart, in ``SINK_KINDS`` (`sink_kind_pattern`): ``local-sink`` (a local window plus sink key
tiles), ``sink`` (sinks only: each query tile sees its own tile and the sinks) and ``mixed-sink`` (a
time-decaying head plus sinks). The sinks are fixed tiles spread over the grid (`planted_sinks`).
`planted_profile` takes kinds of both families.
"""

from __future__ import annotations

import random

import torch

from compactsearch.geometry import VideoGeometry
from compactsearch.masks import pattern_block_mask
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.profile.store import Profile
from compactsearch.tiling import TileLayout

__all__ = ["KINDS", "SINK_KINDS", "kind_pattern", "sink_kind_pattern", "planted_sinks", "random_head_pattern",
           "planted_mass", "planted_profile", "block_dt"]

KINDS = ("local", "cross", "global", "decay", "far")
SINK_KINDS = ("local-sink", "sink", "mixed-sink")


def kind_pattern(kind: str, grid: tuple[int, int, int]) -> Pattern:
    """A representative pattern of each head kind on tile grid ``grid``."""
    nt, nh, nw = grid
    half_h, half_w = max(1, nh // 2), max(1, nw // 2)
    if kind == "local":
        return Pattern.local(min(1, nt - 1), min(3, nh), min(3, nw))
    if kind == "cross":
        return Pattern((FrameGroup(0, nt - 1, (Window(1, nw), Window(nh, 1))),))
    if kind == "global":
        return Pattern.local(nt - 1, nh, max(1, nw - 1))
    if kind == "decay":
        groups = [FrameGroup(0, 0, (Window(min(4, nh), min(5, nw)),))]
        if nt > 1:
            groups.append(FrameGroup(1, 1, (Window(min(2, nh), min(3, nw)),)))
        if nt > 2:
            groups.append(FrameGroup(2, nt - 1, (Window(1, min(2, nw)),)))
        return Pattern(tuple(groups))
    if kind == "far":
        groups = [FrameGroup(0, 0, (Window(half_h, half_w),))]
        if nt > 2:
            groups.append(FrameGroup(2, nt - 1, (Window(1, nw),)))
        return Pattern(tuple(groups))
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


def planted_sinks(grid: tuple[int, int, int], k: int) -> tuple[tuple[int, int, int], ...]:
    """``k`` distinct key tiles spread over the grid: the first frame's corner, the middle, the last frame..."""
    nt, nh, nw = grid
    spots = [(0, 0, 0), (nt // 2, nh // 2, nw // 2), (nt - 1, nh - 1, nw - 1), (0, nh - 1, nw // 3),
             (nt - 1, 0, (2 * nw) // 3)]
    return tuple(dict.fromkeys(spots))[:k]


def sink_kind_pattern(kind: str, grid: tuple[int, int, int]) -> Pattern:
    """A representative pattern of each sink kind on tile grid ``grid``."""
    if kind == "local-sink":
        return kind_pattern("local", grid).with_sinks(planted_sinks(grid, 2))
    if kind == "sink":
        return Pattern.local(0, 1, 1).with_sinks(planted_sinks(grid, 3))
    if kind == "mixed-sink":
        return kind_pattern("decay", grid).with_sinks(planted_sinks(grid, 1))
    raise ValueError(f"unknown sink kind {kind!r}; one of {SINK_KINDS}")


def any_kind_pattern(kind: str, grid: tuple[int, int, int]) -> Pattern:
    return sink_kind_pattern(kind, grid) if kind in SINK_KINDS else kind_pattern(kind, grid)


def block_dt(layout: TileLayout) -> torch.Tensor:
    """``[NB, NB]`` temporal tile distance between the first tiles of two blocks (0 for text blocks)."""
    nb, nvb = layout.num_blocks, layout.num_video_blocks
    t = layout.tile_coords[layout.order][layout.block_first_tile, 0]
    out = torch.zeros(nb, nb, dtype=torch.int64)
    out[:nvb, :nvb] = (t[:, None] - t[None, :]).abs()
    return out


def random_head_pattern(grid: tuple[int, int, int], rng: random.Random) -> Pattern:
    """A random planted pattern of one of five kinds, sized per head (the search and report benchmarks)."""
    nt, nh, nw = grid
    kind = rng.choice(["local", "local", "cross", "global", "decay", "far"])
    if kind == "local":
        return Pattern.local(rng.randint(0, 2), rng.randint(1, 4), rng.randint(1, 6))
    if kind == "cross":
        return Pattern((FrameGroup(0, rng.randint(1, nt - 1), (Window(rng.randint(1, 2), nw),
                                                                Window(nh, rng.randint(1, 3)))),))
    if kind == "global":
        return Pattern.local(nt - 1, nh, rng.randint(nw - 3, nw))
    if kind == "decay":
        return Pattern((FrameGroup(0, 0, (Window(rng.randint(3, nh), rng.randint(4, nw)),)),
                        FrameGroup(1, 1, (Window(rng.randint(2, 3), rng.randint(2, 5)),)),
                        FrameGroup(2, nt - 1, (Window(1, rng.randint(1, 3)),))))
    return Pattern((FrameGroup(0, 0, (Window(rng.randint(2, 4), rng.randint(2, 6)),)),
                    FrameGroup(2, nt - 1, (Window(1, nw),))))


def planted_mass(
    layout: TileLayout,
    pattern: Pattern,
    recall: float = 0.96,
    decay: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[NB, NB]`` float32 block mass whose planted ``pattern`` keeps ``recall`` of each partly covered row.

    Args:
        decay: weight inside the pattern is multiplied by ``exp(-decay * dt)`` (dt: temporal tile distance).
    """
    mask = pattern_block_mask(pattern, layout)
    inside = (0.5 + torch.rand(mask.shape, generator=generator)) * mask
    if decay:
        inside = inside * torch.exp(-decay * block_dt(layout).double()).float()
    noise = torch.rand(mask.shape, generator=generator) * ~mask
    a, b = inside.sum(1, keepdim=True), noise.sum(1, keepdim=True)
    scale = torch.where(b > 0, a * (1 - recall) / recall / b.clamp_min(1e-30), 0.0)
    m = inside + noise * scale
    tokens = layout.block_lengths().float()[:, None]
    return (m / m.sum(1, keepdim=True) * tokens).float()


def planted_profile(
    geometry: VideoGeometry,
    tile: tuple[int, int, int],
    block_size: int,
    kinds: list[list[str]],
    buckets: int = 1,
    prompts: int = 0,
    recall: float = 0.96,
    seed: int = 0,
    steps_per_bucket: int = 10,
    recipe: dict | None = None,
) -> tuple[Profile, dict]:
    """A profile whose head ``h`` of layer ``l`` is planted from ``kinds[l][h]`` (`KINDS` or `SINK_KINDS`).

    Every bucket uses the same patterns with fresh noise. With ``prompts > 0`` per-prompt tensors are kept
    (independent noise per prompt) and the mean mass is their mean.

    Returns:
        (profile, planted): ``planted[(bucket, layer, head)]`` is the planted pattern.
    """
    layout = TileLayout(geometry, tile, block_size)
    g = torch.Generator().manual_seed(seed)
    mass, per_prompt, planted = {}, {}, {}
    for b in range(buckets):
        for l, layer_kinds in enumerate(kinds):
            heads, heads_pp = [], []
            for h, kind in enumerate(layer_kinds):
                p = any_kind_pattern(kind, layout.grid_thw)
                planted[(b, l, h)] = p
                decay = 0.7 if kind in ("decay", "mixed-sink") else 0.0
                if prompts:
                    pp = torch.stack([planted_mass(layout, p, recall, decay, g) for _ in range(prompts)])
                    heads_pp.append(pp)
                    heads.append(pp.mean(0))
                else:
                    heads.append(planted_mass(layout, p, recall, decay, g))
            mass[(b, l)] = torch.stack(heads)
            if prompts:
                per_prompt[(b, l)] = torch.stack(heads_pp, dim=1)
    ranges = [(i * steps_per_bucket, (i + 1) * steps_per_bucket) for i in range(buckets)]
    prof = Profile.from_block_mass(
        mass, geometry=geometry, tile=tile, block_size=block_size, buckets=ranges,
        per_prompt=per_prompt or None, prompts=[f"planted prompt {i}" for i in range(prompts)] or None,
        model={"id": "planted", "adapter": "wan", "heads": len(kinds[0]), "head_dim": 64},
        recipe=recipe or {},
    )
    return prof, planted
