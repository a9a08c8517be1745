"""The Triton block-mass kernel (interpreter mode, CPU) against the PyTorch reference, and its input errors.

Outputs are poisoned with NaN first and checked fully written. Tolerance: ``err(kernel, fp32 ref) <= 2 *
err(PyTorch scores in the same low precision, fp32 ref) + 1e-5`` with relative Frobenius errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compact_attn import block_mass, reference  # noqa: E402
from compact_attn._config import INTERPRET, MassConfig  # noqa: E402
from compact_attn.mass_kernel import block_mass_triton  # noqa: E402

if not INTERPRET:  # pragma: no cover - a misconfigured run must fail loudly, not skip
    raise RuntimeError("tests/test_kernel_mass.py needs TRITON_INTERPRET=1 set before triton is imported")


def _rand(*shape, dtype):
    return torch.randn(*shape, dtype=dtype)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def _torch_lowp_mass(q, k, bq, bk):
    """Block mass with PyTorch's scores in the inputs' dtype (softmax and sums in fp32)."""
    s = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    p = torch.softmax(s, -1)
    B, H, N, _ = q.shape
    nq, nk = math.ceil(N / bq), math.ceil(N / bk)
    p = F.pad(p, (0, nk * bk - N, 0, nq * bq - N))
    return p.view(B, H, nq, bq, nk, bk).sum((3, 5))


# (name, B, H, N, D, dtype, block_q, block_k, with_lse)
MASS_CASES = [
    ("bf16-d64-64x64-ragged", 1, 2, 201, 64, torch.bfloat16, 64, 64, False),
    ("fp16-d128-64x32", 2, 1, 150, 128, torch.float16, 64, 32, False),
    ("fp32-d64-32x64", 1, 2, 100, 64, torch.float32, 32, 64, False),
    ("bf16-d128-128x128-lse", 1, 2, 300, 128, torch.bfloat16, 128, 128, True),
]


@pytest.mark.parametrize("case", MASS_CASES, ids=[c[0] for c in MASS_CASES])
def test_block_mass_matches_reference(case):
    _, B, H, N, D, dtype, bq, bk, with_lse = case
    q, k = _rand(B, H, N, D, dtype=dtype), _rand(B, H, N, D, dtype=dtype)
    lse = None
    if with_lse:
        s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) / math.sqrt(D)
        lse = torch.logsumexp(s, -1)
    nq, nk = math.ceil(N / bq), math.ceil(N / bk)
    out = torch.full((B, H, nq, nk), float("nan"))
    got = block_mass_triton(q, k, bq, bk, lse=lse, out=out)
    assert got is out and not torch.isnan(out).any(), "block mass left entries unwritten"
    ref = reference.block_mass(q.float(), k.float(), bq, bk)
    err, err_torch = _rel(out, ref), _rel(_torch_lowp_mass(q, k, bq, bk), ref)
    assert err <= 2 * err_torch + 1e-5, f"block mass error {err:.3e} > 2 x torch error {err_torch:.3e}"
    tokens = torch.clamp(N - torch.arange(nq) * bq, max=bq).float()
    assert torch.allclose(out.sum(-1), tokens.expand(B, H, nq), rtol=1e-4)


def test_block_mass_entry_point_and_pass_config():
    q, k = _rand(1, 2, 130, 64, dtype=torch.float16), _rand(1, 2, 130, 64, dtype=torch.float16)
    tri = block_mass(q, k, 64, 64, backend="triton")
    ref = block_mass(q, k, 64, 64)  # CPU -> reference
    assert torch.equal(ref, reference.block_mass(q, k, 64, 64))
    assert _rel(tri, ref) < 1e-4
    small = block_mass_triton(q, k, 64, 64, config=MassConfig(32, 16, 4, 1, 4, 1))
    assert _rel(small, ref) < 1e-4


def test_block_mass_input_errors():
    q, k = (torch.zeros(1, 2, 64, 64, dtype=torch.float16) for _ in range(2))
    with pytest.raises(ValueError, match="q and k must have one shape"):
        block_mass(q, k[:, :1], 64, 64, backend="triton")
    with pytest.raises(ValueError, match="head dim must be 64 or 128"):
        block_mass(q[..., :16], k[..., :16], 64, 64)
    with pytest.raises(ValueError, match="block_q must be a positive int"):
        block_mass(q, k, 0, 64)
    with pytest.raises(ValueError, match=r"lse must be a \[B, H, N\] = \(1, 2, 64\) tensor"):
        block_mass(q, k, 64, 64, lse=torch.zeros(1, 2, 63))
    with pytest.raises(ValueError, match=r"block_q and block_k in \(16, 32, 64, 128\); got \(256, 64\)"):
        block_mass(q, k, 256, 64, backend="triton")
    with pytest.raises(ValueError, match="out must be a contiguous float32"):
        block_mass_triton(q, k, 64, 64, out=torch.zeros(1, 2, 1, 2))


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_block_sums_equal_per_block_sums(group):
    """Pass 2 with the row reduction deferred over ``group`` key blocks (`MassConfig.sums_group`) writes every
    entry and equals the per-block reduction: 7 key blocks of 32 (a full group or three, leftovers and a ragged
    tail, 215 tokens)."""
    q, k = _rand(1, 2, 215, 64, dtype=torch.float16), _rand(1, 2, 215, 64, dtype=torch.float16)
    one = block_mass_triton(q, k, 32, 32, config=MassConfig(32, 16, 4, 1, 4, 1))
    out = torch.full_like(one, float("nan"))
    grouped = block_mass_triton(q, k, 32, 32, out=out, config=MassConfig(32, 16, 4, 1, 4, 1, group))
    assert not torch.isnan(grouped).any()
    torch.testing.assert_close(grouped, one, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- block mass from the attention forward
# (name, B, H, N, D, dtype, block_q, block_k, block_n, density): block_n < block_k runs several key tiles per block
FUSED_CASES = [
    ("bf16-d64-64-ragged-dense", 1, 2, 201, 64, torch.bfloat16, 64, 64, 64, 1.0),
    ("fp16-d128-128x128-2tiles-ragged", 2, 1, 300, 128, torch.float16, 128, 128, 64, 1.0),
    ("fp32-d64-32x64-sparse", 1, 2, 150, 64, torch.float32, 32, 64, 32, 0.5),
    ("bf16-d128-64x128-sparse-tail", 1, 2, 333, 128, torch.bfloat16, 64, 128, 32, 0.6),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_block_mass_from_the_attention_forward_matches_reference(case):
    """`attention_with_block_mass`: the forward writes each listed key block's share of the softmax denominator;
    its block mass equals the reference's with the same (sparse) lse on the listed blocks, 0 elsewhere, and the
    output and lse equal the plain forward's."""
    from compact_attn import attention_with_block_mass
    from compact_attn._config import AttnConfig
    from compact_attn.attention import block_sparse_attention_triton
    from compact_attn.mask import BlockSparseMask

    _, B, H, N, D, dtype, bq, bk, bn, density = case
    q, k, v = (_rand(B, H, N, D, dtype=dtype) for _ in range(3))
    nq, nk = math.ceil(N / bq), math.ceil(N / bk)
    if density < 1.0:
        keep = torch.rand(H, nq, nk) < density
        keep[:, :, -1] = True  # the ragged last key block listed for every query block
        mask = BlockSparseMask.from_dense(keep, bq, bk, N)
    else:
        mask = BlockSparseMask.dense_mask(H, N, bq, bk)
    cfg = AttnConfig(block_m=min(64, bq), block_n=bn, num_warps=4, num_stages=1)
    o, lse, mass = attention_with_block_mass(q, k, v, mask, backend="triton", config=cfg)
    o_plain, lse_plain = block_sparse_attention_triton(q, k, v, mask, return_lse=True, config=cfg)
    assert torch.equal(o, o_plain) and torch.equal(lse, lse_plain)
    listed = mask.to_dense()[None].float()
    ref = reference.block_mass(q.float(), k.float(), bq, bk, lse=lse) * listed
    assert not torch.isnan(mass).any()
    assert torch.allclose(mass, ref, atol=2e-5 * bk, rtol=2e-3), (mass - ref).abs().max()
    assert torch.equal(mass == 0, listed.expand_as(mass) == 0) or density == 1.0
    tokens = torch.clamp(N - torch.arange(nq) * bq, max=bq).float()
    assert torch.allclose(mass.sum(-1), tokens.expand(B, H, nq), rtol=1e-4)  # the listed blocks hold every row
    _, _, ref_mass = attention_with_block_mass(q.float(), k.float(), v.float(), mask, backend="reference")
    assert torch.allclose(ref_mass, ref, atol=2e-5 * bk, rtol=2e-3)


def test_block_lse_buffer_of_the_wrong_shape_is_refused():
    from compact_attn.attention import block_sparse_attention_triton
    from compact_attn.mask import BlockSparseMask

    q = _rand(1, 2, 100, 64, dtype=torch.bfloat16)
    mask = BlockSparseMask.dense_mask(2, 100, 64, 64)
    with pytest.raises(ValueError, match=r"block_lse must be a contiguous float32 \[B, H, NKB, N\]"):
        block_sparse_attention_triton(q, q, q, mask, return_lse=True, block_lse=torch.zeros(1, 2, 100, 2))
