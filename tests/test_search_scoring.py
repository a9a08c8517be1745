"""Exact and fast recall/cost evaluators against the core's pattern_block_mask."""

from __future__ import annotations

import time

import pytest
import torch

from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.masks import pattern_block_mask
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.search.scoring import CostModel, ExactScorer, HeadTables, LayoutTables
from compactsearch.tiling import TileLayout

LAYOUTS = [
    (VideoGeometry(8, 32, 48), (2, 8, 8), 128),  # every block inside one tile
    (VideoGeometry(9, 20, 28), (2, 8, 8), 64),  # partial tiles packed, blocks straddle
    (VideoGeometry(5, 12, 20, 40, "front"), (1, 8, 8), 64),
    (VideoGeometry(5, 12, 20, 40, "back"), (1, 8, 8), 64),
    (VideoGeometry(6, 16, 16), (1, 8, 8), 64),
]


def patterns(grid):
    nt, nh, nw = grid
    out = [Pattern.dense(), Pattern.local(0, 1, 1), Pattern.local(min(1, nt - 1), min(2, nh), min(3, nw)),
           Pattern((FrameGroup(0, nt - 1, (Window(1, nw), Window(nh, 1))),))]
    if nt > 2:
        out.append(Pattern((FrameGroup(0, 0, (Window(nh, min(2, nw)), Window(1, nw))),
                            FrameGroup(2, nt - 1, (Window(min(2, nh), 1),)))))
    return out


def random_mass(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(layout.num_blocks, layout.num_blocks, generator=g) ** 6
    return (m / m.sum(1, keepdim=True) * layout.block_lengths().float()[:, None]).float()


@pytest.mark.parametrize("geo,tile,bs", LAYOUTS)
def test_exact_matches_pattern_block_mask(geo, tile, bs):
    layout = TileLayout(geo, tile, bs)
    scorer = ExactScorer(layout)
    mass = random_mass(layout)
    for p in patterns(layout.grid_thw):
        ref = pattern_block_mask(p, layout)
        assert torch.equal(scorer.block_mask(p), ref), p.describe()
        s = scorer.score(p, mass)
        kept = (mass * ref).sum(-1).double()
        assert s.blocks == int(ref.sum())
        assert s.recall == pytest.approx(float(kept.sum() / mass.double().sum()), abs=1e-6)
        assert s.recall_min == pytest.approx(float((kept / mass.double().sum(-1)).min()), abs=1e-6)


@pytest.mark.parametrize("geo,tile,bs", LAYOUTS)
def test_fast_is_exact_or_a_lower_bound(geo, tile, bs):
    layout = TileLayout(geo, tile, bs)
    lt, scorer = LayoutTables(layout), ExactScorer(layout)
    mass = random_mass(layout, 1)
    ht = HeadTables(lt, mass)
    one_tile_per_block = bool((layout.block_first_tile == layout.block_last_tile).all())
    for p in patterns(layout.grid_thw):
        e = scorer.score(p, mass)
        if one_tile_per_block and geo.text_tokens == 0:
            assert ht.recall(p) == pytest.approx(e.recall, abs=1e-6), p.describe()
            assert ht.blocks(p) == pytest.approx(e.blocks, abs=1e-6)
        else:
            assert ht.recall(p) <= e.recall + 1e-9
            assert ht.blocks(p) <= e.blocks + 1e-9


def test_fast_tile_recall_matches_rows_when_blocks_are_tiles():
    layout = TileLayout(VideoGeometry(4, 16, 16), (1, 8, 8), 64)  # one block per tile, raster order
    lt, mass = LayoutTables(layout), random_mass(layout, 2)
    ht = HeadTables(lt, mass)
    for p in patterns(layout.grid_thw):
        ref = pattern_block_mask(p, layout)
        rows = (mass * ref).sum(-1).double() / mass.double().sum(-1)
        assert torch.allclose(ht.tile_recall(p)[layout.order], rows, atol=1e-6)


def test_fast_evaluator_speed_at_wan14b_720p():
    """Thousands of pattern evaluations per second per head on one core at 591 x 591 blocks."""
    layout = TileLayout(VideoGeometry(21, 45, 80), (4, 8, 8), 128)
    assert layout.num_blocks == 591
    lt = LayoutTables(layout)
    ht = HeadTables(lt, random_mass(layout))
    nt, nh, nw = layout.grid_thw
    ps = [Pattern((FrameGroup(0, d, (Window(h, nw), Window(nh, w))),)) for d in range(nt) for h in range(1, nh + 1)
          for w in range(1, nw + 1)]
    t = time.perf_counter()
    for p in ps:
        ht.recall(p)
        ht.blocks(p)
    rate = len(ps) / (time.perf_counter() - t)
    assert rate > 2000, f"{rate:.0f} evaluations/s"


def test_cost_model_files(tmp_path):
    y = tmp_path / "cost.yaml"
    y.write_text("cost_model: {per_block: 2.0, per_query_block: 5.0}\n")
    cm = CostModel.load(y)
    assert cm.cost(10, 3) == 35.0
    j = tmp_path / "cost.json"
    j.write_text('{"per_block": 1.5}')
    assert CostModel.load(j).per_query_block == 0.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_block: -1\n")
    with pytest.raises(InputError, match="per_block must be > 0"):
        CostModel.load(bad)
    with pytest.raises(InputError, match="does not exist"):
        CostModel.load(tmp_path / "missing.json")


def sink_patterns(grid):
    """`patterns` (less dense) with one to four sink key tiles, some inside the windows, some outside."""
    nt, nh, nw = grid
    corners = [(nt - 1, nh - 1, nw - 1), (0, 0, 0), (nt // 2, nh // 2, nw // 2), (0, nh - 1, 0)]
    corners = list(dict.fromkeys(corners))
    return [p.with_sinks(corners[: 1 + i % len(corners)]) for i, p in enumerate(patterns(grid)[1:])]


@pytest.mark.parametrize("geo,tile,bs", LAYOUTS)
def test_fast_with_sinks_is_exact_or_a_lower_bound(geo, tile, bs):
    """Sinks on the fast evaluator: the per-sink tables, the folded view (`with_sinks`) and `tile_recall`."""
    layout = TileLayout(geo, tile, bs)
    lt, scorer = LayoutTables(layout), ExactScorer(layout)
    mass = random_mass(layout, 2)
    ht = HeadTables(lt, mass)
    exact_fast = bool((layout.block_first_tile == layout.block_last_tile).all()) and geo.text_tokens == 0
    for p in sink_patterns(layout.grid_thw):
        e = scorer.score(p, mass)
        view = ht.with_sinks(p.sinks)
        bare = p.with_sinks(())
        assert view.recall(bare) == pytest.approx(ht.recall(p), abs=1e-9)
        assert view.blocks(bare) == pytest.approx(ht.blocks(p), abs=1e-6)
        assert ht.recall(p) >= ht.recall(bare) - 1e-12 and ht.blocks(p) >= ht.blocks(bare) - 1e-9
        if exact_fast:
            assert ht.recall(p) == pytest.approx(e.recall, abs=1e-6), p.describe()
            assert ht.blocks(p) == pytest.approx(e.blocks, abs=1e-6), p.describe()
            rows = torch.where(scorer.block_mask(p), mass, 0).sum(-1).double() / mass.double().sum(-1)
            assert torch.allclose(ht.tile_recall(p)[layout.order], rows, atol=1e-6)
        else:
            assert ht.recall(p) <= e.recall + 1e-9
            assert ht.blocks(p) <= e.blocks + 1e-9
    with pytest.raises(ValueError, match="without sinks"):
        ht.with_sinks([(0, 0, 0)]).blocks(Pattern.local(0, 1, 1).with_sinks([(0, 0, 0)]))
