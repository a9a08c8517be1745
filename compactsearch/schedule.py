"""The step schedule: which steps of a sampling run run dense and which step bucket runs the others, at any
step count.

A config (format ``compactsearch/v2``) places its dense warm-up and its step buckets as **fractions of the run**:
``warmup: 0.3`` and ``run: [0.3, 1.0]``. A fraction ``f`` marks the boundary step ``k(f, N) = floor(f N + 1/2)``
of an N-step run (nearest step, halves up), so

- steps ``0 .. k(warmup, N) - 1`` run dense;
- a bucket ``run: [a, b)`` runs steps ``k(a, N) .. k(b, N) - 1`` (none when that is empty);
- steps no bucket covers run dense.

At the step count the config was searched at the boundaries are exactly its steps; at another count the dense
warm-up and every bucket keep their share of the run, rounded to whole steps.

Why fractions of the run rather than noise-level ranges: diffusers' schedulers (flow matching with a shift for
Wan, HunyuanVideo, LTX, Mochi; DDIM/DPM for CogVideoX) make the noise level a fixed function of the position in
the run, ``sigma(s / N)``, whatever N, so a fraction lands on the same noise levels at 20, 30 or 50 steps. A
noise-level range would tie the config to one scheduler and one shift (Wan uses shift 3 at 480p and 5 at 720p,
and users change it), and it cannot be read without the pipeline. The runtime therefore needs only the step
count of the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["boundary", "fraction", "StepPlan", "plan_steps"]

_DIGITS = 6


def boundary(f: float, n: int) -> int:
    """The step index a run fraction ``f`` marks in an ``n``-step run: ``floor(f n + 1/2)``, within ``[0, n]``."""
    return min(n, max(0, math.floor(f * n + 0.5 + 1e-9)))


def fraction(step: int, n: int) -> float:
    """The run fraction of step boundary ``step`` of ``n`` (rounded to 6 digits; `boundary` inverts it)."""
    return round(step / n, _DIGITS)


@dataclass(frozen=True)
class StepPlan:
    """A schedule laid on an ``n``-step run: ``warmup`` leading dense steps, and per bucket its step range."""

    n: int
    warmup: int
    ranges: tuple[tuple[int, int], ...]

    def bucket_of(self, step: int) -> int | None:
        """Index of the bucket running ``step``, or None when it runs dense."""
        if step < self.warmup:
            return None
        for i, (a, b) in enumerate(self.ranges):
            if a <= step < b:
                return i
        return None

    def sparse_steps(self) -> list[int]:
        """Steps per bucket (0 for a bucket with no step at this step count)."""
        return [b - a for a, b in self.ranges]

    @property
    def dense_steps(self) -> int:
        return self.n - sum(self.sparse_steps())


def plan_steps(warmup: float, runs: list[tuple[float, float]], n: int) -> StepPlan:
    """Lay a warm-up fraction and bucket run fractions on an ``n``-step run (see the module docstring)."""
    w = boundary(warmup, n)
    ranges = []
    for a, b in runs:
        lo, hi = max(boundary(a, n), w), boundary(b, n)
        ranges.append((lo, max(lo, hi)))
    return StepPlan(n, w, tuple(ranges))
