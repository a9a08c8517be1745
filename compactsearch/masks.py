"""Pattern -> mask: the tile mask of a pattern and the kernel block mask (`BlockSparseMask`) it runs.

A pattern's tile mask (which key tiles each query tile attends, sequence order) is an OR over its frame groups of
(temporal group mask) x (spatial window union), plus whole sink key-tile columns; everything here is vectorised
torch on the tile grid. The block mask follows from the tile mask by OR-ing the contiguous tile ranges each
kernel block covers (`compactsearch.tiling.TileLayout.block_first_tile` / ``block_last_tile``); blocks holding
text are dense both ways.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
from collections.abc import Sequence

import torch

from compact_attn.mask import BlockSparseMask
from compactsearch.patterns import Pattern, Window
from compactsearch.tiling import TileLayout

__all__ = [
    "tile_mask",
    "tile_masks",
    "block_mask_from_tile_mask",
    "block_masks_from_tile_masks",
    "layer_block_masks",
    "pattern_block_mask",
    "build_layer_mask",
    "build_masks",
    "pattern_token_density",
    "sink_positions",
    "sink_blocks",
]


@functools.lru_cache(maxsize=4096)
def _axis_window(n: int, size: int) -> torch.Tensor:
    """``[n, n]`` bool: key tile k inside the size-``size`` window of query tile q on an n-tile axis."""
    ar = torch.arange(n)
    size = min(size, n)
    start = torch.clamp(ar - size // 2, 0, n - size)
    return (ar[None, :] >= start[:, None]) & (ar[None, :] < start[:, None] + size)


@functools.lru_cache(maxsize=4096)
def _spatial(nh: int, nw: int, windows: tuple[Window, ...]) -> torch.Tensor:
    """``[nh*nw, nh*nw]`` bool: the union of the windows around each query tile position."""
    s = torch.zeros(nh, nw, nh, nw, dtype=torch.bool)
    for win in windows:
        s |= _axis_window(nh, win.h)[:, None, :, None] & _axis_window(nw, win.w)[None, :, None, :]
    return s.view(nh * nw, nh * nw)


def _regions(layout: TileLayout) -> list[tuple]:
    """The tile grid cut into product sub-grids: per axis the run of full tiles and the partial last tile.

    Returns ``(t, h, w, seq, start, perm)`` per region: the axis coordinates it spans, the sequence position of
    each of its tiles (raster order inside the region), its first sequence position (regions are contiguous in
    the tile order), and the snake permutation inside it (None when raster).
    """
    cached = getattr(layout, "_regions_cache", None)
    if cached is not None:
        return cached
    grid = layout.grid_thw
    parts = []
    for a, n in enumerate(grid):
        full = int((layout.axis_sizes[a] == layout.tile_thw[a]).sum())
        axis = [torch.arange(full)] if full else []
        if full < n:
            axis.append(torch.tensor([n - 1]))
        parts.append(axis)
    rank = torch.empty_like(layout.order)
    rank[layout.order] = torch.arange(layout.order.numel())
    nh, nw = grid[1], grid[2]
    out = []
    for t, h, w in itertools.product(*parts):
        ids = ((t[:, None, None] * nh + h[None, :, None]) * nw + w[None, None, :]).flatten()
        seq = rank[ids]
        start = int(seq.min())
        # The tile order keeps each region contiguous (regions are the faces of `tiling._tile_order`); inside
        # a region it walks a snake: `perm[i]` is the raster index, within the region, of sequence slot i.
        if int(seq.max()) - start + 1 != seq.numel():
            raise AssertionError("tile order must keep each product sub-grid contiguous")
        perm = torch.argsort(seq)
        if torch.equal(perm, torch.arange(seq.numel())):
            perm = None
        out.append((t, h, w, seq, start, perm))
    object.__setattr__(layout, "_regions_cache", out)
    return out


def _tile_mask_pieces(patterns: Sequence[Pattern], layout: TileLayout):
    """Yield ``(row_start, col_start, piece)``: the sequence-order tile mask of the patterns, one rectangle
    ``[P, rows, cols]`` bool per pair of product sub-grids (see `tile_masks`)."""
    nw = layout.grid_thw[2]
    temporal, spatial = _factors(patterns, layout)
    P, G = temporal.shape[:2]
    for ta, ha, wa, pos_a, start_a, perm_a in _regions(layout):
        sa = (ha[:, None] * nw + wa[None, :]).flatten()
        t_rows, s_rows = temporal[:, :, ta], spatial[:, :, sa]
        for tb, hb, wb, pos_b, start_b, perm_b in _regions(layout):
            sb = (hb[:, None] * nw + wb[None, :]).flatten()
            tg, sg = t_rows[:, :, :, tb], s_rows[:, :, :, sb]  # [P, G, |ta|, |tb|], [P, G, |sa|, |sb|]
            # OR over groups of (temporal x spatial), laid out [P, qt, qs, kt, ks] = raster inside the regions
            blk = tg[:, 0, :, None, :, None] * sg[:, 0, None, :, None, :]
            for g in range(1, G):
                blk |= tg[:, g, :, None, :, None] * sg[:, g, None, :, None, :]
            blk = blk.view(torch.bool).reshape(P, pos_a.numel(), pos_b.numel())
            if perm_a is not None:
                blk = blk.index_select(1, perm_a)
            if perm_b is not None:
                blk = blk.index_select(2, perm_b)
            yield start_a, start_b, blk


def tile_masks(patterns: Sequence[Pattern], layout: TileLayout) -> torch.Tensor:
    """Allowed (query tile, key tile) pairs of several patterns, ``[P, num_tiles, num_tiles]`` bool, sequence order.

    A pattern's mask is an OR over its frame groups of (temporal group mask) x (spatial window union): a
    Kronecker structure on every product sub-grid of tiles. The grid splits into such sub-grids (the full
    tiles, the partial faces, edges and corner), each contiguous in the tile order, so each pair of them is
    filled with broadcast products, no per-tile work.
    """
    n = layout.num_tiles
    m = torch.empty(len(patterns), n, n, dtype=torch.bool)
    for r, c, blk in _tile_mask_pieces(patterns, layout):
        m[:, r : r + blk.shape[1], c : c + blk.shape[2]] = blk
    for pi, p in enumerate(patterns):
        if p.sinks:
            m[pi, :, sink_positions(p, layout)] = True
    return m


def sink_positions(pattern: Pattern, layout: TileLayout) -> torch.Tensor:
    """Sequence (tile-order) positions of the pattern's sink key tiles, ``[len(sinks)]`` int64."""
    nt, nh, nw = layout.grid_thw
    raster = torch.tensor([(t * nh + h) * nw + w for t, h, w in pattern.sinks], dtype=torch.int64)
    rank = getattr(layout, "_rank_cache", None)
    if rank is None:
        rank = torch.empty_like(layout.order)
        rank[layout.order] = torch.arange(layout.order.numel())
        object.__setattr__(layout, "_rank_cache", rank)
    return rank[raster]


def sink_blocks(pattern: Pattern, layout: TileLayout) -> torch.Tensor:
    """Video kernel blocks holding a token of one of the pattern's sink key tiles, ``[k]`` int64 (ascending)."""
    if not pattern.sinks:
        return torch.zeros(0, dtype=torch.int64)
    pos = sink_positions(pattern, layout)
    first, last = layout.block_first_tile, layout.block_last_tile  # [num_video_blocks] tile-order ranges
    hit = ((first[:, None] <= pos[None, :]) & (pos[None, :] <= last[:, None])).any(1)
    return hit.nonzero().flatten()


def tile_mask(pattern: Pattern, layout: TileLayout) -> torch.Tensor:
    """Allowed (query tile, key tile) pairs, ``[num_tiles, num_tiles]`` bool, in sequence (tile) order."""
    return tile_masks([pattern], layout)[0]


def _blocks_or(x: torch.Tensor, layout: TileLayout, dim: int) -> torch.Tensor:
    """Collapse the tile axis ``dim`` of bool ``x`` to video blocks: OR over the tiles each block covers."""
    first, last = layout.block_first_tile, layout.block_last_tile
    if bool((first == last).all()):  # every block lies inside one tile
        if layout.tile_tokens == layout.block_size and layout.num_full_tiles == layout.num_tiles:
            return x  # ... and every tile is one block
        return x.index_select(dim, first)
    return _range_any(x, first, last, dim)


def block_masks_from_tile_masks(tmasks: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """Kernel blocks to compute, ``[P, num_blocks, num_blocks]`` bool, from sequence-order tile masks
    ``[P, num_tiles, num_tiles]``.

    A block is computed when any tile pair it covers is allowed; blocks holding text are dense both ways.
    """
    nvb, nb = layout.num_video_blocks, layout.num_blocks
    video = _blocks_or(_blocks_or(tmasks, layout, 1), layout, 2)
    if nb == nvb and layout.geometry.text_tokens == 0:
        return video
    out = torch.ones(tmasks.shape[0], nb, nb, dtype=torch.bool)
    out[:, :nvb, :nvb] = video
    t0 = layout.text_block_start
    out[:, t0:, :] = True
    out[:, :, t0:] = True
    return out


def block_mask_from_tile_mask(tmask: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """``[num_blocks, num_blocks]`` bool block mask from one sequence-order tile mask ``[num_tiles, num_tiles]``."""
    return block_masks_from_tile_masks(tmask[None], layout)[0]


def pattern_block_mask(pattern: Pattern, layout: TileLayout) -> torch.Tensor:
    """``[num_blocks, num_blocks]`` bool block mask of one head."""
    if pattern.is_dense:
        return torch.ones(layout.num_blocks, layout.num_blocks, dtype=torch.bool)
    return layer_block_masks([pattern], layout)[0]


def layer_block_masks(patterns: Sequence[Pattern], layout: TileLayout) -> torch.Tensor:
    """``[H, num_blocks, num_blocks]`` bool block masks of one layer; identical patterns are built once."""
    unique = list(dict.fromkeys(patterns))
    if layout.tile_tokens == layout.block_size:
        masks = _one_block_tile_masks(unique, layout)
    else:
        masks = block_masks_from_tile_masks(tile_masks(unique, layout), layout)
    if len(unique) == len(patterns):
        return masks
    where = {p: i for i, p in enumerate(unique)}
    return masks[torch.tensor([where[p] for p in patterns])]


def _factors(patterns: Sequence[Pattern], layout: TileLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pattern and frame group, the temporal ``[P, G, nt, nt]`` and spatial ``[P, G, ns, ns]`` uint8 0/1
    factors of the tile mask (``ns = nh*nw``, raster order); a dense pattern is one all-ones group. The groups
    of a pattern cover disjoint distance ranges, so at most one group's temporal factor is 1 per tile pair."""
    nt, nh, nw = layout.grid_thw
    ns, P = nh * nw, len(patterns)
    G = max([len(p.groups) for p in patterns if not p.is_dense] + [1])
    # uint8 0/1 factors: broadcast uint8 products vectorise far better on CPU than bool ANDs or matmuls.
    temporal = torch.zeros(P, G, nt, nt, dtype=torch.uint8)
    spatial = torch.zeros(P, G, ns, ns, dtype=torch.uint8)
    ar = torch.arange(nt)
    dist = (ar[:, None] - ar[None, :]).abs()
    for pi, p in enumerate(patterns):
        if p.is_dense:
            temporal[pi, 0] = 1
            spatial[pi, 0] = 1
            continue
        for gi, g in enumerate(p.groups):
            temporal[pi, gi] = (dist >= g.dt_lo) & (dist <= g.dt_hi)
            spatial[pi, gi] = _spatial(nh, nw, g.windows)
    return temporal, spatial


def _kron_into(out: torch.Tensor, temporal: torch.Tensor, spatial: torch.Tensor, a: tuple, b: tuple) -> None:
    """Write the tile mask of region ``a``'s tiles (rows) x region ``b``'s tiles (columns), both in raster order
    inside their region, into ``out`` (uint8 ``[P, |a|, |b|]``, any strides): per pattern the OR over groups of
    temporal x spatial factor, a Kronecker product. ``a`` and ``b`` are ``(t, h, w)`` slices of the tile grid;
    ``spatial`` is ``[P, G, nh, nw, nh, nw]``.

    The groups cover disjoint temporal distances, so each (query frame tile, key frame tile) pair takes the
    spatial factor of at most one group: the product is a gather of whole spatial blocks (a zero block where no
    group applies), row by row in the order of ``out``'s rows, then one copy, instead of a broadcast product per
    group."""
    (ta, ha, wa), (tb, hb, wb) = a, b
    tg = temporal[:, :, ta, tb]  # [P, G, At, Bt]
    sg = spatial[:, :, ha, wa, hb, wb]  # [P, G, Ah, Aw, Bh, Bw]
    P, G, At, Bt = tg.shape
    As, Bs = sg.shape[2] * sg.shape[3], sg.shape[4] * sg.shape[5]
    cand = torch.zeros(P, G + 1, As, Bs, dtype=torch.uint8)  # block 0: no group
    cand[:, 1:] = sg.reshape(P, G, As, Bs)
    which = (tg * torch.arange(1, G + 1, dtype=torch.uint8)[:, None, None]).sum(1, dtype=torch.int64)
    which += torch.arange(0, P * (G + 1), G + 1)[:, None, None]  # [P, At, Bt]: the block of `cand` to take
    # rows of `cand` ([Bs] each) in the order of `out`'s rows: [P, At, As, Bt]
    rows = (which * As)[:, :, None, :] + torch.arange(As)[None, None, :, None]
    out.copy_(cand.view(-1, Bs).index_select(0, rows.view(-1)).view(P, At * As, Bt * Bs))


def _range_or_rows(x: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """OR of the rows ``first[i] .. last[i]`` (inclusive) of bool ``x`` ``[P, n, W]``: ``[P, len(first), W]``.

    A sparse table: level k holds the OR of 2^k consecutive rows, so every range is two (overlapping) rows of
    the level below its length, and the work is ``log2(longest range)`` passes over ``x``, whatever the ranges.
    """
    P, n, W = x.shape
    span = (last - first + 1).tolist()
    levels = max(span).bit_length()
    table = torch.empty(P, levels, n, W, dtype=torch.bool)
    table[:, 0] = x
    for k in range(1, levels):
        h = 1 << (k - 1)
        torch.bitwise_or(table[:, k - 1, : n - h], table[:, k - 1, h:], out=table[:, k, : n - h])
    k = torch.tensor([s.bit_length() - 1 for s in span])
    flat = table.view(P, levels * n, W)
    return flat.index_select(1, k * n + first) | flat.index_select(1, k * n + last - (1 << k) + 1)


def _one_block_tile_masks(patterns: Sequence[Pattern], layout: TileLayout) -> torch.Tensor:
    """`block_masks_from_tile_masks(tile_masks(...))` for one-block tiles, without the full tile mask.

    Full tile ``i`` is block ``i``, so the full x full piece is written straight into the block mask. The rows
    of partial tiles, in raster order inside each region, go into ``bottom``; put in sequence order they are
    OR-ed over each tail block's tile range. The columns of partial tiles are built transposed (the spatial
    factor transposed; the temporal one is symmetric), so their range OR is over rows too: no column gathers.
    """
    P, nb, nvb, F = len(patterns), layout.num_blocks, layout.num_video_blocks, layout.num_full_tiles
    n = layout.num_tiles
    nt, nh, nw = layout.grid_thw
    temporal, spatial = _factors(patterns, layout)
    spatial = spatial.view(P, -1, nh, nw, nh, nw)
    # every region is a product of contiguous axis ranges (the full tiles of an axis, or its last tile)
    regions = [(tuple(slice(int(x[0]), int(x[-1]) + 1) for x in (t, h, w)), start, perm, t.numel() * h.numel()
                * w.numel()) for t, h, w, _, start, perm in _regions(layout)]
    full = [r for r in regions if r[1] < F]  # the full tiles are one region, raster order
    part = [r for r in regions if r[1] >= F]
    out = torch.empty(P, nb, nb, dtype=torch.bool)
    ob = out.view(torch.uint8)
    for ax, _, _, _ in full:
        _kron_into(ob[:, :F, :F], temporal, spatial, ax, ax)
    if nvb > F:
        # sequence slot F + i of a partial tile -> its row in the region-raster layout of `bottom` / `right_t`
        seq = torch.cat([(r[2] if r[2] is not None else torch.arange(r[3])) + (r[1] - F) for r in part])
        first, last = layout.block_first_tile[F:] - F, layout.block_last_tile[F:] - F
        bottom = torch.empty(P, n - F, n, dtype=torch.uint8)  # rows of partial tiles, all columns
        right_t = torch.empty(P, n - F, F, dtype=torch.uint8)  # columns of partial tiles x rows of full ones
        spatial_t = spatial.permute(0, 1, 4, 5, 2, 3).contiguous()
        for ax, start, _, size in part:
            rows = slice(start - F, start - F + size)
            for bx, bstart, _, bsize in regions:
                _kron_into(bottom[:, rows, bstart : bstart + bsize], temporal, spatial, ax, bx)
            for bx, _, _, _ in full:
                _kron_into(right_t[:, rows], temporal, spatial_t, ax, bx)
        tail_rows = _range_or_rows(bottom.view(torch.bool).index_select(1, seq), first, last)  # [P, nvb - F, n]
        out[:, F:nvb, :F] = tail_rows[:, :, :F]
        tail_cols = tail_rows[:, :, F:].transpose(1, 2).index_select(1, seq)  # [P, n - F, nvb - F]
        out[:, F:nvb, F:nvb] = _range_or_rows(tail_cols, first, last).transpose(1, 2)
        out[:, :F, F:nvb] = _range_or_rows(right_t.view(torch.bool).index_select(1, seq), first, last).transpose(1, 2)
    for pi, p in enumerate(patterns):
        if p.sinks:
            out[pi, :nvb, sink_blocks(p, layout)] = True
    if nb > nvb or layout.geometry.text_tokens:
        t0 = layout.text_block_start
        out[:, t0:, :] = True
        out[:, :, t0:] = True
    return out


def _range_any(x: torch.Tensor, first: torch.Tensor, last: torch.Tensor, dim: int) -> torch.Tensor:
    """OR of bool ``x`` along ``dim`` over each inclusive index range ``[first[i], last[i]]``.

    A prefix count along ``dim`` makes every range two gathers and a subtraction, whatever its length.
    """
    c = torch.cumsum(x, dim=dim, dtype=torch.int16 if x.shape[dim] < 32768 else torch.int32)
    upper = c.index_select(dim, last)
    lower_idx = (first - 1).clamp_min(0)
    lower = c.index_select(dim, lower_idx)
    lower.masked_fill_((first == 0).view([-1 if d == dim else 1 for d in range(x.dim())]), 0)
    return upper > lower


def build_layer_mask(patterns: Sequence[Pattern], layout: TileLayout) -> BlockSparseMask:
    """The `BlockSparseMask` of one layer: one pattern per head."""
    dense = layer_block_masks(patterns, layout)
    return BlockSparseMask.from_dense(dense, layout.block_size, layout.block_size, layout.seq_len)


def build_masks(layers: Sequence[Sequence[Pattern]], layout: TileLayout, workers: int | None = None
                ) -> list[BlockSparseMask]:
    """`build_layer_mask` for many layers, ``workers`` layers at a time (threads: torch and numpy release the
    GIL in the heavy steps). Default: one worker per CPU core, at most 4."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(layers) <= 1:
        return [build_layer_mask(p, layout) for p in layers]
    _regions(layout)  # fill the layout's cache once, before the threads share it
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))  # one core per worker: no oversubscription
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: build_layer_mask(p, layout), layers))
    finally:
        torch.set_num_threads(threads)


def pattern_token_density(pattern: Pattern, layout: TileLayout) -> float:
    """Fraction of all (query, key) token pairs the pattern allows, text included."""
    if pattern.is_dense:
        return 1.0
    s = layout.tile_sizes[layout.order].to(torch.float64)
    video = float(s @ tile_mask(pattern, layout).to(torch.float64) @ s)
    n, nv = float(layout.seq_len), float(layout.geometry.video_tokens)
    return (video + n * n - nv * nv) / (n * n)
