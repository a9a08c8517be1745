"""Recall and cost of patterns on one head's block mass: a fast tile-level evaluator and the exact one.

**Exact** (`ExactScorer`): the block mask the kernel runs (`compactsearch.masks.pattern_block_mask`, rebuilt
here with the same rule but cached and a cheaper tile -> block OR) applied to the head's block mass
``[NQB, NKB]``:

- ``recall`` = mass kept / total mass, over every query block (text rows and columns are always dense and
  count). Since each query block's row sums to its token count this is the mean over query tokens.
- ``recall_min`` = the worst query block's kept fraction of its row.
- ``blocks`` = kernel blocks computed; block density = ``blocks / NB^2``, what `summarize` and
  `compactsearch validate` count.

**Fast** (`HeadTables`): the mass of video blocks is spread over the tiles each block covers (by token share)
into a (query tile, key tile) matrix, and 2D prefix sums over the key tile's (row, col) turn a window's mass
into four lookups. Windows are centred and shifted inward, so of two windows the smaller one on each axis lies
inside the larger one; the intersection of windows ``(h1, w1)`` and ``(h2, w2)`` is therefore the window
``(min h, min w)`` and a union's mass is ``A + B - A∩B``. Summing over query tiles and cumulatively over
temporal distance leaves a table ``T[h, w, d]`` (mass within window ``(h, w)`` at distances ``<= d``), so one
pattern costs a few scalar lookups: millions per second on one core.

**Sinks.** A pattern's sink key tiles are kept by every query tile. Their columns are disjoint from each other,
so the kept mass is the groups' mass plus, per sink, the sink column's mass outside the groups' windows. For a
sink key tile ``s`` a table ``T_s[h, w, d]`` (the column's mass from query tiles whose window ``(h, w)`` at
distances ``<= d`` contains ``s``) has the same form as ``T``, so ``column mass - sum over the pattern of T_s``
is again a few lookups (`HeadTables.sink_table`; the cost side likewise, per layout). `HeadTables.with_sinks`
folds a fixed sink set into the tables (``T - Σ T_s``, constants plus the columns), so the baselines and the
sweep, which only read the tables, optimise the windows *given* those sinks, exactly.

The fast evaluator is exact when every kernel block lies inside one tile. Where a block straddles tiles (the
packed partial tiles), the kernel computes the whole block when *any* of its tiles is allowed, while the fast
evaluator counts only the allowed tiles' share: fast recall and fast cost are then lower bounds of the exact
ones (a pattern feasible by the fast evaluator is feasible exactly). Front points are always re-scored exactly.
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compactsearch._io import read_yaml
from compactsearch.errors import InputError
from compactsearch.masks import layer_block_masks, pattern_block_mask
from compactsearch.patterns import Pattern
from compactsearch.tiling import TileLayout

__all__ = ["LayoutTables", "HeadTables", "ExactScorer", "ExactScore", "CostModel", "block_shares"]


# ------------------------------------------------------------------------------------------- layout level
def block_shares(layout: TileLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Which raster tiles each video block covers, and with what share of the block's tokens.

    Only blocks before ``layout.text_block_start`` (all-video blocks) are described; later blocks hold text and
    are always dense.

    Returns:
        tiles: ``[S, NVQ]`` int64 raster tile id of the s-th tile block b covers (repeats the last one past it).
        shares: ``[S, NVQ]`` float64 fraction of block b's tokens in that tile (0 past the last one).
        ``S`` is the largest number of tiles one block covers; ``NVQ = text_block_start``.
    """
    nvq = layout.text_block_start
    bs = layout.block_size
    seq_sizes = layout.tile_sizes[layout.order]
    ends = torch.cumsum(seq_sizes, 0)
    starts = ends - seq_sizes
    first, last = layout.block_first_tile[:nvq], layout.block_last_tile[:nvq]
    b_start = torch.arange(nvq) * bs
    b_end = torch.clamp(b_start + bs, max=layout.geometry.video_tokens)
    span = int((last - first).max()) + 1 if nvq else 1
    tiles = torch.empty(span, nvq, dtype=torch.int64)
    shares = torch.zeros(span, nvq, dtype=torch.float64)
    for s in range(span):
        pos = torch.minimum(first + s, last)
        valid = first + s <= last
        overlap = torch.minimum(ends[pos], b_end) - torch.maximum(starts[pos], b_start)
        tiles[s] = layout.order[pos]
        shares[s] = torch.where(valid, overlap.double() / (b_end - b_start).double(), 0.0)
    return tiles, shares


def _window_starts(n: int, coord: torch.Tensor) -> torch.Tensor:
    """``[n, Q]`` first row of the size-``s`` (s = 1..n) window around each query coordinate, shifted inward."""
    sizes = torch.arange(1, n + 1)[:, None]
    return torch.clamp(coord[None, :] - sizes // 2, min=torch.zeros_like(sizes), max=n - sizes)


class LayoutTables:
    """Head-independent pieces of the fast evaluator for one `TileLayout`.

    Attributes:
        grid: ``(nt, nh, nw)`` tile grid.
        nb: kernel blocks per side; ``nvq`` video-only blocks (``text_block_start``).
        tiles, shares: see `block_shares`.
        cost_T: ``[nh, nw, nt]`` float64 fast block count of window ``(h, w)`` at distances ``<= d``
            (index ``h-1, w-1, d``), summed over query tiles.
        const_blocks: blocks computed whatever the pattern (text rows and columns).
    """

    def __init__(self, layout: TileLayout):
        self.layout = layout
        self.grid = layout.grid_thw
        nt, nh, nw = self.grid
        self.nb = layout.num_blocks
        self.nvq = layout.text_block_start
        self.tiles, self.shares = block_shares(layout)
        coords = layout.tile_coords
        self.n_tiles = layout.num_tiles
        self._q = torch.arange(self.n_tiles)
        self._sh = _window_starts(nh, coords[:, 1])
        self._sw = _window_starts(nw, coords[:, 2])
        self._sizes_h = torch.arange(1, nh + 1)[:, None]
        self._sizes_w = torch.arange(1, nw + 1)[:, None]
        # distance gather: key frame tq + d and tq - d for every query tile
        tq = coords[:, 0]
        d = torch.arange(nt)
        self._up = (tq[:, None] + d[None, :]).clamp(max=nt - 1)
        self._up_ok = (tq[:, None] + d[None, :]) <= nt - 1
        self._dn = (tq[:, None] - d[None, :]).clamp(min=0)
        self._dn_ok = ((tq[:, None] - d[None, :]) >= 0) & (d[None, :] > 0)
        self._corners: list[torch.Tensor] | None = None
        ones = torch.ones(self.nvq, self.nvq, dtype=torch.float64)
        self.const_blocks = self.nb * self.nb - self.nvq * self.nvq
        self.cost_tiles = self.tile_matrix(ones)  # [n_tiles, n_tiles] fast block share per tile pair
        self.cost_C = self.cumulative(self.cost_tiles)
        self.cost_T = self.cost_C.sum(2).numpy()
        self._tq = coords[:, 0]
        self._dist_le = None  # lazily: [nt (key frame), n_tiles, nt (d)] |tq - tk| <= d
        self._sink_cost: dict[tuple[int, int, int], tuple[np.ndarray, float]] = {}

    # ------------------------------------------------------------------------------------------------
    def tile_matrix(self, video: torch.Tensor) -> torch.Tensor:
        """Spread ``[NVQ, NVQ]`` block values over (query tile, key tile) by token share: ``[n_tiles, n_tiles]``."""
        x = torch.zeros(self.n_tiles, video.shape[1], dtype=torch.float64)
        for s in range(self.tiles.shape[0]):
            x.index_add_(0, self.tiles[s], video * self.shares[s][:, None])
        out = torch.zeros(self.n_tiles, self.n_tiles, dtype=torch.float64)
        for s in range(self.tiles.shape[0]):
            out.index_add_(1, self.tiles[s], x * self.shares[s][None, :])
        return out

    def tile_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Spread per-video-block values ``[NVQ]`` over query tiles: ``[n_tiles]``."""
        out = torch.zeros(self.n_tiles, dtype=torch.float64)
        for s in range(self.tiles.shape[0]):
            out.index_add_(0, self.tiles[s], rows * self.shares[s])
        return out

    def cumulative(self, mt: torch.Tensor) -> torch.Tensor:
        """``[nh, nw, n_tiles, nt]``: per query tile, mass in window ``(h, w)`` at temporal distance ``<= d``.

        Args:
            mt: ``[n_tiles, n_tiles]`` (query tile, key tile) values, raster tile ids on both sides.
        """
        nt, nh, nw = self.grid
        nq = self.n_tiles
        p = torch.zeros(nq, nh + 1, nw + 1, nt, dtype=torch.float64)
        p[:, 1:, 1:, :] = mt.view(nq, nt, nh, nw).permute(0, 2, 3, 1).cumsum(1).cumsum(2)
        if self._corners is None:  # rows of p (flattened over its first three axes) at the windows' corners
            q = self._q[None, None, :]
            r0, c0 = self._sh[:, None, :], self._sw[None, :, :]
            r1, c1 = r0 + self._sizes_h[:, None, :], c0 + self._sizes_w[None, :, :]
            corners = ((r1, c1), (r0, c1), (r1, c0), (r0, c0))
            self._corners = [((q * (nh + 1) + r) * (nw + 1) + c).flatten() for r, c in corners]
        rows = p.view(-1, nt)
        a, b, c, d = (rows.index_select(0, i).view(nh, nw, nq, nt) for i in self._corners)
        win = a - b - c + d  # [nh, nw, nq, nt] by key frame
        by_d = torch.gather(win, 3, self._up.expand(nh, nw, nq, nt)) * self._up_ok
        by_d = by_d + torch.gather(win, 3, self._dn.expand(nh, nw, nq, nt)) * self._dn_ok
        return by_d.cumsum(3)

    def raster_id(self, tile: tuple[int, int, int]) -> int:
        nt, nh, nw = self.grid
        return (tile[0] * nh + tile[1]) * nw + tile[2]

    def sink_table(self, column: torch.Tensor, tile: tuple[int, int, int]) -> np.ndarray:
        """``[nh, nw, nt]``: of the values ``column`` ``[n_tiles]`` (per query tile, on key tile ``tile``), the sum
        over query tiles whose window ``(h, w)`` (index ``h-1, w-1``) at distances ``<= d`` contains the tile."""
        nt, nh, nw = self.grid
        t, h, w = tile
        in_h = ((self._sh <= h) & (h < self._sh + self._sizes_h)).double()  # [nh, nq]
        in_w = ((self._sw <= w) & (w < self._sw + self._sizes_w)).double()  # [nw, nq]
        if self._dist_le is None:
            ar = torch.arange(nt)
            self._dist_le = ((self._tq[None, :, None] - ar[:, None, None]).abs() <= ar[None, None, :]).double()
        return torch.einsum("hq,wq,qd->hwd", in_h * column[None, :], in_w, self._dist_le[t]).numpy()

    def sink_cost(self, tile: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        """The cost side of a sink key tile: its `sink_table` of fast block shares and its column's block count."""
        v = self._sink_cost.get(tile)
        if v is None:
            col = self.cost_tiles[:, self.raster_id(tile)]
            v = self._sink_cost[tile] = (self.sink_table(col, tile), float(col.sum()))
        return v

    def pattern_blocks(self, pattern: Pattern) -> float:
        """Fast block count of a pattern (exact when no block straddles tiles)."""
        if pattern.is_dense:
            return float(self.nb * self.nb)
        total = self.const_blocks + _pattern_sum(self.cost_T, pattern)
        for tile in pattern.sinks:
            table, col = self.sink_cost(tile)
            total += col - _pattern_sum(table, pattern)
        return total


def _range(T: np.ndarray, h: int, w: int, lo: int, hi: int) -> float:
    v = T[h - 1, w - 1, hi]
    return float(v - T[h - 1, w - 1, lo - 1]) if lo > 0 else float(v)


def _pattern_sum(T: np.ndarray, pattern: Pattern) -> float:
    """Sum of a table over a pattern's (group, window union) cells, by inclusion-exclusion."""
    total = 0.0
    for g in pattern.groups:
        ws = g.windows
        total += _range(T, ws[0].h, ws[0].w, g.dt_lo, g.dt_hi)
        if len(ws) == 2:
            a, b = ws
            total += _range(T, b.h, b.w, g.dt_lo, g.dt_hi)
            total -= _range(T, min(a.h, b.h), min(a.w, b.w), g.dt_lo, g.dt_hi)
    return total


# ------------------------------------------------------------------------------------------------ head level
class HeadTables:
    """Fast evaluator of one head: recall and block count of any pattern in O(groups) lookups.

    Args:
        lt: the layout's `LayoutTables`.
        mass: ``[NQB, NKB]`` block mass of the head (tile order, rows summing to token counts).
    """

    def __init__(self, lt: LayoutTables, mass: torch.Tensor):
        self.lt = lt
        m = mass.to(torch.float64)
        nvq = lt.nvq
        self.total = float(m.sum())
        if not self.total > 0:
            raise InputError("a head's block mass sums to zero; the profile is empty or corrupt")
        video = m[:nvq, :nvq]
        self.const_kept = self.total - float(video.sum())
        self.mt = lt.tile_matrix(video)  # [nq, nk] (query tile, key tile) mass, raster ids
        self.C = lt.cumulative(self.mt)  # [nh, nw, nq, nt]
        self.T = self.C.sum(2).numpy()  # [nh, nw, nt]
        self.row_total = lt.tile_rows(m[:nvq].sum(1))  # [nq] per query tile, text columns included
        self.row_const = lt.tile_rows(m[:nvq, nvq:].sum(1))
        self.sinks: tuple[tuple[int, int, int], ...] = ()  # folded into the tables (`with_sinks`)
        self._sink_mass: dict[tuple[int, int, int], tuple[np.ndarray, float]] = {}

    def sink_mass(self, tile: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        """The mass side of a sink key tile: its `LayoutTables.sink_table` and its column's mass."""
        v = self._sink_mass.get(tile)
        if v is None:
            col = self.mt[:, self.lt.raster_id(tile)]
            v = self._sink_mass[tile] = (self.lt.sink_table(col, tile), float(col.sum()))
        return v

    def with_sinks(self, sinks) -> HeadTables:
        """These tables with the sink key tiles ``sinks`` folded in (see the module docstring): the view's
        ``recall(p)`` and ``blocks(p)`` of a pattern *without* sinks are this head's numbers of
        ``p.with_sinks(sinks)``; the baselines and the sweep run on it unchanged. ``C`` and `tile_recall` are
        not folded (use this object's)."""
        sinks = tuple(sorted(tuple(s) for s in sinks))
        if not sinks:
            return self
        view = copy.copy(self)
        lt = copy.copy(self.lt)
        view.lt, view.sinks = lt, sinks
        view.T = self.T.copy()
        lt.cost_T = self.lt.cost_T.copy()
        for tile in sinks:
            mt, mc = self.sink_mass(tile)
            ct, cc = self.lt.sink_cost(tile)
            view.T -= mt
            view.const_kept += mc
            lt.cost_T -= ct
            lt.const_blocks += cc
        return view

    def recall(self, pattern: Pattern) -> float:
        """Fast recall (a lower bound of the exact one)."""
        if pattern.is_dense:
            return 1.0
        kept = self.const_kept + _pattern_sum(self.T, pattern)
        for tile in pattern.sinks:
            table, col = self.sink_mass(tile)
            kept += col - _pattern_sum(table, pattern)
        return kept / self.total

    def blocks(self, pattern: Pattern) -> float:
        if self.sinks and pattern.sinks:
            raise ValueError("a view with sinks folded in scores patterns without sinks")
        return self.lt.pattern_blocks(pattern)

    def density(self, pattern: Pattern) -> float:
        return self.blocks(pattern) / (self.lt.nb * self.lt.nb)

    def tile_recall(self, pattern: Pattern) -> torch.Tensor:
        """Fast per-query-tile recall ``[n_tiles]`` (video query tiles; 1 for an empty tile)."""
        if pattern.is_dense:
            return torch.ones(self.lt.n_tiles, dtype=torch.float64)
        kept = self.row_const.clone()
        for g in pattern.groups:
            ws = list(g.windows)
            terms = [(ws[0], 1.0)]
            if len(ws) == 2:
                terms += [(ws[1], 1.0), (type(ws[0])(min(ws[0].h, ws[1].h), min(ws[0].w, ws[1].w)), -1.0)]
            for w, sign in terms:
                c = self.C[w.h - 1, w.w - 1]
                part = c[:, g.dt_hi] - (c[:, g.dt_lo - 1] if g.dt_lo > 0 else 0.0)
                kept += sign * part
        lt = self.lt
        for tile in pattern.sinks:  # the sink column where the query tile's windows do not already cover it
            t, h, w = tile
            covered = torch.zeros(lt.n_tiles, dtype=torch.bool)
            dist = (lt._tq - t).abs()
            for g in pattern.groups:
                in_range = (dist >= g.dt_lo) & (dist <= g.dt_hi)
                for win in g.windows:
                    wh, ww = min(win.h, lt.grid[1]), min(win.w, lt.grid[2])
                    sh, sw = lt._sh[wh - 1], lt._sw[ww - 1]
                    covered |= in_range & (sh <= h) & (h < sh + wh) & (sw <= w) & (w < sw + ww)
            kept += torch.where(covered, 0.0, self.mt[:, lt.raster_id(tile)])
        return torch.where(self.row_total > 0, kept / self.row_total.clamp_min(1e-300), 1.0)


# ---------------------------------------------------------------------------------------------------- exact
@dataclass(frozen=True)
class ExactScore:
    """Exact numbers of one pattern on one head: recall, worst query block's recall, kernel blocks."""

    recall: float
    recall_min: float
    blocks: int


class ExactScorer:
    """Exact recall and cost against the kernel's block mask, with a per-layout LRU cache of masks.

    The mask is `compactsearch.masks.pattern_block_mask`'s; this class adds the cache and block counts.
    """

    def __init__(self, layout: TileLayout, cache_size: int = 256):
        self.layout = layout
        self._cache: OrderedDict[Pattern, torch.Tensor] = OrderedDict()
        self._blocks: dict[Pattern, int] = {}
        self.cache_size = cache_size

    def block_mask(self, pattern: Pattern) -> torch.Tensor:
        """``[NB, NB]`` bool, identical to ``pattern_block_mask(pattern, layout)``."""
        m = self._cache.get(pattern)
        if m is not None:
            self._cache.move_to_end(pattern)
            return m
        m = pattern_block_mask(pattern, self.layout)
        self._cache[pattern] = m
        self._blocks[pattern] = int(m.sum())
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return m

    def prefetch(self, patterns: Sequence[Pattern]) -> None:
        """Cache the masks of ``patterns``, those missing built in batches (`layer_block_masks`: the same masks)."""
        missing = []
        for p in dict.fromkeys(patterns):
            if p in self._cache:
                self._cache.move_to_end(p)  # wanted now: not evicted by the new ones
            elif not p.is_dense:
                missing.append(p)
        for i in range(0, len(missing), 64):
            chunk = missing[i : i + 64]
            masks = layer_block_masks(chunk, self.layout)
            for p, m in zip(chunk, masks, strict=True):
                m = m.clone()  # its own storage: a cached mask must not keep its whole batch alive
                self._cache[p] = m
                self._blocks[p] = int(m.sum())
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def blocks(self, pattern: Pattern) -> int:
        """Kernel blocks computed (head-independent; cached)."""
        n = self._blocks.get(pattern)
        if n is None:
            n = int(self.block_mask(pattern).sum())
        return n

    def score(self, pattern: Pattern, mass: torch.Tensor, row_total: torch.Tensor | None = None) -> ExactScore:
        """Exact recall of ``pattern`` on ``mass`` ``[NQB, NKB]`` (float32 or float64).

        Args:
            row_total: ``mass.sum(-1)`` when already computed (``[NQB]``).
        """
        mask = self.block_mask(pattern)
        if row_total is None:
            row_total = mass.sum(-1, dtype=torch.float64)
        kept_rows = torch.where(mask, mass, 0).sum(-1, dtype=torch.float64)
        total = float(row_total.sum())
        rows = torch.where(row_total > 0, kept_rows / row_total.clamp_min(1e-300), 1.0)
        return ExactScore(float(kept_rows.sum()) / total, float(rows.min()), self.blocks(pattern))


# ----------------------------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class CostModel:
    """Kernel time = ``per_block * computed blocks + per_query_block * query blocks`` (any time unit).

    Read from a YAML or JSON file with the keys ``per_block`` and ``per_query_block`` at the top or under
    ``cost_model`` (what the kernel benchmark writes). The per-query-block term is the same for every pattern,
    so the model changes the budget (relative to dense time), not the per-head ranking.
    """

    per_block: float = 1.0
    per_query_block: float = 0.0

    @classmethod
    def load(cls, path: Path) -> CostModel:
        path = Path(path)
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError as e:
                raise InputError(f"cost model {path} does not exist") from e
            except (OSError, ValueError) as e:
                raise InputError(f"cost model {path} is not valid JSON: {e}") from e
        else:
            data = read_yaml(path, "cost model")
        if isinstance(data, dict) and isinstance(data.get("cost_model"), dict):
            data = data["cost_model"]
        try:
            pb, pq = float(data["per_block"]), float(data.get("per_query_block", 0.0))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"cost model {path}: needs a number 'per_block' (and optionally 'per_query_block')") from e
        if not (pb > 0 and pq >= 0 and math.isfinite(pb) and math.isfinite(pq)):
            raise InputError(f"cost model {path}: per_block must be > 0 and per_query_block >= 0, got {pb}, {pq}")
        return cls(pb, pq)

    def cost(self, blocks: float, query_blocks: int) -> float:
        return self.per_block * blocks + self.per_query_block * query_blocks

    def to_dict(self) -> dict:
        return {"per_block": self.per_block, "per_query_block": self.per_query_block}
