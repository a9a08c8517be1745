"""Token reordering around the kernel: the Triton kernels (interpreter on CPU) against index_select, on the
views a processor hands over and on odd token counts."""

from __future__ import annotations

import pytest
import torch

from compact_attn.permute import to_model_order, to_tile_order


@pytest.mark.parametrize("B,H,N,D", [(2, 3, 77, 64), (1, 2, 130, 128)])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_round_trip_on_processor_views(B, H, N, D, backend):
    g = torch.Generator().manual_seed(N)
    proj = [torch.randn(B, N, H, D, generator=g).to(torch.bfloat16) for _ in range(3)]
    q, k, v = (x.transpose(1, 2) for x in proj)  # [B, H, N, D] views of [B, N, H, D] memory
    perm = torch.randperm(N, generator=g)
    qt, kt, vt = to_tile_order(q, k, v, perm, backend=backend)
    for got, x in zip((qt, kt, vt), (q, k, v)):
        assert got.is_contiguous() and torch.equal(got, x[:, :, perm])
    y = to_model_order(qt * 2, perm, backend=backend)
    assert torch.equal(y, q * 2)
    assert y.transpose(1, 2).is_contiguous()  # the processor's [B, N, H * D] is a view
    assert torch.equal(y.transpose(1, 2).flatten(2, 3), (proj[0] * 2).flatten(2, 3))
