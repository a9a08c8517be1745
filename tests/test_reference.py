"""The PyTorch references agree with each other: the fused small-N path (no logsumexp), the einsum path (with
it), the per-block loop (a query-block sample) and element-level masked dense attention."""

from __future__ import annotations

import math

import pytest
import torch

from compact_attn import BlockSparseMask, reference


def _mask(H: int, N: int, bq: int, bk: int, density: float, seed: int) -> BlockSparseMask:
    g = torch.Generator().manual_seed(seed)
    nq, nk = math.ceil(N / bq), math.ceil(N / bk)
    dense = torch.rand(H, nq, nk, generator=g) < density
    dense[0, nq // 2] = False  # a query block that attends to nothing
    return BlockSparseMask.from_dense(dense, bq, bk, N)


@pytest.mark.parametrize("N,bq,bk", [(300, 64, 64), (1000, 128, 64), (777, 64, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_paths_agree(N, bq, bk, dtype):
    torch.manual_seed(N)
    B, H, D = 2, 3, 32
    q, k, v = (torch.randn(B, H, N, D).to(dtype) for _ in range(3))
    mask = _mask(H, N, bq, bk, 0.4, seed=N)
    want = reference.masked_dense_attention(q.float(), k.float(), v.float(), mask.token_mask())
    fused = reference.block_sparse_attention(q, k, v, mask)
    again = reference.block_sparse_attention(q, k, v, mask)  # second call: the cached token mask
    einsum, lse = reference.block_sparse_attention(q, k, v, mask, return_lse=True)
    blocks = torch.arange(mask.num_q_blocks)
    looped = reference.block_sparse_attention(q, k, v, mask, q_blocks=blocks)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for got in (fused, again, einsum, looped):
        assert got.dtype == dtype
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    empty_rows = slice((mask.num_q_blocks // 2) * bq, min((mask.num_q_blocks // 2 + 1) * bq, N))
    assert (fused[:, 0, empty_rows] == 0).all()
    assert torch.isneginf(lse[:, 0, empty_rows]).all()
