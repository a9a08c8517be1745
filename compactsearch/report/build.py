"""`build_report`: read a profile (and optionally a config), compute what the figures need, write the report.

One pass over the profile's (bucket, layer) tensors (units shared by ``workers`` processes, one layer in memory per
process at a time) computes:

- per head labels and text mass (from the profile's statistics table; recomputed with
  `compactsearch.profile.stats.head_stats` when the table is missing or incomplete);
- with a config, per (config bucket, layer, head): exact recall, worst query block's recall and block density
  of the chosen pattern on this profile's mean mass (`compactsearch.search.ExactScorer`, the kernel's mask),
  and the pattern's tiling waste;
- the neighbourhood maps of the drawn heads (`compactsearch.report.maps`);
- for each ``--head L.H``, the head's exact Pareto front, recomputed with `compactsearch.search.search_head`
  using the config's search settings (defaults without one), with the greedy and best-cube baselines.

A config bucket is matched to the profile bucket whose step range overlaps it most, with the config's schedule
laid on the profile's step count (a searched config's buckets are the profile's, clipped to the dense warm-up,
and carry the profile's bucket numbers); the page names buckets by the profile's numbers only.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

from compactsearch._io import atomic_dir, atomic_write_text
from compactsearch.config import Config, load_config, run_density
from compactsearch.errors import InputError
from compactsearch.masks import tile_mask
from compactsearch.patterns import MAX_SINKS, Pattern
from compactsearch.profile.stats import LABELS, head_stats
from compactsearch.profile.store import Profile
from compactsearch.report import figures as F
from compactsearch.report.html import FigureRef, Section, Table, render_page
from compactsearch.report.maps import (
    TileShares,
    downsample,
    middle_tile,
    neighbourhood_maps,
    sink_cells,
    window_rects,
)
from compactsearch.report.select import MAX_CELLS, Selection, parse_head, select
from compactsearch.search import ExactScorer, HeadResult, HeadTables, LayoutTables, SearchSettings, SearchSpace
from compactsearch.search import search_head as _search_head
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.search.study import Oracle
from compactsearch.tile_choice import reference_panel

__all__ = ["ReportResult", "build_report", "check_config_matches", "match_buckets", "ROWS_PER_FIGURE"]

ROWS_PER_FIGURE = 8
Progress = Callable[[str, int, int], None]



@dataclass(frozen=True)
class ReportResult:
    """What `build_report` wrote and the numbers it printed."""

    html: Path
    figures: tuple[Path, ...]
    seconds: float
    summary: dict
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"html": str(self.html), "figures": [str(p) for p in self.figures], "seconds": round(self.seconds, 2),
                "summary": self.summary, "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------------- checks
def check_config_matches(profile: Profile, config: Config, config_path: Path | str) -> None:
    """Raise `InputError` when the config was made for another geometry, tiling or model size."""
    pairs = [
        ("geometry", profile.geometry.describe(), config.geometry.describe()),
        ("tile", list(profile.tile), list(config.tile)),
        ("block size", profile.block_size, config.block_size),
        ("layers", profile.num_layers, config.num_layers),
        ("heads", profile.num_heads, config.num_heads),
    ]
    for what, p, c in pairs:
        if p != c:
            raise InputError(f"config {config_path} is for another {what} ({c}) than the profile {profile.root} "
                             f"({p}); give a config searched on this profile")


def match_buckets(profile_buckets: Sequence[tuple[int, int]], config: Config, config_path: Path | str) -> list[int]:
    """For each config bucket, the profile bucket whose steps overlap it most."""
    out = []
    plan = config.plan(profile_buckets[-1][1])
    for i, (lo, hi) in enumerate(plan.ranges):
        overlaps = [max(0, min(hi, e) - max(lo, a)) for a, e in profile_buckets]
        best = int(np.argmax(overlaps))
        if overlaps[best] == 0:
            raise InputError(f"config {config_path}: buckets[{i}] steps {[lo, hi]} overlap no profile bucket "
                             f"({[list(x) for x in profile_buckets]}); give a config searched on this profile")
        out.append(best)
    return out


def _search_settings(config: Config | None) -> SearchSettings:
    s = dict(config.search) if config is not None else {}
    try:
        lam = s.get("greedy_lambda")
        settings = SearchSettings(budget=float(s.get("budget", 1.0)), recall=float(s.get("recall", 0.9)),
                                  trials=int(s.get("trials", 32)), max_groups=int(s.get("groups", 3)),
                                  sampler=str(s.get("sampler", "nsga2")), population=int(s.get("population", 16)),
                                  max_front=int(s.get("max_front", 24)), seed=int(s.get("seed", 0)),
                                  greedy_lambda=math.inf if lam is None else float(lam),
                                  sinks=int(s.get("sinks", MAX_SINKS)))
        settings.check()
        return settings
    except (TypeError, ValueError, InputError):  # a hand-written search block: fall back to the defaults
        return SearchSettings(budget=1.0)


def _head_seed(seed: int, bucket: int, layer: int, head: int) -> int:
    """The sampler seed `compactsearch search` gives a head, so the recomputed front matches the search's."""
    h = hashlib.sha256(f"{seed}:{bucket}:{layer}:{head}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def _mean_stats(profile: Profile) -> pd.DataFrame | None:
    """The profile's per-head statistics (mean over prompts), or None when incomplete."""
    s = profile.stats
    need = {"bucket", "layer", "head", "prompt", "label", "text_mass"}
    if s is None or s.empty or not need <= set(s.columns):
        return None
    s = s[s["prompt"] == -1]
    if len(s) != profile.num_buckets * profile.num_layers * profile.num_heads:
        return None
    return s


# ------------------------------------------------------------------------------------------------ the pass
@dataclass
class _Data:
    stats: pd.DataFrame
    stats_recomputed: bool
    recall: np.ndarray | None = None  # [CB, L, H]
    recall_min: np.ndarray | None = None
    density: np.ndarray | None = None
    waste: np.ndarray | None = None
    fidelity: np.ndarray | None = None  # [CB, L, H]; NaN when the profile has no value statistics
    oracle: np.ndarray | None = None  # [CB, L, H] recall of the top blocks by mass at the pattern's block count
    maps: dict = field(default_factory=dict)  # (b, l, h) -> ([D, nh, nw] float64, text share)
    fronts: dict = field(default_factory=dict)  # (l, h) -> [(profile bucket, HeadResult)]


_W: dict = {}  # the pass's context, in this process or in each worker


def _init_pass(profile: Profile, config: Config | None, cfg_map: list[int], panel_heads: dict,
               front_heads: dict, settings: SearchSettings, recompute: bool, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    layout = profile.layout()
    lt = space = None
    if front_heads:
        lt, space = LayoutTables(layout), SearchSpace(layout.grid_thw, settings.max_groups)
    _W.clear()
    _W.update(profile=profile, config=config, cfg_map=cfg_map, panel_heads=panel_heads, front_heads=front_heads,
              settings=settings, recompute=recompute, layout=layout, scorer=ExactScorer(layout),
              shares=TileShares.of(layout), waste={}, lt=lt, space=space)


def _unit(b: int, l: int, cfg_idx: list[int], maps: bool, fronts: bool) -> dict:
    """Everything the page needs from the block mass of (bucket ``b``, layer ``l``)."""
    w = _W
    profile, layout, scorer = w["profile"], w["layout"], w["scorer"]
    H, nb = profile.num_heads, layout.num_blocks
    mass = profile.mass(b, l)
    if tuple(mass.shape) != (H, nb, nb):
        raise InputError(f"profile {profile.root}: block mass of bucket {b}, layer {l} has shape "
                         f"{tuple(mass.shape)}, expected [{H}, {nb}, {nb}]; the profile is corrupt")
    if not torch.isfinite(mass).all():
        raise InputError(f"profile {profile.root}: block mass of bucket {b}, layer {l} contains NaN or inf; "
                         "re-run the profile")
    out: dict = {"b": b, "l": l, "stats": [], "cfg": {}, "maps": {}, "fronts": {}}
    if w["recompute"]:
        out["stats"] = [{"bucket": b, "layer": l, "head": h, "prompt": -1, **s}
                        for h, s in enumerate(head_stats(mass, layout))]
    row_total = mass.sum(-1, dtype=torch.float64)
    factor = profile.value_factor(b, l) if cfg_idx and profile.has_values else None
    for ci in cfg_idx:
        vals = np.full((6, H), np.nan)
        for hc in w["config"].buckets[ci].layers[l].heads:
            h, p = hc.head, hc.pattern
            sc = scorer.score(p, mass[h], row_total[h])
            if p not in w["waste"]:
                tm = (torch.ones(layout.num_tiles, layout.num_tiles, dtype=torch.bool) if p.is_dense
                      else tile_mask(p, layout))
                w["waste"][p] = layout.tiling_waste(tm, scorer.block_mask(p))
            vals[:4, h] = (sc.recall, sc.recall_min, sc.blocks / (nb * nb), w["waste"][p])
            vals[5, h] = Oracle(mass[h]).recall(sc.blocks)
            if factor is not None:
                vals[4, h] = HeadFidelity(mass[h], factor[h], scorer.block_mask).fidelity(p)
        out["cfg"][ci] = vals
    if maps:
        hs = w["panel_heads"][l]
        nm = neighbourhood_maps(mass[hs], layout, w["shares"])
        out["maps"] = {(b, l, h): (nm.maps[j].numpy(), float(nm.text[j])) for j, h in enumerate(hs)}
    if fronts:
        settings = w["settings"]
        for h in w["front_heads"][l]:
            ht = HeadTables(w["lt"], mass[h])
            out["fronts"][(l, h)] = _search_head(ht, scorer, mass[h], w["space"], settings.head_settings(),
                                                 _head_seed(settings.seed, b, l, h), (b, l, h))
    return out


def _collect(profile: Profile, config: Config | None, cfg_map: list[int], sel: Selection,
             heads: list[tuple[int, int]], settings: SearchSettings, progress: Progress | None,
             workers: int) -> _Data:
    L, H, NB = profile.num_layers, profile.num_heads, profile.num_buckets
    stats = _mean_stats(profile)
    recompute = stats is None
    data = _Data(stats=stats if stats is not None else pd.DataFrame(), stats_recomputed=recompute)
    if config is not None:
        shape = (len(config.buckets), L, H)
        data.recall, data.recall_min = np.zeros(shape), np.zeros(shape)
        data.density, data.waste = np.zeros(shape), np.zeros(shape)
        data.fidelity = np.full(shape, np.nan)
        data.oracle = np.zeros(shape)
    panel_heads: dict[int, list[int]] = {}
    for l, h in sel.panels:
        panel_heads.setdefault(l, []).append(h)
    front_heads: dict[int, list[int]] = {}
    for l, h in heads:
        front_heads.setdefault(l, []).append(h)
    front_buckets = sorted(set(cfg_map)) if cfg_map else list(range(NB))  # a config may run every step dense
    todo = []
    for b in range(NB):
        cfg_idx = [i for i, pb in enumerate(cfg_map) if pb == b]
        for l in range(L):
            maps = b in sel.buckets and l in panel_heads
            fronts = b in front_buckets and l in front_heads
            if recompute or cfg_idx or maps or fronts:
                todo.append((b, l, cfg_idx, maps, fronts))

    rows = []

    def take(r: dict) -> None:
        rows.extend(r["stats"])
        for ci, vals in r["cfg"].items():
            data.recall[ci, r["l"]], data.recall_min[ci, r["l"]] = vals[0], vals[1]
            data.density[ci, r["l"]], data.waste[ci, r["l"]] = vals[2], vals[3]
            data.fidelity[ci, r["l"]], data.oracle[ci, r["l"]] = vals[4], vals[5]
        data.maps.update(r["maps"])
        for key, res in r["fronts"].items():
            data.fronts.setdefault(key, []).append((r["b"], res))

    init = (profile, config, cfg_map, panel_heads, front_heads, settings, recompute)
    if progress:
        progress("reading the profile", 0, len(todo))
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    try:
        if workers <= 1 or len(todo) <= 1:
            _init_pass(*init, None)
            for i, unit in enumerate(todo):
                take(_unit(*unit))
                if progress:
                    progress("reading the profile", i + 1, len(todo))
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                     initializer=_init_pass, initargs=(*init, 1)) as pool:
                futures = [pool.submit(_unit, *unit) for unit in todo]
                for i, f in enumerate(as_completed(futures)):
                    take(f.result())
                    if progress:
                        progress("reading the profile", i + 1, len(todo))
    finally:
        _W.clear()
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)
    for key in data.fronts:
        data.fronts[key].sort(key=lambda x: x[0])
    if recompute:
        data.stats = pd.DataFrame(rows).sort_values(["bucket", "layer", "head"], ignore_index=True)
    return data


# ------------------------------------------------------------------------------------------------- report
def _steps(r) -> str:
    return f"steps {r[0]}-{r[1] - 1}" if r[1] - r[0] > 1 else f"step {r[0]}"


def build_report(
    profile: Profile | Path | str,
    out: Path | str,
    config: Config | Path | str | None = None,
    heads: Sequence[str] = (),
    progress: Progress | None = None,
    workers: int | None = None,
) -> ReportResult:
    """Write ``out/report.html`` (self-contained) and ``out/figures/*.png``.

    Args:
        profile: a `Profile` or its directory.
        out: the output directory (created; ``report.html`` and ``figures/`` inside are replaced).
        config: a `Config` or its YAML path, searched on this profile.
        heads: ``"L.H"`` strings: draw these heads' recall-versus-cost fronts.
        progress: ``progress(stage, done, total)``.
        workers: processes reading the profile in parallel (default: CPU cores; 1: in this process).

    Raises:
        InputError: a missing or corrupt profile or config, a config for another geometry, a bad ``--head``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a directory for the report")
    if not isinstance(profile, Profile):
        profile = Profile.load(Path(profile))
    config_path = None
    if config is not None and not isinstance(config, Config):
        config_path = Path(config)
        config = load_config(config_path)
    if config is not None:
        check_config_matches(profile, config, config_path or "(given)")
        cfg_map = match_buckets(profile.buckets, config, config_path or "(given)")
    else:
        cfg_map = []
    L, H = profile.num_layers, profile.num_heads
    head_list = list(dict.fromkeys(parse_head(h, L, H) for h in heads))
    layout = profile.layout()
    nt, nh, nw = layout.grid_thw
    query = middle_tile(layout)
    n_dist = max(query[0], nt - 1 - query[0]) + 1
    sel = select(profile.num_buckets, L, H, n_dist)
    settings = _search_settings(config)
    floor = settings.recall if config is not None else None

    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    data = _collect(profile, config, cfg_map, sel, head_list, settings, progress, workers)

    page = _Page(profile, config, config_path, cfg_map, sel, data, settings, floor, query)
    sections = page.sections(head_list, progress)
    notes = page.notes
    meta = page.meta()
    html = render_page("compactsearch report: " + str(profile.model.get("id") or profile.root or "profile"), meta,
                       notes, sections)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    figs = page.figures
    html_path = out / "report.html"
    try:
        with atomic_dir(out / "figures") as tmp:
            for f in figs:
                (tmp / f.filename).write_bytes(f.png)
        atomic_write_text(html_path, html)
    except BaseException:
        if created:  # a failed write (a full disk) leaves no partial --out that this run created
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ReportResult(html_path, tuple(out / "figures" / f.filename for f in figs), time.perf_counter() - t0,
                        page.summary, tuple(notes))


class _Page:
    """Turns the collected numbers into sections, figures and the summary."""

    def __init__(self, profile: Profile, config: Config | None, config_path: Path | None, cfg_map: list[int],
                 sel: Selection, data: _Data, settings: SearchSettings, floor: float | None,
                 query: tuple[int, int, int]):
        self.profile, self.config, self.config_path, self.cfg_map = profile, config, config_path, cfg_map
        self.sel, self.data, self.settings, self.floor, self.query = sel, data, settings, floor, query
        self.layout = profile.layout()
        self.figures: list[FigureRef] = []
        self.notes: list[str] = []
        self.summary: dict = {}
        st = data.stats
        self.label = {(int(r.bucket), int(r.layer), int(r.head)): str(r.label) for r in st.itertuples()}
        self.text_mass = {(int(r.bucket), int(r.layer), int(r.head)): float(r.text_mass) for r in st.itertuples()}

    # ---------------------------------------------------------------------------------------------- helpers
    def _fig(self, fig, filename: str, caption: str, alt: str) -> FigureRef:
        ref = FigureRef(F.png(fig), filename, caption, alt)
        self.figures.append(ref)
        return ref

    def _bucket_title(self, b: int) -> str:
        return f"bucket {b} ({_steps(self.profile.buckets[b])})"

    def _cfg_title(self, ci: int) -> str:
        return f"bucket {self.cfg_map[ci]} ({_steps(self.config.bucket_steps(ci))})"

    def meta(self) -> list[str]:
        p, lay = self.profile, self.layout
        lines = [f"Profile: {p.root or 'in memory'} (model {p.model.get('id', 'unknown')}, "
                 f"adapter {p.model.get('adapter', 'unknown')}; {len(p.prompts)} prompts; content hash "
                 f"{p.content_hash[:12] if p.hashes else 'n/a'})",
                 f"Geometry {p.geometry.describe()}; {p.num_layers} layers x {p.num_heads} heads; {lay.describe()}; "
                 f"{p.num_buckets} step buckets: " + ", ".join(_steps(b) for b in p.buckets)]
        if self.config is not None:
            c = self.config
            prov = c.provenance or {}
            lines.append(f"Config: {self.config_path or 'given'} (kind {prov.get('kind', 'unknown')}"
                         + (f", made {prov['date']}" if prov.get("date") else "")
                         + f"); {c.num_steps} steps, dense warm-up {c.dense_warmup}, {len(c.buckets)} sparse "
                         "buckets")
        else:
            lines.append("No config given: the report shows the profile only (labels, maps, text mass, waste).")
        return lines

    # -------------------------------------------------------------------------------------------- sections
    def sections(self, head_list: list[tuple[int, int]], progress: Progress | None) -> list[Section]:
        self.head_list = head_list
        steps = [self._summary, self._labels, self._heatmaps, self._efficiency, self._maps, self._fronts, self._text,
                 self._waste, self._about]
        out = []
        for i, fn in enumerate(steps):
            if progress:
                progress("drawing figures", i, len(steps))
            s = fn()
            if s is not None:
                out.append(s)
        if progress:
            progress("drawing figures", len(steps), len(steps))
        return out

    def _summary(self) -> Section:
        p, d = self.profile, self.data
        s = Section("summary", "Summary")
        counts = {}
        for b in range(p.num_buckets):
            labels = [self.label[(b, l, h)] for l in range(p.num_layers) for h in range(p.num_heads)]
            counts[f"b{b}"] = {x: labels.count(x) for x in LABELS}
        text = np.array(list(self.text_mass.values()))
        self.summary.update(layers=p.num_layers, heads=p.num_heads, buckets=[list(b) for b in p.buckets],
                            label_counts=counts, text_mass_mean=round(float(text.mean()), 5))
        rows = [["geometry", p.geometry.describe(), ""], ["tile layout", self.layout.describe(), ""],
                ["heads", f"{p.num_layers} layers x {p.num_heads} heads x {p.num_buckets} buckets", ""]]
        for b in range(p.num_buckets):
            rows.append([f"labels, {self._bucket_title(b)}",
                         ", ".join(f"{k} {v}" for k, v in counts[f"b{b}"].items()), ""])
        rows.append(["mean attention on text tokens", f"{100 * float(text.mean()):.2f}%", ""])
        if self.config is None:
            s.paragraphs.append("Without a config only the profile is summarised.")
            s.items.append(Table(["quantity", "this profile", ""], rows))
            return s
        c = self.config
        per_bucket = d.density.mean(axis=(1, 2))
        run = run_density([float(x) for x in per_bucket], c.plan())
        below = int((d.recall < self.floor - 1e-12).sum()) if self.floor is not None else 0
        any_sparse = d.recall.size > 0  # a config with no bucket runs every step dense
        mine = {
            "density": run["density"],
            "density_sparse_steps": run["density_sparse_steps"],
            "bucket_density": [round(float(x), 5) for x in per_bucket],
            "est_attention_speedup": run["est_attention_speedup"],
            "recall_mean": round(float(d.recall.mean()), 5) if any_sparse else 1.0,
            "recall_min": round(float(d.recall.min()), 5) if any_sparse else 1.0,
            "recall_min_block": round(float(d.recall_min.min()), 5) if any_sparse else 1.0,
            "heads_below_floor": below,
            "tiling_waste_mean": round(float(d.waste.mean()), 5) if any_sparse else 0.0,
        }
        if any_sparse and not np.isnan(d.fidelity).any():
            mine["fidelity_mean"] = round(float(d.fidelity.mean()), 5)
        if any_sparse:
            mine["oracle_recall_mean"] = round(float(d.oracle.mean()), 5)
            mine["pattern_efficiency"] = round(float(d.recall.mean() / max(d.oracle.mean(), 1e-300)), 5)
        self.summary["config"] = mine
        rec = c.summary or {}
        names = [("density", "block density over the whole run (dense warm-up steps at 1)"),
                 ("density_sparse_steps", "block density over the sparse steps"),
                 ("est_attention_speedup", "ideal attention speed-up (1 / whole-run density)"),
                 ("recall_mean", "recall, mean over heads"), ("recall_min", "recall, worst head"),
                 ("recall_min_block", "recall, worst query block"),
                 ("heads_below_floor", f"heads below the recall floor {self.floor:g}"),
                 ("tiling_waste_mean", "tiling waste, mean over heads"),
                 ("fidelity_mean", "output fidelity, mean over heads (1 - relative error; needs value statistics)"),
                 ("oracle_recall_mean", "oracle recall, mean over heads (top blocks by mass, same densities)"),
                 ("pattern_efficiency", "pattern efficiency (mean recall / mean oracle recall)")]
        header = ["quantity", "this profile (recomputed)", "recorded in the config"]
        table = [[label, mine.get(k, "-"), rec.get(k, "")] for k, label in names]
        table.append(["search objective", "", (c.search or {}).get("objective", rec.get("objective", "recall"))])
        s.paragraphs.append(
            "Density counts kernel blocks computed over dense blocks, text blocks included; recall is the share of "
            "each head's attention mass (mean over query tokens) the chosen pattern keeps, computed here exactly on "
            "this profile's mean block mass with the kernel's block mask. The config's own numbers come from the "
            "search (calibration prompts only when it held prompts out).")
        s.items.append(Table(header, table + [[a, b, c] for a, b, c in rows], caption="Whole model"))
        if not any_sparse:
            s.paragraphs.append("The config has no step bucket: every step runs dense.")
            return s
        series = []
        for ci in range(len(c.buckets)):
            series.append((f"bucket {self.cfg_map[ci]}", d.density[ci].mean(1), d.recall[ci].mean(1),
                           d.recall[ci].min(1)))
        s.items.append(self._fig(F.layer_summary(series, self.floor), "01-summary-layers.png",
                                 "Per layer: mean block density and mean / worst-head recall of the chosen patterns, "
                                 "per bucket.", "density and recall per layer"))
        return s

    def _labels(self) -> Section:
        p = self.profile
        s = Section("labels", "Head labels")
        s.paragraphs.append(
            "Each head is labelled from its block mass by the documented rule (compactsearch.profile.stats): local "
            "when a local window over about 30% of the tokens holds at least 60% of its mass, cross when a one-tile "
            "row band plus a one-tile column band holds at least 60% (15 points more than local and 1.5x what a "
            "uniform head would put there), time-variant when the mass per frame distance is far from flat, "
            "global otherwise.")
        if self.data.stats_recomputed:
            s.paragraphs.append("The profile's statistics table was missing or incomplete: labels were recomputed "
                                "from the block mass.")
        code = {x: i for i, x in enumerate(LABELS)}
        grids, counts = [], []
        for b in range(p.num_buckets):
            g = np.array([[code[self.label[(b, l, h)]] for h in range(p.num_heads)] for l in range(p.num_layers)])
            grids.append((self._bucket_title(b), g))
            counts.append((self._bucket_title(b), [int((g == i).sum()) for i in range(len(LABELS))]))
        s.items.append(self._fig(F.label_grid(grids, LABELS), "02-labels.png",
                                 "Label of every (layer, head), one grid per step bucket.", "head label grid"))
        s.items.append(self._fig(F.label_counts(counts, LABELS), "03-label-counts.png",
                                 "Number of heads per label and step bucket.", "head label counts"))
        s.items.append(Table(["bucket", *LABELS], [[t, *c] for t, c in counts], caption="Heads per label"))
        return s

    def _heatmaps(self) -> Section:
        s = Section("density-recall", "Density and recall per bucket")
        if self.config is None:
            s.paragraphs.append("Give --config to see the density and recall of a config's chosen patterns.")
            return s
        d = self.data
        for ci in range(len(self.config.buckets)):
            fig = F.bucket_heatmaps(f"{self._cfg_title(ci)}: chosen patterns per (layer, head)", d.density[ci],
                                    d.recall[ci], self.floor)
            s.items.append(self._fig(fig, f"04-heatmaps-b{ci}.png",
                                     f"Block density and recall of every head's chosen pattern, {self._cfg_title(ci)}.",
                                     f"density and recall heatmaps, bucket {self.cfg_map[ci]}"))
            worst = np.argsort(d.recall[ci], axis=None)[:5]
            rows = []
            for idx in worst:
                l, h = np.unravel_index(idx, d.recall[ci].shape)
                hc = self.config.buckets[ci].layers[l].heads[h]
                rows.append([f"L{l}.H{h}", self.label[(self.cfg_map[ci], int(l), int(h))], hc.pattern.describe(),
                             float(d.recall[ci, l, h]), float(d.recall_min[ci, l, h]), float(d.density[ci, l, h])])
            s.items.append(Table(["head", "label", "pattern", "recall", "worst block recall", "density"], rows,
                                 caption=f"Config bucket {ci}: the five heads with the lowest recall"))
        if d.fidelity is not None and d.fidelity.size and not np.isnan(d.fidelity).any():
            s.paragraphs.append(
                "Output fidelity (the profile has value statistics): 1 - the relative squared error of each head's "
                "block-level attention output under its chosen pattern, estimated from the block mass and the key "
                "blocks' mean values (compactsearch/search/fidelity.py). Heads whose dropped keys repeat what they "
                "keep (e.g. the same place in other frames) lose mass but little output: recall can be low while "
                "fidelity stays near 1.")
            grids = [(self._cfg_title(ci), 1.0 - d.fidelity[ci]) for ci in range(len(self.config.buckets))]
            s.items.append(self._fig(F.value_heatmaps(grids, "Estimated output error of the chosen patterns",
                                                      "relative squared output error (1 - fidelity)", ".3f"),
                                     "04-output-error.png",
                                     "Estimated relative output error of every head's chosen pattern, per config "
                                     "bucket (0 = the dense output).", "output error heatmaps"))
        return s

    def _efficiency(self) -> Section | None:
        """Heads by pattern efficiency: how much the pattern language costs on this model."""
        d, c = self.data, self.config
        if c is None or not d.recall.size:
            return None
        s = Section("efficiency", "Pattern efficiency")
        s.paragraphs.append(
            "For every head, the recall its chosen pattern keeps divided by the recall of the best unstructured "
            "block set of the same size: the head's top blocks by mass (the oracle; any static block mask of that "
            "density keeps at most this much). 1 means the pattern language costs this head nothing; low values "
            "mark heads whose attention the windows, frame groups and sinks do not fit.")
        eff = d.recall / np.maximum(d.oracle, 1e-300)
        series = [(self._cfg_title(ci), eff[ci]) for ci in range(len(c.buckets))]
        s.items.append(self._fig(F.efficiency_figure(series), "04b-efficiency.png",
                                 "Every head's pattern efficiency, sorted, per bucket.",
                                 "pattern efficiency of every head, sorted"))
        grids = [(self._cfg_title(ci), 1.0 - eff[ci]) for ci in range(len(c.buckets))]
        s.items.append(self._fig(F.value_heatmaps(grids, "Recall lost to the pattern language",
                                                  "1 - pattern efficiency", ".3f"), "04c-efficiency-heads.png",
                                 "1 - pattern efficiency per (layer, head), per bucket (0: the pattern keeps "
                                 "what the oracle keeps).", "pattern efficiency heatmaps"))
        for ci in range(len(c.buckets)):
            rows = []
            for idx in np.argsort(eff[ci], axis=None)[:10]:
                l, h = np.unravel_index(idx, eff[ci].shape)
                b = self.cfg_map[ci]
                rows.append([f"L{l}.H{h}", self.label[(b, l, h)], c.buckets[ci].layers[l].heads[h].pattern.describe(),
                             float(d.recall[ci, l, h]), float(d.oracle[ci, l, h]), float(eff[ci, l, h]),
                             float(d.density[ci, l, h])])
            s.items.append(Table(["head", "label", "pattern", "recall", "oracle recall", "efficiency", "density"],
                                 rows, caption=f"{self._cfg_title(ci)[0].upper()}{self._cfg_title(ci)[1:]}: the ten "
                                 "least efficient heads"))
        return s

    def _pattern_for(self, b: int, l: int, h: int) -> tuple[Pattern | None, int | None]:
        """The config pattern running at profile bucket ``b`` (dense when the config runs it dense), and its
        config bucket."""
        if self.config is None:
            return None, None
        for ci, pb in enumerate(self.cfg_map):
            if pb == b:
                return self.config.buckets[ci].layers[l].heads[h].pattern, ci
        return Pattern.dense(), None

    def _maps(self) -> Section:
        sel, lay, d = self.sel, self.layout, self.data
        nt, nh, nw = lay.grid_thw
        qt, qh, qw = self.query
        s = Section("maps", "Attention around the middle query tile")
        s.paragraphs.append(
            f"For the query tile in the middle of the video (tile frame {qt}, row {qh}, column {qw} of the "
            f"{nt}x{nh}x{nw} tile grid; red cross), each map shows the share of that tile's attention falling on each "
            "key tile at one temporal tile distance |dt| (both directions summed), on a log colour scale. "
            + ("Magenta boxes outline the chosen pattern's windows at that distance (dashed: the second window; "
               "shifted inward at the border as the kernel does); 'skipped' marks distances the pattern does not "
               "attend; cyan squares marked S are its sink key tiles, kept by every query." if self.config is not None
               else "Give --config to outline a config's windows."))
        dist_idx = list(sel.distances)
        for b in sel.buckets:
            sub = Section(f"maps-b{b}", f"{self._bucket_title(b)[0].upper()}{self._bucket_title(b)[1:]}",
                          collapsed=b != sel.buckets[-1])
            by_layer: dict[int, list[int]] = {}
            for l, h in sel.panels:
                by_layer.setdefault(l, []).append(h)
            for l, hs in by_layer.items():
                for chunk_i in range(0, len(hs), ROWS_PER_FIGURE):
                    chunk = hs[chunk_i: chunk_i + ROWS_PER_FIGURE]
                    panels, rows = [], []
                    factor = (1, 1)
                    for h in chunk:
                        m, text = d.maps[(b, l, h)]
                        ds, factor = downsample(torch.from_numpy(m[dist_idx]), MAX_CELLS)
                        pattern, ci = self._pattern_for(b, l, h)
                        rects = None if pattern is None else [window_rects(pattern, lay.grid_thw, self.query, dd)
                                                              for dd in dist_idx]
                        sinks = None if pattern is None else [sink_cells(pattern, self.query, dd) for dd in dist_idx]
                        label = self.label[(b, l, h)]
                        panels.append(F.MapPanel(f"L{l}.H{h} {label}", ds.numpy(), rects, sinks))
                        row = [f"L{l}.H{h}", label, f"{100 * text:.1f}%"]
                        if self.config is not None:
                            if ci is None:
                                row += ["dense (the config runs this bucket dense)", "", ""]
                            else:
                                row += [pattern.describe(), float(d.recall[ci, l, h]), float(d.density[ci, l, h])]
                        rows.append(row)
                    part = "" if len(hs) <= ROWS_PER_FIGURE else f" (heads {chunk[0]}-{chunk[-1]})"
                    title = (f"{self._bucket_title(b)}, layer {l}{part}: where the middle query tile's attention goes")
                    fig = F.small_multiples(panels, [sel.distances[i] for i in range(len(dist_idx))], (nh, nw),
                                            factor, (qh, qw), title)
                    name = f"05-maps-b{b}-l{l}-{chunk_i // ROWS_PER_FIGURE}.png"
                    sub.items.append(self._fig(fig, name, f"{title}. Rows: heads; columns: temporal tile distance.",
                                               f"attention maps, bucket {b}, layer {l}"))
                    header = ["head", "label", "query tile's mass on text"]
                    if self.config is not None:
                        header += ["pattern", "recall", "density"]
                    sub.items.append(Table(header, rows))
            s.items.append(sub)
        if factor != (1, 1):
            self.notes.append(f"Maps are downsampled: each drawn cell sums {factor[0]}x{factor[1]} tiles.")
        if sel.subsampled:
            self.notes.append("Large profile: the maps show a subsample: " + "; ".join(sel.notes())
                              + ". Tables and heatmaps cover every head.")
        return s

    def _fronts(self) -> Section | None:
        head_list = self.head_list
        if not head_list:
            return None
        s = Section("fronts", "Recall against cost, per requested head")
        nb2 = self.layout.num_blocks ** 2
        st = self.settings
        s.paragraphs.append(
            f"Each head's exact Pareto front recomputed from this profile with the search's settings (recall floor "
            f"{st.recall:g}, {st.trials} trials, {st.max_groups} frame groups, {st.sampler}, seed {st.seed}), the "
            "baselines at the floor (the paper's greedy boundary contraction and the best single cube) and, with a "
            "config, the chosen pattern scored exactly. Density is computed / dense kernel blocks.")
        scorer = ExactScorer(self.layout)
        values = self.profile.has_values
        if values:
            s.paragraphs.append(
                "The profile has value statistics, so a second row scores the same patterns on output fidelity "
                "(1 - the estimated relative output error, compactsearch/search/fidelity.py), what the search "
                "allocates the budget on: a pattern can lose mass and little output where the dropped keys repeat "
                "what the kept ones carry.")
        for l, h in head_list:
            panels, fid_panels, rows = [], [], []
            res_list: list[tuple[int, HeadResult]] = self.data.fronts[(l, h)]
            for b, res in res_list:
                mass = self.profile.mass(b, l)[h]
                hf = HeadFidelity(mass, self.profile.value_factor(b, l)[h], scorer.block_mask) if values else None
                title = self._bucket_title(b)
                # every drawn point once: (name, pattern, recall, worst block recall, density, fidelity or None)
                points = []
                pattern, ci = self._pattern_for(b, l, h)
                if pattern is not None:
                    e = scorer.score(pattern, mass)
                    points.append(("chosen (config)", pattern, e.recall, e.recall_min, e.blocks / nb2))
                points += [(name, fp.pattern, fp.recall, fp.recall_min, fp.blocks / nb2)
                           for name, fp in [("greedy", res.greedy), ("best cube", res.cube)]
                           + [("front", fp) for fp in res.front]]
                points = [(*pt, hf.fidelity(pt[1]) if hf is not None else None) for pt in points]
                for name, pat, rec, rec_min, dens, fid in points:
                    rows.append([title, name, pat.describe(), rec, rec_min, *([fid] if hf is not None else []), dens])
                by_name = {pt[0]: pt for pt in points if pt[0] != "front"}
                front = [pt for pt in points if pt[0] == "front"]
                chosen = by_name.get("chosen (config)")
                for col, panel_list, floor, metric in ((2, panels, st.recall, "recall"),
                                                       (5, fid_panels, None, "fidelity")):
                    if metric == "fidelity" and hf is None:
                        continue
                    greedy, cube = by_name["greedy"], by_name["best cube"]
                    panel_list.append(F.FrontPanel(
                        title, [(pt[4], pt[col]) for pt in front], (greedy[4], greedy[col]), (cube[4], cube[col]),
                        (chosen[4], chosen[col]) if chosen else None, floor, metric))
            fig = F.front_figure(f"L{l}.H{h}", panels, fid_panels)
            what = "recall and output fidelity" if values else "recall"
            s.items.append(self._fig(fig, f"06-front-L{l}.H{h}.png",
                                     f"Head L{l}.H{h}: {what} against block density, per step bucket.",
                                     f"Pareto front of head L{l}.H{h}"))
            header = ["bucket", "point", "pattern", "recall", "worst block recall"]
            header += ["fidelity"] if values else []
            s.items.append(Table(header + ["density"], rows, caption=f"Head L{l}.H{h}: every point drawn"))
        return s

    def _text(self) -> Section:
        p = self.profile
        s = Section("text", "Attention on text tokens")
        g = p.geometry
        if g.text_tokens == 0:
            s.paragraphs.append(f"This geometry has no text tokens in self-attention ({g.describe()}): every head "
                                "puts 0% of its attention on text, so there is nothing to draw.")
            return s
        s.paragraphs.append(f"{g.text_tokens} text tokens sit at the {g.text_position} of the sequence. Text rows "
                            "and columns are always computed (dense), so mass on text is always kept; heads with much "
                            "of it keep a high recall at any pattern.")
        grids = [(self._bucket_title(b), np.array([[self.text_mass[(b, l, h)] for h in range(p.num_heads)]
                                                    for l in range(p.num_layers)])) for b in range(p.num_buckets)]
        fig = F.value_heatmaps(grids, "Share of each head's attention on text tokens",
                               "share of attention mass on text keys")
        s.items.append(self._fig(fig, "07-text-mass.png", "Share of each head's attention on text keys, per bucket.",
                                 "text mass heatmaps"))
        return s

    def _waste(self) -> Section:
        lay = self.layout
        s = Section("waste", "Tiling waste")
        s.paragraphs.append(
            "Tiling waste = token pairs the kernel computes (whole blocks) / token pairs the pattern allows token by "
            "token - 1: the cost of blocks that straddle tiles and of the ragged sequence end. The reference panel is "
            "the one `default_tiling` scores layouts with (a ~30% local window, a cross, a time-decaying window).")
        scorer = ExactScorer(lay)
        ref = [(name, lay.tiling_waste(tile_mask(pat, lay), scorer.block_mask(pat)))
               for name, pat in zip(("local ~30%", "cross", "time-decaying"), reference_panel(lay))]
        per_head = []
        if self.config is not None:
            per_head = [(f"bucket {self.cfg_map[ci]}", self.data.waste[ci].ravel())
                        for ci in range(len(self.config.buckets))]
        fig = F.waste_figure(ref, per_head, lay.describe())
        s.items.append(self._fig(fig, "08-tiling-waste.png", "Tiling waste of the reference panel and, with a config, "
                                 "of every head's chosen pattern.", "tiling waste"))
        s.items.append(Table(["reference pattern", "tiling waste"], [[n, f"{100 * v:.2f}%"] for n, v in ref]))
        return s

    def _about(self) -> Section:
        s = Section("about", "About this report")
        s.paragraphs.append("Made by `compactsearch report` from the profile's block mass (mean over calibration "
                            "prompts, tile order). Maps spread each kernel block's mass over the tiles it covers by "
                            "token share. Figures are also saved as PNG files in figures/ next to this page.")
        s.paragraphs.append("Subsampling rules: every step bucket up to 3 (else first, middle, last); 4 layers spread "
                            "evenly with 4 heads each plus every head of the middle layer; up to 8 temporal distances "
                            "(0, 1, then spread to the largest); maps of at most 32 x 32 cells.")
        return s
