"""Per-head statistics of a block-mass map, and the pattern label rule.

For one (bucket, layer, head) and its block mass ``[NQB, NKB]`` (tile order; each query block's row sums to
its token count) we report, all as fractions of the head's total mass over video query blocks:

- ``entropy``: mean over query blocks of the entropy of the row's block distribution, divided by
  ``log(NKB)`` (0 = one block, 1 = uniform);
- ``text_mass``: mass on key blocks that hold text tokens;
- ``local_1``, ``local_2``, ``local_4``: mass inside a local window of radius r tiles in time and in space
  (``Pattern.local(r, 2r+1, 2r+1)``, clipped to the grid);
- ``local_30``: mass inside the local 3D window that covers about 30% of the tokens
  (`compactsearch.tile_choice.reference_local_pattern`): the same question on every grid size, where a radius in
  tiles covers most of a small grid and little of a large one (a uniform head scores ~0.3);
- ``cross``: mass inside a cross of one tile-row band plus one tile-column band (all distances);
  ``cross_cover``: the fraction of tokens that cross covers (what a uniform head would score; on a 4 x 2 tile
  frame it is over 60%, on Wan 720p's 6 x 20 about 20%);
- ``dt_0 .. dt_3``: mass at temporal tile distance 0, 1, 2 and >= 3 (``dt_3``).

**Label rule** (evaluated in this order; documented in the README):

1. ``local`` if ``local_30 >= 0.6`` (a window over ~30% of the tokens holds most of the mass);
2. ``cross`` if ``cross >= 0.6``, ``cross >= local_30 + 0.15`` and ``cross >= 1.5 * cross_cover`` (clearly more
   than a uniform head puts there);
3. ``time-variant`` if the mass per frame distance is far from flat: the mass at distance 0 per tile frame is
   at least 3x the average per tile frame at distances >= 1 (``dt_0 >= 3 * (1 - dt_0) / (nt - 1)``) or at most
   a third of it (a head that skips near frames);
4. ``global`` otherwise (spread over the frame and over time).
"""

from __future__ import annotations

import math

import torch

from compactsearch.masks import pattern_block_mask, pattern_token_density
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.tile_choice import reference_local_pattern
from compactsearch.tiling import TileLayout

__all__ = ["head_stats", "LABELS", "label_from_stats"]

LABELS = ("local", "cross", "time-variant", "global")


def _cross(layout: TileLayout) -> Pattern:
    nt, nh, nw = layout.grid_thw
    return Pattern((FrameGroup(0, nt - 1, (Window(1, nw), Window(nh, 1))),))


def _local(layout: TileLayout, r: int) -> Pattern:
    nt, nh, nw = layout.grid_thw
    return Pattern.local(min(r, nt - 1), min(2 * r + 1, nh), min(2 * r + 1, nw))


def _key_block_dt(layout: TileLayout) -> torch.Tensor:
    """``[NQB, NKB]`` temporal tile distance between blocks (first tile of each block); -1 for text blocks."""
    nvb = layout.num_video_blocks
    t_of_block = layout.tile_coords[layout.order][layout.block_first_tile, 0]
    dt = (t_of_block[:, None] - t_of_block[None, :]).abs()
    out = torch.full((layout.num_blocks, layout.num_blocks), -1, dtype=torch.int64)
    out[:nvb, :nvb] = dt
    t0 = layout.text_block_start
    out[t0:, :] = -1
    out[:, t0:] = -1
    return out


def head_stats(mass: torch.Tensor, layout: TileLayout) -> list[dict]:
    """Statistics for every head of one (bucket, layer).

    Args:
        mass: ``[H, NQB, NKB]`` block mass (float).

    Returns:
        One dict per head with the keys described in the module docstring plus ``label``.
    """
    mass = mass.float()
    H, nqb, nkb = mass.shape
    qv = slice(0, layout.text_block_start)  # video query blocks (text queries are dense anyway)
    m = mass[:, qv]
    total = m.sum(dim=(1, 2)).clamp_min(1e-30)
    rows = m / m.sum(-1, keepdim=True).clamp_min(1e-30)
    ent = -(rows * torch.log(rows.clamp_min(1e-30))).sum(-1).mean(-1) / math.log(max(nkb, 2))
    text_cols = torch.zeros(nkb, dtype=torch.bool)
    text_cols[layout.text_block_start:] = layout.geometry.text_tokens > 0
    text = m[..., text_cols].sum(dim=(1, 2)) / total

    def frac(p: Pattern) -> torch.Tensor:
        bm = pattern_block_mask(p, layout)[qv]
        return (m * bm).sum(dim=(1, 2)) / total

    local = {r: frac(_local(layout, r)) for r in (1, 2, 4)}
    local_30 = frac(reference_local_pattern(layout, 0.3))
    cross = frac(_cross(layout))
    cross_cover = pattern_token_density(_cross(layout), layout)
    dt = _key_block_dt(layout)[qv]
    by_dt = [((m * (dt == d)).sum(dim=(1, 2)) / total) for d in (0, 1, 2)]
    by_dt.append((m * (dt >= 3)).sum(dim=(1, 2)) / total)
    nt = layout.grid_thw[0]
    out = []
    for h in range(H):
        s = {
            "entropy": float(ent[h]),
            "text_mass": float(text[h]),
            "local_1": float(local[1][h]),
            "local_2": float(local[2][h]),
            "local_4": float(local[4][h]),
            "local_30": float(local_30[h]),
            "cross": float(cross[h]),
            "cross_cover": cross_cover,
            "dt_0": float(by_dt[0][h]),
            "dt_1": float(by_dt[1][h]),
            "dt_2": float(by_dt[2][h]),
            "dt_3": float(by_dt[3][h]),
        }
        s["label"] = label_from_stats(s, nt)
        out.append(s)
    return out


def label_from_stats(s: dict, nt: int) -> str:
    """The documented label rule (module docstring); ``s`` holds a `head_stats` row."""
    if s["local_30"] >= 0.6:
        return "local"
    if s["cross"] >= 0.6 and s["cross"] >= s["local_30"] + 0.15 and s["cross"] >= 1.5 * s["cross_cover"]:
        return "cross"
    if nt > 1:
        video = max(1e-12, 1.0 - s["text_mass"])
        d0 = s["dt_0"] / video
        flat = (1.0 - d0) / (nt - 1)
        if d0 >= 3 * flat or d0 <= flat / 3:
            return "time-variant"
    return "global"
