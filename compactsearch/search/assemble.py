"""A finished search -> its `Config`: the budget's choice per head, the summary, the baselines, the provenance.

`assemble_config` takes a `SearchResults` (what the run hands over: the profile, the settings, every head's front,
the run's key and arguments), lets `compactsearch.search.budget.plan_run` choose the dense warm-up and one front
point per head under the whole-run budget, and builds the config with its ``search``, ``provenance`` and
``summary`` blocks. The summary counts blocks from the chosen points (`summary_from_blocks`, no mask rebuilt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from compactsearch import __version__
from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig, summarize
from compactsearch.profile.store import Profile
from compactsearch.schedule import fraction
from compactsearch.search.budget import plan_run
from compactsearch.search.holdout import HoldoutSplit, holdout_report
from compactsearch.search.scoring import CostModel
from compactsearch.search.settings import SearchSettings, head_name
from compactsearch.search.storage import profile_hash
from compactsearch.search.study import HeadResult

__all__ = ["SearchResults", "assemble_config", "summary_from_blocks", "DEFAULT_HEAD_DIM"]

DEFAULT_HEAD_DIM = 128  # a profile that names no head dim (made from tensors without a model)


@dataclass(frozen=True)
class SearchResults:
    """What a finished search hands to `assemble_config`.

    Attributes:
        profile: the searched profile; ``profile_path`` its directory when it was given as one.
        settings: the run's settings (objective resolved).
        results: ``(profile bucket, layer, head) -> HeadResult`` for every searched head.
        min_warmup: the shortest dense warm-up allowed (the recipe's, or the first profiled step).
        cost_of: ``blocks -> fraction of a dense head's cost`` (block density, or the cost model's time).
        split: the held-out prompts, or None.
        cost_model: the measured cost model, recorded in the ``search`` block, or None.
        run_key: the storage key of the run (`compactsearch.search.storage.run_key`).
        arguments: the command line's arguments, recorded in the provenance.
    """

    profile: Profile
    profile_path: Path | None
    settings: SearchSettings
    results: dict[tuple[int, int, int], HeadResult]
    min_warmup: int
    cost_of: Callable[[float], float]
    split: HoldoutSplit | None
    cost_model: CostModel | None
    run_key: str
    arguments: dict


def summary_from_blocks(config: Config, blocks: dict[tuple[int, int, int], int]) -> dict:
    """`compactsearch.config.summarize` from known per-head block counts (no mask is rebuilt).

    ``blocks`` is keyed by (profile bucket index, layer, head) in the order of ``config.buckets``; the tests check
    that the result equals ``summarize(config)``.
    """
    by_bucket: dict[int, int] = {}
    for (b, _, _), n in blocks.items():
        by_bucket[b] = by_bucket.get(b, 0) + n
    return summarize(config, [by_bucket[b] for b in sorted(by_bucket)])


def _head_config(head: int, p, nb: int) -> HeadConfig:
    """A chosen front point as the config's head entry, with its oracle numbers when the search recorded them."""
    return HeadConfig(head, p.pattern, p.recall, p.blocks / (nb * nb), p.oracle_recall, p.oracle_fidelity,
                      p.efficiency)


def assemble_config(r: SearchResults) -> tuple[Config, dict, list[str]]:
    """The config of a finished search, its summary (with the held-out numbers per head, which stay out of the
    config) and the heads below the recall floor."""
    profile, settings, results, split = r.profile, r.settings, r.results, r.split
    layout = profile.layout()
    nb = layout.num_blocks
    L, H = profile.num_layers, profile.num_heads
    floor = settings.recall
    buckets = [tuple(b) for b in profile.buckets]
    n_run = profile.num_steps
    plan = plan_run(buckets, n_run, r.min_warmup, results, L, H, settings.budget, floor, cost_of=r.cost_of)
    keys, alloc = list(plan.keys), plan.allocation
    fronts = [results[k] for k in keys]
    chosen = {k: fronts[i].front[alloc.choice[i]] for i, k in enumerate(keys)}

    cfg_buckets = []
    for b, rng in plan.buckets:
        layers = []
        for l in range(L):
            heads = tuple(_head_config(h, chosen[(b, l, h)], nb) for h in range(H))
            layers.append(LayerConfig(l, heads))
        cfg_buckets.append(Bucket.of_steps(rng, n_run, tuple(layers), b))

    below = [head_name(*keys[i]) for i in alloc.below_floor]
    # baselines at the floor: the search's cheapest floor-meeting point against greedy and best cube, over the
    # sparse steps
    cw = list(plan.weights)
    w_sum = sum(cw)
    w_by_key = {k: w / w_sum for k, w in zip(keys, cw, strict=True)}
    dens = {"search": 0.0, "greedy": 0.0, "cube": 0.0}
    dominated = 0
    for k in keys:
        res, w = results[k], w_by_key[k] / (nb * nb)
        dens["search"] += w * res.cheapest_feasible(floor).blocks
        dens["greedy"] += w * res.greedy.blocks
        dens["cube"] += w * res.cube.blocks
        if all(any(p.value >= base.value and p.blocks <= base.blocks for p in res.front)
               for base in (res.greedy, res.cube)):
            dominated += 1
    baselines = {
        "tau": floor,
        "density_search": round(dens["search"], 5),
        "density_greedy": round(dens["greedy"], 5),
        "density_best_cube": round(dens["cube"], 5),
        "density_saved_vs_best_cube": round(dens["cube"] - dens["search"], 5),
        "density_saved_vs_greedy": round(dens["greedy"] - dens["search"], 5),
        "heads_dominating_baselines": f"{dominated}/{len(keys)}",
    }
    search_block = settings.to_dict()
    if r.cost_model is not None:
        search_block["cost_model"] = r.cost_model.to_dict()
    provenance = {
        "kind": "searched",
        "profile": str(r.profile_path) if r.profile_path else (str(profile.root) if profile.root else "in-memory"),
        "profile_hash": profile_hash(profile),
        "tool_version": __version__,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "seed": settings.seed,
        "run_key": r.run_key,
        "arguments": r.arguments,
    }
    model = profile.model or {}
    recipe = profile.recipe or {}
    rmodel = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    config = Config(
        model_id=str(model.get("id") or rmodel.get("id") or "unknown"),
        adapter=str(model.get("adapter") or rmodel.get("adapter") or "unknown"),
        geometry=profile.geometry,
        num_layers=L,
        num_heads=H,
        head_dim=int(model.get("head_dim") or 0) or DEFAULT_HEAD_DIM,
        tile=tuple(profile.tile),
        block_size=profile.block_size,
        num_steps=n_run,
        warmup=fraction(plan.dense_warmup, n_run),
        buckets=tuple(cfg_buckets),
        search=search_block,
        provenance=provenance,
    )
    summary = summary_from_blocks(config, {k: p.blocks for k, p in chosen.items()})
    summary["cost_vs_dense"] = round(plan.cost, 5)
    summary["recall_floor"] = floor
    summary["heads_below_floor"] = len(below)
    if below:
        summary["below_floor"] = below
    summary["recall_min_block"] = round(min(p.recall_min for p in chosen.values()), 5)
    summary["objective"] = settings.objective
    if settings.objective == "fidelity":
        summary["fidelity_mean"] = round(sum(w_by_key[k] * chosen[k].value for k in keys), 5)
    summary["value_whole_run"] = round(plan.value, 5)
    summary["dense_warmup_steps"] = plan.dense_warmup
    summary["warmup_tried"] = [list(t) for t in plan.tried]
    summary["bucket_steps"] = {f"b{b}": list(rng) for b, rng in plan.buckets}
    summary["baselines"] = baselines
    if split is not None and split.holdout:
        rows = [(head_name(*k), w_by_key[k], chosen[k].recall, chosen[k].holdout_recall)
                for k in keys]
        rep = holdout_report(rows, list(profile.prompts), split)
        summary["holdout"] = {k: v for k, v in rep.items() if k != "per_head"}
        per_head = rep["per_head"]
    else:
        per_head = None
    config = replace(config, summary=summary)
    if per_head is not None:  # per-head numbers go to --json, not into the config
        summary = {**summary, "holdout_per_head": per_head}
    return config, summary, below
