"""Triton kernels of `compact_attn.permute` (imported only when they run). One program moves ``BLOCK_N`` token
rows of one (batch, head); offsets are int64 (a 14B model's q at 720p has ~4e8 elements per tensor)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_rows(Q, K, V, QT, KT, VT, PERM, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, H, N,
                D: tl.constexpr, BLOCK_N: tl.constexpr):
    """``XT[b, h, i] = X[b, h, PERM[i]]`` for X in (Q, K, V); XT contiguous ``[B, H, N, D]``."""
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = i < N
    src = tl.load(PERM + i, mask=ok, other=0).to(tl.int64)
    d = tl.arange(0, D)[None, :]
    row = ok[:, None]
    dst = (bh.to(tl.int64) * N + i.to(tl.int64))[:, None] * D + d
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    tl.store(QT + dst, tl.load(Q + (b64 * sqb + h64 * sqh + src * sqn)[:, None] + d, mask=row), mask=row)
    tl.store(KT + dst, tl.load(K + (b64 * skb + h64 * skh + src * skn)[:, None] + d, mask=row), mask=row)
    tl.store(VT + dst, tl.load(V + (b64 * svb + h64 * svh + src * svn)[:, None] + d, mask=row), mask=row)


@triton.jit
def scatter_rows(O, Y, PERM, sob, soh, son, syb, syh, syn, H, N, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """``Y[b, h, PERM[i]] = O[b, h, i]``."""
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = i < N
    dst = tl.load(PERM + i, mask=ok, other=0).to(tl.int64)
    d = tl.arange(0, D)[None, :]
    row = ok[:, None]
    x = tl.load(O + (b * sob + h * soh + i.to(tl.int64) * son)[:, None] + d, mask=row)
    tl.store(Y + (b * syb + h * syh + dst * syn)[:, None] + d, x, mask=row)
