"""Config format ``compactsearch/v2``: frozen dataclasses, strict YAML load with path-precise errors, save.

A config says, per (step bucket, layer, head), which pattern to run. Layout of the YAML::

    format: compactsearch/v2
    model: {id: Wan-AI/Wan2.1-T2V-14B-Diffusers, adapter: wan}
    geometry: {frames: 21, height: 45, width: 80, text_tokens: 0, text_position: none,
               layers: 40, heads: 40, head_dim: 128}
    tiling: {tile: [4, 8, 4], block_size: 128}
    schedule: {steps: 50, warmup: 0.3}          # steps: the count searched at; warmup: run fraction that runs dense
    buckets:
      - bucket: 1                               # the profile's bucket number (default: the position in this list)
        run: [0.3, 1.0]                         # half-open range of the run, as fractions (compactsearch.schedule)
        layers:
          - layer: 0
            heads:
              - {head: 0, pattern: dense}
              - head: 1
                groups:
                  - dt: [0, 1]                  # temporal tile distances, inclusive
                    windows: [[3, 5], [1, 10]]  # (h, w) in tiles, at most two
                sinks: [[0, 2, 7]]              # optional: sink key tiles (t, h, w) in the tile grid, <= 4
                recall: 0.93                    # optional: from the search
                density: 0.31                   # optional: block density of this head
                oracle_recall: 0.95             # optional: top blocks by mass at the same density keep this
                oracle_fidelity: 0.97           # optional: that block set's output fidelity (value statistics)
                efficiency: 0.979               # optional: recall / oracle_recall
    search: {...}        # optional: the search settings (budget: whole-run attention compute vs dense)
    provenance: {...}    # kind (example | searched | retargeted), profile hash, tool version, date, arguments
    summary: {...}       # optional: density (whole run), density_sparse_steps, recall_mean, est_attention_speedup,
                         # pattern_efficiency

Positions in the run are fractions so that one config runs at any step count (`compactsearch.schedule`: the
rule and why). Format ``compactsearch/v1`` (integer steps: ``schedule: {steps, dense_warmup}``, bucket
``steps: [a, b]``) still loads: it is converted on read (`Config.source_format` says which was read).

Every error names its path, e.g. ``buckets[1].layers[3].heads[7].groups[0].windows[1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compact_attn.mask import BlockSparseMask
from compactsearch._io import atomic_write_text, dump_yaml, read_yaml
from compactsearch._schema import fail as _fail
from compactsearch._schema import integer as _int
from compactsearch._schema import lst as _list
from compactsearch._schema import mapping as _mapping
from compactsearch._schema import number as _number
from compactsearch._schema import string as _str
from compactsearch._schema import tname as _tname
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry, geometry_from_yaml
from compactsearch.limits import check_attention_shape, check_caps
from compactsearch.masks import build_layer_mask, build_masks
from compactsearch.patterns import Pattern, pattern_from_yaml
from compactsearch.schedule import StepPlan, fraction, plan_steps
from compactsearch.tiling import TileLayout, tiling_from_yaml

__all__ = ["FORMAT", "FORMATS", "HeadConfig", "LayerConfig", "Bucket", "Config", "load_config", "summarize",
           "run_density"]

FORMAT = "compactsearch/v2"
FORMATS = ("compactsearch/v1", FORMAT)  # every version this tool reads; v1 is converted on read
_EPS = 1e-9


Recorded = float | None  # a number the search recorded for a head; None where unknown (hand-written configs)


@dataclass(frozen=True)
class HeadConfig:
    """One head's entry: its pattern, and the numbers the search recorded for it.

    Attributes:
        recall: kept share of the head's attention mass (calibration prompts).
        density: kernel blocks computed over all blocks of the layer.
        oracle_recall: recall of the head's top blocks by mass at the same block count (no static mask keeps more).
        oracle_fidelity: output fidelity of that top-block set (with value statistics).
        efficiency: ``recall / oracle_recall``, what the pattern language costs this head.
    """

    head: int
    pattern: Pattern
    recall: Recorded = None
    density: Recorded = None
    oracle_recall: Recorded = None
    oracle_fidelity: Recorded = None
    efficiency: Recorded = None


@dataclass(frozen=True)
class LayerConfig:
    layer: int
    heads: tuple[HeadConfig, ...]

    def patterns(self) -> list[Pattern]:
        return [h.pattern for h in self.heads]


@dataclass(frozen=True)
class Bucket:
    """The part ``run = (start, end)`` of a sampling run (fractions, half-open) shares these per-layer patterns.

    ``id`` is the profile's bucket number: the one numbering a profile, its search, this config, `inspect` and
    `report` share.
    """

    run: tuple[float, float]
    layers: tuple[LayerConfig, ...]
    id: int = 0

    @classmethod
    def of_steps(cls, steps: tuple[int, int], num_steps: int, layers: tuple[LayerConfig, ...], id: int = 0
                 ) -> Bucket:
        """The bucket running steps ``[a, b)`` of a ``num_steps`` run."""
        return cls((fraction(steps[0], num_steps), fraction(steps[1], num_steps)), tuple(layers), id)


@dataclass(frozen=True)
class Config:
    model_id: str
    adapter: str
    geometry: VideoGeometry
    num_layers: int
    num_heads: int
    head_dim: int
    tile: tuple[int, int, int]
    block_size: int
    num_steps: int
    warmup: float
    buckets: tuple[Bucket, ...]
    search: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    source_format: str = field(default=FORMAT, compare=False)

    # ------------------------------------------------------------- derived
    def layout(self) -> TileLayout:
        return TileLayout(self.geometry, self.tile, self.block_size)

    def layer_mask(self, bucket: int, layer: int, layout: TileLayout | None = None,
                   heads: tuple[int, int] | None = None) -> BlockSparseMask:
        """The kernel mask of a (bucket, layer); with ``heads = (start, stop)`` only those heads' (a Ulysses
        rank's share of the heads)."""
        patterns = self.buckets[bucket].layers[layer].patterns()
        if heads is not None:
            start, stop = heads
            if not 0 <= start < stop <= len(patterns):
                raise ValueError(f"head range {heads} outside the layer's {len(patterns)} heads")
            patterns = patterns[start:stop]
        return build_layer_mask(patterns, layout or self.layout())

    def plan(self, num_steps: int | None = None) -> StepPlan:
        """The schedule laid on a run of ``num_steps`` steps (default: the step count it was searched at)."""
        return plan_steps(self.warmup, [b.run for b in self.buckets], num_steps or self.num_steps)

    @property
    def dense_warmup(self) -> int:
        """Leading dense steps at the config's own step count."""
        return self.plan().warmup

    def bucket_steps(self, bucket: int, num_steps: int | None = None) -> tuple[int, int]:
        """Step range ``[a, b)`` of a bucket (list index) in a run of ``num_steps`` (default: the config's)."""
        return self.plan(num_steps).ranges[bucket]

    def bucket_index(self, bucket_id: int) -> int | None:
        """List index of the bucket whose ``id`` is ``bucket_id``, or None."""
        return next((i for i, b in enumerate(self.buckets) if b.id == bucket_id), None)

    def bucket_for_step(self, step: int, num_steps: int | None = None) -> int | None:
        """Index of the bucket that runs ``step`` of a ``num_steps`` run, or None when the step runs dense."""
        return self.plan(num_steps).bucket_of(step)

    def masks(self, workers: int | None = None) -> dict[tuple[int, int], BlockSparseMask]:
        """Every layer's mask of every bucket, ``{(bucket, layer): BlockSparseMask}``, built in parallel."""
        layout = self.layout()
        keys = [(bi, li) for bi, b in enumerate(self.buckets) for li in range(len(b.layers))]
        built = build_masks([self.buckets[bi].layers[li].patterns() for bi, li in keys], layout, workers)
        return dict(zip(keys, built))

    # ---------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        g = self.geometry
        out: dict[str, Any] = {
            "format": FORMAT,
            "model": {"id": self.model_id, "adapter": self.adapter},
            "geometry": {
                **g.to_dict(),
                "layers": self.num_layers,
                "heads": self.num_heads,
                "head_dim": self.head_dim,
            },
            "tiling": {"tile": list(self.tile), "block_size": self.block_size},
            "schedule": {"steps": self.num_steps, "warmup": round(float(self.warmup), 6)},
            "buckets": [],
        }
        for b in self.buckets:
            layers = []
            for lc in b.layers:
                heads = []
                for hc in lc.heads:
                    entry: dict[str, Any] = {"head": hc.head}
                    y = hc.pattern.to_yaml()
                    if y == "dense":
                        entry["pattern"] = "dense"
                    else:
                        entry["groups"] = y
                        if hc.pattern.sinks:
                            entry["sinks"] = hc.pattern.sinks_yaml()
                    for name in ("recall", "density", "oracle_recall", "oracle_fidelity", "efficiency"):
                        if getattr(hc, name) is not None:
                            entry[name] = round(float(getattr(hc, name)), 5)
                    heads.append(entry)
                layers.append({"layer": lc.layer, "heads": heads})
            out["buckets"].append({"bucket": b.id, "run": [round(float(x), 6) for x in b.run], "layers": layers})
        for key in ("search", "provenance", "summary"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def save(self, path: Path) -> None:
        """Write the YAML atomically."""
        atomic_write_text(Path(path), dump_yaml(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> Config:
        return load_config(path)


# ----------------------------------------------------------------------------------------- strict parser
_TOP_KEYS = {"format", "model", "geometry", "tiling", "schedule", "buckets", "search", "provenance", "summary"}


# optional per-head numbers the search records, with their ranges (a fidelity is 1 - relative error: it can be
# negative; the efficiency is recall / oracle recall at the same block count, so at most 1)
_HEAD_NUMBERS = {"oracle_recall": (0.0, 1.0), "oracle_fidelity": (-math.inf, 1.0), "efficiency": (0.0, 1.0)}


def _float(x, path: str, lo: float = 0.0, hi: float = 1.0) -> float:
    return _number(x, path, lo, hi)


def _listed(x, path: str, count: int, what: str, required: set[str] = frozenset(), optional: set[str] = frozenset()):
    """``(index, entry, entry path)`` of a config's list of ``count`` layers or heads (``what``): mappings that
    number themselves in order (``{what}: index``), with the ``required`` and ``optional`` keys besides."""
    raw = _list(x, path)
    if len(raw) != count:
        raise _fail(path, f"has {len(raw)} {what}s but geometry.{what}s is {count}")
    for i, entry in enumerate(raw):
        ep = f"{path}[{i}]"
        entry = _mapping(entry, ep, {what, *required}, optional)
        if _int(entry[what], f"{ep}.{what}", 0) != i:
            raise _fail(f"{ep}.{what}", f"expected {what} {i} here ({what}s are listed in order), got {entry[what]}")
        yield i, entry, ep


def _pattern(entry: dict, path: str, grid: tuple[int, int, int]) -> Pattern:
    """A head's pattern: ``pattern: dense`` or ``groups`` (and ``sinks``), read by `pattern_from_yaml`."""
    if "pattern" in entry and "groups" in entry:
        raise _fail(path, "give either 'pattern: dense' or 'groups', not both")
    if "pattern" in entry:
        if entry["pattern"] != "dense":
            raise _fail(f"{path}.pattern", f"the only named pattern is 'dense', got {entry['pattern']!r}")
        return pattern_from_yaml("dense", entry.get("sinks"), path=path)
    if "groups" not in entry:
        raise _fail(path, "missing 'groups' (or 'pattern: dense')")
    return pattern_from_yaml(entry["groups"], entry.get("sinks"), path=path, grid=grid)


def _v1_schedule(d: dict) -> tuple[int, float, list[tuple[float, float]], list[int]]:
    """A v1 document's integer schedule, checked under its v1 paths, as (steps, warmup, runs, bucket ids)."""
    s = _mapping(d["schedule"], "schedule", {"steps", "dense_warmup"})
    num_steps = _int(s["steps"], "schedule.steps", 1)
    warmup = _int(s["dense_warmup"], "schedule.dense_warmup", 0)
    if warmup > num_steps:
        raise _fail("schedule.dense_warmup", f"{warmup} is more than schedule.steps ({num_steps})")
    runs, prev_end = [], warmup
    for bi, b in enumerate(_list(d["buckets"], "buckets")):
        bp = f"buckets[{bi}]"
        b = _mapping(b, bp, {"steps", "layers"})
        st = _list(b["steps"], f"{bp}.steps", 2)
        a, e = _int(st[0], f"{bp}.steps[0]", 0), _int(st[1], f"{bp}.steps[1]", 0)
        if not prev_end <= a < e <= num_steps:
            raise _fail(f"{bp}.steps", f"[{a}, {e}) must be non-empty, after dense warm-up and earlier buckets "
                        f"(from {prev_end}) and within schedule.steps ({num_steps})")
        prev_end = e
        runs.append((fraction(a, num_steps), fraction(e, num_steps)))
    return num_steps, fraction(warmup, num_steps), runs, list(range(len(runs)))


def _v2_schedule(d: dict) -> tuple[int, float, list[tuple[float, float]], list[int]]:
    s = _mapping(d["schedule"], "schedule", {"steps", "warmup"})
    num_steps = _int(s["steps"], "schedule.steps", 1)
    warmup = _float(s["warmup"], "schedule.warmup")
    runs, ids, prev_end = [], [], warmup
    for bi, b in enumerate(_list(d["buckets"], "buckets")):
        bp = f"buckets[{bi}]"
        b = _mapping(b, bp, {"run", "layers"}, {"bucket"})
        r = _list(b["run"], f"{bp}.run", 2)
        a, e = _float(r[0], f"{bp}.run[0]"), _float(r[1], f"{bp}.run[1]")
        if not (prev_end - _EPS <= a < e <= 1.0):
            raise _fail(f"{bp}.run", f"[{a:g}, {e:g}) must be non-empty, start at or after the dense warm-up and "
                        f"earlier buckets (from {prev_end:g}) and end by 1 (fractions of the run)")
        prev_end = e
        bid = _int(b["bucket"], f"{bp}.bucket", 0) if "bucket" in b else bi
        if ids and bid <= ids[-1]:
            raise _fail(f"{bp}.bucket", f"bucket numbers must ascend; {bid} follows {ids[-1]}")
        runs.append((a, e))
        ids.append(bid)
    return num_steps, warmup, runs, ids


def config_from_dict(data: dict, source: str = "config") -> Config:
    """Validate a parsed YAML mapping into a Config; errors name the path. Format v1 is converted."""
    d = _mapping(data, "", {"format", "model", "geometry", "tiling", "schedule", "buckets"},
                 {"search", "provenance", "summary"})
    if d["format"] not in FORMATS:
        raise _fail("format", f"expected one of {', '.join(FORMATS)}, got {d['format']!r}")
    m = _mapping(d["model"], "model", {"id", "adapter"})
    g = _mapping(d["geometry"], "geometry", {"frames", "height", "width", "layers", "heads", "head_dim"},
                 {"text_tokens", "text_position"})
    geometry = geometry_from_yaml(g)
    model_shape = {k: _int(g[k], f"geometry.{k}", 1) for k in ("layers", "heads", "head_dim")}
    check_caps(model_shape, "geometry")
    tile, block_size = tiling_from_yaml(_mapping(d["tiling"], "tiling", {"tile", "block_size"}))
    check_attention_shape(geometry.seq_len, block_size, g["heads"], g["head_dim"], "geometry")
    layout = TileLayout(geometry, tile, block_size)
    v1 = d["format"] == "compactsearch/v1"
    num_steps, warmup, runs, ids = (_v1_schedule if v1 else _v2_schedule)(d)
    L, H = g["layers"], g["heads"]
    buckets = []
    for bi, b in enumerate(d["buckets"]):
        bp = f"buckets[{bi}]"
        layers = []
        for li, lc, lp in _listed(b["layers"], f"{bp}.layers", L, "layer", required={"heads"}):
            heads = []
            for hi, hc, hp in _listed(lc["heads"], f"{lp}.heads", H, "head",
                                      optional={"pattern", "groups", "sinks", "recall", "density", *_HEAD_NUMBERS}):
                pattern = _pattern(hc, hp, layout.grid_thw)
                recall = _float(hc["recall"], f"{hp}.recall") if "recall" in hc else None
                density = _float(hc["density"], f"{hp}.density") if "density" in hc else None
                extra = {k: _number(hc[k], f"{hp}.{k}", *rng) for k, rng in _HEAD_NUMBERS.items() if k in hc}
                heads.append(HeadConfig(hi, pattern, recall, density, **extra))
            layers.append(LayerConfig(li, tuple(heads)))
        buckets.append(Bucket(runs[bi], tuple(layers), ids[bi]))
    extras = {}
    for key in ("search", "provenance", "summary"):
        v = d.get(key, {}) or {}
        if not isinstance(v, dict):
            raise _fail(key, f"expected a mapping, got {_tname(v)}")
        extras[key] = v
    return Config(
        model_id=_str(m["id"], "model.id"),
        adapter=_adapter(m["adapter"]),
        geometry=geometry,
        num_layers=L,
        num_heads=H,
        head_dim=g["head_dim"],
        tile=tile,
        block_size=block_size,
        num_steps=num_steps,
        warmup=warmup,
        buckets=tuple(buckets),
        source_format=d["format"],
        **extras,
    )


_FAMILIES = ("wan", "hunyuan_video", "cogvideox", "ltx", "mochi")  # the built-in adapters (no import needed)


def _adapter(x) -> str:
    """``model.adapter``: a registered adapter family, or ``unknown`` (a search on a profile naming no model)."""
    name = _str(x, "model.adapter")
    if name in _FAMILIES or name == "unknown":
        return name
    from compactsearch.adapters import adapter_names  # imports diffusers: only for a name not built in

    if name not in adapter_names():
        raise _fail("model.adapter", f"unknown adapter {name!r}; known adapters: {', '.join(adapter_names())}")
    return name


def load_config(path: Path) -> Config:
    """Load and strictly validate a config YAML. Raises InputError naming the file and the path inside it."""
    data = read_yaml(Path(path), "config")
    try:
        return config_from_dict(data)
    except InputError as e:
        raise InputError(f"config {path}: {e}") from e


def summarize(config: Config, bucket_blocks: list[int] | None = None, num_steps: int | None = None) -> dict:
    """Whole-config numbers: block density over the whole run (dense steps count 1) and over the sparse steps,
    the ideal attention speed-up from the whole-run figure, recall mean/min where known.

    Args:
        bucket_blocks: computed blocks per bucket (all layers and heads), when the caller already knows them
            (the search does); otherwise every mask is built to count them.
        num_steps: the run's step count (default: the config's own).
    """
    nb = config.layout().num_blocks
    if bucket_blocks is None:
        masks = config.masks()
        bucket_blocks = [sum(masks[(bi, li)].computed_blocks() for li in range(len(b.layers)))
                         for bi, b in enumerate(config.buckets)]
    per_bucket = [n / (config.num_layers * config.num_heads * nb * nb) for n in bucket_blocks]
    plan = config.plan(num_steps)
    out = {"steps": plan.n, "dense_steps": plan.dense_steps, **run_density(per_bucket, plan),
           "bucket_density": [round(x, 5) for x in per_bucket]}
    recalls = [h.recall for b in config.buckets for lc in b.layers for h in lc.heads if h.recall is not None]
    if recalls:
        t = torch.tensor(recalls)
        out["recall_mean"] = round(float(t.mean()), 5)
        out["recall_min"] = round(float(t.min()), 5)
    pairs = [(h.recall, h.oracle_recall) for b in config.buckets for lc in b.layers for h in lc.heads
             if h.recall is not None and h.oracle_recall is not None]
    if pairs:
        out.update(pattern_efficiency(pairs))
    return out


def run_density(bucket_density: list[float], plan: StepPlan) -> dict:
    """``density`` over the whole run (dense steps at 1), ``density_sparse_steps``, ``est_attention_speedup``."""
    steps = plan.sparse_steps()
    sparse = sum(d * n for d, n in zip(bucket_density, steps))
    whole = (sparse + plan.dense_steps) / plan.n
    return {"density": round(whole, 5),
            "density_sparse_steps": round(sparse / sum(steps), 5) if sum(steps) else 1.0,
            "est_attention_speedup": round(1.0 / whole, 3)}


def pattern_efficiency(pairs: list[tuple[float, float]], weights: list[float] | None = None) -> dict:
    """Whole-model figures from per-head ``(recall, oracle recall)``: the mean oracle recall and the pattern
    efficiency, mean recall / mean oracle recall (weighted means; equal weights by default)."""
    w = weights or [1.0] * len(pairs)
    rec = sum(wi * r for wi, (r, _) in zip(w, pairs)) / sum(w)
    orc = sum(wi * o for wi, (_, o) in zip(w, pairs)) / sum(w)
    return {"oracle_recall_mean": round(orc, 5), "pattern_efficiency": round(rec / orc if orc > 0 else 1.0, 5)}
