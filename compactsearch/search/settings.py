"""What a search depends on: its settings (the one home of the search defaults) and what it produced.

`SearchSettings` holds everything a run depends on; its per-head part is `compactsearch.search.study.HeadSettings`,
whose defaults are the defaults here too. `SearchSettings.from_dict` reads back what `SearchSettings.to_dict`
writes into a config's ``search:`` block (the report recomputes fronts with it). `head_name` and `head_seed` name
and seed a head the same way in the search, its storage and the report.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from compactsearch.config import Config
from compactsearch.errors import InputError
from compactsearch.patterns import MAX_SINKS
from compactsearch.search.study import SAMPLERS, HeadSettings

__all__ = ["SearchSettings", "SearchOutcome", "OBJECTIVES", "head_name", "head_seed"]

OBJECTIVES = ("auto", "fidelity", "recall")
_HEAD = HeadSettings()  # the per-head defaults


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search run depends on. ``budget`` and ``recall`` are fractions in (0, 1]."""

    budget: float
    recall: float = _HEAD.floor
    trials: int = _HEAD.trials
    max_groups: int = _HEAD.max_groups
    sampler: str = _HEAD.sampler
    population: int = _HEAD.population
    max_front: int = _HEAD.max_front
    seed: int = 0
    holdout: int = 0
    greedy_lambda: float = _HEAD.greedy_lambda
    objective: str = "auto"
    sinks: int = _HEAD.sinks

    def check(self) -> None:
        """Raise `InputError` naming the first bad setting."""
        for name in ("budget", "recall"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or not 0 < v <= 1:
                raise InputError(f"--{name} must lie in (0, 1], got {v}")
        if self.trials < 0:
            raise InputError(f"--trials must be >= 0 (0: the baselines and the sweep only), got {self.trials}")
        if self.max_groups < 1:
            raise InputError(f"--groups must be >= 1, got {self.max_groups}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.holdout < 0:
            raise InputError(f"--holdout must be >= 0, got {self.holdout}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0 <= self.sinks <= MAX_SINKS:
            raise InputError(f"--sinks must lie in 0..{MAX_SINKS}, got {self.sinks}")
        if self.population < 2 or self.max_front < 4:
            raise InputError("population must be >= 2 and max_front >= 4")

    def head_settings(self) -> HeadSettings:
        return HeadSettings(self.recall, self.trials, self.max_groups, self.sampler, self.population,
                            self.max_front, self.greedy_lambda, self.sinks)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "recall": self.recall, "trials": self.trials, "groups": self.max_groups,
                "sampler": self.sampler, "population": self.population, "max_front": self.max_front,
                "seed": self.seed, "holdout": self.holdout,
                "greedy_lambda": None if math.isinf(self.greedy_lambda) else self.greedy_lambda,
                "objective": self.objective, "sinks": self.sinks}

    @classmethod
    def from_dict(cls, d: dict, budget: float = 1.0) -> SearchSettings:
        """The settings `to_dict` wrote (a config's ``search:`` block); absent keys take the defaults.

        Raises:
            InputError: a value of the wrong type or out of range (`check`).
        """
        lam = d.get("greedy_lambda")
        try:
            out = cls(budget=float(d.get("budget", budget)), recall=float(d.get("recall", _HEAD.floor)),
                      trials=int(d.get("trials", _HEAD.trials)), max_groups=int(d.get("groups", _HEAD.max_groups)),
                      sampler=str(d.get("sampler", _HEAD.sampler)),
                      population=int(d.get("population", _HEAD.population)),
                      max_front=int(d.get("max_front", _HEAD.max_front)), seed=int(d.get("seed", 0)),
                      holdout=int(d.get("holdout", 0)), greedy_lambda=math.inf if lam is None else float(lam),
                      objective=str(d.get("objective", "auto")), sinks=int(d.get("sinks", _HEAD.sinks)))
        except (TypeError, ValueError) as e:
            raise InputError(f"search settings: {e}") from e
        out.check()
        return out


@dataclass(frozen=True)
class SearchOutcome:
    """What a run produced: the config (already saved to ``path``) and the reports."""

    config: Config
    path: Path
    summary: dict
    below_floor: list[str]
    heads_searched: int
    heads_reused: int
    seconds: float
    storage: str
    results: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"config": str(self.path), "summary": self.summary, "below_floor": self.below_floor,
                "heads_searched": self.heads_searched, "heads_reused": self.heads_reused,
                "seconds": round(self.seconds, 2), "storage": self.storage}


def head_name(bucket: int, layer: int, head: int) -> str:
    """How reports name a head: ``b{bucket}.l{layer}.h{head}`` (bucket index in the profile)."""
    return f"b{bucket}.l{layer}.h{head}"


def head_seed(seed: int, bucket: int, layer: int, head: int) -> int:
    """The Optuna sampler's seed of one head, from the run's seed: a head's search is a pure function of it."""
    h = hashlib.sha256(f"{seed}:{bucket}:{layer}:{head}".encode()).digest()
    return int.from_bytes(h[:4], "little")
