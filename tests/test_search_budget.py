"""Whole-model allocation and the whole-run plan (dense warm-up chosen with the patterns)."""

from __future__ import annotations

import itertools
import random

import pytest

from compactsearch.errors import InputError
from compactsearch.patterns import Pattern
from compactsearch.search.budget import allocate, hull, plan_run, sparse_ranges, step_weights
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


def _results(buckets, layers, heads, fronts_of):
    """``(bucket, layer, head) -> HeadResult`` with blocks out of 100 per head."""
    out = {}
    for b in range(len(buckets)):
        for l in range(layers):
            for h in range(heads):
                r = result(fronts_of(b, l, h), h)
                out[(b, l, h)] = HeadResult(b, l, h, r.front, r.greedy, r.cube, 1, 1)
    return out


def _brute_force(buckets, n, min_warmup, results, layers, heads, budget, floor):
    """The best whole-run value over every warm-up length, each allocated exactly: costs by steps, values by the
    steps' weights (an error at step s counts (n - s)^2), dense steps at value 1."""
    best = None
    sw = [(n - s) ** 2 for s in range(n)]
    sw = [x / sum(sw) for x in sw]
    for w in range(min_warmup, n):
        rng = dict(sparse_ranges(buckets, w))
        sparse_steps = {s for a, e in rng.values() for s in range(a, e)}
        keys = [(b, l, h) for b in rng for l in range(layers) for h in range(heads)]
        weights = [(rng[b][1] - rng[b][0]) / (n * layers * heads) for b, _, _ in keys]
        values = [sum(sw[rng[b][0]:rng[b][1]]) / (layers * heads) for b, _, _ in keys]
        dense = (n - len(sparse_steps)) / n
        dense_value = sum(x for s, x in enumerate(sw) if s not in sparse_steps)
        cheapest = dense + sum(wt * results[k].front[0].blocks / 100 for k, wt in zip(keys, weights))
        if cheapest > budget + 1e-12:
            continue
        a = allocate([results[k] for k in keys], weights, values, budget - dense, floor,
                     cost_of=lambda blk: blk / 100)
        if best is None or dense_value + a.recall > best[1] + 1e-12:
            best = (w, dense_value + a.recall)
    return best


def test_step_weights_favour_early_steps():
    w = step_weights(10)
    assert sum(w) == pytest.approx(1.0) and all(a > b for a, b in zip(w, w[1:]))
    assert sum(w[:3]) / 3 >= 3 * sum(w[3:]) / 7  # what the tiny model's warm-up measurements ask for


def test_plan_counts_the_whole_run_and_picks_the_best_warmup():
    # bucket 0: cheap points keep little (early steps attend globally); bucket 1: cheap points keep a lot
    buckets, n, L, H = [(0, 4), (4, 10)], 10, 2, 3
    fronts = {0: [(10, 0.3), (40, 0.6), (100, 1.0)], 1: [(10, 0.9), (30, 0.97), (100, 1.0)]}
    res = _results(buckets, L, H, lambda b, l, h: fronts[b])
    for budget in (0.2, 0.3, 0.45, 0.7):
        plan = plan_run(buckets, n, 0, res, L, H, budget, 0.9, cost_of=lambda blk: blk / 100)
        assert plan.cost <= budget + 1e-9
        w, value = _brute_force(buckets, n, 0, res, L, H, budget, 0.9)
        assert plan.dense_warmup == w and plan.value == pytest.approx(value)
        # the chosen allocation's whole-run cost: dense steps at 1, each head at its bucket's share of the run
        dense = (n - sum(e - a for _, (a, e) in plan.buckets)) / n
        cost = dense + sum(wt * res[k].front[c].blocks / 100
                           for k, wt, c in zip(plan.keys, plan.weights, plan.allocation.choice))
        assert cost == pytest.approx(plan.cost)
    # a generous budget spends steps of the hard bucket dense; a tight one cannot afford it
    assert plan_run(buckets, n, 0, res, L, H, 0.45, 0.9, cost_of=lambda blk: blk / 100).dense_warmup > 0
    assert plan_run(buckets, n, 0, res, L, H, 0.2, 0.9, cost_of=lambda blk: blk / 100).dense_warmup == 0


def test_plan_long_runs_scan_a_grid_then_refine():
    buckets, n, L, H = [(0, 10), (10, 30), (30, 50)], 50, 1, 2
    fronts = {0: [(5, 0.2), (50, 0.6), (100, 1.0)], 1: [(5, 0.6), (40, 0.9), (100, 1.0)],
              2: [(5, 0.9), (20, 0.98), (100, 1.0)]}
    res = _results(buckets, L, H, lambda b, l, h: fronts[b])
    plan = plan_run(buckets, n, 0, res, L, H, 0.3, 0.9, cost_of=lambda blk: blk / 100)
    assert plan.cost <= 0.3 + 1e-9 and len(plan.tried) < n
    assert plan.value >= max(v for _, _, v in plan.tried) - 1e-12
    assert plan.value == pytest.approx(_brute_force(buckets, n, 0, res, L, H, 0.3, 0.9)[1], abs=2e-3)


def test_plan_respects_the_required_warmup_and_names_the_least_budget():
    buckets, n, L, H = [(0, 10), (10, 20)], 20, 1, 2
    res = _results(buckets, L, H, lambda b, l, h: [(10, 0.5), (100, 1.0)])
    plan = plan_run(buckets, n, 5, res, L, H, 0.5, 0.9, cost_of=lambda blk: blk / 100)
    assert plan.dense_warmup >= 5 and plan.buckets[0][1][0] == plan.dense_warmup
    # 5 dense steps + 15 steps at 0.1 = 6.5 / 20
    with pytest.raises(InputError, match=r"use --budget >= 0\.325"):
        plan_run(buckets, n, 5, res, L, H, 0.3, 0.9, cost_of=lambda blk: blk / 100)
