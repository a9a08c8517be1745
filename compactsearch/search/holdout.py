"""Held-out prompts: keep K calibration prompts out of the search and measure the chosen patterns on them.

With ``--holdout K`` the search optimises the mean block mass of the other prompts (the calibration set) and
every exactly-scored front point also gets its recall on the mean mass of the K held-out prompts. After the
budget allocation, the report puts the chosen patterns' held-out recall next to their calibration recall,
per head and overall: the evidence that a static config generalises to prompts it was not searched on.

Which prompts are held out is a deterministic function of ``(number of prompts, K, seed)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from compactsearch.errors import InputError

__all__ = ["HoldoutSplit", "split_prompts", "unit_masses", "holdout_report"]


@dataclass(frozen=True)
class HoldoutSplit:
    """Prompt indices searched on (``calibration``) and held out (``holdout``), both ascending."""

    calibration: tuple[int, ...]
    holdout: tuple[int, ...]


def split_prompts(n_prompts: int, k: int, seed: int) -> HoldoutSplit:
    """Hold out ``k`` of ``n_prompts`` prompts, chosen by ``seed``; at least one prompt stays for the search."""
    if k < 0:
        raise InputError(f"--holdout must be >= 0, got {k}")
    if k and k >= n_prompts:
        raise InputError(f"--holdout {k} leaves no calibration prompt: the profile has {n_prompts} per-prompt "
                         f"tensors; use --holdout <= {max(n_prompts - 1, 0)}")
    held = sorted(random.Random(seed).sample(range(n_prompts), k)) if k else []
    return HoldoutSplit(tuple(i for i in range(n_prompts) if i not in held), tuple(held))


def unit_masses(mass: torch.Tensor, prompt_mass: torch.Tensor | None,
                split: HoldoutSplit | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The mass to search on and the held-out mass of one (bucket, layer).

    Args:
        mass: ``[H, NQB, NKB]`` mean over all prompts.
        prompt_mass: ``[P, H, NQB, NKB]`` per-prompt mass, or None.
        split: the prompt split, or None without ``--holdout``.

    Returns:
        ``([H, NQB, NKB] calibration mass, [H, NQB, NKB] held-out mass or None)``.
    """
    if split is None or not split.holdout:
        return mass, None
    if prompt_mass is None:
        raise InputError("--holdout needs per-prompt tensors, and this profile has none; re-run the profile with "
                         "profile.per_prompt: true in the recipe")
    calib = prompt_mass[list(split.calibration)].mean(0)
    held = prompt_mass[list(split.holdout)].mean(0)
    return calib, held


def holdout_report(rows: list[tuple[str, float, float, float]], prompts: list[str],
                   split: HoldoutSplit) -> dict:
    """Overall and per-head comparison.

    Args:
        rows: per head ``(name, weight, calibration recall, held-out recall)``; weights sum to 1.
        prompts: the profile's prompt texts.
    """
    cal = sum(w * c for _, w, c, _ in rows)
    held = sum(w * h for _, w, _, h in rows)
    gaps = sorted(rows, key=lambda r: r[2] - r[3], reverse=True)
    return {
        "prompts": [prompts[i] if i < len(prompts) else f"prompt {i}" for i in split.holdout],
        "prompt_indices": list(split.holdout),
        "recall_mean_calibration": round(cal, 5),
        "recall_mean_holdout": round(held, 5),
        "recall_min_holdout": round(min(r[3] for r in rows), 5) if rows else None,
        "largest_gaps": [{"head": n, "calibration": round(c, 5), "holdout": round(h, 5)} for n, _, c, h in gaps[:10]],
        "per_head": [{"head": n, "calibration": round(c, 5), "holdout": round(h, 5)} for n, _, c, h in rows],
    }
