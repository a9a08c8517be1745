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
"""

from __future__ import annotations

import math

import numpy as np

from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.search.scoring import HeadTables
from compactsearch.search.space import canonical

__all__ = ["default_partition", "greedy_contraction", "cube_table", "best_cube", "cube_front", "min_pattern"]


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
