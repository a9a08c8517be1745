"""Whole-model allocation and the dense warm-up rule."""

from __future__ import annotations

import itertools
import random

import pytest

from compactsearch.errors import InputError
from compactsearch.patterns import Pattern
from compactsearch.search.budget import allocate, hull, warmup_by_budget, warmup_from_recipe
from compactsearch.search.study import FrontPoint, HeadResult


def result(points, i=0):
    """A HeadResult from (blocks, recall) pairs, cheapest first."""
    front = tuple(FrontPoint(Pattern.local(0, 1, k + 1), r, r, b) for k, (b, r) in enumerate(points))
    return HeadResult(0, 0, i, front, front[-1], front[-1], 1, 1)


def random_front(rng, n=6, nb2=100):
    blocks = sorted(rng.sample(range(5, nb2), n - 1)) + [nb2]
    recalls = sorted(rng.uniform(0.5, 0.999) for _ in range(n - 1)) + [1.0]
    return list(zip(blocks, recalls, strict=True))


def test_hull_is_concave():
    costs = [0, 1, 2, 3, 4]
    vals = [0, 0.1, 0.8, 0.85, 1.0]
    up = hull(costs, vals, 0, 4)
    assert up == [0, 2, 4]
    down = hull(costs, vals, 4, 0)
    assert down == [4, 2, 0]


def test_allocation_respects_budget_and_floor_and_beats_per_head_uniform():
    rng = random.Random(0)
    fronts = [result(random_front(rng), i) for i in range(30)]
    w = [1 / (30 * 100)] * 30
    rw = [1 / 30] * 30
    floor = 0.6
    min_floor = sum(wi * next(p.blocks for p in r.front if p.recall >= floor) for r, wi in zip(fronts, w, strict=True))
    budget = min_floor + 0.1
    a = allocate(fronts, w, rw, budget, floor)
    assert a.cost <= budget + 1e-12
    assert not a.below_floor
    chosen = [r.front[j] for r, j in zip(fronts, a.choice, strict=True)]
    assert all(p.recall >= floor for p in chosen)
    # no single upgrade fits any more
    room = budget - a.cost
    for r, j, wi in zip(fronts, a.choice, w, strict=True):
        for q in r.front[j + 1:]:
            assert wi * (q.blocks - r.front[j].blocks) > room - 1e-12


def test_allocation_near_optimal_on_small_instances():
    rng = random.Random(1)
    for _ in range(20):
        fronts = [result(random_front(rng, 4, 20), i) for i in range(4)]
        w, rw = [1 / 80] * 4, [0.25] * 4
        cheapest = sum(w[i] * fronts[i].front[0].blocks for i in range(4))
        budget = rng.uniform(cheapest, 0.95)
        a = allocate(fronts, w, rw, budget, 0.0)
        best = 0.0
        for combo in itertools.product(range(4), repeat=4):
            cost = sum(w[i] * fronts[i].front[j].blocks for i, j in enumerate(combo))
            if cost <= budget + 1e-12:
                best = max(best, sum(rw[i] * fronts[i].front[j].recall for i, j in enumerate(combo)))
        assert a.recall >= best - 0.06
        assert a.cost <= budget + 1e-12


def test_heads_below_floor_are_listed_when_the_budget_is_tight():
    cheap = result([(10, 0.95), (100, 1.0)], 0)
    hard = result([(10, 0.3), (50, 0.7), (90, 0.92), (100, 1.0)], 1)
    w, rw = [1 / 200] * 2, [0.5, 0.5]
    a = allocate([cheap, hard], w, rw, 0.4, 0.9)
    assert a.below_floor == (1,)
    assert a.cost <= 0.4 + 1e-12
    ok = allocate([cheap, hard], w, rw, 0.6, 0.9)
    assert ok.below_floor == ()


def test_infeasible_budget_names_the_smallest():
    fronts = [result([(10, 0.5), (100, 1.0)], i) for i in range(2)]
    with pytest.raises(InputError, match=r"use --budget >= 0\.1000"):
        allocate(fronts, [1 / 200] * 2, [0.5] * 2, 0.05, 0.9)


def test_warmup_rules():
    buckets = [(0, 10), (10, 30), (30, 50)]
    d = warmup_by_budget(buckets, [0.8, 0.25, 0.2], 0.3)
    assert d.dense_warmup == 10 and [i for i, _ in d.buckets] == [1, 2] and d.rule == "budget"
    d = warmup_by_budget(buckets, [0.9, 0.9, 0.9], 0.3)
    assert d.dense_warmup == 30 and [i for i, _ in d.buckets] == [2]
    d = warmup_from_recipe([(0, 50)], 15)
    assert d.dense_warmup == 15 and d.buckets == ((0, (15, 50)),)
    d = warmup_from_recipe([(15, 25), (25, 50)], 15)
    assert d.buckets == ((0, (15, 25)), (1, (25, 50)))
    with pytest.raises(InputError, match="nothing to search"):
        warmup_from_recipe([(0, 10)], 10)
