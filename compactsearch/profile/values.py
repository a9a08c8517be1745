"""Value statistics of a profile: each key block's mean value, the Gram matrix of those means per head, and its
low-rank factor (what `compactsearch.search.fidelity` needs to score a pattern's output error, in 3 MB per Wan-14B
720p layer instead of 56).

- `value_block_gram`: ``V̄ V̄ᵀ`` per head from one call's values (tile order);
- `gram_factor`: ``U`` with ``U Uᵀ`` the best rank-``r`` approximation of a Gram (eigh, or randomized subspace
  iteration on CUDA);
- `merge_factors`: the factor of the mean over prompts of several factors' Grams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["VALUE_RANK", "value_block_gram", "gram_factor", "merge_factors", "OVERSAMPLE", "POWER_ITERATIONS"]

VALUE_RANK = 32  # eigenvectors kept of each head's value Gram matrix (3 MB per Wan-14B 720p layer, not 56)


def value_block_gram(v: torch.Tensor, block_size: int, key_valid: int | None = None) -> torch.Tensor:
    """``V̄ V̄ᵀ`` per head: ``v`` ``[H, N, D]`` in tile order -> ``[H, NKB, NKB]`` float32.

    ``V̄[b]`` is the mean of ``v`` over key block ``b``'s tokens (the ragged last block over the tokens it has);
    keys at or past ``key_valid`` (masked padding) are left out, and a block with none left is zero.
    """
    H, N, D = v.shape
    nb = -(-N // block_size)
    valid = N if key_valid is None else min(N, key_valid)
    full = valid // block_size  # whole blocks of valid keys: summed in float32 without a float32 copy of v
    sums = torch.zeros(H, nb, D, dtype=torch.float32, device=v.device)
    if full:
        sums[:, :full] = v[:, : full * block_size].unflatten(1, (full, block_size)).sum(2, dtype=torch.float32)
    if valid > full * block_size:  # the ragged block of the valid keys
        sums[:, full] = v[:, full * block_size : valid].sum(1, dtype=torch.float32)
    n = (valid - torch.arange(nb, device=v.device) * block_size).clamp(0, block_size).float().clamp_min(1.0)
    means = sums / n[None, :, None]
    return means @ means.transpose(1, 2)


def gram_factor(gram: torch.Tensor, rank: int = VALUE_RANK, method: str = "auto") -> torch.Tensor:
    """``U`` ``[..., N, r]`` with ``U Uᵀ`` the best rank-``r`` approximation of the PSD ``gram`` ``[..., N, N]``
    (batched over leading dims; ``r = min(rank, N)``).

    ``method``: ``"eigh"`` (a full eigendecomposition), ``"randomized"`` (`_randomized_top_eigen`: subspace
    iteration in float64; exact where the Gram's rank fits the subspace, else within 0.1% of the best rank-r
    approximation's residual on a Gram whose spectrum decays slowly past rank r), or ``"auto"``: randomized on
    CUDA for ``N > 4 r``, where a batched eigh runs one matrix at a time (Wan 14B 720p: 591 x 591 per head,
    ~6 ms each, ~10 s per prompt).
    """
    g = gram.float()
    g = 0.5 * (g + g.transpose(-1, -2))
    scale = g.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)[..., None, None]
    r = min(rank, g.shape[-1])
    if method == "randomized" or (method == "auto" and g.is_cuda and g.shape[-1] > 4 * r):
        evals, evecs = _randomized_top_eigen(g / scale, r)
    elif method in ("auto", "eigh"):
        evals, evecs = torch.linalg.eigh(g / scale)
        evals, evecs = evals[..., -r:], evecs[..., -r:]
    else:
        raise ValueError(f"method: 'auto', 'eigh' or 'randomized', got {method!r}")
    top = evals.clamp_min(0.0) * scale[..., 0]
    return (evecs * top.sqrt()[..., None, :]).float()


#: Extra subspace columns and power iterations of `_randomized_top_eigen`.
OVERSAMPLE, POWER_ITERATIONS = 64, 4


def _orthonormal(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of ``y`` ``[..., N, k]`` (float64) on ``y``'s device: shifted
    Cholesky QR, twice (batched Cholesky and triangular solves, no per-matrix loop). Directions ``y`` lacks
    (rank below ``k``) come out as near-zero columns, which the Rayleigh-Ritz step ranks last."""
    k = y.shape[-1]
    eye = torch.eye(k, dtype=y.dtype, device=y.device)
    for _ in range(2):
        c = y.transpose(-1, -2) @ y
        shift = 1e-13 * c.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)[..., None, None] * k
        low = torch.linalg.cholesky(c + shift * eye)
        y = torch.linalg.solve_triangular(low.transpose(-1, -2), y, upper=True, left=False)
    return y


def _randomized_top_eigen(g: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``r`` eigenpairs (ascending, as `torch.linalg.eigh` orders them) of the PSD ``g`` ``[..., N, N]``
    by randomized subspace iteration (Halko, Martinsson and Tropp 2011, algorithm 4.4) in float64: matrix
    products and Cholesky QR on ``g``'s device, one ``k x k`` eigenproblem per matrix (``k = r + OVERSAMPLE``)
    on the CPU."""
    n = g.shape[-1]
    k = min(n, r + OVERSAMPLE)
    gd = g.double()
    omega = torch.randn(n, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(g.device)
    q = _orthonormal(gd @ omega)
    for _ in range(POWER_ITERATIONS):
        q = _orthonormal(gd @ q)
    small = (q.transpose(-1, -2) @ gd @ q).cpu()
    lam, w = torch.linalg.eigh(0.5 * (small + small.transpose(-1, -2)))
    return lam[..., -r:].to(g.device), q @ w[..., -r:].to(g.device)


def merge_factors(factors: Sequence[torch.Tensor], rank: int = VALUE_RANK) -> torch.Tensor:
    """The rank-``rank`` factor of the mean of ``U_p U_pᵀ`` over ``factors`` ``[..., N, r_p]`` (exact up to the
    final truncation: the concatenation ``[U_1 .. U_P] / sqrt(P)`` is a factor of the mean)."""
    cat = torch.cat([f.float() for f in factors], -1) / math.sqrt(len(factors))
    if cat.shape[-1] <= rank:
        return cat
    u, s, _ = torch.linalg.svd(cat, full_matrices=False)
    return u[..., :rank] * s[..., None, :rank]
