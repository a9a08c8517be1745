"""Pattern -> block mask against a slow element-level builder; BlockSparseMask invariants."""

from __future__ import annotations

import random

import pytest
import torch

from compact_attn.mask import BlockSparseMask
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.masks import (
    _range_or_rows,
    block_masks_from_tile_masks,
    build_layer_mask,
    layer_block_masks,
    pattern_block_mask,
    pattern_token_density,
    tile_mask,
    tile_masks,
)
from compactsearch.patterns import MAX_SINKS, FrameGroup, Pattern, Window
from compactsearch.tiling import TileLayout
from tests.test_tiling import random_geometries, random_layout


def element_tile_table(pattern: Pattern, layout: TileLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The pattern's definition evaluated tile pair by tile pair in plain Python, and each video token's tile.

    Returns ``table [NT, NT]`` bool (raster tile ids) and ``tiles [video_tokens]`` (model order).
    """
    g = layout.geometry
    tt, th, tw = layout.tile_thw
    nt, nh, nw = layout.grid_thw

    def tile_id(j: int) -> int:
        t, rem = divmod(j, g.height * g.width)
        h, w = divmod(rem, g.width)
        return ((t // tt) * nh + h // th) * nw + w // tw

    def window(q: int, size: int, n: int) -> range:
        size = min(size, n)
        start = min(max(q - size // 2, 0), n - size)  # shifted inward at the border
        return range(start, start + size)

    sinks = {(t * nh + h) * nw + w for t, h, w in pattern.sinks}

    def allowed(a: int, b: int) -> bool:
        if pattern.is_dense or b in sinks:
            return True
        qt, qh, qw = a // (nh * nw), (a // nw) % nh, a % nw
        kt, kh, kw = b // (nh * nw), (b // nw) % nh, b % nw
        for grp in pattern.groups:
            if grp.dt_lo <= abs(qt - kt) <= grp.dt_hi:
                for win in grp.windows:
                    if kh in window(qh, win.h, nh) and kw in window(qw, win.w, nw):
                        return True
        return False

    n_tiles = nt * nh * nw
    table = torch.tensor([[allowed(a, b) for b in range(n_tiles)] for a in range(n_tiles)], dtype=torch.bool)
    tiles = torch.tensor([tile_id(j) for j in range(g.video_tokens)], dtype=torch.long)
    return table, tiles


def element_token_mask(pattern: Pattern, layout: TileLayout) -> torch.Tensor:
    """``[N, N]`` bool in MODEL order: token i may attend token j. Small N only."""
    g = layout.geometry
    table, tiles = element_tile_table(pattern, layout)
    out = torch.ones(g.seq_len, g.seq_len, dtype=torch.bool)  # text rows and columns: always attended
    v = slice(g.video_offset, g.video_offset + g.video_tokens)
    out[v, v] = table[tiles][:, tiles]
    return out


def element_block_mask(pattern: Pattern, layout: TileLayout) -> torch.Tensor:
    """``[NB, NB]`` bool: a block pair is computed iff some token pair in it is allowed (token by token).

    Each block's tiles come from its tokens; the OR over token pairs is a product of 0/1 incidence matrices.
    """
    g = layout.geometry
    table, tiles = element_tile_table(pattern, layout)
    nb, n_tiles = layout.num_blocks, table.shape[0]
    blk = layout.block_of_token()
    video = torch.arange(g.video_offset, g.video_offset + g.video_tokens)
    inc = torch.zeros(nb, n_tiles)
    inc[blk[video], tiles] = 1.0
    out = (inc @ table.float() @ inc.T) > 0
    text_blocks = torch.unique(blk[torch.tensor([i for i in range(g.seq_len) if not g.video_offset <= i
                                                   < g.video_offset + g.video_tokens], dtype=torch.long)])
    out[text_blocks, :] = True
    out[:, text_blocks] = True
    return out


def random_pattern(rng: random.Random, grid) -> Pattern:
    nt, nh, nw = grid
    if rng.random() < 0.1:
        return Pattern.dense()
    groups, lo = [], rng.randint(0, 1) if nt > 1 else 0
    while lo <= nt - 1 and len(groups) < 3:
        hi = rng.randint(lo, nt - 1)
        wins = tuple(Window(rng.randint(1, nh), rng.randint(1, nw)) for _ in range(rng.randint(1, 2)))
        groups.append(FrameGroup(lo, hi, wins))
        lo = hi + 1 + rng.randint(0, 1)
    return Pattern(tuple(groups)) if groups else Pattern.local(0, 1, 1)


@pytest.mark.parametrize("g", random_geometries(), ids=lambda g: g.describe().replace(" ", ""))
def test_block_mask_equals_element_builder(g: VideoGeometry):
    rng = random.Random(sum(g.thw) + g.text_tokens)
    layout = random_layout(g, rng)
    patterns = [random_pattern(rng, layout.grid_thw) for _ in range(3)]
    mask = build_layer_mask(patterns, layout)
    dense = mask.to_dense()
    for h, p in enumerate(patterns):
        expected = element_block_mask(p, layout)
        assert torch.equal(pattern_block_mask(p, layout), expected), p.describe()
        assert torch.equal(dense[h], expected)
        if g.seq_len > 8000:
            continue
        # Waste from the definition: computed token pairs (whole blocks) over allowed token pairs, minus one.
        allowed = float(element_token_mask(p, layout).sum())
        computed = float(expected.sum()) * layout.block_size**2
        assert layout.tiling_waste(tile_mask(p, layout), expected) == pytest.approx(computed / allowed - 1)
        assert pattern_token_density(p, layout) == pytest.approx(allowed / g.seq_len**2)


def random_sinks(rng: random.Random, grid, k: int | None = None) -> tuple:
    """``k`` (default 1..MAX_SINKS) distinct random key tiles of the grid."""
    nt, nh, nw = grid
    cells = [(t, h, w) for t in range(nt) for h in range(nh) for w in range(nw)]
    return tuple(rng.sample(cells, min(len(cells), rng.randint(1, MAX_SINKS) if k is None else k)))


@pytest.mark.parametrize("g", random_geometries(), ids=lambda g: g.describe().replace(" ", ""))
def test_sink_block_mask_equals_element_builder(g: VideoGeometry):
    """Patterns with sink key tiles (odd shapes, partial tiles, text in front or back) against the element-level
    builder, on both mask routes (one-block tiles and the tile-mask OR), and the token density."""
    rng = random.Random(7 * sum(g.thw) + g.text_tokens)
    layout = random_layout(g, rng)
    patterns = []
    for _ in range(3):
        p = random_pattern(rng, layout.grid_thw)
        p = Pattern.local(0, 1, 1) if p.is_dense else p
        patterns.append(p.with_sinks(random_sinks(rng, layout.grid_thw)))
    dense = build_layer_mask(patterns, layout).to_dense()
    via_tiles = block_masks_from_tile_masks(tile_masks(patterns, layout), layout)
    for h, p in enumerate(patterns):
        expected = element_block_mask(p, layout)
        assert torch.equal(dense[h], expected), p.describe()
        assert torch.equal(via_tiles[h], expected), p.describe()
        if g.seq_len <= 8000:
            allowed = float(element_token_mask(p, layout).sum())
            assert pattern_token_density(p, layout) == pytest.approx(allowed / g.seq_len**2)


@pytest.mark.parametrize("thw,text", [((21, 45, 80), 0), ((9, 13, 22), 0), ((5, 17, 16), 37)])
def test_sinks_one_block_tiles_equal_the_tile_mask_route(thw, text):
    layout = TileLayout(VideoGeometry(*thw, text_tokens=text, text_position="back" if text else "none"), (4, 8, 4), 128)
    rng = random.Random(5)
    pats = [Pattern.local(rng.randint(0, 2), rng.randint(1, 3), rng.randint(1, 3)).with_sinks(
        random_sinks(rng, layout.grid_thw)) for _ in range(6)]
    assert torch.equal(layer_block_masks(pats, layout), block_masks_from_tile_masks(tile_masks(pats, layout), layout))


def test_sink_key_tile_is_kept_by_every_query_tile():
    layout = TileLayout(VideoGeometry(5, 24, 40), (2, 8, 8), 64)  # grid 3 x 3 x 5, partial time tile
    p = Pattern.local(0, 1, 1).with_sinks([(2, 1, 4), (0, 0, 0)])
    assert p.sinks == ((0, 0, 0), (2, 1, 4))  # sorted: equal sets compare equal
    assert p == Pattern.local(0, 1, 1).with_sinks([(0, 0, 0), (2, 1, 4)])
    tm = tile_mask(p, layout)
    nt, nh, nw = layout.grid_thw
    seq = {int(t): i for i, t in enumerate(layout.order.tolist())}
    for t, h, w in p.sinks:
        assert bool(tm[:, seq[(t * nh + h) * nw + w]].all())
    assert int(tm.sum()) == layout.num_tiles * 3 - 2  # own tile + 2 sinks, minus the sinks' own diagonal
    assert "sinks:0.0.0,2.1.4" in p.describe()


def test_sink_validation():
    with pytest.raises(InputError, match="distinct"):
        Pattern.local(0, 1, 1).with_sinks([(0, 0, 0), (0, 0, 0)])
    with pytest.raises(InputError, match="at most"):
        Pattern.local(0, 1, 1).with_sinks([(0, 0, i) for i in range(MAX_SINKS + 1)])
    with pytest.raises(InputError, match="three integers"):
        Pattern.local(0, 1, 1).with_sinks([(0, -1, 0)])
    with pytest.raises(InputError, match="dense"):
        Pattern(None, ((0, 0, 0),))
    assert Pattern.dense().with_sinks([(0, 0, 0)]).is_dense
    assert "sinks[0]" in Pattern.local(0, 1, 1).with_sinks([(2, 0, 0)]).check_grid((2, 2, 2))
    assert Pattern.local(0, 1, 1).with_sinks([(1, 1, 1)]).check_grid((2, 2, 2)) is None


def test_windows_shift_inward_and_clip():
    layout = TileLayout(VideoGeometry(1, 20, 20), (1, 4, 16), 64)  # grid 1 x 5 x 2
    tm = tile_mask(Pattern.local(0, 3, 5), layout)  # 5 wide > 2 columns: clipped to the grid
    # every query tile sees exactly 3 rows x 2 columns, also at the border
    counts = tm.sum(1)
    assert torch.equal(counts, torch.full_like(counts, 6))


def test_pattern_validation():
    with pytest.raises(InputError):
        Pattern((FrameGroup(0, 2, (Window(1, 1),)), FrameGroup(2, 3, (Window(1, 1),))))  # overlapping dt
    with pytest.raises(InputError):
        FrameGroup(0, 1, ())
    with pytest.raises(InputError):
        Window(0, 3)
    assert Pattern.local(1, 3, 3).check_grid((2, 2, 2)) is not None
    assert Pattern.local(1, 2, 2).check_grid((2, 2, 2)) is None


def test_block_sparse_mask_invariants_and_round_trip():
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(3, 5, 5, generator=g) < 0.5
    m = BlockSparseMask.from_dense(dense, 64, 64, 300)
    assert torch.equal(m.to_dense(), dense)
    assert m.density() == pytest.approx(float(dense.float().mean()))
    assert "heads=3" in repr(m)
    assert m.ascii(0).count("\n") == 4
    order = m.heaviest_first()
    counts = m.kv_num_blocks.flatten()[order.long()]
    assert bool((counts[:-1] >= counts[1:]).all())
    with pytest.raises(ValueError, match="int32"):
        BlockSparseMask(m.kv_num_blocks.long(), m.kv_indices, 64, 64, 300)
    with pytest.raises(ValueError, match="query blocks"):
        BlockSparseMask(m.kv_num_blocks, m.kv_indices, 64, 64, 200)
    bad = m.kv_indices.clone()
    bad[0, 0, :2] = torch.tensor([3, 1], dtype=torch.int32)
    counts = m.kv_num_blocks.clone()
    counts[0, 0] = 2
    with pytest.raises(ValueError, match="ascending"):
        BlockSparseMask(counts, bad, 64, 64, 300)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_from_dense_packs_like_a_row_loop(monkeypatch, chunk):
    """The chunked left-packing equals a per-row nonzero, with empty rows, full rows and chunk boundaries."""
    monkeypatch.setattr(BlockSparseMask, "_PACK_ROWS", chunk)
    gen = torch.Generator().manual_seed(2)
    for H, nq, nk, p in [(3, 7, 9, 0.4), (2, 5, 5, 0.0), (2, 4, 6, 1.0), (1, 1, 1, 1.0), (4, 11, 13, 0.1)]:
        dense = torch.rand(H, nq, nk, generator=gen) < p
        dense[0, 0] = False  # an empty row
        dense[-1, -1] = True  # a full row
        m = BlockSparseMask.from_dense(dense, nk, nq, nq * nk)  # NQB = nq, NKB = nk
        assert m.kv_indices.shape[2] == max(int(dense.sum(-1).max()), 1)
        for h in range(H):
            for q in range(nq):
                cols = dense[h, q].nonzero().flatten().to(torch.int32)
                assert int(m.kv_num_blocks[h, q]) == cols.numel()
                assert torch.equal(m.kv_indices[h, q, : cols.numel()], cols)
                assert not bool(m.kv_indices[h, q, cols.numel() :].any())  # padding is block 0
        BlockSparseMask(m.kv_num_blocks, m.kv_indices, nk, nq, nq * nk)  # the invariants hold


def test_range_or_rows():
    x = torch.rand(3, 23, 5, generator=torch.Generator().manual_seed(3)) < 0.15
    first = torch.tensor([0, 0, 3, 4, 10, 9, 22, 5])
    last = torch.tensor([0, 6, 4, 4, 16, 22, 22, 13])
    want = torch.stack([x[:, a : b + 1].any(1) for a, b in zip(first.tolist(), last.tolist())], 1)
    assert torch.equal(_range_or_rows(x, first, last), want)


@pytest.mark.parametrize("thw,text", [((21, 45, 80), 0), ((9, 13, 22), 0), ((5, 17, 16), 37)])
def test_one_block_tiles_equal_the_tile_mask_route(thw, text):
    """The one-block-tile builder (Kronecker pieces, transposed columns, range ORs over rows) equals OR-ing
    the full sequence-order tile mask, for random multi-group patterns."""
    layout = TileLayout(VideoGeometry(*thw, text_tokens=text, text_position="back" if text else "none"), (4, 8, 4), 128)
    rng = random.Random(4)
    nt, nh, nw = layout.grid_thw
    pats = [Pattern.dense(), Pattern.local(0, 1, 1)]
    for _ in range(10):
        groups, lo = [], 0
        while lo <= nt - 1 and len(groups) < 3:
            hi = rng.randint(lo, nt - 1)
            wins = tuple(Window(rng.randint(1, nh), rng.randint(1, nw)) for _ in range(rng.randint(1, 2)))
            groups.append(FrameGroup(lo, hi, wins))
            lo = hi + 1 + rng.randint(0, 1)
        pats.append(Pattern(tuple(groups)))
    assert torch.equal(layer_block_masks(pats, layout), block_masks_from_tile_masks(tile_masks(pats, layout), layout))


def test_flex_block_mask_matches():
    dense = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.6
    dense[:, :, 0] = True
    m = BlockSparseMask.from_dense(dense, 128, 128, 500)
    flex = m.to_flex_block_mask()
    got = flex.to_dense()[0].bool()[:, :4, :4]
    assert torch.equal(got, dense)
