"""Retargeting: run one searched config at another token grid or step count of the same model.

A config's heads are patterns in *tiles* of one tile shape on one token grid. Retargeting re-chooses the tiling
for the new grid (`compactsearch.tile_choice.default_tiling`) and maps every pattern:

- **windows** (rows and columns) and **frame-group distances** keep their extent in tokens (``rule="tokens"``,
  the default) or their share of the grid (``rule="fraction"``), rounded to whole tiles of the new tile shape;
  a window or distance range that spanned the whole axis still spans it (a global head stays global);
- frame groups stay ascending and disjoint (a range squeezed into its predecessor is moved after it, and dropped
  when nothing is left of the axis), and a group that started right after its predecessor still does;
- sink key tiles keep their position as a share of the tile grid (tile ``c`` of ``n`` becomes the first new
  tile of the same share, ``floor(c n' / n)``, so a first-frame sink stays on the first frame; sinks that land
  on one tile merge);
- step buckets are fractions of the run (`compactsearch.schedule`), so a new step count changes nothing in the
  heads.

Why keep token distances: the models' 3D RoPE makes attention a function of the offset in tokens, and on the
tiny model, profiled natively at 12 and 16 frames and at 48x48 px, configs mapped by token distance keep more
recall at the same density than configs mapped by share of the grid (measured in docs/search.md,
"Retargeting"). ``rule="fraction"`` stays available for models whose heads scale with the content.

Pixel sizes become token grids through the family's VAE and patch factors (`token_grid`); a config that records
the pixel size it was searched at (``model.video``) checks the factors against it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timezone

from compactsearch import __version__
from compactsearch.config import Config, HeadConfig, LayerConfig, summarize
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.tile_choice import default_tile_shape, default_tiling
from compactsearch.tiling import TileLayout

__all__ = ["RULES", "LatentFactors", "FACTORS", "token_grid", "retarget", "retarget_pattern"]

RULES = ("tokens", "fraction")


class LatentFactors(tuple):
    """``(temporal, spatial)``: frames ``F`` -> ``(F - 1) // temporal + 1`` tokens; pixels ``P`` -> ``P // spatial``.

    ``temporal`` folds the VAE's temporal compression and the temporal patch; ``spatial`` the VAE's spatial
    compression times the spatial patch.
    """

    def __new__(cls, temporal: int, spatial: int):
        return super().__new__(cls, (temporal, spatial))


# Per adapter (diffusers' configs of the released models): VAE temporal x spatial, transformer patch.
FACTORS = {
    "wan": LatentFactors(4, 16),            # VAE 4 x 8, patch (1, 2, 2): 81 x 480 x 832 -> 21 x 30 x 52
    "hunyuan_video": LatentFactors(4, 16),  # VAE 4 x 8, patch (1, 2, 2): 129 x 720 x 1280 -> 33 x 45 x 80
    "cogvideox": LatentFactors(4, 16),      # VAE 4 x 8, patch 2: 49 x 480 x 720 -> 13 x 30 x 45
    "ltx": LatentFactors(8, 32),            # VAE 8 x 32, patch 1: 121 x 512 x 768 -> 16 x 16 x 24
    "mochi": LatentFactors(6, 16),          # VAE 6 x 8, patch 2: 163 x 480 x 848 -> 28 x 30 x 53
}


def _factors(config: Config) -> LatentFactors:
    """The config's factors: from the pixel size it records (``model.video``) where it has one, else the family's."""
    video = config.provenance.get("video") if isinstance(config.provenance, dict) else None
    g = config.geometry
    if isinstance(video, dict) and all(isinstance(video.get(k), int) and video[k] > 0
                                       for k in ("frames", "height", "width")):
        spatial = video["height"] // g.height
        temporal = next((k for k in (FACTORS.get(config.adapter, (4,))[0], 1, 2, 4, 6, 8)
                         if (video["frames"] - 1) // k + 1 == g.frames), None)
        if temporal and spatial and video["height"] == g.height * spatial and video["width"] == g.width * spatial:
            return LatentFactors(temporal, spatial)
    if config.adapter not in FACTORS:
        raise InputError(f"no VAE/patch factors are known for adapter '{config.adapter}': give the token grid "
                         "with --grid T,H,W instead of --video")
    return FACTORS[config.adapter]


def token_grid(config: Config, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The token grid of a ``frames x height x width`` pixel video for the config's model."""
    for name, v in (("frames", frames), ("height", height), ("width", width)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"--video {name} must be a positive integer, got {v!r}")
    ft, fs = _factors(config)
    if height % fs or width % fs:
        raise InputError(f"--video height and width must be multiples of {fs} for this model (VAE x patch), got "
                         f"{height}x{width}")
    if (frames - 1) % ft:
        raise InputError(f"--video frames must be 1 + a multiple of {ft} for this model (VAE's temporal "
                         f"compression), got {frames}")
    return ((frames - 1) // ft + 1, height // fs, width // fs)


def _length(n: int, old_tile: int, old_axis: int, old_grid: int, new_tile: int, new_axis: int, new_grid: int,
            rule: str) -> int:
    """A window of ``n`` tiles on one axis, in tiles of the new layout."""
    if n >= old_grid:
        return new_grid
    tokens = n * old_tile * (new_axis / old_axis if rule == "fraction" else 1.0)
    return max(1, min(new_grid, math.floor(tokens / new_tile + 0.5)))


def _distance(d: int, old_tt: int, old_frames: int, new_tt: int, new_frames: int, rule: str) -> int:
    frames = d * old_tt * (new_frames / old_frames if rule == "fraction" else 1.0)
    return math.floor(frames / new_tt + 0.5)


def retarget_pattern(p: Pattern, old: TileLayout, new: TileLayout, rule: str = "tokens") -> Pattern:
    """Map one head's pattern from layout ``old`` to layout ``new`` (module docstring)."""
    if p.is_dense:
        return p
    (ont, onh, onw), (nnt, nnh, nnw) = old.grid_thw, new.grid_thw
    (ott, oth, otw), (ntt, nth, ntw) = old.tile_thw, new.tile_thw
    og, ng = old.geometry, new.geometry
    groups: list[FrameGroup] = []
    prev_old_hi = -1
    for g in p.groups:
        lo = _distance(g.dt_lo, ott, og.frames, ntt, ng.frames, rule)
        hi = nnt - 1 if g.dt_hi >= ont - 1 else _distance(g.dt_hi, ott, og.frames, ntt, ng.frames, rule)
        if groups:
            prev_hi = groups[-1].dt_hi
            lo = prev_hi + 1 if (g.dt_lo == prev_old_hi + 1 or lo <= prev_hi) else lo
        prev_old_hi = g.dt_hi
        lo, hi = min(lo, nnt - 1), min(max(hi, lo), nnt - 1)
        if groups and lo <= groups[-1].dt_hi:
            continue  # nothing of the time axis is left for this group
        wins = tuple(dict.fromkeys(
            Window(_length(w.h, oth, og.height, onh, nth, ng.height, nnh, rule),
                   _length(w.w, otw, og.width, onw, ntw, ng.width, nnw, rule)) for w in g.windows))
        groups.append(FrameGroup(lo, hi, wins))
    # sink key tiles keep their place as a share of the grid (a first-frame sink stays on the first frame)
    sinks = tuple(sorted({tuple(min(n_new - 1, c * n_new // n_old)
                                for c, n_old, n_new in zip(s, old.grid_thw, new.grid_thw)) for s in p.sinks}))
    return Pattern(tuple(groups), sinks)


def retarget(config: Config, grid: tuple[int, int, int] | None = None, num_steps: int | None = None,
             rule: str = "tokens", text_tokens: int | None = None,
             tiling: tuple[tuple[int, int, int], int] | None = None) -> Config:
    """``config`` mapped to another token grid and/or step count of the same model.

    Args:
        grid: the new ``(frames, height, width)`` token grid (default: the config's).
        num_steps: the new step count (default: the config's); buckets are fractions of the run, so this
            changes only the count the summary is computed at.
        rule: ``"tokens"`` or ``"fraction"`` (module docstring).
        text_tokens: the new text length (default: the config's).
        tiling: ``(tile, block_size)`` to use (a profile's, to score the result on it); default re-chosen for the
            new grid by `default_tiling` (64-token blocks when the grid has fewer than two 128-token blocks).

    Raises:
        InputError: a grid smaller than one tile per axis of the new tiling, a non-positive size, an unknown rule.
    """
    if rule not in RULES:
        raise InputError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
        raise InputError(f"--steps must be a positive integer, got {num_steps!r}")
    old_g = config.geometry
    grid = tuple(grid) if grid is not None else old_g.thw
    if len(grid) != 3 or not all(isinstance(x, int) and x >= 1 for x in grid):
        raise InputError(f"the token grid must be three positive integers T,H,W, got {list(grid)}")
    text = old_g.text_tokens if text_tokens is None else text_tokens
    geometry = VideoGeometry(*grid, text, old_g.text_position if text else "none")
    same_grid = geometry == old_g and (tiling is None or (tuple(tiling[0]), tiling[1]) == (config.tile,
                                                                                       config.block_size))
    if same_grid:
        tile, block_size, buckets = config.tile, config.block_size, config.buckets
    else:
        tile, block_size = tiling if tiling is not None else default_tiling(geometry, config.head_dim)
        if tiling is None and block_size > 64 and geometry.video_tokens < 2 * block_size:  # small grids
            tile, block_size = default_tile_shape(geometry, 64), 64
        old, new = config.layout(), TileLayout(geometry, tile, block_size)
        if new.num_video_blocks < 2:
            raise InputError(f"the token grid {grid[0]}x{grid[1]}x{grid[2]} is smaller than two kernel blocks of "
                             f"{block_size} tokens: too small for a sparse config")
        cache: dict[Pattern, Pattern] = {}

        def mapped(p: Pattern) -> Pattern:
            if p not in cache:
                cache[p] = retarget_pattern(p, old, new, rule)
            return cache[p]

        buckets = tuple(replace(b, layers=tuple(
            LayerConfig(lc.layer, tuple(HeadConfig(hc.head, mapped(hc.pattern)) for hc in lc.heads))
            for lc in b.layers)) for b in config.buckets)
    steps = num_steps or config.num_steps
    source = {"grid": list(old_g.thw), "text_tokens": old_g.text_tokens, "steps": config.num_steps,
              "tile": list(config.tile), "block_size": config.block_size}
    prov = {"kind": "retargeted", "rule": rule, "from": source, "tool_version": __version__,
            "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "source": {k: v for k, v in config.provenance.items() if k != "source"}}
    out = replace(config, geometry=geometry, tile=tuple(tile), block_size=block_size, num_steps=steps,
                  buckets=buckets, provenance=prov, summary={})
    if not same_grid:  # per-head densities of the new masks
        masks = out.masks()
        buckets = tuple(replace(b, layers=tuple(
            LayerConfig(lc.layer, tuple(replace(hc, density=float(masks[(bi, li)].head_density()[hc.head]))
                                        for hc in lc.heads)) for li, lc in enumerate(b.layers)))
            for bi, b in enumerate(out.buckets))
        out = replace(out, buckets=buckets)
    return replace(out, summary=summarize(out))
