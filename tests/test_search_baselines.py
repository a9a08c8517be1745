"""Baselines: greedy boundary contraction, best cube, and the Lagrangian sweep."""

from __future__ import annotations

import math

import pytest
from planted import kind_pattern, planted_mass

from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import Pattern
from compactsearch.search.baselines import (
    best_cube,
    cube_front,
    default_partition,
    greedy_contraction,
    min_pattern,
)
from compactsearch.search.scoring import HeadTables, LayoutTables
from compactsearch.search.space import SearchSpace
from compactsearch.search.sweep import lagrangian_sweep
from compactsearch.tiling import TileLayout

LAYOUT = TileLayout(VideoGeometry(8, 32, 48), (2, 8, 8), 128)  # grid 4 x 4 x 6


@pytest.fixture(scope="module")
def tables():
    return LayoutTables(LAYOUT)


def head(tables, kind, seed=0):
    import torch

    m = planted_mass(LAYOUT, kind_pattern(kind, LAYOUT.grid_thw), 0.96, 0.0, torch.Generator().manual_seed(seed))
    return HeadTables(tables, m)


def test_default_partition():
    assert default_partition(6, 3) == [(0, 0), (1, 1), (2, 5)]
    assert default_partition(6, 4) == [(0, 0), (1, 1), (2, 3), (4, 5)]
    assert default_partition(1, 3) == [(0, 0)]
    assert default_partition(5, 1) == [(0, 4)]


@pytest.mark.parametrize("kind", ["local", "cross", "decay"])
def test_greedy_path_descends_to_tau(tables, kind):
    ht = head(tables, kind)
    path, result = greedy_contraction(ht, 0.9)
    assert path[0].is_dense and result == path[-1]
    recalls = [ht.recall(p) for p in path]
    blocks = [ht.blocks(p) for p in path]
    assert all(r >= 0.9 for r in recalls)
    assert all(b2 < b1 for b1, b2 in zip(blocks, blocks[1:], strict=False))
    assert blocks[-1] < 0.6 * blocks[0]


def test_greedy_lambda_stops_earlier(tables):
    ht = head(tables, "local")
    _, free = greedy_contraction(ht, 0.9, math.inf)
    _, strict = greedy_contraction(ht, 0.9, 0.05)
    assert ht.blocks(strict) >= ht.blocks(free)
    assert ht.recall(strict) >= ht.recall(free)


def test_best_cube_is_the_cheapest_feasible_cube(tables):
    ht = head(tables, "local", 3)
    nt, nh, nw = LAYOUT.grid_thw
    cubes = [Pattern.local(d, h, w) for d in range(nt) for h in range(1, nh + 1) for w in range(1, nw + 1)]
    feasible = [p for p in cubes if ht.recall(p) >= 0.9]
    best = best_cube(ht, 0.9)
    assert ht.recall(best) >= 0.9
    assert ht.blocks(best) == min(ht.blocks(p) for p in feasible)
    front = cube_front(ht)
    costs = [ht.blocks(p) for p in front]
    recs = [ht.recall(p) for p in front]
    assert costs == sorted(costs) and recs == sorted(recs)
    for p in cubes:  # nothing dominates the front strictly
        for q in front:
            assert not (ht.recall(p) > ht.recall(q) + 1e-9 and ht.blocks(p) < ht.blocks(q) - 1e-9)


def test_sweep_finds_hull_points_around_the_floor(tables):
    ht = head(tables, "cross", 4)
    space = SearchSpace(LAYOUT.grid_thw, 3)
    pts = lagrangian_sweep(ht, space, 0.9)
    assert Pattern.dense() in pts or any(ht.recall(p) > 0.999 for p in pts)
    feasible = [p for p in pts if ht.recall(p) >= 0.9]
    assert feasible
    cheapest = min(feasible, key=ht.blocks)
    # the planted cross is in the space: the sweep's floor point is at most as expensive as it
    assert ht.blocks(cheapest) <= ht.blocks(kind_pattern("cross", LAYOUT.grid_thw)) + 1e-9
    assert all(space.encode(p) is not None for p in pts)
    assert min_pattern().groups[0].windows[0].h == 1
