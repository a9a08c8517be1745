"""Output fidelity: the value statistic, the error formula against a direct computation, the profile round trip,
and the search objective it drives."""

from __future__ import annotations

import pytest
import torch
from planted import planted_profile

from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.masks import pattern_block_mask
from compactsearch.patterns import Pattern
from compactsearch.profile.store import Profile
from compactsearch.profile.values import gram_factor, merge_factors, value_block_gram
from compactsearch.search import SearchSettings, run_search
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.tiling import TileLayout


def test_value_block_gram_is_the_gram_of_block_means():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 150, 8, generator=g)  # 150 tokens: blocks of 64, 64, 22
    got = value_block_gram(v, 64)
    means = torch.stack([v[:, 0:64].mean(1), v[:, 64:128].mean(1), v[:, 128:150].mean(1)], 1)  # [H, 3, D]
    torch.testing.assert_close(got, means @ means.transpose(1, 2))
    # masked keys past key_valid are left out; a block with none left is zero
    got = value_block_gram(v, 64, key_valid=100)
    means = torch.stack([v[:, 0:64].mean(1), v[:, 64:100].mean(1), torch.zeros(3, 8)], 1)
    torch.testing.assert_close(got, means @ means.transpose(1, 2))


def test_gram_factor_and_merge_reproduce_low_rank_grams():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 12, 5, generator=g)  # batched over heads
    u = gram_factor(a @ a.transpose(1, 2), rank=5)
    assert u.shape == (3, 12, 5)
    torch.testing.assert_close(u @ u.transpose(1, 2), a @ a.transpose(1, 2), atol=1e-4, rtol=1e-4)
    # merging prompt factors gives a factor of the mean Gram matrix (exact while the total rank fits)
    b = torch.randn(3, 12, 2, generator=g)
    m = merge_factors([a, b], rank=7)
    want = (a @ a.transpose(1, 2) + b @ b.transpose(1, 2)) / 2
    torch.testing.assert_close(m @ m.transpose(1, 2), want, atol=1e-4, rtol=1e-4)
    m4 = merge_factors([a, b], rank=4)  # truncated: the best rank-4 approximation
    assert m4.shape == (3, 12, 4)
    best = gram_factor(want, rank=4)
    torch.testing.assert_close(m4 @ m4.transpose(1, 2), best @ best.transpose(1, 2), atol=1e-3, rtol=1e-3)


def _layout():
    return TileLayout(VideoGeometry(4, 16, 32), (1, 4, 16), 64)  # 4 x 4 x 2 tiles, 32 blocks of 64 tokens


def test_error_matches_the_block_level_outputs_computed_directly():
    lay = _layout()
    g = torch.Generator().manual_seed(2)
    nb = lay.num_blocks
    mass = torch.rand(nb, nb, generator=g) * 64.0
    vbar = torch.randn(nb, 6, generator=g)
    fid = HeadFidelity(mass, vbar, lambda p: pattern_block_mask(p, lay))  # V̄ is a factor of V̄ V̄ᵀ
    p = mass / mass.sum(-1, keepdim=True)
    n = mass.sum(-1)
    dense = p @ vbar
    for pat in [Pattern.local(0, 2, 2), Pattern.local(1, 1, 2), Pattern.local(3, 1, 1)]:
        keep = pattern_block_mask(pat, lay)
        ps = torch.where(keep, p, 0.0)
        out = (ps @ vbar) / ps.sum(-1, keepdim=True)
        want = float((n * (out - dense).square().sum(-1)).sum() / (n * dense.square().sum(-1)).sum())
        assert fid.error(pat) == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert fid.error(Pattern.dense()) == 0.0 and fid.fidelity(Pattern.dense()) == 1.0


def test_fidelity_sees_redundant_frames_that_recall_does_not():
    """Uniform attention over a video whose frames repeat: keeping whole frames loses mass but no output, a
    spatial stripe through every frame keeps as much mass and biases the output."""
    lay = _layout()
    nt, nh, nw = lay.grid_thw
    nb = lay.num_blocks
    mass = torch.full((nb, nb), 64.0 / nb)  # uniform: recall = kept share of blocks
    coords = lay.tile_coords[lay.order]  # [tiles, 3] (t, h, w) in tile order; one tile per block here
    g = torch.Generator().manual_seed(3)
    per_place = torch.randn(nh, nw, 4, generator=g)  # the same values in every frame
    vbar = per_place[coords[:, 1], coords[:, 2]]
    fid = HeadFidelity(mass, gram_factor(vbar @ vbar.T), lambda p: pattern_block_mask(p, lay))
    frames = Pattern.local(0, nh, nw)  # the query's own frame, whole
    stripe = Pattern.local(nt - 1, 1, nw)  # one tile row through every frame
    kept = {p: float(pattern_block_mask(p, lay).float().mean()) for p in (frames, stripe)}
    assert kept[frames] == pytest.approx(kept[stripe])  # same recall and cost
    assert fid.error(frames) < 1e-6 < 0.05 < fid.error(stripe)


def test_profile_round_trip_keeps_value_statistics(tmp_path):
    geo = VideoGeometry(4, 16, 32)
    nb = TileLayout(geo, (1, 4, 16), 64).num_blocks
    mass = torch.rand(1, 2, 3, nb, nb) + 0.1
    mass = mass / mass.sum(-1, keepdim=True) * 64
    fac = torch.randn(1, 2, 3, nb, 4)
    prof = Profile.from_block_mass(mass, geometry=geo, tile=(1, 4, 16), block_size=64, value_factor=fac)
    assert prof.has_values
    back = Profile.load(prof.save(tmp_path / "p"), verify=True)
    assert back.has_values
    torch.testing.assert_close(back.value_factor(0, 1), fac[0, 1])
    plain = Profile.load(Profile.from_block_mass(mass, geometry=geo, tile=(1, 4, 16), block_size=64)
                         .save(tmp_path / "q"))
    assert not plain.has_values and plain.value_factor(0, 0) is None
    with pytest.raises(InputError, match="value_factor"):
        Profile.from_block_mass(mass, geometry=geo, tile=(1, 4, 16), block_size=64, value_factor=fac[..., :3, :])


def _with_values(prof: Profile, seed: int) -> Profile:
    """The planted profile plus value statistics in which frames repeat (a block's values depend on its place)."""
    lay = prof.layout()
    coords = lay.tile_coords[lay.order][lay.block_first_tile]
    g = torch.Generator().manual_seed(seed)
    _, nh, nw = lay.grid_thw
    places = torch.randn(prof.num_heads, nh, nw, 8, generator=g)
    vbar = places[:, coords[:, 1], coords[:, 2]]  # [H, NB, 8]: a factor of V̄ V̄ᵀ
    mass = {k: prof.mass(*k) for k in prof.keys()}
    return Profile.from_block_mass(mass, geometry=prof.geometry, tile=prof.tile, block_size=prof.block_size,
                                   buckets=prof.buckets, value_factor={k: vbar for k in prof.keys()})


def test_search_objective_fidelity(tmp_path):
    geo = VideoGeometry(6, 16, 16)
    base, _ = planted_profile(geo, (1, 8, 8), 64, [["global", "local", "cross"]], seed=4)
    prof = _with_values(base, 5)
    res = run_search(prof, SearchSettings(budget=0.4, trials=8), tmp_path / "f.yaml")
    s = res.summary
    assert s["objective"] == "fidelity" and 0.0 < s["fidelity_mean"] <= 1.0
    assert s["density"] <= 0.4 + 0.005
    for r in res.results.values():
        assert all(p.fidelity is not None for p in r.front)
        values = [p.value for p in r.front]
        assert values == sorted(values) and r.front[-1].pattern.is_dense  # a (fidelity, cost) front
        for base_point in (r.greedy, r.cube):  # the baselines are candidates: the front dominates them
            assert any(p.value >= base_point.value and p.blocks <= base_point.blocks for p in r.front)
    rec = run_search(prof, SearchSettings(budget=0.4, trials=8, objective="recall"), tmp_path / "r.yaml")
    assert rec.summary["objective"] == "recall" and "fidelity_mean" not in rec.summary
    # the fidelity search's mean fidelity is at least the recall search's, scored the same way
    from compactsearch.search.scoring import ExactScorer

    lay = prof.layout()
    scorer = ExactScorer(lay)

    def mean_fid(cfg):
        tot = 0.0
        for layer in cfg.buckets[0].layers:
            for h in layer.heads:
                m, fac = prof.mass(0, layer.layer)[h.head], prof.value_factor(0, layer.layer)[h.head]
                tot += HeadFidelity(m, fac, scorer.block_mask).fidelity(h.pattern)
        return tot / (cfg.num_layers * cfg.num_heads)

    assert mean_fid(res.config) >= mean_fid(rec.config) - 1e-9
    with pytest.raises(InputError, match="needs value statistics"):
        run_search(base, SearchSettings(budget=0.4, trials=8, objective="fidelity"), tmp_path / "x.yaml")
    with pytest.raises(InputError, match="--objective must be one of"):
        run_search(base, SearchSettings(budget=0.4, objective="mass"), tmp_path / "x.yaml")


def test_randomized_gram_factor_matches_the_eigendecomposition():
    """The subspace-iteration factor (what CUDA profiles use at large block counts) is exact on a Gram of rank
    below the subspace and within 0.5% of the best rank-r residual on a slowly decaying spectrum."""
    g = torch.Generator().manual_seed(3)
    n = 300
    low = torch.randn(2, n, 20, generator=g, dtype=torch.float64)
    gram = (low @ low.transpose(1, 2)).float()
    u = gram_factor(gram, rank=32, method="randomized")
    assert u.shape == (2, n, 32) and u.dtype == torch.float32
    torch.testing.assert_close(u @ u.transpose(1, 2), gram, atol=1e-3 * float(gram.abs().max()), rtol=1e-4)
    m = torch.randn(2, n, 128, generator=g) * torch.linspace(2.0, 0.01, 128) + torch.randn(2, 1, 128, generator=g)
    gram = m @ m.transpose(1, 2)
    best, fast = gram_factor(gram, rank=32, method="eigh"), gram_factor(gram, rank=32, method="randomized")

    def residual(f):
        return float((gram - f @ f.transpose(1, 2)).norm() / gram.norm())

    assert residual(fast) <= 1.005 * residual(best)
    with pytest.raises(ValueError, match="method"):
        gram_factor(gram, method="svd")
