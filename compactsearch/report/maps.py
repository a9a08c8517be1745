"""Attention mass around one query tile, as spatial maps per temporal tile distance, and window outlines.

A profile stores block mass ``[H, NQB, NKB]`` in tile order (each query block's row sums to its token count).
For a picture we want it back on the tile grid: for one query tile, the share of its attention that falls on
each key tile, split by temporal tile distance ``|dt|`` (the axis the pattern language groups by).

Blocks and tiles do not always coincide: a full tile holds a whole number of blocks, but the packed partial
tiles after them let a block straddle a few tiles, and the last video block may share its slots with text.
Mass is therefore spread by token share: a block covering several tiles gives each tile the fraction of the
block's tokens that lie in it (the same rule `compactsearch.search.scoring.block_shares` uses), and the share
of a block's tokens that are text goes to "text". Rows of a query tile are the token-share-weighted sum of the
rows of the blocks it lies in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from compactsearch.patterns import Pattern
from compactsearch.tiling import TileLayout

__all__ = ["TileShares", "middle_tile", "NeighbourhoodMaps", "neighbourhood_maps", "window_rects", "sink_cells",
           "downsample"]


@dataclass(frozen=True)
class TileShares:
    """How each kernel block's tokens split over tiles (raster ids) and text.

    Attributes:
        tiles: ``[S, NB]`` int64 raster tile id of the s-th tile block b covers (any valid id where unused).
        shares: ``[S, NB]`` float64 fraction of block b's real tokens in that tile (0 where unused).
        text: ``[NB]`` float64 fraction of block b's real tokens that are text.
    """

    tiles: torch.Tensor
    shares: torch.Tensor
    text: torch.Tensor

    @classmethod
    def of(cls, layout: TileLayout) -> TileShares:
        nb, nvb, bs = layout.num_blocks, layout.num_video_blocks, layout.block_size
        nv = layout.geometry.video_tokens
        seq_sizes = layout.tile_sizes[layout.order]
        ends = torch.cumsum(seq_sizes, 0)
        starts = ends - seq_sizes
        lengths = layout.block_lengths().to(torch.float64)  # [NB] real tokens per block
        first, last = layout.block_first_tile, layout.block_last_tile
        span = int((last - first).max()) + 1 if nvb else 1
        tiles = torch.zeros(span, nb, dtype=torch.int64)
        shares = torch.zeros(span, nb, dtype=torch.float64)
        b_start = torch.arange(nvb) * bs
        b_end = torch.clamp(b_start + bs, max=nv)
        for s in range(span):
            pos = torch.minimum(first + s, last)
            valid = first + s <= last
            overlap = (torch.minimum(ends[pos], b_end) - torch.maximum(starts[pos], b_start)).clamp_min(0)
            tiles[s, :nvb] = layout.order[pos]
            shares[s, :nvb] = torch.where(valid, overlap.double() / lengths[:nvb], 0.0)
        text = (1.0 - shares.sum(0)).clamp_min(0.0)
        return cls(tiles, shares, text)

    def spread(self, values: torch.Tensor, num_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Spread per-block values over tiles.

        Args:
            values: ``[R, NB]`` (e.g. key-block mass of R rows).

        Returns:
            ``([R, num_tiles], [R])``: values per raster tile id, and the part that falls on text tokens.
        """
        v = values.to(torch.float64)
        out = torch.zeros(v.shape[0], num_tiles, dtype=torch.float64)
        for s in range(self.tiles.shape[0]):
            out.index_add_(1, self.tiles[s], v * self.shares[s][None, :])
        return out, v @ self.text

    def tile_weights(self, tile_id: int) -> torch.Tensor:
        """``[NB]`` fraction of each block's tokens that lie in raster tile ``tile_id``."""
        w = torch.zeros(self.tiles.shape[1], dtype=torch.float64)
        for s in range(self.tiles.shape[0]):
            w += torch.where(self.tiles[s] == tile_id, self.shares[s], 0.0)
        return w


def middle_tile(layout: TileLayout) -> tuple[int, int, int]:
    """Grid coordinates ``(t, h, w)`` of the tile in the middle of the video."""
    nt, nh, nw = layout.grid_thw
    return nt // 2, nh // 2, nw // 2


@dataclass(frozen=True)
class NeighbourhoodMaps:
    """Where one query tile's attention goes, per head.

    Attributes:
        query: ``(t, h, w)`` grid coordinates of the query tile.
        maps: ``[H, D, nh, nw]`` float64 share of the query tile's attention on each key tile at temporal tile
            distance ``d = 0 .. D-1`` (both directions summed); ``D = max(t, nt-1-t) + 1``.
        text: ``[H]`` share on text tokens.
    """

    query: tuple[int, int, int]
    maps: torch.Tensor
    text: torch.Tensor

    @property
    def distances(self) -> int:
        return self.maps.shape[1]


def neighbourhood_maps(mass: torch.Tensor, layout: TileLayout, shares: TileShares | None = None,
                       query: tuple[int, int, int] | None = None) -> NeighbourhoodMaps:
    """Attention of one query tile (default: the middle one) on the tile grid, per head and temporal distance.

    Args:
        mass: ``[H, NQB, NKB]`` block mass in tile order.
        layout: the profile's tile layout.
        shares: `TileShares.of(layout)`, when already computed.
        query: grid coordinates of the query tile.

    Returns:
        `NeighbourhoodMaps`; every head's maps plus its text share sum to 1.
    """
    shares = shares or TileShares.of(layout)
    nt, nh, nw = layout.grid_thw
    qt, qh, qw = query or middle_tile(layout)
    qid = (qt * nh + qh) * nw + qw
    weights = shares.tile_weights(qid)  # [NQB] how much of each query block is this tile
    rows = torch.einsum("q,hqk->hk", weights, mass.to(torch.float64))  # [H, NKB]
    total = rows.sum(-1).clamp_min(1e-300)
    tiles, text = shares.spread(rows, layout.num_tiles)
    grid = (tiles / total[:, None]).view(-1, nt, nh, nw)
    D = max(qt, nt - 1 - qt) + 1
    maps = torch.zeros(grid.shape[0], D, nh, nw, dtype=torch.float64)
    for d in range(D):
        for t in {qt - d, qt + d}:
            if 0 <= t < nt:
                maps[:, d] += grid[:, t]
    return NeighbourhoodMaps((qt, qh, qw), maps, text / total)


def _start(center: int, size: int, n: int) -> int:
    """First tile of a size-``size`` window centred on ``center``, shifted inward (as `masks._axis_window`)."""
    size = min(size, n)
    return min(max(center - size // 2, 0), n - size)


def window_rects(pattern: Pattern, grid_thw: tuple[int, int, int], query: tuple[int, int, int],
                 distance: int) -> list[tuple[int, int, int, int]] | None:
    """The windows the pattern attends at temporal distance ``distance`` around ``query``.

    Returns:
        ``[(row0, col0, rows, cols), ...]`` in tile units (one per window of the group covering ``distance``,
        shifted inward at the border and clipped to the grid), or None when no group covers the distance
        (those key tiles are skipped). A dense pattern gives the whole frame.
    """
    _, nh, nw = grid_thw
    _, qh, qw = query
    if pattern.is_dense:
        return [(0, 0, nh, nw)]
    for g in pattern.groups:
        if g.dt_lo <= distance <= g.dt_hi:
            return [(_start(qh, w.h, nh), _start(qw, w.w, nw), min(w.h, nh), min(w.w, nw)) for w in g.windows]
    return None


def sink_cells(pattern: Pattern, query: tuple[int, int, int], distance: int) -> list[tuple[int, int]]:
    """``[(row, col), ...]`` of the pattern's sink key tiles at temporal distance ``distance`` from ``query``
    (both directions, as the maps sum them)."""
    return [(h, w) for t, h, w in pattern.sinks if abs(t - query[0]) == distance]


def downsample(maps: torch.Tensor, max_cells: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Sum ``[..., nh, nw]`` maps over ``fh x fw`` cells so neither side exceeds ``max_cells``.

    Returns:
        (maps ``[..., ceil(nh/fh), ceil(nw/fw)]``, (fh, fw)); the factors are 1 when nothing was cut.
    """
    nh, nw = maps.shape[-2:]
    fh, fw = math.ceil(nh / max_cells), math.ceil(nw / max_cells)
    if fh == 1 and fw == 1:
        return maps, (1, 1)
    ph, pw = math.ceil(nh / fh) * fh, math.ceil(nw / fw) * fw
    padded = torch.zeros(*maps.shape[:-2], ph, pw, dtype=maps.dtype)
    padded[..., :nh, :nw] = maps
    out = padded.view(*maps.shape[:-2], ph // fh, fh, pw // fw, fw).sum((-3, -1))
    return out, (fh, fw)
