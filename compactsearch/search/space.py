"""The per-head search space: frame-group boundaries and up to two windows per group, as Optuna parameters.

Declared once per tile grid ``(nt, nh, nw)`` and group cap ``G``. Parameters (all integers)::

    dt_max            0 .. nt-1      farthest temporal tile distance attended; farther ones are skipped
    cut1 .. cut{G-1}  1 .. nt        group boundaries (sorted): groups [0, c1-1], [c1, c2-1], ..., [c_last, dt_max]
    h{i}, w{i}        h: 0|1 .. nh   first window of group i in tiles; h0 >= 1 (a query always sees its own
                      w: 1 .. nw     frame), h{i} = 0 for i > 0 skips the group
    h{i}x, w{i}x      h: 0 .. nh     second window; h{i}x = 0 means none
                      w: 1 .. nw
    sinks             0 .. S         how many of the head's sink candidates to keep (a prefix of the ranking
                                     `compactsearch.search.sinks.sink_candidates` gives; only when it gave any)

Empty ranges (equal cuts, cuts past dt_max) are dropped. Every decoded pattern is put in a canonical form so
equal masks compare equal: a window inside the other window of its group is dropped, windows are sorted,
neighbouring groups with the same windows are merged, skipped groups vanish, and a single group covering every
distance with a full-frame window is `Pattern.dense()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.distributions import BaseDistribution, IntDistribution

from compactsearch.patterns import FrameGroup, Pattern, Window

__all__ = ["SearchSpace", "canonical"]


def _union(windows: tuple[Window, ...]) -> tuple[Window, ...]:
    """Drop a window contained in the other one (windows of one group share a centre); sort the rest."""
    ws = sorted(set(windows), key=lambda w: (-w.h, -w.w))
    if len(ws) == 2:
        a, b = ws
        if a.h >= b.h and a.w >= b.w:
            ws = [a]
    return tuple(ws)


def canonical(pattern: Pattern, grid: tuple[int, int, int]) -> Pattern:
    """The canonical form of ``pattern`` on tile grid ``grid`` (same block mask, unique representation)."""
    if pattern.is_dense:
        return pattern
    nt, nh, nw = grid
    groups: list[FrameGroup] = []
    for g in pattern.groups:
        ws = _union(tuple(Window(min(w.h, nh), min(w.w, nw)) for w in g.windows))
        lo, hi = g.dt_lo, min(g.dt_hi, nt - 1)
        if lo > hi:
            continue
        if groups and groups[-1].windows == ws and groups[-1].dt_hi == lo - 1:
            groups[-1] = FrameGroup(groups[-1].dt_lo, hi, ws)
        else:
            groups.append(FrameGroup(lo, hi, ws))
    if not groups:
        raise ValueError("a pattern needs at least one frame group")
    if len(groups) == 1 and groups[0].dt_lo == 0 and groups[0].dt_hi == nt - 1 and groups[0].windows == (
        Window(nh, nw),
    ):
        return Pattern.dense()  # every key: sinks add nothing
    return Pattern(tuple(groups), pattern.sinks)


@dataclass(frozen=True)
class SearchSpace:
    """Parameters <-> patterns for one tile grid and group cap. See the module docstring."""

    grid: tuple[int, int, int]
    max_groups: int = 3
    sinks: tuple[tuple[int, int, int], ...] = ()  # the head's sink candidates, best first

    def sink_set(self, k: int) -> tuple[tuple[int, int, int], ...]:
        """The first ``k`` sink candidates."""
        return self.sinks[:k]

    @property
    def groups(self) -> int:
        """Groups actually available: at most one per temporal distance."""
        return max(1, min(self.max_groups, self.grid[0]))

    def distributions(self) -> dict[str, BaseDistribution]:
        nt, nh, nw = self.grid
        d: dict[str, BaseDistribution] = {"dt_max": IntDistribution(0, nt - 1)}
        for i in range(1, self.groups):
            d[f"cut{i}"] = IntDistribution(1, nt)
        for i in range(self.groups):
            d[f"h{i}"] = IntDistribution(1 if i == 0 else 0, nh)
            d[f"w{i}"] = IntDistribution(1, nw)
            d[f"h{i}x"] = IntDistribution(0, nh)
            d[f"w{i}x"] = IntDistribution(1, nw)
        if self.sinks:
            d["sinks"] = IntDistribution(0, len(self.sinks))
        return d

    def decode(self, params: dict) -> Pattern:
        """Parameters -> canonical pattern."""
        nt = self.grid[0]
        dt_max = params["dt_max"]
        cuts = sorted(params[f"cut{i}"] for i in range(1, self.groups))
        bounds = [0, *cuts, nt]
        groups = []
        for i in range(self.groups):
            lo, hi = bounds[i], min(bounds[i + 1] - 1, dt_max)
            if lo > hi or params[f"h{i}"] == 0:
                continue
            ws = [Window(params[f"h{i}"], params[f"w{i}"])]
            if params[f"h{i}x"] > 0:
                ws.append(Window(params[f"h{i}x"], params[f"w{i}x"]))
            groups.append(FrameGroup(lo, hi, tuple(ws)))
        return canonical(Pattern(tuple(groups), self.sink_set(params.get("sinks", 0))), self.grid)

    def encode(self, pattern: Pattern) -> dict | None:
        """Parameters that decode to ``pattern``, or None when the space cannot express it."""
        nt, nh, nw = self.grid
        k = 0
        if pattern.sinks:  # a prefix of the candidates, or not expressible
            k = next((k for k in range(1, len(self.sinks) + 1)
                      if tuple(sorted(self.sink_set(k))) == pattern.sinks), None)
            if k is None:
                return None
            pattern = pattern.with_sinks(())
        if pattern.is_dense:
            pattern = Pattern.local(nt - 1, nh, nw)
        groups = list(pattern.groups)
        if groups[0].dt_lo != 0:
            return None
        # Fill gaps between groups with skipped groups.
        ranges: list[tuple[int, int, tuple[Window, ...] | None]] = []
        for g in groups:
            if ranges and g.dt_lo > ranges[-1][1] + 1:
                ranges.append((ranges[-1][1] + 1, g.dt_lo - 1, None))
            ranges.append((g.dt_lo, g.dt_hi, g.windows))
        if len(ranges) > self.groups:
            return None
        params: dict = {"dt_max": ranges[-1][1]}
        starts = [r[0] for r in ranges[1:]]
        starts += [nt] * (self.groups - 1 - len(starts))  # unused cuts: past the last distance
        for i, c in enumerate(starts, start=1):
            params[f"cut{i}"] = c
        for i in range(self.groups):
            ws = ranges[i][2] if i < len(ranges) else None
            if ws is None:
                params.update({f"h{i}": 0 if i else 1, f"w{i}": 1, f"h{i}x": 0, f"w{i}x": 1})
                continue
            params[f"h{i}"], params[f"w{i}"] = ws[0].h, ws[0].w
            if len(ws) == 2:
                params[f"h{i}x"], params[f"w{i}x"] = ws[1].h, ws[1].w
            else:
                params[f"h{i}x"], params[f"w{i}x"] = 0, 1
        if self.sinks:
            params["sinks"] = k
            pattern = pattern.with_sinks(self.sink_set(k))
        if self.decode(params) != canonical(pattern, self.grid):
            return None
        return params
