"""The default tiling of a geometry: the tile shape and block size with the least tiling waste.

Candidates are compact tiles of one or two kernel blocks (`_candidate_tiles`); each is scored by the mean tiling
waste (`compactsearch.tiling.TileLayout.tiling_waste`) of a reference panel of patterns on it: a local window of
about 30% density, a cross of thin bands and a time-decaying local window (`reference_panel`). The block size
weighs that waste against the kernel's measured speed where it is measured (`PAIR_TIME_64`): 64-token blocks are
taken only where their computed pairs times their time per pair come out below 128-token blocks'.
"""

from __future__ import annotations

import functools
import math

from compactsearch.geometry import VideoGeometry
from compactsearch.masks import block_mask_from_tile_mask, pattern_token_density, tile_mask
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.tiling import TileLayout

__all__ = ["default_tile_shape", "default_tiling", "panel_waste", "reference_panel", "reference_local_pattern",
           "PAIR_TIME_64", "WASTE_TARGET"]


def reference_local_pattern(layout: TileLayout, density: float = 0.3) -> Pattern:
    """A local 3D window whose token density is closest to ``density``, as balanced across axes as possible."""
    nt, nh, nw = layout.grid_thw
    best, best_key = Pattern.local(nt - 1, nh, nw), None
    for dt in range(nt):
        t_frac = min(nt, 2 * dt + 1) / nt
        s_frac = min(1.0, (density / t_frac) ** 0.5)
        p = Pattern.local(dt, max(1, round(s_frac * nh)), max(1, round(s_frac * nw)))
        key = (round(abs(pattern_token_density(p, layout) - density), 2), abs(t_frac - s_frac))
        if best_key is None or key < best_key:
            best, best_key = p, key
    return best


def reference_panel(layout: TileLayout) -> list[Pattern]:
    """Patterns that judge a tiling: a ~30% local window, a cross of thin bands, a time-decaying local window."""
    nt, nh, nw = layout.grid_thw
    last = nt - 1

    def frac(n: int, f: float) -> int:
        return max(1, min(n, round(n * f)))

    cross = Pattern((FrameGroup(0, last, (Window(frac(nh, 0.25), nw), Window(nh, frac(nw, 0.2)))),))
    groups = [FrameGroup(0, min(1, last), (Window(frac(nh, 0.6), frac(nw, 0.6)),))]
    if last >= 2:
        groups.append(FrameGroup(2, last, (Window(frac(nh, 0.3), frac(nw, 0.3)),)))
    return [reference_local_pattern(layout), cross, Pattern(tuple(groups))]


def _candidate_tiles(geometry: VideoGeometry, block_size: int) -> list[tuple[int, int, int]]:
    """Compact tile shapes of 1x or 2x ``block_size`` tokens that fit the grid.

    Tiles stay compact so a block holds true neighbours: at most 4 frames deep, rows and columns between 4
    and 16 with an aspect ratio of at most 2 (the shapes STA and VSA use are in this family).
    """
    out = []
    for mult in (1, 2):
        target = block_size * mult
        for tt in (1, 2, 4):
            for th in (4, 8, 16):
                tw = target // (tt * th)
                if tt * th * tw != target or not 4 <= tw <= 16 or max(th, tw) > 2 * min(th, tw):
                    continue
                if tt <= geometry.frames and th <= geometry.height and tw <= geometry.width:
                    out.append((tt, th, tw))
    return out


#: Kernel time per computed token pair at 64-token blocks over 128-token blocks, by head dim: one H200,
#: `benchmarks/attention_call.py --block-sizes` (density 0.3, 2026-12-01): 1.51 (Wan 1.3B) and 1.50 (Mochi) at
#: head dim 128. At head dim 64 the measured ratios straddle 1 (1.17 CogVideoX-5B at 17,776 tokens, 0.82
#: LTX-Video at 7,392), so there the waste rule (`WASTE_TARGET`) decides.
PAIR_TIME_64 = {128: 1.50}

#: Head dims without a `PAIR_TIME_64` entry: largest mean tiling waste over the reference panel at which
#: `default_tiling` keeps 128-token blocks (then 64-token blocks if they waste less).
WASTE_TARGET = 0.06


def panel_waste(layout: TileLayout) -> float:
    """Mean tiling waste of the reference panel (local, cross, time-decaying) on this layout."""
    wastes = []
    for pattern in reference_panel(layout):
        tm = tile_mask(pattern, layout)
        wastes.append(layout.tiling_waste(tm, block_mask_from_tile_mask(tm, layout)))
    return sum(wastes) / len(wastes)


@functools.lru_cache(maxsize=64)
def _best_tile(geometry: VideoGeometry, block_size: int) -> tuple[tuple[int, int, int], float]:
    candidates = _candidate_tiles(geometry, block_size)
    if not candidates:  # grid smaller than any tile: a single partial tile covers it
        tile = _covering_tile(geometry, block_size)
        return tile, panel_waste(TileLayout(geometry, tile, block_size))
    scored = []
    for tile in candidates:
        waste = panel_waste(TileLayout(geometry, tile, block_size))
        # One-block tiles build masks fastest (no gather over full tiles): prefer them unless a two-block
        # tile saves more than one point of waste.
        penalty = 0.01 if math.prod(tile) > block_size else 0.0
        scored.append(((round(waste + penalty, 3), math.prod(tile), max(tile) / min(tile)), tile, waste))
    _, tile, waste = min(scored)
    return tile, waste


def default_tile_shape(geometry: VideoGeometry, block_size: int = 128) -> tuple[int, int, int]:
    """The tile shape with the least tiling waste on the reference panel (see `panel_waste`).

    Candidates are compact tiles of ``block_size`` or ``2*block_size`` tokens; ties go to the smaller, more
    cubic tile. Grids smaller than one tile get a tile that covers them.
    """
    return _best_tile(geometry, block_size)[0]


def default_tiling(geometry: VideoGeometry, head_dim: int | None = None) -> tuple[tuple[int, int, int], int]:
    """``(tile, block_size)`` for a geometry. Where the kernel's time per pair at 64-token blocks is measured
    for the head dim (`PAIR_TIME_64`; ``head_dim`` None counts as 128, as in Wan, HunyuanVideo and Mochi), the
    block size with the lower expected kernel time on the reference panel, ``(1 + waste) * time per pair``;
    otherwise 128-token blocks unless they waste more than `WASTE_TARGET`, then 64-token blocks if those waste
    less. Grids of fewer than two 128-token blocks take the block size that wastes less."""
    tile, waste = _best_tile(geometry, 128)
    tile64, waste64 = _best_tile(geometry, 64)
    ratio = PAIR_TIME_64.get(head_dim or 128)
    if geometry.video_tokens < 2 * 128:
        use64 = waste64 < waste
    elif ratio is None:
        use64 = waste > WASTE_TARGET and waste64 < waste
    else:
        use64 = (1.0 + waste64) * ratio < 1.0 + waste
    return (tile64, 64) if use64 else (tile, 128)


def _covering_tile(geometry: VideoGeometry, block_size: int) -> tuple[int, int, int]:
    f, h, w = geometry.thw
    tt = 1
    while tt * 2 <= f and block_size % (tt * 2) == 0:
        tt *= 2
    th = 1
    while th * 2 <= h and (block_size // tt) % (th * 2) == 0:
        th *= 2
    return (tt, th, block_size // (tt * th))
