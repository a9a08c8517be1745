"""Baselines on the fast evaluator: the paper's greedy boundary contraction, the best single cube, dense.

**Greedy boundary contraction** (Compact Attention, section 4.2). The temporal distances are split into fixed
frame groups (`default_partition`: ``{0}, {1}, {2..3}, ...`` up to ``G`` groups, the last one taking the rest).
Every group starts as full attention with two full-frame windows A and B. A move shrinks one window by one tile
row or column (A.h, A.w, B.h, B.w) or two at once (the same axis of both windows: a smaller local window; the
crossed axes, A.h with B.w or A.w with B.h: a cross); a window shrunk to zero is dropped, a group that loses
both windows is skipped (never the distance-0 group). Each step applies, over all groups, the move with the
least recall lost per unit of block density saved (``dRecall / dDensity``), among the moves that keep recall
``>= tau``; it stops when no move keeps ``tau`` or the best ratio exceeds ``lam``. Every state on the way is
returned: the path is a curve of (recall, cost) points from dense down to ``tau``.

Units of ``lam``: recall (fraction of the head's mass) lost per unit of block density (fraction of dense
blocks) saved. The paper's values (0.011 for Wan) are in unstated units; ``lam = inf`` (our default) stops at
``tau`` only.

**Best cube** (sliding-tile style): one window ``(h, w)`` for every distance up to ``dt``, the cheapest whose
recall is ``>= tau`` (ties: higher recall). All cubes are evaluated at once from the fast tables.

**Whole-model rivals** (`baseline_configs`, what ``compactsearch evaluate --baselines`` runs): at a searched config's
block density per bucket, the best single cube for the whole model (one window ``(dt, h, w)`` for every head, the
one with the best mean recall among those no denser than the config) and the greedy contraction with one recall
threshold for all heads, bisected so the mean density matches. Where the config sits below what a rival can
reach in a bucket (its heads at their own-tile minimum), the rival's sparsest form stands in (the sparsest cube;
the contraction at threshold 0), denser than the config, and its bucket record says by how much
(``over_density``): the comparison then favours the rival.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from compactsearch.config import Config, HeadConfig, LayerConfig, summarize
from compactsearch.errors import InputError
from compactsearch.masks import build_layer_mask
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.search.scoring import HeadTables, LayoutTables
from compactsearch.search.space import canonical

__all__ = ["default_partition", "greedy_contraction", "cube_table", "best_cube", "cube_front", "min_pattern",
           "baseline_configs"]


def min_pattern() -> Pattern:
    """The cheapest pattern the search considers: each query tile sees only itself (plus text)."""
    return Pattern.local(0, 1, 1)


def default_partition(nt: int, groups: int) -> list[tuple[int, int]]:
    """Distance ranges ``{0}, {1}, {2..3}, {4..7}, ...``; the ``groups``-th range takes every larger distance."""
    out, lo, size = [], 0, 1
    while lo < nt:
        hi = nt - 1 if len(out) == groups - 1 else min(nt - 1, lo + size - 1)
        out.append((lo, hi))
        lo, size = hi + 1, (1 if lo == 0 else size * 2)
    return out


# ----------------------------------------------------------------------------------------------- greedy
def _rng(T: np.ndarray, h: int, w: int, lo: int, hi: int) -> float:
    v = T[h - 1, w - 1, hi]
    return float(v - T[h - 1, w - 1, lo - 1]) if lo > 0 else float(v)


def _group_value(T: np.ndarray, lo: int, hi: int, a, b) -> float:
    """Table sum over the union of windows a, b (``(h, w)`` or None) at distances [lo, hi]."""
    ws = [x for x in (a, b) if x is not None]
    if not ws:
        return 0.0
    v = sum(_rng(T, h, w, lo, hi) for h, w in ws)
    if len(ws) == 2:
        v -= _rng(T, min(ws[0][0], ws[1][0]), min(ws[0][1], ws[1][1]), lo, hi)
    return v


def _shrink(win, axis: int):
    if win is None:
        return "invalid"
    h, w = win
    h, w = (h - 1, w) if axis == 0 else (h, w - 1)
    return None if min(h, w) == 0 else (h, w)


# moves: (window A axis or None, window B axis or None); axis 0 = rows (h), 1 = cols (w)
_MOVES = ((0, None), (1, None), (None, 0), (None, 1), (0, 0), (1, 1), (0, 1), (1, 0))


def _state_pattern(ranges, state, grid) -> Pattern:
    groups = []
    for (lo, hi), (a, b) in zip(ranges, state, strict=True):
        ws = tuple(Window(*x) for x in (a, b) if x is not None)
        if ws:
            groups.append(FrameGroup(lo, hi, ws))
    return canonical(Pattern(tuple(groups)), grid)


def greedy_contraction(
    ht: HeadTables, tau: float, lam: float = math.inf, groups: int = 3
) -> tuple[list[Pattern], Pattern]:
    """Run the greedy contraction on one head.

    Args:
        ht: the head's fast tables.
        tau: recall floor.
        lam: stop when the cheapest move loses more than ``lam`` recall per unit of density saved.
        groups: number of fixed frame groups (`default_partition`).

    Returns:
        (path, result): every state visited (dense first) and the final state.
    """
    lt = ht.lt
    nt, nh, nw = lt.grid
    ranges = default_partition(nt, groups)
    state = [((nh, nw), (nh, nw)) for _ in ranges]
    mass_v = [_group_value(ht.T, lo, hi, a, b) for (lo, hi), (a, b) in zip(ranges, state, strict=True)]
    cost_v = [_group_value(lt.cost_T, lo, hi, a, b) for (lo, hi), (a, b) in zip(ranges, state, strict=True)]
    total, dense_blocks = ht.total, float(lt.nb * lt.nb)
    recall = (ht.const_kept + sum(mass_v)) / total
    path = [Pattern.dense()]
    while True:
        best = None
        for gi, ((lo, hi), (a, b)) in enumerate(zip(ranges, state, strict=True)):
            for ma, mb in _MOVES:
                na = a if ma is None else _shrink(a, ma)
                nb_ = b if mb is None else _shrink(b, mb)
                if na == "invalid" or nb_ == "invalid" or (na is None and nb_ is None and lo == 0):
                    continue
                d_cost = cost_v[gi] - _group_value(lt.cost_T, lo, hi, na, nb_)
                if d_cost <= 1e-9:
                    continue
                d_mass = mass_v[gi] - _group_value(ht.T, lo, hi, na, nb_)
                if recall - d_mass / total < tau:
                    continue
                ratio = (d_mass / total) / (d_cost / dense_blocks)
                if best is None or ratio < best[0] - 1e-15:
                    best = (ratio, gi, na, nb_, d_mass, d_cost)
        if best is None or best[0] > lam:
            break
        _, gi, na, nb_, d_mass, d_cost = best
        state[gi] = (na, nb_)
        mass_v[gi] -= d_mass
        cost_v[gi] -= d_cost
        recall -= d_mass / total
        path.append(_state_pattern(ranges, state, lt.grid))
    return path, path[-1]


# ------------------------------------------------------------------------------------------------ cubes
def cube_table(ht: HeadTables) -> tuple[np.ndarray, np.ndarray]:
    """Fast recall and block count of every cube ``Pattern.local(dt, h, w)``: two ``[nh, nw, nt]`` arrays."""
    recall = (ht.const_kept + ht.T) / ht.total
    blocks = ht.lt.const_blocks + ht.lt.cost_T
    return recall, blocks


def _cube(grid, idx) -> Pattern:
    h, w, dt = (int(x) for x in idx)
    return canonical(Pattern.local(dt, h + 1, w + 1), grid)


def best_cube(ht: HeadTables, tau: float) -> Pattern:
    """The cheapest cube with fast recall ``>= tau`` (ties: higher recall); dense when none reaches ``tau``."""
    recall, blocks = cube_table(ht)
    ok = recall >= tau
    if not ok.any():
        return Pattern.dense()
    key = np.where(ok, blocks - recall * 1e-6, np.inf)
    return _cube(ht.lt.grid, np.unravel_index(int(np.argmin(key)), key.shape))


def cube_front(ht: HeadTables) -> list[Pattern]:
    """Cubes on the (recall, blocks) Pareto front, cheapest first."""
    recall, blocks = cube_table(ht)
    order = np.lexsort((-recall.ravel(), blocks.ravel()))
    out, best = [], -1.0
    for i in order:
        r = recall.ravel()[i]
        if r > best + 1e-12:
            best = r
            out.append(_cube(ht.lt.grid, np.unravel_index(int(i), recall.shape)))
    return out


# ------------------------------------------------------------------------------------ whole-model configs
def _profile_bucket(profile, steps: tuple[int, int]) -> int:
    for b, (lo, hi) in enumerate(profile.buckets):
        if lo <= steps[0] < hi:
            return b
    raise InputError(f"the profile has no bucket for the config's steps {list(steps)}; use the profile the config "
                     "was searched on")


def _uniform_config(config: Config, patterns_by_bucket: list[list[list[Pattern]]], kind: str, extra: dict) -> Config:
    buckets = []
    for b, bucket in enumerate(config.buckets):
        layers = tuple(LayerConfig(li, tuple(HeadConfig(h, patterns_by_bucket[b][li][h])
                                             for h in range(config.num_heads)))
                       for li in range(config.num_layers))
        buckets.append(replace(bucket, layers=layers))
    out = replace(config, buckets=tuple(buckets), search={}, summary={},
                  provenance={"kind": kind, "baseline_of": config.provenance.get("profile_hash", ""), **extra})
    return replace(out, summary=summarize(out))


def baseline_configs(profile, config: Config, bisect_steps: int = 14) -> dict[str, Config]:
    """The best single cube and the paper's greedy contraction at ``config``'s density, bucket by bucket.

    Args:
        profile: the `Profile` the config was searched on (same geometry, tiling, layers, heads).
        config: the searched config; its dense warm-up and buckets are kept.
        bisect_steps: bisection steps on the greedy recall threshold.

    Returns:
        ``{"best-cube": Config, "greedy": Config}``.
    """
    if (profile.geometry != config.geometry or tuple(profile.tile) != tuple(config.tile)
            or profile.block_size != config.block_size or profile.num_layers != config.num_layers
            or profile.num_heads != config.num_heads):
        raise InputError("the profile and the config differ in geometry, tiling, layers or heads; give the profile "
                         "the config was searched on")
    layout = config.layout()
    lt = LayoutTables(layout)
    nt, nh, nw = layout.grid_thw
    nb2 = layout.num_blocks ** 2
    target = summarize(config)["bucket_density"]
    cube_patterns, greedy_patterns, cube_meta, greedy_meta = [], [], [], []
    for bi in range(len(config.buckets)):
        pb = _profile_bucket(profile, config.bucket_steps(bi, profile.num_steps))
        tables = [HeadTables(lt, m) for layer in range(config.num_layers)
                  for m in profile.mass(pb, layer)]
        goal = target[bi] + 1e-9

        def exact_density(p: Pattern) -> float:
            return build_layer_mask([p], layout).computed_blocks() / nb2

        # best cube: one window for every head
        best = None
        for dt in range(nt):
            for h in range(1, nh + 1):
                for w in range(1, nw + 1):
                    p = Pattern.local(dt, h, w)
                    if lt.pattern_blocks(p) / nb2 > goal + 0.02:
                        continue
                    d = exact_density(p)
                    if d > goal:
                        continue
                    r = sum(t.recall(p) for t in tables) / len(tables)
                    if best is None or r > best[0] + 1e-12 or (abs(r - best[0]) <= 1e-12 and d < best[1]):
                        best = (r, d, p)
        meta = {}
        if best is None:  # the config sits below every cube here (its heads at their own-tile minimum): the
            # sparsest cube stands in, denser than the config (the comparison then favours the baseline)
            for dt, h, w in ((0, 1, 1), (0, 1, 2), (0, 2, 1)):
                p = Pattern.local(dt, min(h, nh), min(w, nw))
                d, r = exact_density(p), sum(t.recall(p) for t in tables) / len(tables)
                if best is None or d < best[1] - 1e-12 or (abs(d - best[1]) <= 1e-12 and r > best[0]):
                    best = (r, d, p)
            meta["over_density"] = round(best[1] - target[bi], 5)
        cube_patterns.append([[best[2]] * config.num_heads for _ in range(config.num_layers)])
        cube_meta.append({"pattern": best[2].describe(), "recall_mean": round(best[0], 5), **meta})

        # greedy: one recall threshold for every head, bisected to the target density
        def greedy_at(tau: float, tables=tables) -> tuple[float, list[Pattern]]:
            pats = [greedy_contraction(t, tau)[1] for t in tables]
            dens = sum(t.density(p) for t, p in zip(tables, pats)) / len(pats)
            return dens, pats

        lo, hi = 0.0, 1.0
        d_lo, pats_lo = greedy_at(lo)
        # below the contraction's floor (tau 0) the floor itself stands in, denser than the config, as for the cube
        for _ in range(bisect_steps if d_lo <= goal else 0):
            mid = (lo + hi) / 2
            d, pats = greedy_at(mid)
            if d <= goal:
                lo, pats_lo = mid, pats
            else:
                hi = mid
        # the fast density can undercount straddling blocks: relax tau until the exact density fits
        while True:
            per_layer = [pats_lo[li * config.num_heads:(li + 1) * config.num_heads] for li in range(config.num_layers)]
            exact = sum(build_layer_mask(p, layout).computed_blocks() for p in per_layer) / (
                nb2 * config.num_layers * config.num_heads)
            if exact <= goal + 1e-9 or lo <= 0.0:
                break
            lo = max(0.0, lo - 0.01)
            _, pats_lo = greedy_at(lo)
        greedy_patterns.append(per_layer)
        greedy_meta.append({"tau": round(lo, 5), "density": round(exact, 5),
                            **({"over_density": round(exact - target[bi], 5)} if exact > goal else {})})
    return {
        "best-cube": _uniform_config(config, cube_patterns, "baseline-best-cube", {"buckets": cube_meta}),
        "greedy": _uniform_config(config, greedy_patterns, "baseline-greedy", {"buckets": greedy_meta}),
    }
