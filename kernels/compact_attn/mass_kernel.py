"""Triton block mass: softmax mass per (query block, key block), without materialising N x N.

What it computes: ``mass[b, h, i, j] = sum over query tokens r of block i and key tokens c of block j of
softmax(q k^T * scale)[r, c]``, float32 ``[B, H, NQB, NKB]``. Each row of the softmax sums to one, so row i of
the result sums to the number of tokens in query block i. It is the same function as
`compact_attn.reference.block_mass`.

How, in two passes (one when the caller passes the row logsumexp):
1. ``_row_lse``: a QK-only streaming pass per ``BLOCK_M``-row tile over all keys, online max and sum in base 2,
   writes the row logsumexp (base-2 units of the scaled scores) to an O(N) buffer.
2. ``_block_sums``: per (query block, all key blocks): ``p = 2^(qk * scale * log2e - lse2)`` on the block's
   ``block_q x block_k`` tile, summed to one float and stored. No N x N tensor ever exists; extra memory is the
   ``[B, H, N]`` float32 logsumexp.

Limits, stated plainly:
- Dense over all key blocks (a profile measures everything); cost is about 2x the QK^T matmul of one attention
  forward plus 2 N^2 exponentials (1 N^2 when ``lse`` is given), so it is exponential-bound on Hopper.
- Head dim 64 or 128; bf16/fp16 (fp32 accepted, IEEE fp32 dots, slow); ``block_q``, ``block_k`` in
  {16, 32, 64, 128}.
- Tuned on one H200 (triton 3.6) only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from compact_attn import check_mass_inputs
from compact_attn._config import INTERPRET, MassConfig, mass_config
from compact_attn.attention import _mma

__all__ = ["block_mass_triton", "block_mass_from_block_lse"]

LOG2E = 1.4426950408889634
_MASS_BLOCKS = (16, 32, 64, 128)


@triton.jit
def _qk_tile(q, k_ptr, row0, N, stride_kn, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
             DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Raw scores ``q k^T`` of one ``BLOCK_N``-key tile; keys past N masked to -inf when ``MASKED``."""
    cols = row0 + tl.arange(0, BLOCK_N)
    ptrs = k_ptr + cols[:, None] * stride_kn + tl.arange(0, HEAD_DIM)[None, :]
    if MASKED:
        k = tl.load(ptrs, mask=cols[:, None] < N, other=0.0)
    else:
        k = tl.load(ptrs)
    qk = _mma(q, tl.trans(k), None, DOT_PREC, UPCAST)
    if MASKED:
        qk = tl.where(cols[None, :] < N, qk, float("-inf"))
    return qk


@triton.jit
def _row_lse(
    Q, K, LSE2,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    H, N, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Pass 1: ``LSE2[b, h, r] = log2 sum_c 2^(q_r k_c * scale * log2e)`` over all keys."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qn \
        + tl.arange(0, HEAD_DIM)[None, :]
    q = tl.load(q_ptrs, mask=rows[:, None] < N, other=0.0)
    k_ptr = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_full = N // BLOCK_N
    for t in range(0, n_full):  # unmasked tiles
        qk = _qk_tile(q, k_ptr, t * BLOCK_N, N, stride_kn, BLOCK_N, HEAD_DIM, False, DOT_PREC, UPCAST)
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        l_i = l_i * tl.math.exp2(m_i - m_ij) + tl.sum(tl.math.exp2(qk * qk_scale - m_ij[:, None]), 1)
        m_i = m_ij
    if n_full * BLOCK_N < N:  # the ragged tail tile
        qk = _qk_tile(q, k_ptr, n_full * BLOCK_N, N, stride_kn, BLOCK_N, HEAD_DIM, True, DOT_PREC, UPCAST)
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        l_i = l_i * tl.math.exp2(m_i - m_ij) + tl.sum(tl.math.exp2(qk * qk_scale - m_ij[:, None]), 1)
        m_i = m_ij
    tl.store(LSE2 + bh.to(tl.int64) * N + rows, m_i + tl.math.log2(l_i), mask=rows < N)


@triton.jit
def _block_sums(
    Q, K, LSE2, OUT,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    H, N, NQB, NKB, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
    GROUP: tl.constexpr,
):
    """Pass 2: ``OUT[b, h, i, j] = sum of 2^(q k^T * scale * log2e - lse2)`` over block (i, j).

    With ``GROUP > 1`` a key block's tile is reduced only over its columns (within a warp) and kept as one
    column of a ``[BLOCK_Q, GROUP]`` accumulator; the reduction over rows (across warps, through shared memory)
    runs once per ``GROUP`` key blocks instead of once per block."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qn \
        + tl.arange(0, HEAD_DIM)[None, :]
    q = tl.load(q_ptrs, mask=rows[:, None] < N, other=0.0)
    # Rows past N get lse = +inf, so their p is exactly 0.
    lse2 = tl.load(LSE2 + bh.to(tl.int64) * N + rows, mask=rows < N, other=float("inf"))
    k_ptr = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    out_ptr = OUT + (bh.to(tl.int64) * NQB + i) * NKB
    n_full = N // BLOCK_K
    n_grouped = 0
    if GROUP > 1:
        cols = tl.arange(0, GROUP)
        n_grouped = (n_full // GROUP) * GROUP
        acc = tl.zeros([BLOCK_Q, GROUP], dtype=tl.float32)
        for j in range(0, n_grouped):  # every column of acc is overwritten once per group, so no reset
            qk = _qk_tile(q, k_ptr, j * BLOCK_K, N, stride_kn, BLOCK_K, HEAD_DIM, False, DOT_PREC, UPCAST)
            rs = tl.sum(tl.math.exp2(qk * qk_scale - lse2[:, None]), 1)
            jj = j % GROUP
            acc = tl.where(cols[None, :] == jj, rs[:, None], acc)
            if jj == GROUP - 1:
                tl.store(out_ptr + j - (GROUP - 1) + cols, tl.sum(acc, 0))
    for j in range(n_grouped, n_full):
        qk = _qk_tile(q, k_ptr, j * BLOCK_K, N, stride_kn, BLOCK_K, HEAD_DIM, False, DOT_PREC, UPCAST)
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        tl.store(out_ptr + j, tl.sum(tl.sum(p, 1), 0))
    if n_full < NKB:
        qk = _qk_tile(q, k_ptr, n_full * BLOCK_K, N, stride_kn, BLOCK_K, HEAD_DIM, True, DOT_PREC, UPCAST)
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        tl.store(out_ptr + n_full, tl.sum(tl.sum(p, 1), 0))


def block_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    lse: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    config: MassConfig | None = None,
) -> torch.Tensor:
    """Block mass with the Triton kernels.

    Args:
        q, k: ``[B, H, N, D]`` in tile order, one dtype and device (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        block_q, block_k: block sizes in tokens, each in {16, 32, 64, 128}.
        scale: softmax scale, default ``1/sqrt(D)``.
        lse: optional natural-log row logsumexp ``[B, H, N]`` (e.g. from the attention forward's
            ``return_lse``); when given, pass 1 is skipped.
        out: optional preallocated float32 ``[B, H, NQB, NKB]`` output (benchmarks poison it first).
        config: launch config override for pass 1.

    Returns:
        ``[B, H, NQB, NKB]`` float32 block mass.
    """
    scale = check_mass_inputs(q, k, block_q, block_k, scale, lse)
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1); q is on {q.device}")
    if block_q not in _MASS_BLOCKS or block_k not in _MASS_BLOCKS:
        raise ValueError(f"the triton block mass needs block_q and block_k in {_MASS_BLOCKS}; got ({block_q}, "
                         f"{block_k})")
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    B, H, N, D = q.shape
    nqb, nkb = triton.cdiv(N, block_q), triton.cdiv(N, block_k)
    if out is None:
        out = torch.empty((B, H, nqb, nkb), dtype=torch.float32, device=q.device)
    elif tuple(out.shape) != (B, H, nqb, nkb) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 [B, H, NQB, NKB] = {(B, H, nqb, nkb)} tensor")
    qk_scale = scale * LOG2E
    upcast = INTERPRET and q.dtype == torch.bfloat16  # the interpreter's bf16 dot is wrong
    prec = "ieee" if q.dtype == torch.float32 or upcast else "tf32"
    c = config or mass_config(q.device, D, q.dtype)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    if lse is None:
        lse2 = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
        _row_lse[(triton.cdiv(N, c.lse_block_m), B * H)](
            q, k, lse2, *strides, H, N, qk_scale, HEAD_DIM=D, BLOCK_M=c.lse_block_m, BLOCK_N=c.lse_block_n,
            DOT_PREC=prec, UPCAST=upcast, num_warps=c.num_warps, num_stages=c.num_stages,
        )
    else:
        lse2 = (lse.float() * LOG2E).contiguous()  # natural log -> base-2 units of the scaled scores
    warps = c.sums_warps if block_q * block_k >= 128 * 64 else min(c.sums_warps, 4)
    _block_sums[(nqb, B * H)](
        q, k, lse2, out, *strides, H, N, nqb, nkb, qk_scale, HEAD_DIM=D, BLOCK_Q=block_q, BLOCK_K=block_k,
        DOT_PREC=prec, UPCAST=upcast, GROUP=c.sums_group, num_warps=warps, num_stages=c.sums_stages,
    )
    return out


@triton.jit
def _mass_from_block_lse(BLSE, LSE2, OUT, N, NQB, NKB, BLOCK_Q: tl.constexpr):
    """``OUT[bh, i, j] = sum over rows r of query block i of 2^(BLSE[bh, j, r] - LSE2[bh, r])``: one program per
    (key block j, head), streaming its contiguous row of ``BLSE``."""
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    src = BLSE + (bh * NKB + j) * N
    out = OUT + bh * NQB * NKB + j
    for i in range(0, NQB):
        rows = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
        t = tl.load(src + rows, mask=rows < N, other=float("-inf"))
        lse2 = tl.load(LSE2 + bh * N + rows, mask=rows < N, other=0.0)
        p = tl.where(t == float("-inf"), 0.0, tl.math.exp2(t - lse2))  # unlisted blocks and empty rows: 0
        tl.store(out + i * NKB, tl.sum(p, 0))


def block_mass_from_block_lse(block_lse: torch.Tensor, lse: torch.Tensor, block_q: int) -> torch.Tensor:
    """The block mass from the attention forward's per-block logsumexps (`block_sparse_attention_triton`'s
    ``block_lse``, base-2 units) and its natural-log row ``lse`` ``[B, H, N]``: float32 ``[B, H, NQB, NKB]``,
    the same function as `block_mass_triton` (mass of unlisted key blocks: 0)."""
    B, H, nkb, N = block_lse.shape
    if tuple(lse.shape) != (B, H, N):
        raise ValueError(f"lse must be [B, H, N] = {(B, H, N)}, got {tuple(lse.shape)}")
    if block_q not in _MASS_BLOCKS:
        raise ValueError(f"block_q must be one of {_MASS_BLOCKS}, got {block_q}")
    nqb = triton.cdiv(N, block_q)
    out = torch.empty((B, H, nqb, nkb), dtype=torch.float32, device=block_lse.device)
    lse2 = (lse.float() * LOG2E).contiguous()
    _mass_from_block_lse[(nkb, B * H)](block_lse.contiguous(), lse2, out, N, nqb, nkb, BLOCK_Q=block_q,
                                       num_warps=4)
    return out
