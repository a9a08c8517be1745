"""Orchestration of `compactsearch search`: units of work, workers, resume, then the budget and the config.

Work is split into units, one per (bucket, layer): a worker loads that layer's mass once and searches its heads
(`compactsearch.search.study.search_head`), in this process or in a process pool (`compactsearch._pool`). Each
head's result goes to the run's storage as soon as its unit is done (`compactsearch.search.storage`: results,
claims, the default database), so a run killed at any point resumes by redoing only the heads without a stored
result. Each head's search is a pure function of (profile tensors, settings, a sampler seed derived from (seed,
bucket, layer, head): `compactsearch.search.settings.head_seed`), hence a resumed run gives the same config as an
uninterrupted one. When every head is stored, `compactsearch.search.assemble` allocates the budget and builds the
config, which is saved atomically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from compactsearch._pool import process_pool
from compactsearch.errors import InputError
from compactsearch.profile.store import Profile
from compactsearch.search.assemble import SearchResults, assemble_config
from compactsearch.search.baselines import min_pattern
from compactsearch.search.budget import sparse_ranges
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.search.holdout import HoldoutSplit, split_prompts, unit_masses
from compactsearch.search.scoring import CostModel, ExactScorer, HeadTables, LayoutTables
from compactsearch.search.settings import SearchOutcome, SearchSettings, head_name, head_seed
from compactsearch.search.space import SearchSpace
from compactsearch.search.storage import OPEN_STORES, DefaultDatabase, HeadStore, default_storage, run_key
from compactsearch.search.study import HeadResult, HeadSettings, search_head

__all__ = ["run_search"]


# ------------------------------------------------------------------------------------------------- workers
_W: dict = {}


def _init_worker(profile: Profile, head_settings: HeadSettings, seed: int, split: HoldoutSplit | None,
                 keep_trials: bool, fidelity: bool = False) -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    layout = profile.layout()
    _W.update(profile=profile, settings=head_settings, seed=seed, split=split, keep_trials=keep_trials,
              fidelity=fidelity,
              tables=LayoutTables(layout), scorer=ExactScorer(layout),
              space=SearchSpace(layout.grid_thw, head_settings.max_groups))


def _check_mass(profile: Profile, b: int, l: int, m: torch.Tensor, what: str) -> None:
    nb = profile.layout().num_blocks
    if m.shape[-3:] != (profile.num_heads, nb, nb):
        raise InputError(f"profile {profile.root}: {what} of bucket {b}, layer {l} has shape {tuple(m.shape)}, "
                         f"expected [..., {profile.num_heads}, {nb}, {nb}]; the profile is corrupt")
    if not torch.isfinite(m).all():
        raise InputError(f"profile {profile.root}: {what} of bucket {b}, layer {l} contains NaN or inf; "
                         "re-run the profile")


def _search_unit(b: int, l: int, heads: list[int]) -> list[HeadResult]:
    w = _W
    prof: Profile = w["profile"]
    mass = prof.mass(b, l)
    _check_mass(prof, b, l, mass, "block mass")
    pm = prof.prompt_mass(b, l) if w["split"] is not None and w["split"].holdout else None
    if pm is not None:
        _check_mass(prof, b, l, pm, "per-prompt block mass")
    calib, held = unit_masses(mass, pm, w["split"])
    # per-prompt mass of the calibration prompts: sink candidates must hold in each (`search.sinks`)
    sink_pm = None
    if w["settings"].sinks and prof.per_prompt:
        sink_pm = pm if pm is not None else prof.prompt_mass(b, l)
        if sink_pm is not None and w["split"] is not None and w["split"].holdout:
            sink_pm = sink_pm[list(w["split"].calibration)]
    factor = prof.value_factor(b, l) if w.get("fidelity") else None
    if factor is not None:
        nb = prof.layout().num_blocks
        if factor.dim() != 3 or tuple(factor.shape[:2]) != (prof.num_heads, nb) or not torch.isfinite(factor).all():
            raise InputError(f"profile {prof.root}: value factor of bucket {b}, layer {l} has shape "
                             f"{tuple(factor.shape)} or non-finite values, expected [{prof.num_heads}, {nb}, r]; "
                             "re-run the profile or use --objective recall")
    out = []
    for h in heads:
        ht = HeadTables(w["tables"], calib[h])
        fid = None if factor is None else HeadFidelity(calib[h], factor[h], w["scorer"].block_mask)
        out.append(search_head(ht, w["scorer"], calib[h], w["space"], w["settings"],
                               head_seed(w["seed"], b, l, h), (b, l, h),
                               None if held is None else held[h], w["keep_trials"], fid,
                               None if sink_pm is None else sink_pm[:, h]))
    return out


# --------------------------------------------------------------------------------------------------- run
def _recipe_warmup(profile: Profile) -> int:
    r = profile.recipe or {}
    v = r.get("dense_warmup")
    if v is None and isinstance(r.get("profile"), dict):
        v = r["profile"].get("dense_warmup")
    return int(v or 0)


def _dense_cost(cost_model: CostModel | None, nb: int) -> Callable[[float], float]:
    if cost_model is None:
        return lambda blocks: blocks / (nb * nb)
    dense = cost_model.cost(nb * nb, nb)
    return lambda blocks: cost_model.cost(blocks, nb) / dense


def run_search(
    profile: Profile | Path,
    settings: SearchSettings,
    out: Path,
    *,
    storage: str | None = None,
    resume: bool = False,
    workers: int = 1,
    cost_model: CostModel | None = None,
    keep_trials: bool = False,
    progress: Callable[[int, int], None] | None = None,
    arguments: dict | None = None,
    fresh: bool = False,
) -> SearchOutcome:
    """Search every head of ``profile``, allocate the budget, write the config to ``out``.

    Args:
        profile: a `Profile` or its directory.
        settings: the search settings (checked here).
        out: config path (written atomically).
        storage: Optuna RDB URL; default SQLite `default_storage(out)`.
        resume: continue the run stored in the default SQLite file (without it, or ``fresh``, an existing one is
            refused).
        fresh: delete an existing default SQLite file first and start over.
        workers: processes searching units in parallel (1: in this process).
        cost_model: measured kernel cost model; default cost = blocks computed.
        keep_trials: also store every Optuna trial (slow).
        progress: ``progress(heads_done, heads_total)`` after each stored head.
        arguments: the command line's arguments, recorded in the provenance.
    """
    if resume and fresh:
        raise InputError("--resume continues the stored search and --fresh deletes it: give one of them")
    if fresh and storage is not None:
        raise InputError("--fresh deletes the default SQLite database; with --storage, delete the studies in that "
                         "database yourself (or use another database)")
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    torch.set_num_threads(1)  # small tensor ops: one thread is several times faster than two here
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = DefaultDatabase(default_storage(out)) if storage is None else None
    opened = len(OPEN_STORES)
    try:
        if db is not None:
            db.open(resume, fresh)
        return _run_search(profile, settings, out, storage=storage, workers=workers, cost_model=cost_model,
                           keep_trials=keep_trials, progress=progress, arguments=arguments or {})
    except BaseException:
        while len(OPEN_STORES) > opened:  # close before removing the files
            OPEN_STORES.pop().close()
        if db is not None:
            db.drop_if_unused()
        raise
    finally:
        while len(OPEN_STORES) > opened:
            OPEN_STORES.pop().close()
        if db is not None:
            db.close()
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)


def _run_search(profile: Profile | Path, settings: SearchSettings, out: Path, *, storage: str | None, workers: int,
                cost_model: CostModel | None, keep_trials: bool, progress: Callable[[int, int], None] | None,
                arguments: dict) -> SearchOutcome:
    """`run_search` once the default database is locked (``storage`` None) or an external one is given."""
    t0 = time.perf_counter()
    settings.check()
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    profile_path = None
    if not isinstance(profile, Profile):
        profile_path = Path(profile)
        profile = Profile.load(profile_path)
    layout = profile.layout()
    nb = layout.num_blocks
    L, H = profile.num_layers, profile.num_heads
    if settings.objective == "auto":
        settings = replace(settings, objective="fidelity" if profile.has_values else "recall")
    elif settings.objective == "fidelity" and not profile.has_values:
        raise InputError("--objective fidelity needs value statistics, and this profile has none (it was made "
                         "before they were recorded); re-run compactsearch profile or use --objective recall")
    split = None
    if settings.holdout:
        if not profile.per_prompt:
            raise InputError("--holdout needs per-prompt tensors, and this profile has none; re-run the profile "
                             "with profile.per_prompt: true in the recipe")
        n_prompts = len(profile.prompts) or profile.prompt_mass(0, 0).shape[0]
        split = split_prompts(n_prompts, settings.holdout, settings.seed)

    to_cost = _dense_cost(cost_model, nb)
    buckets = [tuple(b) for b in profile.buckets]
    min_warmup = max(_recipe_warmup(profile), buckets[0][0])
    ranges = sparse_ranges(buckets, min_warmup)
    if not ranges:
        raise InputError(f"the recipe's dense_warmup ({min_warmup}) covers every profiled bucket "
                         f"{[list(b) for b in buckets]}: there is nothing to search")
    searched = [i for i, _ in ranges]
    # before any search: the whole run's cheapest plan (the required dense steps, every head at its own tile)
    sparse = sum(e - a for _, (a, e) in ranges)
    cheapest = (profile.num_steps - sparse + sparse * to_cost(ExactScorer(layout).blocks(min_pattern()))
                ) / profile.num_steps
    if settings.budget < cheapest - 1e-12:
        least = math.ceil(cheapest * 1e4) / 1e4
        dense = f" and {profile.num_steps - sparse} dense steps" if sparse < profile.num_steps else ""
        raise InputError(f"budget {settings.budget:g} is too small for the whole run: the cheapest patterns (every "
                         f"query tile sees only its own tile, text dense){dense} need {cheapest:.4f} of dense "
                         f"attention; use --budget >= {least:g}")

    key = run_key(profile, settings, split)
    if storage is None:  # run_search holds its lock and has refused or removed an earlier database
        db = default_storage(out)
        db.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{db.resolve()}"
    else:
        url = storage
    store = HeadStore(url, key)
    results = {k: v for k, v in store.done().items() if k[0] in searched}
    total_heads = len(searched) * L * H
    units = [(b, l, [h for h in range(H) if (b, l, h) not in results]) for b in searched for l in range(L)]
    units = [u for u in units if u[2]]
    if progress:
        progress(len(results), total_heads)

    computed = [0]

    def store_unit(res: list[HeadResult]) -> None:
        for r in res:
            store.write(r)
            results[(r.bucket, r.layer, r.head)] = r
        computed[0] += len(res)
        if progress:
            progress(len(results), total_heads)

    init_args = (profile, settings.head_settings(), settings.seed, split, keep_trials,
                 settings.objective == "fidelity")
    if workers == 1 or len(units) <= 1:
        try:
            _init_worker(*init_args)
            _run_units(units, store, store_unit, lambda u: _search_unit(*u), None)
        finally:
            _W.clear()
    else:
        with process_pool(workers, _init_worker, init_args) as pool:
            _run_units(units, store, store_unit, None, (pool, workers))
    if len(results) < total_heads:  # heads other processes sharing the storage finished
        results.update({k: v for k, v in store.done().items() if k[0] in searched and k not in results})
    missing = [(b, l, h) for b in searched for l in range(L) for h in range(H) if (b, l, h) not in results]
    if missing:
        raise InputError(f"{len(missing)} heads were not searched (first: {head_name(*missing[0])}); re-run with "
                         "--resume")
    store.drop_claims()

    config, summary, below = assemble_config(SearchResults(profile, profile_path, settings, results, min_warmup,
                                                           to_cost, split, cost_model, key, arguments))
    config.save(Path(out))
    return SearchOutcome(config, Path(out), summary, below, computed[0], total_heads - computed[0],
                         time.perf_counter() - t0, "sqlite (default)" if storage is None else "external",
                         results)


def _run_units(units, store: HeadStore, store_unit, run_inline, pool_spec) -> None:
    """Claim and run units; wait for units other processes hold, taking stale claims over."""
    with store:  # renews this worker's claims while units run
        _run_units_claimed(units, store, store_unit, run_inline, pool_spec)


def _run_units_claimed(units, store: HeadStore, store_unit, run_inline, pool_spec) -> None:
    pending = list(units)
    deferred = []
    if run_inline is not None:
        while pending or deferred:
            if not pending:
                time.sleep(1.0)
                pending, deferred = _recheck(store, deferred), []
                continue
            u = pending.pop(0)
            if store.claim(u[0], u[1]):
                u = (u[0], u[1], store.left(*u))
                if u[2]:
                    store_unit(run_inline(u))
                store.release(u[0], u[1])
            else:
                deferred.append(u)
        return
    pool, workers = pool_spec
    running = {}
    while pending or deferred or running:
        while pending and len(running) < 2 * workers:
            u = pending.pop(0)
            if store.claim(u[0], u[1]):
                u = (u[0], u[1], store.left(*u))
                if u[2]:
                    running[pool.submit(_search_unit, *u)] = u
                else:
                    store.release(u[0], u[1])
            else:
                deferred.append(u)
        if not running:
            time.sleep(1.0)
            pending, deferred = _recheck(store, deferred), []
            continue
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for f in done:
            u = running.pop(f)
            store_unit(f.result())
            store.release(u[0], u[1])
        if not pending and deferred and not running:
            pending, deferred = _recheck(store, deferred), []


def _recheck(store: HeadStore, deferred: list) -> list:
    """Units another process held: drop the heads it finished; the rest are tried again."""
    done = store.done()
    out = []
    for b, l, heads in deferred:
        left = [h for h in heads if (b, l, h) not in done]
        if left:
            out.append((b, l, left))
    return out
