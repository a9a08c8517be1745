"""Which buckets, layers, heads and distances the report draws: the subsampling rules for large profiles.

Tables and heatmaps cover every (bucket, layer, head). Small multiples (one map per head and temporal distance)
do not scale to 40 layers x 40 heads, so the report draws:

- buckets: every bucket up to `MAX_BUCKETS`, else the first, the middle and the last;
- panels: every (layer, head) when there are at most `MAX_MIDDLE_HEADS` of them; else `MAX_LAYERS` layers spread
  evenly from the first to the last, `HEADS_PER_LAYER` heads spread evenly in each, plus **every** head (up to
  `MAX_MIDDLE_HEADS`) of the middle layer;
- distances: every temporal tile distance up to `MAX_DISTANCES`, else 0, 1 and the rest spread evenly to the
  largest;
- maps: at most `MAX_CELLS` cells per side; larger tile grids are summed over square-ish cells of tiles.

`Selection.notes()` says in words what was left out, so the report can say so.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Selection",
    "select",
    "evenly",
    "parse_head",
    "MAX_BUCKETS",
    "MAX_LAYERS",
    "HEADS_PER_LAYER",
    "MAX_MIDDLE_HEADS",
    "MAX_DISTANCES",
    "MAX_CELLS",
]

MAX_BUCKETS = 3
MAX_LAYERS = 4
HEADS_PER_LAYER = 4
MAX_MIDDLE_HEADS = 48
MAX_DISTANCES = 8
MAX_CELLS = 32


def evenly(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` spread evenly, first and last included (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@dataclass(frozen=True)
class Selection:
    """What the small multiples show.

    Attributes:
        buckets: profile bucket indices drawn.
        panels: ``(layer, head)`` pairs drawn, in layer then head order.
        middle_layer: the layer whose heads are all drawn.
        distances: temporal tile distances drawn (of ``0 .. num_distances-1``).
        num_buckets, num_layers, num_heads, num_distances: the profile's sizes.
    """

    buckets: tuple[int, ...]
    panels: tuple[tuple[int, int], ...]
    middle_layer: int
    distances: tuple[int, ...]
    num_buckets: int
    num_layers: int
    num_heads: int
    num_distances: int

    @property
    def subsampled(self) -> bool:
        return (len(self.buckets) < self.num_buckets or len(self.panels) < self.num_layers * self.num_heads
                or len(self.distances) < self.num_distances)

    def notes(self) -> list[str]:
        """Sentences describing what was subsampled (empty when everything is drawn)."""
        out = []
        if len(self.buckets) < self.num_buckets:
            out.append(f"step buckets {', '.join(map(str, self.buckets))} of {self.num_buckets} "
                       "(first, middle and last)")
        if len(self.panels) < self.num_layers * self.num_heads:
            layers = sorted({l for l, _ in self.panels})
            others = [l for l in layers if l != self.middle_layer]
            out.append(f"{len(self.panels)} of {self.num_layers * self.num_heads} (layer, head) pairs: every head of "
                       f"the middle layer {self.middle_layer}"
                       + (f" and {HEADS_PER_LAYER} evenly spaced heads of layers {', '.join(map(str, others))}"
                          if others else ""))
        if len(self.distances) < self.num_distances:
            out.append(f"temporal distances {', '.join(map(str, self.distances))} of 0..{self.num_distances - 1}")
        return out


def select(num_buckets: int, num_layers: int, num_heads: int, num_distances: int) -> Selection:
    """The selection rule of the module docstring."""
    buckets = evenly(num_buckets, MAX_BUCKETS)
    middle = num_layers // 2
    layers = sorted(set(evenly(num_layers, MAX_LAYERS)) | {middle})
    panels = []
    if num_layers * num_heads <= MAX_MIDDLE_HEADS:  # small models: every head
        layers = list(range(num_layers))
        middle_all = True
    else:
        middle_all = False
    for l in layers:
        every = middle_all or l == middle
        heads = range(min(num_heads, MAX_MIDDLE_HEADS)) if every else evenly(num_heads, HEADS_PER_LAYER)
        panels += [(l, h) for h in heads]
    if num_distances <= MAX_DISTANCES:
        distances = list(range(num_distances))
    else:
        distances = [0, 1] + [2 + d for d in evenly(num_distances - 2, MAX_DISTANCES - 2)]
    return Selection(tuple(buckets), tuple(panels), middle, tuple(distances), num_buckets, num_layers, num_heads,
                     num_distances)


def parse_head(text: str, num_layers: int, num_heads: int) -> tuple[int, int]:
    """``"L.H"`` -> ``(layer, head)``; raises `InputError` naming the fix."""
    from compactsearch.errors import InputError

    parts = text.strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"--head {text!r}: give LAYER.HEAD, e.g. --head 3.7")
    layer, head = int(parts[0]), int(parts[1])
    if not layer < num_layers:
        raise InputError(f"--head {text}: layer {layer} is out of range, the profile has layers 0..{num_layers - 1}")
    if not head < num_heads:
        raise InputError(f"--head {text}: head {head} is out of range, the profile has heads 0..{num_heads - 1}")
    return layer, head
