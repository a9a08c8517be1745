"""Search: recall/cost scoring, baselines, the per-head Optuna search, the whole-model budget, the config.

Public names (modules are private):
    run_search, SearchSettings, SearchOutcome      the whole search, as `compactsearch search` runs it
    search_head, HeadSettings, HeadResult, FrontPoint
                                                   one head: baselines + sweep + Optuna, exact Pareto front
    sink_candidates                                a head's ranked sink key tiles
    Oracle                                         the top blocks by mass: the bound a pattern is measured against
    LayoutTables, HeadTables, ExactScorer, CostModel
                                                   fast and exact recall / cost of patterns
    SearchSpace                                    the per-head search space (Optuna parameters <-> patterns)
    greedy_contraction, best_cube, cube_front      baselines
    lagrangian_sweep                               the deterministic sweep that seeds Optuna
    allocate, Allocation                           the whole-model budget allocation
    split_prompts                                  held-out prompts
"""

from __future__ import annotations

from compactsearch.patterns import pattern_from_yaml
from compactsearch.search.baselines import best_cube, cube_front, default_partition, greedy_contraction, min_pattern
from compactsearch.search.budget import Allocation, RunPlan, allocate, plan_run
from compactsearch.search.holdout import HoldoutSplit, split_prompts
from compactsearch.search.run import run_search
from compactsearch.search.scoring import CostModel, ExactScore, ExactScorer, HeadTables, LayoutTables
from compactsearch.search.settings import SearchOutcome, SearchSettings, head_name
from compactsearch.search.sinks import sink_candidates
from compactsearch.search.space import SearchSpace, canonical
from compactsearch.search.storage import default_storage
from compactsearch.search.study import FrontPoint, HeadResult, HeadSettings, Oracle, search_head
from compactsearch.search.sweep import lagrangian_sweep

__all__ = [
    "run_search",
    "SearchSettings",
    "SearchOutcome",
    "default_storage",
    "head_name",
    "search_head",
    "HeadSettings",
    "HeadResult",
    "FrontPoint",
    "Oracle",
    "sink_candidates",
    "LayoutTables",
    "HeadTables",
    "ExactScorer",
    "ExactScore",
    "CostModel",
    "SearchSpace",
    "canonical",
    "pattern_from_yaml",
    "greedy_contraction",
    "default_partition",
    "best_cube",
    "cube_front",
    "min_pattern",
    "lagrangian_sweep",
    "allocate",
    "Allocation",
    "RunPlan",
    "plan_run",
    "split_prompts",
    "HoldoutSplit",
]
