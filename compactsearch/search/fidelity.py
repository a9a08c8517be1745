"""Output fidelity of a pattern: how close the sparse head's output stays to the dense one, from block statistics.

Recall (the kept share of the softmax mass) treats every key alike. But keys are often redundant: in a video the
same place in neighbouring frames carries nearly the same value, so a pattern that drops whole frames can lose
much mass and little output, while one that keeps a thin stripe across all frames keeps mass and biases the
output. Measured on the bundled tiny model (3 prompts, steps 4 and 7, exact token-level attention): the
searched-by-recall config had mean recall 0.60 and relative output error 0.034, the best single cube recall 0.49
and error 0.022 -- and the cube's videos were closer to dense.

The profile records, next to the block mass ``P`` ``[NQB, NKB]`` (rows normalised here to ``p``), the mean Gram
matrix of the key blocks' mean values, ``G = E[V̄ V̄ᵀ]`` ``[NKB, NKB]`` (``V̄``: per key block the mean of ``v``
over its tokens; `compactsearch.profile.values.value_block_gram`). At block level the dense output of query
block ``q`` is ``p_q V̄`` and a pattern keeping the key blocks ``S`` gives ``(p_q ⊙ 1_S) V̄ / r_q`` (``r_q``:
its kept mass; the kernel renormalises). The relative squared error, summed over query blocks weighted by
their token counts, is

    err(S) = Σ_q n_q (w_q - p_q)ᵀ G (w_q - p_q) / Σ_q n_q p_qᵀ G p_q,     w_q = p_q ⊙ 1_S / r_q,

and ``fidelity = 1 - err``. The profile stores ``G`` factored, ``G ≈ U Uᵀ`` with its top 32 eigenvectors
(`compactsearch.profile.values.gram_factor`; 3 MB per Wan-14B 720p layer instead of 56), so a pattern costs
``NQB x NKB x r`` multiply-adds. Within-block variation of ``v`` is not seen (a block is kept or dropped whole,
so it only scales the error), and the expectation is over the profiled calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from compactsearch.errors import InputError
from compactsearch.patterns import Pattern

__all__ = ["HeadFidelity"]


class HeadFidelity:
    """The fidelity of patterns for one head (see the module docstring).

    Args:
        mass: ``[NQB, NKB]`` block mass (rows sum to the query block's token count).
        factor: ``[NKB, r]`` ``U`` with ``U Uᵀ`` the mean Gram matrix of the key blocks' mean values.
        block_mask: ``pattern -> [NQB, NKB]`` bool block mask (e.g. `ExactScorer.block_mask`, cached).
        max_rows: query blocks used at most (evenly spaced, always the same ones) to bound the cost on large
            grids; the error is then an estimate over those rows.
    """

    def __init__(self, mass: torch.Tensor, factor: torch.Tensor, block_mask: Callable[[Pattern], torch.Tensor],
                 max_rows: int = 128):
        nq, nk = mass.shape
        if factor.dim() != 2 or factor.shape[0] != nk:
            raise InputError(f"value factor has shape {tuple(factor.shape)}; expected [{nk}, r]")
        self.block_mask = block_mask
        self.rows = None if nq <= max_rows else torch.linspace(0, nq - 1, max_rows).round().long().unique()
        m = mass.double() if self.rows is None else mass.double()[self.rows]
        n = m.sum(-1)  # token counts (0 for rows the profile never saw)
        self.p = m / n.clamp_min(1e-300)[:, None]
        self.weight = n
        self.U = factor.double()  # [NKB, r]
        self.dense_out = self.p @ self.U  # [NQB', r]
        self.den = float((self.weight * self.dense_out.square().sum(-1)).sum())

    def error(self, pattern: Pattern) -> float:
        """Relative squared output error of ``pattern`` (0 for dense)."""
        if pattern.is_dense or not self.den > 0:
            return 0.0
        return self.mask_error(self.block_mask(pattern))

    def mask_error(self, mask: torch.Tensor, rows_only: bool = False) -> float:
        """Relative squared output error of any kept block set ``mask`` ``[NQB, NKB]`` bool (e.g. the oracle's);
        ``rows_only``: ``mask`` holds only the query blocks `rows` (all of them when that is None)."""
        if not self.den > 0:
            return 0.0
        if self.rows is not None and not rows_only:
            mask = mask[self.rows]
        ps = torch.where(mask, self.p, 0.0)
        kept = ps.sum(-1, keepdim=True)
        out = (ps @ self.U) / kept.clamp_min(1e-300)
        diff = torch.where(kept > 0, out - self.dense_out, -self.dense_out)  # nothing kept: output 0
        return float((self.weight * diff.square().sum(-1)).sum()) / self.den

    def fidelity(self, pattern: Pattern) -> float:
        """``1 - error``: 1 for dense, lower is worse."""
        return 1.0 - self.error(pattern)
