"""The report's figures, made with matplotlib's object API (no pyplot: no global state, no GUI backend).

Each function takes plain arrays and returns a `matplotlib.figure.Figure` with titles, axis labels and units;
`png` renders one to PNG bytes. Nothing here reads profiles or configs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "LABEL_COLOURS",
    "MapPanel",
    "png",
    "small_multiples",
    "label_grid",
    "label_counts",
    "bucket_heatmaps",
    "value_heatmaps",
    "front_figure",
    "FrontPanel",
    "waste_figure",
    "layer_summary",
]

#: Colours of the profile's head labels (`compactsearch.profile.stats.LABELS`).
LABEL_COLOURS = {"local": "#1f77b4", "cross": "#ff7f0e", "time-variant": "#2ca02c", "global": "#d62728"}
DPI = 80
MAP_FLOOR = 1e-4  # smallest share drawn on the log colour scale of the maps


def png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _annotate(ax, values: np.ndarray, fmt: str, limit: int = 80) -> None:
    """Write each cell's value on a small heatmap."""
    if values.size > limit:
        return
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=7, color="black",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6})


def _ticks(ax, n_rows: int, n_cols: int) -> None:
    step_r, step_c = max(1, math.ceil(n_rows / 10)), max(1, math.ceil(n_cols / 20))
    ax.set_yticks(range(0, n_rows, step_r))
    ax.set_xticks(range(0, n_cols, step_c))


def _tile_ticks(ax, nh: int, nw: int) -> None:
    """Ticks at tile centres, labelled with the tile index (a tile i spans [i, i+1] on the axes)."""
    step_h, step_w = max(1, math.ceil(nh / 6)), max(1, math.ceil(nw / 6))
    ax.set_yticks([i + 0.5 for i in range(0, nh, step_h)], [str(i) for i in range(0, nh, step_h)])
    ax.set_xticks([i + 0.5 for i in range(0, nw, step_w)], [str(i) for i in range(0, nw, step_w)])


# ------------------------------------------------------------------------------------------ small multiples
@dataclass(frozen=True)
class MapPanel:
    """One row of the small multiples: one head's maps at the drawn distances.

    Attributes:
        name: row label, e.g. ``"L3.H7 local"``.
        maps: ``[D, rows, cols]`` share of the query tile's attention per (possibly downsampled) key cell.
        rects: per drawn distance, the pattern's windows ``[(row0, col0, rows, cols)]`` in tile units, None
            when the pattern skips that distance; the whole list is None when no config was given.
        sinks: per drawn distance, the pattern's sink key tiles ``[(row, col)]`` there (None: no config).
    """

    name: str
    maps: np.ndarray
    rects: list | None = None
    sinks: list | None = None


def small_multiples(panels: Sequence[MapPanel], distances: Sequence[int], grid_hw: tuple[int, int],
                    factor: tuple[int, int], query_hw: tuple[int, int], title: str) -> Figure:
    """Rows = heads, columns = temporal tile distances; each panel a key-tile map around the query tile.

    Args:
        panels: one `MapPanel` per row.
        distances: the temporal tile distance of each column.
        grid_hw: the tile grid's ``(rows, cols)``.
        factor: ``(fh, fw)`` tiles per drawn cell (1, 1 unless downsampled).
        query_hw: the query tile's ``(row, col)``, marked with a cross.
        title: figure title.
    """
    nh, nw = grid_hw
    fh, fw = factor
    n_rows, n_cols = len(panels), len(distances)
    # A fixed grid in inches (constrained layout costs ~1 s per figure of 32 panels).
    pw = 1.9
    ph = min(2.6, max(0.6, pw * nh / nw))
    left, right, top, bottom, ws, hs = 1.0, 1.3, 0.65, 0.55, 0.3, 0.3
    W = left + n_cols * pw + (n_cols - 1) * ws + right
    Hh = top + n_rows * ph + (n_rows - 1) * hs + bottom
    fig = Figure(figsize=(W, Hh))
    axes = fig.subplots(n_rows, n_cols, squeeze=False,
                        gridspec_kw={"left": left / W, "right": 1 - right / W, "top": 1 - top / Hh,
                                     "bottom": bottom / Hh, "wspace": ws / pw, "hspace": hs / ph})
    cmap = colormaps["viridis"].with_extremes(bad=colormaps["viridis"](0.0), under=colormaps["viridis"](0.0))
    norm = LogNorm(vmin=MAP_FLOOR, vmax=1.0)
    image = None
    for r, panel in enumerate(panels):
        for c, d in enumerate(distances):
            ax = axes[r, c]
            m = panel.maps[c]
            extent = (0, m.shape[1] * fw, m.shape[0] * fh, 0)
            image = ax.imshow(np.clip(m, MAP_FLOOR * 0.5, None), cmap=cmap, norm=norm, extent=extent,
                              interpolation="nearest", aspect="equal")
            ax.set_xlim(0, nw)
            ax.set_ylim(nh, 0)
            ax.plot(query_hw[1] + 0.5, query_hw[0] + 0.5, marker="+", color="red", markersize=7, mew=1.5)
            if panel.rects is not None:
                rects = panel.rects[c]
                if rects is None:
                    ax.text(nw / 2, nh / 2, "skipped", ha="center", va="center", color="white", fontsize=8,
                            bbox={"fc": "black", "alpha": 0.5, "ec": "none"})
                else:
                    for i, (r0, c0, hh, ww) in enumerate(rects):
                        # inset (~3 px, less on thin windows) so a window covering the frame stays visible
                        e = max(0.04, min(0.025 * nw, 0.12 * min(hh, ww)))
                        ax.add_patch(Rectangle((c0 + e, r0 + e), ww - 2 * e, hh - 2 * e, fill=False,
                                               edgecolor="#ff00ff", linewidth=1.8,
                                               linestyle="-" if i == 0 else "--"))
            for sr, sc in (panel.sinks[c] if panel.sinks is not None else ()):  # sink key tiles: cyan squares
                ax.add_patch(Rectangle((sc + 0.08, sr + 0.08), 0.84, 0.84, fill=False, edgecolor="#00e5ff",
                                       linewidth=1.6))
                ax.text(sc + 0.5, sr + 0.5, "S", ha="center", va="center", color="#00e5ff", fontsize=6,
                        fontweight="bold")
            _tile_ticks(ax, nh, nw)
            ax.tick_params(labelsize=6, length=2)
            if r == 0:
                ax.set_title(f"|dt| = {d} tile frames", fontsize=8)
            if r == n_rows - 1:
                ax.set_xlabel("key tile column", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{panel.name}\nkey tile row", fontsize=7)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / Hh, va="top")
    if image is not None:
        span = min(Hh - top - bottom, 6.0)
        cax = fig.add_axes((1 - (right - 0.2) / W, 1 - (top + span) / Hh, 0.16 / W, span / Hh))
        fig.colorbar(image, cax=cax, label="share of the query tile's attention per key tile (log scale)")
    return fig


# ------------------------------------------------------------------------------------------------ labels
def label_grid(grids: Sequence[tuple[str, np.ndarray]], labels: Sequence[str]) -> Figure:
    """One coloured (layer x head) grid of head labels per bucket.

    Args:
        grids: ``(title, codes)`` with ``codes`` ``[L, H]`` int, an index into ``labels``.
        labels: label names, coloured by `LABEL_COLOURS`.
    """
    n = len(grids)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    L, H = grids[0][1].shape
    cell = min(0.35, 9.0 / max(H * cols, 1))
    fig = Figure(figsize=(max(5.0, cols * (H * cell + 1.2) + 1.5), rows * (L * cell + 1.4) + 0.8),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = ListedColormap([LABEL_COLOURS.get(x, "#7f7f7f") for x in labels])
    norm = BoundaryNorm(np.arange(len(labels) + 1) - 0.5, len(labels))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        title, codes = grids[i]
        ax.imshow(codes, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        _ticks(ax, L, H)
    handles = [Patch(color=LABEL_COLOURS.get(x, "#7f7f7f"), label=x) for x in labels]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(labels), fontsize=8)
    fig.suptitle("Head labels per (layer, head) (rule: compactsearch.profile.stats)", fontsize=10)
    return fig


def label_counts(counts: Sequence[tuple[str, Sequence[int]]], labels: Sequence[str]) -> Figure:
    """Grouped bars: heads per label, one bar per bucket.

    Args:
        counts: ``(bucket title, [count per label])``.
    """
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    n = len(counts)
    width = 0.8 / max(n, 1)
    x = np.arange(len(labels))
    for i, (title, cs) in enumerate(counts):
        bars = ax.bar(x + (i - (n - 1) / 2) * width, cs, width, label=title)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, labels)
    ax.set_xlabel("head label")
    ax.set_ylabel("heads (count)")
    ax.set_title("Heads per label and step bucket")
    if n > 1:
        ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------------ heatmaps
def bucket_heatmaps(title: str, density: np.ndarray, recall: np.ndarray, floor: float | None) -> Figure:
    """Two (layer x head) heatmaps of one bucket: block density and recall of the chosen patterns."""
    L, H = density.shape
    cell = min(0.4, 7.0 / max(H, 1))
    fig = Figure(figsize=(max(11.0, 2 * (H * cell + 2.2) + 0.5), max(3.8, L * cell + 1.6)), layout="constrained")
    ax_d, ax_r = fig.subplots(1, 2)
    im = ax_d.imshow(density, cmap="viridis", vmin=0.0, vmax=max(float(np.nanmax(density)), 1e-6),
                     interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax_d, label="block density (computed / dense blocks)", shrink=0.9)
    ax_d.set_title("density of the chosen pattern", fontsize=9)
    _annotate(ax_d, density, ".2f")
    lo = float(np.nanmin(recall))
    if floor is not None:
        lo = min(lo, floor - 0.02)
    im = ax_r.imshow(recall, cmap="RdYlGn", vmin=min(lo, 0.999), vmax=1.0, interpolation="nearest", aspect="equal")
    cb = fig.colorbar(im, ax=ax_r, label="recall (share of attention mass kept)", shrink=0.9)
    if floor is not None:
        cb.ax.axhline(floor, color="black", linewidth=1.5)
    ax_r.set_title("recall of the chosen pattern" + (f" (floor {floor:g}: black line)" if floor else ""), fontsize=9)
    _annotate(ax_r, recall, ".3f")
    for ax in (ax_d, ax_r):
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        _ticks(ax, L, H)
    fig.suptitle(title, fontsize=10)
    return fig


def value_heatmaps(grids: Sequence[tuple[str, np.ndarray]], title: str, unit: str, fmt: str = ".2f",
                   cmap: str = "magma") -> Figure:
    """One (layer x head) heatmap per bucket of a per-head value, on one colour scale."""
    n = len(grids)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    L, H = grids[0][1].shape
    cell = min(0.35, 8.0 / max(H * cols, 1))
    vmax = max(float(np.nanmax(g)) for _, g in grids)
    fig = Figure(figsize=(max(5.0, cols * (H * cell + 1.2) + 2.0), rows * (L * cell + 1.4) + 0.6),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        t, g = grids[i]
        im = ax.imshow(g, cmap=cmap, norm=Normalize(0.0, max(vmax, 1e-9)), interpolation="nearest", aspect="equal")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        _ticks(ax, L, H)
        _annotate(ax, g, fmt)
    fig.colorbar(im, ax=axes, label=unit, shrink=0.9)
    fig.suptitle(title, fontsize=10)
    return fig


def efficiency_figure(series: Sequence[tuple[str, np.ndarray]]) -> Figure:
    """Heads by pattern efficiency: per bucket, every head's efficiency (recall / the oracle's recall at
    the same density), sorted ascending, so the heads the pattern language fits worst sit on the left."""
    fig = Figure(figsize=(7.0, 3.2), layout="constrained")
    ax = fig.subplots()
    lo = 1.0
    for name, eff in series:
        e = np.sort(np.asarray(eff, dtype=float).ravel())
        ax.plot(np.arange(1, e.size + 1), e, marker="." if e.size <= 64 else None, label=name)
        lo = min(lo, float(e.min()) if e.size else 1.0)
    ax.set_ylim(max(0.0, lo - 0.02), 1.005)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("heads, least efficient first")
    ax.set_ylabel("pattern efficiency")
    ax.set_title("Recall kept / recall of the top blocks by mass at the same density", fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------- front
@dataclass(frozen=True)
class FrontPanel:
    """One bucket's Pareto front of one head. Points are ``(density, recall)``, or ``(density, fidelity)`` when
    ``metric`` is ``"fidelity"`` (then ``front`` holds the recall front's patterns scored on fidelity, which need
    not be a front in that metric).

    Attributes:
        title: subplot title.
        front: the exact Pareto front, cheapest first.
        greedy, cube: the baselines at the floor.
        chosen: the config's pattern on this head, or None.
        floor: the recall floor (None: no line).
        metric: ``"recall"`` or ``"fidelity"``.
    """

    title: str
    front: Sequence[tuple[float, float]]
    greedy: tuple[float, float]
    cube: tuple[float, float]
    chosen: tuple[float, float] | None
    floor: float | None
    metric: str = "recall"


def front_figure(name: str, panels: Sequence[FrontPanel], fidelity: Sequence[FrontPanel] = ()) -> Figure:
    """Recall against cost for one head, one subplot per bucket; with ``fidelity`` panels, a second row of the same
    patterns' output fidelity against cost."""
    rows = [panels] + ([fidelity] if fidelity else [])
    n = len(panels)
    fig = Figure(figsize=(min(5.2 * n, 16), 4.2 * len(rows)), layout="constrained")
    grid = fig.subplots(len(rows), n, squeeze=False)
    for axes, row in zip(grid, rows):
        for ax, p in zip(axes, row):
            xs, ys = zip(*p.front)
            recall = p.metric == "recall"
            if recall:
                ax.step(xs, ys, where="post", color="#555555", linewidth=1, alpha=0.7)
            ax.plot(xs, ys, "o", color="#1f77b4", markersize=4,
                    label="Pareto front (search, exact)" if recall else "the recall front's patterns")
            ax.plot(*p.greedy, "^", color="#ff7f0e", markersize=9, label="greedy contraction")
            ax.plot(*p.cube, "s", color="#2ca02c", markersize=8, label="best cube")
            if p.chosen is not None:
                ax.plot(*p.chosen, "*", color="#d62728", markersize=15, label="chosen (config)")
            if p.floor is not None:
                ax.axhline(p.floor, color="black", linestyle=":", linewidth=1, label=f"recall floor {p.floor:g}")
            ax.set_xlabel("block density (computed / dense blocks)")
            ax.set_ylabel("recall (share of attention mass kept)" if recall
                          else "fidelity (1 - relative output error)")
            ax.set_title(p.title, fontsize=9)
            ax.set_xlim(0, 1.02)
            low = min(min(ys), p.greedy[1], p.cube[1], p.floor if p.floor is not None else 1.0,
                      p.chosen[1] if p.chosen else 1.0)
            # fidelity goes below 0 where a pattern's output error exceeds the output itself; drawn down to -1
            ax.set_ylim(max(0.0 if recall else -1.0, low - 0.05), 1.005)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Head {name}: recall{' and output fidelity' if fidelity else ''} against cost", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- waste
def waste_figure(reference: Sequence[tuple[str, float]], per_head: Sequence[tuple[str, np.ndarray]],
                 layout_text: str) -> Figure:
    """Tiling waste: the reference panel's patterns and, with a config, a histogram over the chosen patterns.

    Args:
        reference: ``(pattern name, waste)`` of the layout's reference panel.
        per_head: ``(bucket title, [L*H] waste of each head's chosen pattern)``; empty without a config.
        layout_text: the tile layout in words.
    """
    n = 1 + (1 if per_head else 0)
    fig = Figure(figsize=(5.5 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    names, values = zip(*reference)
    bars = axes[0].bar(names, [100 * v for v in values], color="#8c564b")
    axes[0].bar_label(bars, fmt="%.1f%%", fontsize=7)
    axes[0].set_ylabel("tiling waste (%)")
    axes[0].set_xlabel("reference pattern")
    axes[0].set_title("Reference panel on this layout", fontsize=9)
    axes[0].tick_params(axis="x", labelsize=7)
    if per_head:
        ax = axes[1]
        allv = np.concatenate([v for _, v in per_head]) * 100
        bins = np.linspace(min(0.0, float(allv.min())), max(float(allv.max()), 1.0), 21)
        for t, v in per_head:
            ax.hist(100 * v, bins=bins, alpha=0.6, label=f"{t} (mean {100 * float(np.mean(v)):.1f}%)")
        ax.set_xlabel("tiling waste of the chosen pattern (%)")
        ax.set_ylabel("heads (count)")
        ax.set_title("Chosen patterns", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Tiling waste: computed token pairs / allowed token pairs - 1 ({layout_text})", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------- summary
def layer_summary(series: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], floor: float | None) -> Figure:
    """Per layer: mean block density, and mean and minimum recall over heads, one line per bucket.

    Args:
        series: ``(bucket title, density [L], recall_mean [L], recall_min [L])``.
    """
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_d, ax_r = fig.subplots(1, 2)
    for i, (t, d, rm, rmin) in enumerate(series):
        colour = f"C{i}"
        x = np.arange(len(d))
        ax_d.plot(x, d, "-o", color=colour, markersize=3, label=t)
        ax_r.plot(x, rm, "-o", color=colour, markersize=3, label=f"{t} mean")
        ax_r.plot(x, rmin, "--", color=colour, linewidth=1, label=f"{t} min")
    ax_d.set_xlabel("layer")
    ax_d.set_ylabel("mean block density over heads")
    ax_d.set_title("Density per layer (computed / dense blocks)", fontsize=9)
    ax_d.set_ylim(0, 1.02)
    ax_r.set_xlabel("layer")
    ax_r.set_ylabel("recall (share of attention mass kept)")
    ax_r.set_title("Recall per layer: mean (solid) and worst head (dashed)", fontsize=9)
    if floor is not None:
        ax_r.axhline(floor, color="black", linestyle=":", linewidth=1, label=f"floor {floor:g}")
    for ax in (ax_d, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Whole model, per layer", fontsize=10)
    return fig
