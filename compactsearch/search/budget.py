"""Whole-model budget: one front point per (bucket, layer, head) under one compute budget; dense warm-up rule.

**Allocation** (a multiple-choice knapsack, solved greedily on convex hulls). Every head ``i`` has an exact
Pareto front of points ``j`` (cost ``c_ij``, recall ``r_ij``), cheapest first. Costs are weighted so that the
sum over heads is the config's density (`compactsearch.config.summarize`: block density over sparse steps,
each bucket weighted by its steps) or, with a measured cost model, the time relative to dense; recalls are
weighted by the bucket's steps (in `plan_run`, by the sum of their `step_weights`), so the objective is the
step-weighted mean recall -- or the mean output
fidelity when the fronts carry it (`FrontPoint.value`; `compactsearch.search.fidelity`). The floor is on
recall either way.

1. Every head starts at its cheapest point with recall ``>= floor`` (dense always qualifies).
2. If that is over the budget, heads step *down* their lower convex hull, always taking the step that loses
   the least recall per unit of cost saved, until the total fits. Heads that end below the floor are listed.
3. With the budget left, heads step *up* their upper convex hull, best recall gained per unit of cost first,
   while the step fits; then a fill pass tries any single upgrade that still fits, best gain first.

If even every head's cheapest point is over the budget, the budget is infeasible (`InputError` naming the
smallest feasible budget).

**The whole run.** The budget bounds the attention compute of a whole sampling run relative to dense: dense
steps count 1, sparse steps their density (or cost-model time). Each head's weight is its bucket's sparse steps
over the run's steps, so the allocation's total is the whole-run figure once the dense steps are added.

**Dense warm-up rule** (`plan_run`): the warm-up length ``W`` (leading dense steps, at step granularity) is
chosen jointly with the heads' patterns. For a candidate ``W`` the profile buckets are clipped to start at
``W``, the dense steps take ``dense / N`` of the budget, and the allocation above spends the rest on the heads;
a dense step scores value 1 (it is exact), so the plan's value is the whole-run mean of the heads' fidelity (or
recall) with dense steps at 1, each step weighted by `step_weights` (an error made early is carried through the
rest of the run; the heads' values in the allocation carry the same weights, their costs the plain step counts).
The ``W`` with the highest value wins (ties: the shorter warm-up). ``W`` starts
at the recipe's ``dense_warmup`` or the first profiled step, whichever is later (steps the profile did not
measure can only run dense). Runs over 12 candidate lengths are scanned on a grid of 12, then at every length
between the best grid point's neighbours. A budget below the cheapest plan (every head at its cheapest point,
no more warm-up than required) is an `InputError` naming the smallest feasible budget.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

from compactsearch.errors import InputError
from compactsearch.search.study import HeadResult

__all__ = ["Allocation", "allocate", "hull", "RunPlan", "plan_run", "sparse_ranges", "step_weights"]

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


# --------------------------------------------------------------------------------------------- the whole run
@dataclass(frozen=True)
class RunPlan:
    """The dense warm-up, the sparse step range of each searched profile bucket, the heads' allocation.

    ``cost`` and ``value`` are whole-run figures (dense steps at 1); ``tried`` lists ``(warmup, cost, value)``
    of every warm-up length evaluated.
    """

    dense_warmup: int
    buckets: tuple[tuple[int, tuple[int, int]], ...]
    keys: tuple[tuple[int, int, int], ...]
    weights: tuple[float, ...]
    allocation: Allocation
    cost: float
    value: float
    tried: tuple[tuple[int, float, float], ...]


def step_weights(num_steps: int) -> list[float]:
    """How much an output error made at each step of a run counts, normalised to sum to 1: ``(N - s)^2``.

    An error made at step ``s`` is carried through the ``N - s`` steps that follow (each denoises from it), so
    early, high-noise steps count more. Measured on the bundled tiny model (docs/tiny-model.md): at a whole-run
    budget of 0.5, three dense steps and the rest at density 0.286 give 27.04 dB PSNR against 24.60 dB for every
    step at 0.5, which a uniform weight ranked the other way; the errors of the first 3 of 10 steps must count
    at least ~3x those of the last 7, and the square of the steps ahead is the simplest weight that does.
    """
    w = [float((num_steps - s) ** 2) for s in range(num_steps)]
    total = sum(w)
    return [x / total for x in w]


def sparse_ranges(buckets: list[tuple[int, int]], warmup: int) -> list[tuple[int, tuple[int, int]]]:
    """Profile buckets clipped to start at ``warmup``: ``(index, (a, b))`` for those with a step left."""
    return [(i, (max(a, warmup), b)) for i, (a, b) in enumerate(buckets) if b > max(a, warmup)]


def plan_run(buckets: list[tuple[int, int]], num_steps: int, min_warmup: int, results: dict, layers: int,
             heads: int, budget: float, floor: float, cost_of=None) -> RunPlan:
    """Choose the dense warm-up and every head's front point under one whole-run budget (module docstring).

    Args:
        buckets: the profile's step ranges.
        num_steps: the run's steps.
        min_warmup: the shortest allowed warm-up.
        results: ``(bucket, layer, head) -> HeadResult`` for every bucket with a step at or after ``min_warmup``.
        cost_of: ``blocks -> fraction of a dense head`` (default blocks themselves: pass the density function).
    """
    cost_of = cost_of or (lambda b: float(b))
    lh = layers * heads
    cheapest_of = {}
    for b, _ in sparse_ranges(buckets, min_warmup):
        cheapest_of[b] = sum(cost_of(results[(b, l, h)].front[0].blocks) for l in range(layers)
                             for h in range(heads)) / lh

    def cheapest(w: int) -> float:
        rng = sparse_ranges(buckets, w)
        sparse = sum(e - a for _, (a, e) in rng)
        return (num_steps - sparse + sum((e - a) * cheapest_of[b] for b, (a, e) in rng)) / num_steps

    # at least one step stays sparse: a whole-dense run is no config (budget 1 lets every head be dense anyway)
    candidates = [w for w in range(min_warmup, num_steps) if cheapest(w) <= budget + _EPS]
    if not candidates:
        least = min(cheapest(w) for w in range(min_warmup, num_steps))
        first = f" and {min_warmup} dense warm-up steps" if min_warmup else ""
        raise InputError(f"budget {budget:g} is too small for the whole run: the cheapest patterns{first} need "
                         f"{least:.4f} of dense attention; use --budget >= {math.ceil(least * 1e4) / 1e4:g}")

    plans: dict[int, RunPlan] = {}

    sw = step_weights(num_steps)

    def evaluate(w: int) -> RunPlan:
        if w in plans:
            return plans[w]
        rng = sparse_ranges(buckets, w)
        sparse = sum(e - a for _, (a, e) in rng)
        dense = (num_steps - sparse) / num_steps
        in_sparse = {s for _, (a, e) in rng for s in range(a, e)}
        dense_value = sum(x for s, x in enumerate(sw) if s not in in_sparse)
        keys = tuple((b, l, h) for b, _ in rng for l in range(layers) for h in range(heads))
        steps = dict(rng)
        weights = tuple((steps[b][1] - steps[b][0]) / (num_steps * lh) for b, _, _ in keys)
        values = tuple(sum(sw[steps[b][0]:steps[b][1]]) / lh for b, _, _ in keys)
        fronts = [results[k] for k in keys]
        if keys:
            alloc = allocate(fronts, list(weights), list(values), budget - dense, floor, cost_of=cost_of)
        else:
            alloc = Allocation((), 0.0, 0.0, ())
        plans[w] = RunPlan(w, tuple(rng), keys, weights, alloc, dense + alloc.cost, dense_value + alloc.recall, ())
        return plans[w]

    grid = candidates
    if len(candidates) > 12:
        idx = sorted({round(i * (len(candidates) - 1) / 11) for i in range(12)})
        grid = [candidates[i] for i in idx]
    best = max(grid, key=lambda w: (round(evaluate(w).value, 9), -w))
    if grid is not candidates:
        gi = grid.index(best)
        lo, hi = grid[max(gi - 1, 0)], grid[min(gi + 1, len(grid) - 1)]
        best = max((w for w in candidates if lo <= w <= hi), key=lambda w: (round(evaluate(w).value, 9), -w))
    tried = tuple((w, round(p.cost, 5), round(p.value, 5)) for w, p in sorted(plans.items()))
    return replace(plans[best], tried=tried)
