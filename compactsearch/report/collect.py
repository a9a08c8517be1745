"""One pass over a profile's tensors: everything the report's page needs, computed unit by unit.

Units are (bucket, layer) pairs; each loads that layer's block mass once (in this process, or in ``workers``
processes of `compactsearch._pool`, one layer in memory per process at a time) and computes:

- per head labels and text mass (from the profile's statistics table; recomputed with
  `compactsearch.profile.stats.head_stats` when the table is missing or incomplete);
- with a config, per (config bucket, layer, head): exact recall, worst query block's recall and block density
  of the chosen pattern on this profile's mean mass (`compactsearch.search.ExactScorer`, the kernel's mask),
  the pattern's tiling waste, the oracle's recall at the same block count and, with value statistics, the output
  fidelity;
- the neighbourhood maps of the drawn heads (`compactsearch.report.maps`);
- for each ``--head L.H``, the head's exact Pareto front, recomputed with `compactsearch.search.search_head`
  using the config's search settings (defaults without one) and the search's own sampler seed, with the greedy
  and best-cube baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
import torch

from compactsearch._pool import process_pool
from compactsearch.config import Config
from compactsearch.errors import InputError
from compactsearch.masks import tile_mask
from compactsearch.profile.stats import head_stats
from compactsearch.profile.store import Profile
from compactsearch.report.maps import TileShares, neighbourhood_maps
from compactsearch.report.select import Selection
from compactsearch.search import ExactScorer, HeadTables, LayoutTables, SearchSettings, SearchSpace, search_head
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.search.settings import head_seed
from compactsearch.search.study import Oracle

__all__ = ["Collected", "collect", "Progress"]

Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


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


@dataclass
class Collected:
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
            out["fronts"][(l, h)] = search_head(ht, scorer, mass[h], w["space"], settings.head_settings(),
                                                head_seed(settings.seed, b, l, h), (b, l, h))
    return out


def collect(profile: Profile, config: Config | None, cfg_map: list[int], sel: Selection,
             heads: list[tuple[int, int]], settings: SearchSettings, progress: Progress | None,
             workers: int) -> Collected:
    L, H, NB = profile.num_layers, profile.num_heads, profile.num_buckets
    stats = _mean_stats(profile)
    recompute = stats is None
    data = Collected(stats=stats if stats is not None else pd.DataFrame(), stats_recomputed=recompute)
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
            with process_pool(workers, _init_pass, (*init, 1)) as pool:
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
