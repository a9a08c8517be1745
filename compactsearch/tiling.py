"""Tile layout: the permutation from the model's token order to tile order, and blocks <-> tiles.

Video tokens are grouped into 3D tiles of ``tile_thw = (tt, th, tw)`` tokens so that one kernel block holds
neighbours in space and time. The tile grid is ``ceil(frames/tt) x ceil(height/th) x ceil(width/tw)``;
tiles on the far edges are partial. Tile order (the order the kernel sees) is::

    [full tiles, raster order][partial tiles, face by face, snake order inside each face][text tokens]

(`_tile_order`: partial tiles are grouped by which axes are cut short, and each group is walked as a
boustrophedon, so consecutive partial tiles are spatial neighbours.) Inside a tile tokens keep raster order.
When ``tt*th*tw`` is a multiple of ``block_size`` every full tile is a whole number of kernel blocks; partial
tiles are packed densely after them, so a block there may straddle a few neighbouring partial tiles, and the last
video block may share its slots with the first text tokens. Nothing is padded: the tile-order sequence is a pure
permutation of the model's sequence, of the same length.

The cost of that packing is the *tiling waste*: token pairs the kernel computes (whole blocks, the ragged
sequence tail counted as a full block) over the token pairs the tile-level pattern allows, minus one.
`compactsearch.tile_choice` picks, per geometry, the tile shape with the least waste.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from compactsearch import _schema
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry

__all__ = ["TileLayout", "BLOCK_SIZES", "tile_problem", "tiling_from_yaml"]

BLOCK_SIZES = (64, 128)  # the kernel block sizes a layout may use


def tile_problem(tile, block_size) -> str | None:
    """What is wrong with a tile shape and a block size (a message naming ``tiling.tile`` or
    ``tiling.block_size``), or None: the tile is three positive integers, the block size one of `BLOCK_SIZES`,
    and a tile holds a whole number of blocks. ``tile=None`` checks the block size alone."""
    if tile is not None and (len(tile) != 3 or any(not isinstance(x, int) or isinstance(x, bool) or x < 1
                                                   for x in tile)):
        return f"tiling.tile: must be three positive integers (frames, rows, cols), got {list(tile)!r}"
    if block_size not in BLOCK_SIZES:
        return f"tiling.block_size: must be one of {BLOCK_SIZES}, got {block_size!r}"
    if tile is not None and math.prod(tile) % block_size:
        return (f"tiling.tile: {list(tile)} holds {math.prod(tile)} tokens, not a multiple of block_size "
                f"{block_size}; pick a tile whose product is a multiple of {block_size}")
    return None


def tiling_from_yaml(t: dict) -> tuple[tuple[int, int, int] | None, int | None]:
    """``(tile, block_size)`` of a ``tiling:`` mapping whose keys the caller has checked; an absent (or null)
    entry stays None, and a tile needs its block size. The one reader of a tiling in a file (configs, profiles,
    recipes); the rules are `tile_problem`'s."""
    tile, block_size = t.get("tile"), t.get("block_size")
    if tile is not None:
        tile = tuple(_schema.integer(x, f"tiling.tile[{i}]", 1)
                     for i, x in enumerate(_schema.lst(tile, "tiling.tile", 3)))
    if block_size is not None:
        block_size = _schema.integer(block_size, "tiling.block_size", 1)
    elif tile is not None:
        raise _schema.fail("tiling", "give block_size together with tile (64 or 128)")
    problem = None if block_size is None else tile_problem(tile, block_size)
    if problem:
        raise InputError(problem)
    return tile, block_size


def _axis_tiles(length: int, tile: int) -> torch.Tensor:
    """Sizes of the tiles along one axis of ``length`` tokens cut into ``tile``-token pieces. Shape ``[n]``."""
    n = math.ceil(length / tile)
    sizes = torch.full((n,), tile, dtype=torch.int64)
    sizes[-1] = length - tile * (n - 1)
    return sizes


@dataclass(frozen=True, eq=False)
class TileLayout:
    """Token order <-> tile order for one geometry, tile shape and kernel block size.

    Attributes (all tensors int64 on CPU):
        grid_thw: number of tiles per axis ``(nt, nh, nw)``; ``num_tiles = nt*nh*nw``.
        axis_sizes: per axis, ``[n]`` tokens of each tile along that axis (the last may be short).
        tile_coords: ``[num_tiles, 3]`` grid coordinates of each tile, indexed by tile id (raster order).
        tile_sizes: ``[num_tiles]`` tokens in each tile (smaller on the far edges).
        order: ``[num_tiles]`` tile ids in sequence (tile) order: full tiles first, then partial ones.
        perm: ``[seq_len]`` model-order index of the token at each tile-order position
            (``x_tile = x[..., perm, :]``).
        inv_perm: ``[seq_len]`` the inverse (``x = x_tile[..., inv_perm, :]``).
        block_first_tile / block_last_tile: ``[num_video_blocks]`` the first and last sequence-order tile
            position each video-carrying block touches (a contiguous range).
        num_blocks: ``ceil(seq_len / block_size)``; blocks ``>= text_block_start`` hold text tokens.
    """

    geometry: VideoGeometry
    tile_thw: tuple[int, int, int]
    block_size: int = 128

    def __post_init__(self) -> None:
        g = self.geometry
        problem = tile_problem(self.tile_thw, self.block_size)
        if problem:
            raise InputError(problem)
        tile_tokens = math.prod(self.tile_thw)
        sizes = [_axis_tiles(length, t) for length, t in zip(g.thw, self.tile_thw)]
        grid = tuple(len(s) for s in sizes)
        ct, ch, cw = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
        coords = torch.stack([ct.flatten(), ch.flatten(), cw.flatten()], dim=1)
        tile_sizes = sizes[0][coords[:, 0]] * sizes[1][coords[:, 1]] * sizes[2][coords[:, 2]]
        full = tile_sizes == tile_tokens
        order = _tile_order(coords, sizes, self.tile_thw, full)

        # Model-order index of every video token, grouped by tile in sequence order. A stable sort by the
        # tile's sequence rank keeps raster order inside each tile.
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        video = torch.argsort(rank[self._tile_of_token(grid)], stable=True) + g.video_offset
        text_start = 0 if g.text_position == "front" else g.video_tokens
        text = torch.arange(text_start, text_start + g.text_tokens, dtype=torch.int64)
        perm = torch.cat([video, text])
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())

        # Sequence-order tile offsets -> the contiguous tile range each video block touches.
        seq_sizes = tile_sizes[order]
        seq_end = torch.cumsum(seq_sizes, 0)
        nvb = math.ceil(g.video_tokens / self.block_size)
        b_start = torch.arange(nvb) * self.block_size
        b_end = torch.clamp(b_start + self.block_size, max=g.video_tokens)
        first = torch.searchsorted(seq_end, b_start, right=True)
        last = torch.searchsorted(seq_end, b_end - 1, right=True)

        object.__setattr__(self, "grid_thw", grid)
        object.__setattr__(self, "axis_sizes", tuple(sizes))
        object.__setattr__(self, "tile_coords", coords)
        object.__setattr__(self, "tile_sizes", tile_sizes)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "num_full_tiles", int(full.sum()))
        object.__setattr__(self, "perm", perm)
        object.__setattr__(self, "inv_perm", inv)
        object.__setattr__(self, "block_first_tile", first)
        object.__setattr__(self, "block_last_tile", last)

    # ------------------------------------------------------------------ sizes
    @property
    def seq_len(self) -> int:
        return self.geometry.seq_len

    @property
    def num_tiles(self) -> int:
        return math.prod(self.grid_thw)

    @property
    def tile_tokens(self) -> int:
        return math.prod(self.tile_thw)

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.seq_len / self.block_size)

    @property
    def num_video_blocks(self) -> int:
        return math.ceil(self.geometry.video_tokens / self.block_size)

    @property
    def text_block_start(self) -> int:
        """First block holding a text token (== num_blocks when there is no text)."""
        if self.geometry.text_tokens == 0:
            return self.num_blocks
        return self.geometry.video_tokens // self.block_size

    def block_lengths(self) -> torch.Tensor:
        """Real tokens in each block, ``[num_blocks]`` (the last one may be ragged)."""
        start = torch.arange(self.num_blocks) * self.block_size
        return torch.clamp(self.seq_len - start, max=self.block_size)

    # ------------------------------------------------------------ permutation
    def to_tile_order(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Reorder ``x`` (model token order along ``dim``, length seq_len) into tile order."""
        return x.index_select(dim, self.perm.to(x.device))

    def from_tile_order(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Inverse of `to_tile_order`."""
        return x.index_select(dim, self.inv_perm.to(x.device))

    # ------------------------------------------------------------- accounting
    def block_of_token(self) -> torch.Tensor:
        """Kernel block of every model-order token, ``[seq_len]``."""
        return self.inv_perm // self.block_size

    def block_centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(centres, video)``: the mean ``(t, h, w)`` token coordinate of each block's video tokens ``[NB, 3]``
        float64 (0 for a text-only block) and whether the block holds video ``[NB]`` bool."""
        g = self.geometry
        j = torch.arange(g.video_tokens)
        t, rem = j // (g.height * g.width), j % (g.height * g.width)
        coords = torch.stack([t, rem // g.width, rem % g.width], 1).double()
        blk = self.block_of_token()[g.video_offset + j]
        sums = torch.zeros(self.num_blocks, 3, dtype=torch.float64).index_add_(0, blk, coords)
        counts = torch.zeros(self.num_blocks, dtype=torch.float64).index_add_(0, blk, torch.ones(j.numel()).double())
        return sums / counts.clamp_min(1)[:, None], counts > 0

    def tile_of_token(self) -> torch.Tensor:
        """Tile id of every model-order video token, ``[video_tokens]`` (raster index into tile_coords)."""
        return self._tile_of_token(self.grid_thw)

    def _tile_of_token(self, grid: tuple[int, int, int]) -> torch.Tensor:
        g = self.geometry
        t, h, w = (torch.arange(n) // tile for n, tile in zip(g.thw, self.tile_thw))
        return (t[:, None, None] * (grid[1] * grid[2]) + h[None, :, None] * grid[2] + w[None, None, :]).flatten()

    def tiling_waste(self, tile_mask_seq: torch.Tensor, block_mask: torch.Tensor) -> float:
        """Computed token pairs / allowed token pairs - 1, for one head.

        Args:
            tile_mask_seq: ``[num_tiles, num_tiles]`` bool, allowed (query tile, key tile) in sequence order.
            block_mask: ``[num_blocks, num_blocks]`` bool, the kernel blocks computed for it.
        """
        s = self.tile_sizes[self.order].to(torch.float64)
        video = s @ tile_mask_seq.to(torch.float64) @ s
        n, nv = float(self.seq_len), float(self.geometry.video_tokens)
        allowed = video.item() + (n * n - nv * nv)  # text rows and columns are always allowed
        computed = float(block_mask.sum()) * self.block_size**2
        return computed / allowed - 1.0

    def describe(self) -> str:
        nt, nh, nw = self.grid_thw
        return (
            f"tile {self.tile_thw[0]}x{self.tile_thw[1]}x{self.tile_thw[2]} ({self.tile_tokens} tokens), "
            f"grid {nt}x{nh}x{nw} = {self.num_tiles} tiles ({self.num_full_tiles} full), "
            f"{self.num_blocks} blocks of {self.block_size}"
        )


def _tile_order(coords: torch.Tensor, sizes: list[torch.Tensor], tile_thw, full: torch.Tensor) -> torch.Tensor:
    """Sequence order of tiles: full tiles in raster order, then partial tiles face by face.

    Partial tiles are grouped by which axes are cut short (the right column, the bottom row, the last frames,
    then their edges and corner), and walked in snake order inside each group, so consecutive partial tiles
    are spatial neighbours: a kernel block that straddles several of them stays compact, which keeps the
    tiling waste low.
    """
    grid = [len(s) for s in sizes]
    partial_axis = torch.stack([sizes[a][coords[:, a]] < tile_thw[a] for a in range(3)], dim=1)
    face = partial_axis[:, 0].long() * 4 + partial_axis[:, 1].long() * 2 + partial_axis[:, 2].long()
    # Snake (boustrophedon) walk: reverse an axis whenever the walk over the outer axes is at an odd step.
    t, h, w = coords[:, 0], coords[:, 1], coords[:, 2]
    h_s = torch.where(t % 2 == 0, h, grid[1] - 1 - h)
    w_s = torch.where((t * grid[1] + h_s) % 2 == 0, w, grid[2] - 1 - w)
    snake = (t * grid[1] + h_s) * grid[2] + w_s
    n = coords.shape[0]
    key = torch.where(full, torch.arange(n), n + face * n + snake)
    return torch.argsort(key)
