"""The pattern language: windows, frame groups, sinks; their rules, the grid check, YAML read and write.

Per (step bucket, layer, head) a pattern is either dense or a list of **frame groups**. A frame group covers
key tiles whose temporal tile distance ``|dt|`` lies in an inclusive range ``[dt_lo, dt_hi]``; distances no
group covers are skipped. Inside a group the spatial mask around the query tile is the union of up to two
windows, each ``(h, w)`` tiles centred on the query tile and shifted inward at the grid border so it keeps its
size (a window larger than the grid is clipped to it). One rectangle is a local window, two thin orthogonal
ones make a cross, a window covering the frame makes the group global.

A non-dense pattern may also name up to `MAX_SINKS` **sink** key tiles by their ``(t, h, w)`` coordinates in
the tile grid (raster coordinates, not sequence order): every query tile keeps those key tiles, whole, on top of
its frame groups (vertical stripes in the attention map: keys every query attends to). Grid coordinates, not
sequence positions, so a retargeting tool can map them proportionally to another tile grid. Text stays dense.

The rules live here once: the dataclasses check their own values (messages name the part relative to the
pattern, e.g. ``groups[1].dt: ...``), `Pattern.check_grid` checks the fit to a tile grid, and `pattern_from_yaml`
reads the YAML form that `Pattern.to_yaml` / `Pattern.sinks_yaml` write (configs, the search's storage),
prefixing every message with the path it read. Patterns become masks in `compactsearch.masks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from compactsearch._schema import fail as _fail
from compactsearch._schema import integer as _int
from compactsearch._schema import lst as _list
from compactsearch._schema import mapping as _mapping
from compactsearch.errors import InputError

__all__ = ["Window", "FrameGroup", "Pattern", "MAX_WINDOWS", "MAX_SINKS", "pattern_from_yaml"]

MAX_WINDOWS = 2
MAX_SINKS = 4  # sink key tiles per pattern (S)


@dataclass(frozen=True)
class Window:
    """A rectangle of ``h x w`` tiles centred on the query tile."""

    h: int
    w: int

    def __post_init__(self) -> None:
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in (self.h, self.w)):
            raise InputError(f"a window is two positive integers [h, w] in tiles, got [{self.h!r}, {self.w!r}]")


@dataclass(frozen=True)
class FrameGroup:
    """Key tiles at temporal tile distance ``dt_lo <= |dt| <= dt_hi`` use the union of ``windows``."""

    dt_lo: int
    dt_hi: int
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        if not (isinstance(self.dt_lo, int) and isinstance(self.dt_hi, int) and 0 <= self.dt_lo <= self.dt_hi):
            raise InputError(f"dt: must be [lo, hi] with 0 <= lo <= hi, got [{self.dt_lo!r}, {self.dt_hi!r}]")
        if not 1 <= len(self.windows) <= MAX_WINDOWS:
            raise InputError(f"windows: a frame group has 1 or {MAX_WINDOWS} windows, got {len(self.windows)}")


@dataclass(frozen=True)
class Pattern:
    """Dense (``groups is None``) or frame groups with disjoint, ascending distance ranges, plus up to
    `MAX_SINKS` sink key tiles ``(t, h, w)`` (grid coordinates; stored sorted, so equal sets compare equal)."""

    groups: tuple[FrameGroup, ...] | None = None
    sinks: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.sinks:  # (the search builds many patterns: no work without sinks)
            self._check_sinks()
        elif type(self.sinks) is not tuple:
            object.__setattr__(self, "sinks", ())
        if self.groups is None:
            return
        for i, (a, b) in enumerate(zip(self.groups, self.groups[1:]), start=1):
            if b.dt_lo <= a.dt_hi:
                raise InputError(
                    f"groups[{i}].dt: frame groups must be ascending and disjoint: "
                    f"dt [{a.dt_lo}, {a.dt_hi}] then [{b.dt_lo}, {b.dt_hi}]"
                )

    def _check_sinks(self) -> None:
        sinks = tuple(tuple(s) for s in self.sinks)
        if len(sinks) > MAX_SINKS:
            raise InputError(f"sinks: at most {MAX_SINKS} sinks, got {len(sinks)}")
        for si, s in enumerate(sinks):
            if len(s) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in s):
                raise InputError(f"sinks[{si}]: a sink is a key tile [t, h, w] of three integers >= 0, got {list(s)!r}")
            if s in sinks[:si]:
                raise InputError(f"sinks[{si}]: key tile {list(s)} is listed twice (sinks are distinct key tiles)")
        if self.groups is None:
            raise InputError("sinks: a dense pattern has no sinks (it already attends to every key)")
        object.__setattr__(self, "sinks", tuple(sorted(sinks)))

    @classmethod
    def dense(cls) -> Pattern:
        return cls(None)

    @classmethod
    def local(cls, dt: int, h: int, w: int) -> Pattern:
        """One window ``(h, w)`` for every distance up to ``dt``."""
        return cls((FrameGroup(0, dt, (Window(h, w),)),))

    @property
    def is_dense(self) -> bool:
        return self.groups is None

    def with_sinks(self, sinks) -> Pattern:
        """The same frame groups with ``sinks`` instead of this pattern's (a dense pattern stays dense)."""
        return self if self.groups is None else Pattern(self.groups, tuple(sinks))

    def check_grid(self, grid_thw: tuple[int, int, int]) -> str | None:
        """A message naming the first part that does not fit the tile grid, else None."""
        if self.groups is None:
            return None
        nt, nh, nw = grid_thw
        for gi, g in enumerate(self.groups):
            if g.dt_hi > nt - 1:
                return f"groups[{gi}].dt: distance {g.dt_hi} exceeds the grid's largest, {nt - 1} (tile frames {nt})"
            for wi, win in enumerate(g.windows):
                if win.h > nh or win.w > nw:
                    return (
                        f"groups[{gi}].windows[{wi}]: window [{win.h}, {win.w}] is larger than the tile grid "
                        f"[{nh}, {nw}] (rows, cols)"
                    )
        return _sinks_outside(self.sinks, grid_thw)

    def to_yaml(self):
        if self.groups is None:
            return "dense"
        return [{"dt": [g.dt_lo, g.dt_hi], "windows": [[w.h, w.w] for w in g.windows]} for g in self.groups]

    def sinks_yaml(self) -> list[list[int]]:
        """The sinks as YAML: ``[[t, h, w], ...]`` (empty without sinks)."""
        return [list(s) for s in self.sinks]

    def describe(self) -> str:
        if self.groups is None:
            return "dense"
        parts = []
        for g in self.groups:
            wins = "+".join(f"{w.h}x{w.w}" for w in g.windows)
            parts.append(f"dt{g.dt_lo}-{g.dt_hi}:{wins}")
        if self.sinks:
            parts.append("sinks:" + ",".join(f"{t}.{h}.{w}" for t, h, w in self.sinks))
        return " ".join(parts)


def _sinks_outside(sinks, grid_thw: tuple[int, int, int]) -> str | None:
    """A message naming the first sink (by its index in ``sinks``) outside the tile grid, else None."""
    for si, s in enumerate(sinks):
        if not all(x < n for x, n in zip(s, grid_thw)):
            return f"sinks[{si}]: key tile {list(s)} lies outside the tile grid {list(grid_thw)} (t, h, w)"
    return None


def pattern_from_yaml(groups, sinks=None, *, path: str = "pattern", grid: tuple[int, int, int] | None = None
                      ) -> Pattern:
    """The `Pattern` of its YAML form: ``groups`` is ``"dense"`` or what `Pattern.to_yaml` writes (a list of
    ``{dt: [lo, hi], windows: [[h, w], ...]}``), ``sinks`` what `Pattern.sinks_yaml` writes (None or empty: none).

    Errors are `InputError` naming the place under ``path`` (the groups at ``{path}.groups``, the sinks at
    ``{path}.sinks``); with ``grid`` the pattern must also fit that tile grid (`Pattern.check_grid`).
    """
    if groups == "dense":
        if sinks:
            raise _fail(f"{path}.sinks", "a dense pattern has no sinks (it already attends to every key)")
        return Pattern.dense()
    raw = _list(groups, f"{path}.groups")
    if not raw:
        raise _fail(f"{path}.groups", "needs at least one frame group (use 'pattern: dense' for full attention)")
    read = []
    for gi, g in enumerate(raw):
        gp = f"{path}.groups[{gi}]"
        g = _mapping(g, gp, {"dt", "windows"})
        dt = _list(g["dt"], f"{gp}.dt", 2)
        lo, hi = _int(dt[0], f"{gp}.dt[0]", 0), _int(dt[1], f"{gp}.dt[1]", 0)
        windows = []
        for wi, w in enumerate(_list(g["windows"], f"{gp}.windows")):
            wp = f"{gp}.windows[{wi}]"
            w = _list(w, wp, 2)
            windows.append(Window(_int(w[0], f"{wp}[0]", 1), _int(w[1], f"{wp}[1]", 1)))
        try:
            read.append(FrameGroup(lo, hi, tuple(windows)))
        except InputError as e:
            raise InputError(f"{gp}.{e}") from None
    tiles = []
    for si, x in enumerate(_list([] if sinks is None else sinks, f"{path}.sinks")):
        sp = f"{path}.sinks[{si}]"
        tiles.append(tuple(_int(v, f"{sp}[{i}]", 0) for i, v in enumerate(_list(x, sp, 3))))
    outside = None if grid is None else _sinks_outside(tiles, grid)  # indices as written, before sorting
    try:
        pattern = Pattern(tuple(read), tuple(tiles))
        problem = outside or (None if grid is None else pattern.check_grid(grid))
    except InputError as e:
        problem = str(e)
    if problem:
        raise InputError(f"{path}.{problem}")
    return pattern
