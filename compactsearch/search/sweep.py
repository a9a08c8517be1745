"""A cheap deterministic sweep that seeds the Optuna search: exact Lagrangian optimisation over the space.

Kept mass and block cost are both sums over frame groups, and a group's contribution depends only on its
distance range and its windows. So for a price ``mu`` (recall per unit of block density), the pattern that
maximises ``recall - mu * density`` is found exactly by dynamic programming: for every distance range the best
option (one window, a crossed pair of windows, or skipping the range), then the best split of ``0..nt-1`` into
at most ``G`` ranges. Sweeping ``mu`` over a geometric grid, then bisecting around the recall floor, gives the
points of the head's (fast) convex hull, including the cheapest hull point at or above the floor.
"""

from __future__ import annotations

import functools

import numpy as np

from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.search.scoring import HeadTables
from compactsearch.search.space import SearchSpace, canonical

__all__ = ["lagrangian_sweep", "RangeOptions"]

MAX_PAIR_OPTIONS = 4000


@functools.lru_cache(maxsize=16)
def _option_index(nh: int, nw: int) -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray]:
    """The window options of a grid and, per option, the flat ``(h-1)*nw + (w-1)`` indices of its windows A, B
    and their intersection (``nh*nw``: a zero row, for single windows)."""
    windows = [(h, w) for h in range(1, nh + 1) for w in range(1, nw + 1)]
    options: list[tuple] = [((h, w),) for h, w in windows]
    # crossed pairs: a taller-narrower and a shorter-wider window (others reduce to one window)
    pairs = [((h1, w1), (h2, w2)) for h1 in range(1, nh + 1) for h2 in range(1, h1)
             for w1 in range(1, nw + 1) for w2 in range(w1 + 1, nw + 1)]
    if len(pairs) > MAX_PAIR_OPTIONS:  # very fine grids: keep thin crosses (a one-tile band on one side)
        pairs = [p for p in pairs if p[0][1] == 1 or p[1][0] == 1]
    options += pairs
    zero = nh * nw
    flat = lambda h, w: (h - 1) * nw + (w - 1)  # noqa: E731
    ia = np.array([flat(*o[0]) for o in options])
    ib = np.array([flat(*o[1]) if len(o) == 2 else zero for o in options])
    ii = np.array([flat(o[1][0], o[0][1]) if len(o) == 2 else zero for o in options])
    return options, ia, ib, ii


class RangeOptions:
    """Every window option's fast recall and density on every distance range (head-specific)."""

    def __init__(self, ht: HeadTables):
        lt = ht.lt
        nt, nh, nw = lt.grid
        self.ranges = [(lo, hi) for lo in range(nt) for hi in range(lo, nt)]
        lo = np.array([r[0] for r in self.ranges])
        hi = np.array([r[1] for r in self.ranges])

        def by_range(T: np.ndarray) -> np.ndarray:  # [nh*nw + 1, R], a zero row last
            prev = np.where(lo > 0, T[:, :, np.maximum(lo - 1, 0)], 0.0)
            flat = (T[:, :, hi] - prev).reshape(nh * nw, -1)
            return np.concatenate([flat, np.zeros((1, flat.shape[1]))])

        self.options, ia, ib, ii = _option_index(nh, nw)
        m, c = by_range(ht.T) / ht.total, by_range(lt.cost_T) / (lt.nb * lt.nb)
        self.mass = m[ia] + m[ib] - m[ii]  # [n_options, R]: A + B - A∩B
        self.cost = c[ia] + c[ib] - c[ii]
        self.base = ht.const_kept / ht.total
        self.nt = nt


def _solve(opts: RangeOptions, mu: float, groups: int) -> list[tuple[int, int, tuple | None]]:
    """The split into <= ``groups`` ranges and per-range option maximising ``recall - mu * density``."""
    v = opts.mass - mu * opts.cost
    arg = v.argmax(0)
    best = v[arg, np.arange(v.shape[1])]
    idx = {r: i for i, r in enumerate(opts.ranges)}
    nt = opts.nt
    neg = -np.inf

    def value(lo: int, hi: int) -> tuple[float, tuple | None]:
        i = idx[(lo, hi)]
        if lo > 0 and best[i] < 0:
            return 0.0, None  # skip the range
        return float(best[i]), opts.options[arg[i]]

    # f[g][e]: best value covering distances 0..e with exactly g ranges
    f = [[neg] * nt for _ in range(groups + 1)]
    back: dict[tuple[int, int], tuple[int, tuple | None]] = {}
    for e in range(nt):
        f[1][e], opt = value(0, e)
        back[(1, e)] = (0, opt)
    for g in range(2, groups + 1):
        for e in range(g - 1, nt):
            for s in range(g - 1, e + 1):
                if f[g - 1][s - 1] == neg:
                    continue
                val, opt = value(s, e)
                if f[g - 1][s - 1] + val > f[g][e]:
                    f[g][e] = f[g - 1][s - 1] + val
                    back[(g, e)] = (s, opt)
    g = max(range(1, groups + 1), key=lambda k: (f[k][nt - 1], -k))
    out, e = [], nt - 1
    while g >= 1:
        s, opt = back[(g, e)]
        out.append((s, e, opt))
        e, g = s - 1, g - 1
    return out[::-1]


def lagrangian_sweep(
    ht: HeadTables, space: SearchSpace, floor: float, n_mu: int = 24, refine: int = 8
) -> list[Pattern]:
    """Hull patterns of one head (fast evaluator), cheapest last; see the module docstring.

    Args:
        ht: the head's fast tables.
        space: gives the grid and the group cap.
        floor: recall floor to bisect around.
        n_mu: grid size of prices ``mu`` in ``[1e-3, 1e2]`` (recall per density).
        refine: bisection steps around the floor.
    """
    opts = RangeOptions(ht)
    grid = space.grid
    seen: dict[Pattern, float] = {}

    def run(mu: float) -> float:
        parts = _solve(opts, mu, space.groups)
        groups = [FrameGroup(lo, hi, tuple(Window(*w) for w in opt)) for lo, hi, opt in parts if opt is not None]
        p = canonical(Pattern(tuple(groups)), grid)
        r = ht.recall(p)
        seen.setdefault(p, r)
        return r

    mus = np.geomspace(1e-3, 1e2, n_mu)
    recalls = [run(float(mu)) for mu in mus]
    # recall falls as mu grows: bisect (geometrically) between the last mu above the floor and the next
    above = [i for i, r in enumerate(recalls) if r >= floor]
    if above and above[-1] + 1 < len(mus):
        lo_mu, hi_mu = float(mus[above[-1]]), float(mus[above[-1] + 1])
        for _ in range(refine):
            mid = (lo_mu * hi_mu) ** 0.5
            if run(mid) >= floor:
                lo_mu = mid
            else:
                hi_mu = mid
    return list(seen)
