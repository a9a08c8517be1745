"""Sinks in the search and the oracle bound: planted sink heads, sink candidates, the space, smooth acceptance."""

from __future__ import annotations

import pytest
import torch
from planted import SINK_KINDS, planted_mass, planted_profile, planted_sinks, sink_kind_pattern
from smooth import smooth_mass, smooth_profile

from compactsearch.config import load_config
from compactsearch.geometry import VideoGeometry
from compactsearch.masks import sink_blocks
from compactsearch.patterns import Pattern
from compactsearch.search import SearchSettings, run_search
from compactsearch.search.scoring import ExactScorer, HeadTables, LayoutTables
from compactsearch.search.sinks import sink_candidates
from compactsearch.search.space import SearchSpace
from compactsearch.search.study import FrontPoint, HeadResult, HeadSettings, Oracle, search_head
from compactsearch.tiling import TileLayout

TAU = 0.9
LAYOUTS = {
    "full-tiles": TileLayout(VideoGeometry(8, 32, 48), (2, 8, 8), 128),
    "partial-tiles": TileLayout(VideoGeometry(9, 20, 28), (2, 8, 8), 64),
    "text-back": TileLayout(VideoGeometry(8, 24, 32, 64, "back"), (2, 8, 8), 64),
}


@pytest.fixture(scope="module")
def searched():
    """Every sink kind on every layout, planted with noise, searched with default settings (with and without
    sink candidates)."""
    out = {}
    for name, layout in LAYOUTS.items():
        lt, scorer = LayoutTables(layout), ExactScorer(layout)
        space = SearchSpace(layout.grid_thw, 3)
        g = torch.Generator().manual_seed(3)
        for i, kind in enumerate(SINK_KINDS):
            planted = sink_kind_pattern(kind, layout.grid_thw)
            mass = planted_mass(layout, planted, 0.96, 0.7 if kind == "mixed-sink" else 0.0, g)
            res = {s: search_head(HeadTables(lt, mass), scorer, mass, space, HeadSettings(floor=TAU, sinks=s), i)
                   for s in (0, 4)}
            out[(name, kind)] = (planted, scorer.score(planted, mass), res)
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", SINK_KINDS)
def test_finds_planted_sink_pattern(searched, layout, kind):
    planted, planted_score, res = searched[(layout, kind)]
    assert planted_score.recall >= TAU
    best = res[4].cheapest_feasible(TAU)
    assert best.recall >= TAU
    assert best.blocks <= 1.1 * planted_score.blocks, (best.pattern.describe(), best.blocks, planted_score.blocks)
    # planted sinks only (where the windows miss them), compared by kernel block: where partial tiles share
    # blocks a neighbouring tile names the same block
    got, want = (set(sink_blocks(p, LAYOUTS[layout]).tolist()) for p in (best.pattern, planted))
    assert got <= want, (best.pattern.describe(), planted.describe())
    if kind == "sink":  # without sinks the language pays for them with wide windows
        assert best.pattern.sinks
        assert res[0].cheapest_feasible(TAU).blocks > 1.5 * best.blocks


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", SINK_KINDS)
def test_sink_search_dominates_greedy_and_best_cube(searched, layout, kind):
    res = searched[(layout, kind)][2][4]
    for base in (res.greedy, res.cube):
        assert not base.pattern.sinks  # the rivals stay sink-free
        assert any(p.recall >= base.recall and p.blocks <= base.blocks for p in res.front)


def test_oracle_bounds_every_front_point(searched):
    for *_, res in searched.values():
        for p in res[4].front:
            assert p.oracle_recall is not None and p.recall <= p.oracle_recall + 1e-9
            assert 0 < p.efficiency <= 1.0
        assert res[4].front[-1].oracle_recall == pytest.approx(1.0)


def test_oracle_is_top_blocks_by_mass():
    g = torch.Generator().manual_seed(0)
    mass = torch.rand(7, 9, generator=g)
    o = Oracle(mass)
    flat = mass.flatten().double()
    for n in (0, 1, 5, 30, 63):
        want = float(flat.sort(descending=True).values[:n].sum() / flat.sum())
        assert o.recall(n) == pytest.approx(want, abs=1e-6)
        assert int(o.mask(n).sum()) == n and float(mass[o.mask(n)].sum()) == pytest.approx(want * float(flat.sum()),
                                                                                              rel=1e-5)
    assert o.recall(10**6) == 1.0


def test_front_point_round_trip_with_sinks_and_oracle(searched):
    res = searched[("partial-tiles", "sink")][2][4]
    again = HeadResult.from_dict(res.to_dict())
    assert again.front == res.front
    assert any(p.pattern.sinks for p in again.front)
    fp = FrontPoint(Pattern.local(0, 1, 1).with_sinks([(0, 1, 1)]), 0.8, 0.5, 10, oracle_recall=0.9,
                    oracle_fidelity=0.7)
    assert FrontPoint.from_dict(fp.to_dict()) == fp


def test_space_encodes_sink_prefixes():
    grid = (4, 3, 5)
    space = SearchSpace(grid, 3, sinks=((3, 2, 4), (0, 0, 0), (1, 1, 1)))
    assert space.distributions()["sinks"].high == 3
    p = Pattern.local(1, 2, 2).with_sinks([(0, 0, 0), (3, 2, 4)])
    params = space.encode(p)
    assert params["sinks"] == 2 and space.decode(params) == p
    assert space.encode(Pattern.local(1, 2, 2).with_sinks([(1, 1, 1)])) is None  # not a prefix
    assert space.decode({**params, "sinks": 0}) == Pattern.local(1, 2, 2)
    assert "sinks" not in SearchSpace(grid, 3).distributions()


def test_sink_candidates_find_sinks_stable_across_prompts():
    """A key tile that is a sink in every prompt ranks above one that only one prompt has, although the latter
    has more mean mass; without per-prompt tensors the mean decides."""
    layout = LAYOUTS["full-tiles"]
    grid = layout.grid_thw
    lt = LayoutTables(layout)
    steady, fluke = planted_sinks(grid, 2)
    g = torch.Generator().manual_seed(5)
    prompts = []
    for i in range(4):
        sinks = [steady] + ([fluke] if i == 0 else [])
        m = planted_mass(layout, Pattern.local(1, 1, 1).with_sinks(sinks), 0.97, 0.0, g)
        prompts.append(m)
    # make the fluke heavy in prompt 0 (x50) so its *mean* column mass beats the steady sink's
    nh, nw = grid[1], grid[2]
    fl = (fluke[0] * nh + fluke[1]) * nw + fluke[2]
    seq = int((layout.order == fl).nonzero())
    prompts[0][:, seq] *= 50
    prompts[0] = prompts[0] / prompts[0].sum(1, keepdim=True) * layout.block_lengths().float()[:, None]
    pm = torch.stack(prompts)
    ht = HeadTables(lt, pm.mean(0))
    assert sink_candidates(ht, 2)[0] == fluke
    assert sink_candidates(ht, 2, pm)[0] == steady


def test_smooth_sink_heads_recover_their_sinks():
    """On smooth heads with 10-30% of every row on a few sink blocks, the chosen pattern keeps those blocks."""
    prof, info = smooth_profile(layers=1, heads=4, kinds=("sink",), seed=1)
    layout = prof.layout()
    lt, scorer = LayoutTables(layout), ExactScorer(layout)
    space = SearchSpace(layout.grid_thw, 3)
    mass = prof.mass(0, 0)
    for h in range(4):
        res = search_head(HeadTables(lt, mass[h]), scorer, mass[h], space, HeadSettings(), h)
        best = res.cheapest_feasible(TAU)
        kept = scorer.block_mask(best.pattern)
        blocks = info[(0, h)][1]["sinks"][0]
        assert bool(kept[:, blocks].all()), (best.pattern.describe(), blocks)


@pytest.fixture(scope="module")
def smooth_runs(tmp_path_factory):
    """Smooth heads (all four kinds) and planted sink heads at Wan 1.3B 480p size, budgets 0.3 and 0.15."""
    tmp = tmp_path_factory.mktemp("smooth")
    smooth, _ = smooth_profile(layers=1, heads=8, seed=0)
    kinds = [[SINK_KINDS[h % 3] for h in range(6)]]
    planted, _ = planted_profile(smooth.geometry, (4, 8, 4), 128, kinds, seed=0)
    out = {}
    for name, prof in (("smooth", smooth), ("planted", planted)):
        for budget in (0.3, 0.15):
            path = tmp / f"{name}-{budget}.yaml"
            out[(name, budget)] = (run_search(prof, SearchSettings(budget=budget, objective="recall"), path), path)
    return out


@pytest.mark.parametrize("name", ["smooth", "planted"])
@pytest.mark.parametrize("budget,least", [(0.3, 0.99), (0.15, 0.97)])
def test_recall_against_the_oracle(smooth_runs, name, budget, least):
    outcome, path = smooth_runs[(name, budget)]
    s = outcome.summary
    assert s["density"] <= budget + 1e-6
    assert s["pattern_efficiency"] >= least, s
    n = outcome.heads_searched
    assert s["baselines"]["heads_dominating_baselines"] == f"{n}/{n}"
    cfg = load_config(path)  # per-head numbers in the config
    heads = [hc for lc in cfg.buckets[0].layers for hc in lc.heads]
    assert all(hc.oracle_recall is not None and hc.efficiency is not None for hc in heads)
    assert cfg.summary["pattern_efficiency"] == s["pattern_efficiency"]


def test_smooth_mass_rows_and_sink_share():
    layout = LAYOUTS["partial-tiles"]
    m, info = smooth_mass(layout, "sink", torch.Generator().manual_seed(2))
    assert torch.allclose(m.sum(1), layout.block_lengths().float(), rtol=1e-4)
    blocks, share = info["sinks"]
    row_share = (m[:, blocks].sum(1) / m.sum(1)).mean()
    assert 0.1 * 0.8 <= float(row_share) <= 0.3 * 1.2


def test_oracle_fidelity_with_value_statistics(tmp_path):
    """With value statistics every head of the config also gets the oracle block set's output fidelity, computed
    by the same estimator as the pattern's on the top blocks by mass."""
    from test_search_fidelity import _with_values

    from compactsearch.search.fidelity import HeadFidelity

    geo = VideoGeometry(6, 16, 16)
    base, _ = planted_profile(geo, (1, 8, 8), 64, [["sink", "local", "local-sink"]], seed=2)
    prof = _with_values(base, 3)
    res = run_search(prof, SearchSettings(budget=0.4, trials=8), tmp_path / "f.yaml")
    assert res.summary["objective"] == "fidelity" and "pattern_efficiency" in res.summary
    scorer = ExactScorer(prof.layout())
    for hc in res.config.buckets[0].layers[0].heads:
        assert hc.oracle_fidelity is not None and hc.efficiency is not None
        m, fac = prof.mass(0, 0)[hc.head], prof.value_factor(0, 0)[hc.head]
        blocks = int(scorer.block_mask(hc.pattern).sum())
        want = 1.0 - HeadFidelity(m, fac, scorer.block_mask).mask_error(Oracle(m).mask(blocks))
        assert hc.oracle_fidelity == pytest.approx(want, abs=1e-5)


def test_heads_without_stripes_get_no_sink_candidates():
    """Local, cross and global heads: no key column holds twice a uniform share from outside its neighbourhood,
    so they get no candidates (and search as without sinks); a sinks-only head gets its sinks, best first."""
    from planted import kind_pattern

    layout = LAYOUTS["full-tiles"]
    lt = LayoutTables(layout)
    g = torch.Generator().manual_seed(8)
    for kind in ("local", "cross", "global"):
        mass = planted_mass(layout, kind_pattern(kind, layout.grid_thw), 0.96, 0.0, g)
        assert sink_candidates(HeadTables(lt, mass)) == (), kind
    planted = sink_kind_pattern("sink", layout.grid_thw)
    mass = planted_mass(layout, planted, 0.96, 0.0, g)
    assert set(sink_candidates(HeadTables(lt, mass))) == set(planted.sinks)
