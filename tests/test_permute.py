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


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_model_order_into_a_slice_of_a_callers_buffer(backend):
    """``out=``: the padded-text path writes one batch item's valid prefix straight into ``[B, N, H, D]`` memory;
    the rest of the buffer is left alone."""
    B, H, N, D, n = 2, 3, 90, 64, 71
    g = torch.Generator().manual_seed(1)
    o = torch.randn(1, H, n, D, generator=g).to(torch.bfloat16)
    perm = torch.randperm(n, generator=g)
    buf = torch.zeros(B, N, H, D, dtype=torch.bfloat16)
    view = buf.transpose(1, 2)
    got = to_model_order(o, perm, backend=backend, out=view[1:2, :, :n])
    assert got.data_ptr() == view[1:2, :, :n].data_ptr()
    expected = torch.empty_like(o)
    expected[:, :, perm] = o
    assert torch.equal(view[1:2, :, :n], expected)
    assert not buf[0].any() and not buf[1, n:].any()
    with pytest.raises(ValueError, match="out has shape"):
        to_model_order(o, perm, backend=backend, out=view[1:2])
