"""Whole-model budget: one front point per (bucket, layer, head) under one compute budget; dense warm-up rule.

**Allocation** (a multiple-choice knapsack, solved greedily on convex hulls). Every head ``i`` has an exact
Pareto front of points ``j`` (cost ``c_ij``, recall ``r_ij``), cheapest first. Costs are weighted so that the
sum over heads is the config's density (`compactsearch.config.summarize`: block density over sparse steps,
each bucket weighted by its steps) or, with a measured cost model, the time relative to dense; recalls are
weighted by the bucket's steps, so the objective is the step-weighted mean recall -- or the mean output
fidelity when the fronts carry it (`FrontPoint.value`; `compactsearch.search.fidelity`). The floor is on
recall either way.

1. Every head starts at its cheapest point with recall ``>= floor`` (dense always qualifies).
2. If that is over the budget, heads step *down* their lower convex hull, always taking the step that loses
   the least recall per unit of cost saved, until the total fits. Heads that end below the floor are listed.
3. With the budget left, heads step *up* their upper convex hull, best recall gained per unit of cost first,
   while the step fits; then a fill pass tries any single upgrade that still fits, best gain first.

If even every head's cheapest point is over the budget, the budget is infeasible (`InputError` naming the
smallest feasible budget).

**Dense warm-up rule.** A profile *covers the warm-up* when it has more than one bucket and its first bucket
starts at step 0. Then the leading buckets whose heads cannot all reach the floor within the budget (the sum
of each head's cheapest floor-meeting point costs more than the budget) run dense: ``dense_warmup`` is the
start of the first bucket that can, and the last bucket is always searched. Otherwise ``dense_warmup`` is the
recipe's value (0 when it has none) and buckets are clipped to start at or after it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from compactsearch.errors import InputError
from compactsearch.search.study import HeadResult

__all__ = ["Allocation", "allocate", "hull", "WarmupDecision", "warmup_from_recipe", "warmup_by_budget"]

_EPS = 1e-12


@dataclass(frozen=True)
class Allocation:
    """Chosen front index per head, the total cost (fraction of dense) and the heads below the floor."""

    choice: tuple[int, ...]
    cost: float
    recall: float
    below_floor: tuple[int, ...]


def hull(costs: list[float], values: list[float], start: int, end: int) -> list[int]:
    """Indices of the upper concave hull of points ``start..end`` (costs ascending), from ``start`` to ``end``.

    Walking up the hull the gain per unit of cost never increases; walking down it (reversed), the loss per unit
    of cost saved never decreases.
    """
    step = 1 if end >= start else -1
    out: list[int] = []
    for j in range(start, end + step, step):
        while len(out) >= 2:
            a, b = out[-2], out[-1]
            # b is under the chord a -> j: drop it (cross product in (cost, value))
            cross = (costs[b] - costs[a]) * (values[j] - values[a]) - (values[b] - values[a]) * (costs[j] - costs[a])
            if cross * step >= 0:
                out.pop()
            else:
                break
        out.append(j)
    return out


def allocate(
    fronts: list[HeadResult],
    cost_weight: list[float],
    recall_weight: list[float],
    budget: float,
    floor: float,
    cost_of=None,
) -> Allocation:
    """Choose one front point per head. See the module docstring.

    Args:
        fronts: per head its result (``front`` cheapest first).
        cost_weight: per head, the factor turning the point's cost (blocks, or `cost_of`) into its share of the
            model's dense cost.
        recall_weight: per head, its weight in the mean recall (sums to 1).
        budget: total cost allowed, as a fraction of dense.
        floor: recall floor.
        cost_of: optional ``blocks -> cost`` (a measured cost model); default the blocks themselves.
    """
    cost_of = cost_of or (lambda b: float(b))
    costs = [[w * cost_of(p.blocks) for p in r.front] for r, w in zip(fronts, cost_weight, strict=True)]
    vals = [[w * p.value for p in r.front] for r, w in zip(fronts, recall_weight, strict=True)]
    n = len(fronts)
    cheapest = sum(c[0] for c in costs)
    if cheapest > budget + _EPS:
        raise InputError(f"budget {budget:g} is too small: even the cheapest patterns need {cheapest:.4f}; "
                         f"use --budget >= {cheapest:.4f}")
    choice = [next(j for j, p in enumerate(r.front) if p.recall >= floor) for r in fronts]
    total = sum(costs[i][choice[i]] for i in range(n))

    if total > budget + _EPS:  # step down the lower hulls, cheapest recall loss per cost saved first
        paths = [hull(costs[i], vals[i], choice[i], 0) for i in range(n)]
        pos = [0] * n
        heap = []
        for i in range(n):
            if len(paths[i]) > 1:
                a, b = paths[i][0], paths[i][1]
                heapq.heappush(heap, ((vals[i][a] - vals[i][b]) / max(costs[i][a] - costs[i][b], _EPS), i))
        while total > budget + _EPS and heap:
            _, i = heapq.heappop(heap)
            a, b = paths[i][pos[i]], paths[i][pos[i] + 1]
            total += costs[i][b] - costs[i][a]
            choice[i] = b
            pos[i] += 1
            if pos[i] + 1 < len(paths[i]):
                a, b = paths[i][pos[i]], paths[i][pos[i] + 1]
                heapq.heappush(heap, ((vals[i][a] - vals[i][b]) / max(costs[i][a] - costs[i][b], _EPS), i))

    # step up the upper hulls, best gain per cost first, while it fits
    paths = [hull(costs[i], vals[i], choice[i], len(costs[i]) - 1) for i in range(n)]
    pos = [0] * n
    heap = []
    for i in range(n):
        if len(paths[i]) > 1:
            a, b = paths[i][0], paths[i][1]
            heapq.heappush(heap, (-(vals[i][b] - vals[i][a]) / max(costs[i][b] - costs[i][a], _EPS), i))
    while heap:
        _, i = heapq.heappop(heap)
        a, b = paths[i][pos[i]], paths[i][pos[i] + 1]
        if total + costs[i][b] - costs[i][a] > budget + _EPS:
            continue  # this head's hull walk ends here; the fill pass below may still upgrade it
        total += costs[i][b] - costs[i][a]
        choice[i] = b
        pos[i] += 1
        if pos[i] + 1 < len(paths[i]):
            a, b = paths[i][pos[i]], paths[i][pos[i] + 1]
            heapq.heappush(heap, (-(vals[i][b] - vals[i][a]) / max(costs[i][b] - costs[i][a], _EPS), i))

    # fill: any single upgrade that fits, best recall gain first
    while True:
        best = None
        room = budget - total
        for i in range(n):
            c0, v0 = costs[i][choice[i]], vals[i][choice[i]]
            for j in range(choice[i] + 1, len(costs[i])):
                if costs[i][j] - c0 > room + _EPS:
                    break
                gain = vals[i][j] - v0
                if gain > _EPS and (best is None or gain > best[0]):
                    best = (gain, i, j)
        if best is None:
            break
        _, i, j = best
        total += costs[i][j] - costs[i][choice[i]]
        choice[i] = j

    recall = sum(vals[i][choice[i]] for i in range(n))
    below = tuple(i for i in range(n) if fronts[i].front[choice[i]].recall < floor)
    return Allocation(tuple(choice), total, recall, below)


# --------------------------------------------------------------------------------------------- dense warm-up
@dataclass(frozen=True)
class WarmupDecision:
    """``dense_warmup``, the profile buckets searched (index, config step range), and the rule applied."""

    dense_warmup: int
    buckets: tuple[tuple[int, tuple[int, int]], ...]
    rule: str


def covers_warmup(buckets: list[tuple[int, int]]) -> bool:
    return len(buckets) > 1 and buckets[0][0] == 0


def warmup_from_recipe(buckets: list[tuple[int, int]], recipe_warmup: int) -> WarmupDecision:
    """The recipe's ``dense_warmup``; buckets ending before it are dropped, the next one is clipped to it."""
    kept = []
    for i, (a, b) in enumerate(buckets):
        if b <= recipe_warmup:
            continue
        kept.append((i, (max(a, recipe_warmup), b)))
    if not kept:
        raise InputError(f"the recipe's dense_warmup ({recipe_warmup}) covers every profiled bucket "
                         f"{[list(b) for b in buckets]}: there is nothing to search")
    return WarmupDecision(recipe_warmup, tuple(kept), "recipe")


def warmup_by_budget(buckets: list[tuple[int, int]], floor_cost: list[float], budget: float) -> WarmupDecision:
    """Leading buckets whose floor-meeting cost (fraction of dense) exceeds the budget run dense."""
    k = 0
    while k < len(buckets) - 1 and floor_cost[k] > budget + _EPS:
        k += 1
    return WarmupDecision(buckets[k][0], tuple((i, tuple(buckets[i])) for i in range(k, len(buckets))), "budget")
