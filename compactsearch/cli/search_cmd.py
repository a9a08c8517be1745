"""`compactsearch search PROFILE --budget B`: per-head Optuna search, whole-model budget, config YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from compactsearch._io import check_output
from compactsearch.cli._common import JsonOpt, console, print_json
from compactsearch.cli._progress import progress_display
from compactsearch.errors import InputError
from compactsearch.search import SearchSettings, default_storage, run_search
from compactsearch.search.scoring import CostModel


def search(
    profile: Annotated[Path, typer.Argument(help="A profile directory (from `compactsearch profile`).",
                                            show_default=False)],
    budget: Annotated[float, typer.Option(help="Compute budget of the whole sampling run: attention blocks (or "
                                               "cost-model time) over dense, dense warm-up steps counted at 1, in "
                                               "(0, 1].", show_default=False)],
    recall: Annotated[float, typer.Option(help="Recall floor per head, in (0, 1].")] = 0.9,
    trials: Annotated[int, typer.Option(help="Optuna trials per head (baseline seeds included).")] = 32,
    workers: Annotated[int | None, typer.Option(help="Processes searching in parallel [default: CPU cores].",
                                                show_default=False)] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna RDB URL shared by several workers or machines "
                                                     "[default: SQLite <out>.optuna.db].", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed search from its storage (or "
                                         "re-allocate a finished one at another budget).")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the default database of an earlier search for "
                                        "this --out and start over (without --resume or --fresh, an existing one "
                                        "is refused).")] = False,
    holdout: Annotated[int, typer.Option(help="Keep K prompts out of the search and report recall on them.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Config YAML to write [default: <profile>.config.yaml].",
                                             show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the samplers and of the held-out split.")] = 0,
    groups: Annotated[int, typer.Option(help="Frame groups per pattern (G).")] = 3,
    sampler: Annotated[str, typer.Option(help="Optuna sampler: nsga2, tpe or random.")] = "nsga2",
    cost_model: Annotated[Path | None, typer.Option(help="Measured kernel cost model (YAML/JSON with per_block "
                                                         "and per_query_block).", show_default=False)] = None,
    keep_trials: Annotated[bool, typer.Option("--keep-trials", help="Store every Optuna trial (slow).")] = False,
    objective: Annotated[str, typer.Option(help="What the budget maximises: fidelity (the heads' estimated output "
                                           "error, from the profile's value statistics), recall (kept attention "
                                           "mass, the paper's), or auto (fidelity when the profile has them).")
                         ] = "auto",
    sinks: Annotated[int, typer.Option(help="Sink key tiles per head the search may keep (0..4; 0: none).")] = 4,
    json_out: JsonOpt = False,
) -> None:
    """Search per-head block-sparse patterns under one whole-model budget and write a config.

    \b
    Examples:
        compactsearch search out/wan-profile --budget 0.3
        compactsearch search out/wan-profile --budget 0.3 --recall 0.92 --holdout 2 --out wan-0.3.yaml
        compactsearch search out/wan-profile --budget 0.3 --resume
        compactsearch search out/wan-profile --budget 0.3 --fresh
        compactsearch search prof --budget 0.3 --storage postgresql://user@db/search --workers 8
    """
    profile = Path(profile)
    if not profile.exists():
        raise InputError(f"profile {profile} does not exist; create one with `compactsearch profile`")
    out = out or profile.with_name(profile.name.rstrip("/") + ".config.yaml")
    check_output(out, "--out", "file")
    settings = SearchSettings(budget=budget, recall=recall, trials=trials, max_groups=groups, sampler=sampler,
                              seed=seed, holdout=holdout, objective=objective, sinks=sinks)
    settings.check()
    cm = CostModel.load(cost_model) if cost_model is not None else None
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    arguments = {"profile": str(profile), "budget": budget, "recall": recall, "trials": trials, "workers": n_workers,
                 "storage": "default" if storage is None else "external", "resume": resume, "holdout": holdout,
                 "out": str(out), "seed": seed, "groups": groups, "sampler": sampler,
                 "cost_model": None if cost_model is None else str(cost_model), "objective": objective,
                 "sinks": sinks}
    with progress_display("search", TextColumn("searching heads"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("heads", total=None)
        outcome = run_search(profile, settings, out, storage=storage, resume=resume, fresh=fresh, workers=n_workers,
                             cost_model=cm, keep_trials=keep_trials, arguments=arguments,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    s = outcome.summary
    table = Table(title=f"{out}", title_justify="left")
    table.add_column("")
    table.add_column("value", overflow="fold")
    table.add_row("density", f"{s['density']:.4f} over the whole run (budget {budget:g}; ideal attention speed-up "
                             f"{s['est_attention_speedup']:.2f}x), {s['density_sparse_steps']:.4f} over the sparse "
                             "steps")
    table.add_row("recall mean / min", f"{s.get('recall_mean', 1.0):.4f} / {s.get('recall_min', 1.0):.4f} "
                                       f"(floor {recall:g})")
    if s.get("objective") == "fidelity":
        table.add_row("objective", f"output fidelity (mean {s['fidelity_mean']:.4f}; recall kept as the floor)")
    else:
        table.add_row("objective", "recall" + ("" if s.get("objective") else " (profile without value statistics)"))
    if "pattern_efficiency" in s:
        table.add_row("pattern efficiency", f"{s['pattern_efficiency']:.4f} (recall / recall of the top blocks by "
                                            f"mass at each head's density, {s['oracle_recall_mean']:.4f})")
    table.add_row("dense warm-up", f"{outcome.config.dense_warmup} of {outcome.config.num_steps} steps (chosen "
                                   f"with the patterns under the budget)")
    b = s["baselines"]
    table.add_row(f"density at recall {recall:g}",
                  f"search {b['density_search']:.4f}, greedy {b['density_greedy']:.4f}, "
                  f"best cube {b['density_best_cube']:.4f} (saved vs cube {b['density_saved_vs_best_cube']:+.4f})")
    if "holdout" in s:
        h = s["holdout"]
        table.add_row("held-out recall", f"{h['recall_mean_holdout']:.4f} vs calibration "
                                         f"{h['recall_mean_calibration']:.4f} ({len(h['prompts'])} prompts)")
    table.add_row("heads", f"{outcome.heads_searched} searched, {outcome.heads_reused} reused from storage "
                           f"({default_storage(out) if storage is None else 'external storage'})")
    console.print(table)
    if outcome.below_floor:
        shown = ", ".join(outcome.below_floor[:20]) + (" ..." if len(outcome.below_floor) > 20 else "")
        console.print(f"[yellow]{len(outcome.below_floor)} heads below the recall floor within the budget:[/] {shown}")
    console.print(f"wrote {out} in {outcome.seconds:.1f} s")
    if json_out:
        print_json(outcome.to_json())
