"""The per-head search: baselines and a deterministic sweep seed an Optuna study; the front is re-scored exactly.

For one (bucket, layer, head):

1. candidates from the baselines (dense, the cheapest pattern, every cube on the cube front, every state of
   the greedy contraction down to the floor) and the Lagrangian sweep (`compactsearch.search.sweep`);
2. an in-memory Optuna study (ask/tell, objectives ``(recall, density)``, the recall floor as a constraint via
   ``trial.set_constraint``) seeded with the greedy result, the best cube and the sweep's points nearest the
   floor (``enqueue_trial``), run for ``trials`` trials in total (seeds included);
3. the (recall, blocks) Pareto front of every candidate on the fast evaluator, thinned to ``max_front`` points
   (always keeping dense, the cheapest pattern, the baselines and the points around the floor), re-scored
   exactly; the exact Pareto front is the head's result.

**Sinks.** The head's sink candidates (`compactsearch.search.sinks`) are ranked once; the number kept, ``k``,
is one more search parameter. Steps 1 and 2 run for every ``k``: the cube front and the sweep on the tables
with the first ``k`` sinks folded in (`HeadTables.with_sinks`), so each finds the best windows *given* the
sinks; the greedy and best-cube baselines stay sink-free (they are the rivals the search must dominate).

**Oracle bound.** Every front point also gets the recall that the best unstructured block set of the same size
keeps (the top blocks by mass, text blocks included in the choice) and, with value statistics, that set's
fidelity: how far the pattern language is from the best any static block mask of that density could do.

The result is a pure function of (mass, settings, sampler seed): the run derives the seed from (seed, bucket,
layer, head), so a resumed search reproduces an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import torch

from compactsearch.patterns import MAX_SINKS, Pattern, pattern_from_yaml
from compactsearch.search.baselines import best_cube, cube_front, greedy_contraction, min_pattern
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.search.scoring import ExactScore, ExactScorer, HeadTables
from compactsearch.search.sinks import sink_candidates
from compactsearch.search.space import SearchSpace, canonical
from compactsearch.search.sweep import lagrangian_sweep

__all__ = ["HeadSettings", "FrontPoint", "HeadResult", "Oracle", "search_head", "pareto", "SAMPLERS"]

SAMPLERS = ("nsga2", "tpe", "random")
FIDELITY_CUBES = 16  # cube-front points re-scored for fidelity per head


@dataclass(frozen=True)
class HeadSettings:
    """Per-head search settings; their defaults are the search's (`compactsearch.search.settings.SearchSettings`,
    the CLI's).

    Attributes:
        floor: recall floor (the Optuna constraint).
        trials: Optuna trials per head, seeds included.
        max_groups: frame groups per pattern (G).
        sampler: ``nsga2`` (default: cheapest per trial), ``tpe`` or ``random``.
        population: NSGA-II population size.
        max_front: fast-front points re-scored exactly per head.
        greedy_lambda: the greedy baseline's cost threshold (``inf``: stop at the floor only).
        sinks: sink candidates per head (0: patterns without sinks); at most `MAX_SINKS`.
    """

    floor: float = 0.9
    trials: int = 32
    max_groups: int = 3
    sampler: str = "nsga2"
    population: int = 16
    max_front: int = 24
    greedy_lambda: float = math.inf
    sinks: int = MAX_SINKS

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["greedy_lambda"] = None if math.isinf(self.greedy_lambda) else self.greedy_lambda
        return d


@dataclass(frozen=True)
class FrontPoint:
    """One exactly-scored pattern of a head: recall, worst query block's recall, kernel blocks, and the output
    fidelity when the profile has value statistics (`compactsearch.search.fidelity`)."""

    pattern: Pattern
    recall: float
    recall_min: float
    blocks: int
    holdout_recall: float | None = None
    fidelity: float | None = None
    oracle_recall: float | None = None
    oracle_fidelity: float | None = None

    @property
    def value(self) -> float:
        """What the search maximises: the fidelity when known, else the recall."""
        return self.recall if self.fidelity is None else self.fidelity

    @property
    def efficiency(self) -> float | None:
        """Pattern efficiency: recall / the oracle's recall at the same block count."""
        if self.oracle_recall is None:
            return None
        return min(1.0, self.recall / self.oracle_recall) if self.oracle_recall > 0 else 1.0

    def to_dict(self) -> dict:
        d = {"pattern": self.pattern.to_yaml(), "recall": self.recall, "recall_min": self.recall_min,
             "blocks": self.blocks}
        if self.pattern.sinks:
            d["sinks"] = self.pattern.sinks_yaml()
        for k in ("holdout_recall", "fidelity", "oracle_recall", "oracle_fidelity"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FrontPoint:
        def opt(k):
            return None if d.get(k) is None else float(d[k])

        return cls(pattern_from_yaml(d["pattern"], d.get("sinks")), float(d["recall"]), float(d["recall_min"]),
                   int(d["blocks"]), opt("holdout_recall"), opt("fidelity"), opt("oracle_recall"),
                   opt("oracle_fidelity"))


@dataclass(frozen=True)
class HeadResult:
    """A head's exact Pareto front (cheapest first) and its baselines at the floor, exactly scored."""

    bucket: int
    layer: int
    head: int
    front: tuple[FrontPoint, ...]
    greedy: FrontPoint
    cube: FrontPoint
    trials: int
    candidates: int
    seconds: float = 0.0
    study_trials: list = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"bucket": self.bucket, "layer": self.layer, "head": self.head,
                "front": [p.to_dict() for p in self.front], "greedy": self.greedy.to_dict(),
                "cube": self.cube.to_dict(), "trials": self.trials, "candidates": self.candidates,
                "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: dict) -> HeadResult:
        return cls(int(d["bucket"]), int(d["layer"]), int(d["head"]),
                   tuple(FrontPoint.from_dict(p) for p in d["front"]), FrontPoint.from_dict(d["greedy"]),
                   FrontPoint.from_dict(d["cube"]), int(d["trials"]), int(d["candidates"]), float(d["seconds"]))

    def cheapest_feasible(self, floor: float) -> FrontPoint:
        """The cheapest front point with recall ``>= floor`` (dense is always on the front)."""
        return next(p for p in self.front if p.recall >= floor)


def pareto(points: dict, recall_of, cost_of) -> list:
    """Keys on the (max recall, min cost) front, cheapest first; ties broken by the key order given."""
    items = sorted(points, key=lambda k: (cost_of(k), -recall_of(k)))
    out, best = [], -math.inf
    for k in items:
        if recall_of(k) > best + 1e-12:
            best = recall_of(k)
            out.append(k)
    return out


class Oracle:
    """The best unstructured block set of each size on one head: its top blocks by mass.

    Args:
        mass: ``[NQB, NKB]`` block mass.
    """

    def __init__(self, mass: torch.Tensor):
        self.mass = mass
        desc = np.sort(mass.reshape(-1).float().numpy())[::-1]  # numpy's sort: ~5x torch's on one core
        self.values = desc
        self.cum = np.cumsum(desc, dtype=np.float64)
        self.total = float(self.cum[-1]) if desc.size else 0.0

    def recall(self, blocks: int) -> float:
        """Mass share of the top ``blocks`` blocks."""
        if not self.total > 0:
            return 1.0
        if blocks <= 0:
            return 0.0
        return min(1.0, float(self.cum[min(blocks, self.cum.size) - 1]) / self.total)

    def mask(self, blocks: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[NQB, NKB]`` bool: the top ``blocks`` blocks (blocks tied with the last one are kept too; they change
        no recall or fidelity when they are the zero-mass blocks, the only ties that occur in practice); only the
        query blocks ``rows`` when given."""
        m = self.mass.float() if rows is None else self.mass[rows].float()
        if blocks <= 0:
            return torch.zeros(m.shape, dtype=torch.bool)
        return m >= float(self.values[min(blocks, self.values.size) - 1])


def _sampler(settings: HeadSettings, seed: int) -> optuna.samplers.BaseSampler:
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=settings.population, seed=seed)
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, settings.trials), multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def _thin(front: list[Pattern], keep: set[Pattern], feasible_idx: int, limit: int) -> list[Pattern]:
    """At most ``limit`` points of ``front``: ``keep``, the 3 points either side of the floor, then spread evenly."""
    chosen = {p for p in front if p in keep}
    chosen.update(front[max(0, feasible_idx - 3): feasible_idx + 4])
    rest = [p for p in front if p not in chosen]
    room = limit - len(chosen)
    if room > 0 and rest:
        step = len(rest) / room
        chosen.update(rest[int(i * step)] for i in range(min(room, len(rest))))
    return [p for p in front if p in chosen]


def search_head(
    ht: HeadTables,
    scorer: ExactScorer,
    mass: torch.Tensor,
    space: SearchSpace,
    settings: HeadSettings,
    seed: int,
    key: tuple[int, int, int] = (0, 0, 0),
    holdout_mass: torch.Tensor | None = None,
    keep_trials: bool = False,
    fidelity: HeadFidelity | None = None,
    prompt_mass: torch.Tensor | None = None,
) -> HeadResult:
    """Search one head. See the module docstring.

    Args:
        ht: fast tables of this head's ``mass``.
        scorer: the layout's exact scorer (shared across heads: it caches masks).
        mass: ``[NQB, NKB]`` block mass the search optimises (calibration prompts).
        space: the search space of the layout's grid.
        settings: per-head settings.
        seed: the Optuna sampler's seed.
        key: ``(bucket, layer, head)``, recorded in the result.
        holdout_mass: ``[NQB, NKB]`` mass of held-out prompts: each front point also gets its recall there.
        keep_trials: return the study's frozen trials in ``study_trials`` (to store them).
        fidelity: this head's output-fidelity scorer; when given the result's front is the (fidelity, blocks)
            front over the recall front, the cube front and every temporal window (whole frames within ``dt``
            frame tiles: the structure recall undervalues when neighbouring frames repeat each other).
        prompt_mass: ``[P, NQB, NKB]`` per-prompt mass of the calibration prompts: sink candidates must hold in
            every prompt (`compactsearch.search.sinks`).
    """
    t0 = time.perf_counter()
    floor = settings.floor
    nb2 = float(ht.lt.nb * ht.lt.nb)
    cands: dict[Pattern, tuple[float, float]] = {}

    def add(p: Pattern, view: HeadTables | None = None) -> tuple[float, float]:
        """Score ``p`` (on ``view``, the tables with ``p``'s sinks folded in, when given: cheaper)."""
        v = cands.get(p)
        if v is None:
            q = p if view is None else p.with_sinks(())
            t = ht if view is None else view
            v = cands[p] = (t.recall(q), t.blocks(q))
        return v

    sinks = sink_candidates(ht, settings.sinks, prompt_mass) if settings.sinks else ()
    space = replace(space, sinks=sinks)
    add(Pattern.dense())
    add(min_pattern())
    cube = best_cube(ht, floor)
    add(cube)
    path, greedy = greedy_contraction(ht, floor, settings.greedy_lambda, space.groups)
    for p in path:
        add(p)
    sweep = []
    for k in range(len(sinks) + 1):  # the cube front and the sweep given the first k sinks
        view = ht.with_sinks(space.sink_set(k))
        for p in cube_front(view):
            add(p.with_sinks(view.sinks), view)
        for p in lagrangian_sweep(view, space, floor):
            p = p.with_sinks(view.sinks)
            add(p, view)
            sweep.append(p)

    # Optuna: seeds first (greedy, cube, the sweep's points nearest the floor), then the sampler.
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=_sampler(settings, seed))
    dists = space.distributions()
    sweep_sorted = sorted(sweep, key=lambda p: (abs(cands[p][0] - floor) + (0.0 if cands[p][0] >= floor else 1.0)))
    seeds: list[Pattern] = []
    for p in [greedy, cube, *sweep_sorted]:
        if p not in seeds and space.encode(p) is not None:
            seeds.append(p)
    for p in seeds[: min(settings.trials, max(1, min(settings.trials // 2, settings.population)))]:
        study.enqueue_trial(space.encode(p))
    for _ in range(settings.trials):
        trial = study.ask(dists)
        p = space.decode(trial.params)
        r, b = add(p)
        trial.set_constraint("recall_floor", floor - r)
        study.tell(trial, [r, b / nb2])

    # Fast front -> thinned -> exact front.
    front = pareto(cands, lambda p: cands[p][0], lambda p: cands[p][1])
    feasible_idx = next((i for i, p in enumerate(front) if cands[p][0] >= floor), len(front) - 1)
    keep = {Pattern.dense(), min_pattern(), greedy, cube}
    chosen = _thin(front, keep, feasible_idx, settings.max_front)
    for p in (greedy, cube):
        if p not in chosen:
            chosen.append(p)
    row_total = mass.sum(-1, dtype=torch.float64)
    fid: dict[Pattern, float] = {}
    if fidelity is not None:
        nt, nh, nw = ht.lt.grid
        cubes = cube_front(ht)
        if len(cubes) > FIDELITY_CUBES:  # spread evenly over the cost range (a random head has hundreds)
            cubes = [cubes[round(i * (len(cubes) - 1) / (FIDELITY_CUBES - 1))] for i in range(FIDELITY_CUBES)]
        temporal = [Pattern.local(dt, nh, nw) for dt in range(nt)]
        if sinks:  # whole frames near in time and the sinks far away
            temporal += [canonical(p.with_sinks(sinks), ht.lt.grid) for p in temporal]
        for p in [*cubes, *temporal]:
            if p not in chosen:
                chosen.append(p)
    scorer.prefetch(chosen)  # their exact masks in batches
    if fidelity is not None:
        fid = {p: fidelity.fidelity(p) for p in chosen}
    exact: dict[Pattern, ExactScore] = {p: scorer.score(p, mass, row_total) for p in chosen}
    if fidelity is None:
        exact_front = pareto(exact, lambda p: exact[p].recall, lambda p: exact[p].blocks)
    else:
        exact_front = pareto(exact, lambda p: fid[p], lambda p: exact[p].blocks)
    hold_total = None if holdout_mass is None else holdout_mass.sum(-1, dtype=torch.float64)
    oracle = Oracle(mass)

    def point(p: Pattern) -> FrontPoint:
        e = exact[p]
        hr = None if holdout_mass is None else scorer.score(p, holdout_mass, hold_total).recall
        of = None if fidelity is None else fidelity.mask_error(oracle.mask(e.blocks, fidelity.rows), True)
        return FrontPoint(p, e.recall, e.recall_min, e.blocks, hr, fid.get(p), oracle.recall(e.blocks),
                          None if of is None else 1.0 - of)

    return HeadResult(
        bucket=key[0], layer=key[1], head=key[2],
        front=tuple(point(p) for p in exact_front),
        greedy=point(greedy), cube=point(cube),
        trials=len(study.trials), candidates=len(cands), seconds=time.perf_counter() - t0,
        study_trials=list(study.trials) if keep_trials else [],
    )
