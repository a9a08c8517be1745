"""Pure-PyTorch references for the kernels. Slow, exact (float32 math), and the ground truth in tests.

All tensors are ``[B, H, N, D]`` in tile order. Nothing here materialises more than one query block's (or
one query chunk's) row of scores at a time, except `masked_dense_attention`, which is for small tests.
"""

from __future__ import annotations

import math
import weakref

import torch

from compact_attn.mask import BlockSparseMask

__all__ = ["block_sparse_attention", "block_mass", "masked_dense_attention"]


def _block_tokens(blocks: torch.Tensor, block: int, seq_len: int) -> torch.Tensor:
    """Token indices of the given blocks, in order, ragged tail dropped. ``[sum of block lengths]``."""
    ar = torch.arange(block, device=blocks.device)
    tok = (blocks.long()[:, None] * block + ar[None, :]).flatten()
    return tok[tok < seq_len]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float | None = None,
    return_lse: bool = False,
    q_blocks: torch.Tensor | None = None,
):
    """Attention of each query block over its listed key blocks only.

    Args:
        q, k, v: ``[B, H, N, D]``.
        mask: the layer's `BlockSparseMask` (``H`` heads, ``seq_len == N``).
        scale: softmax scale, default ``1/sqrt(D)``.
        return_lse: also return the natural-log logsumexp per row, ``[B, H, N]`` float32.
        q_blocks: optional 1-D tensor of query blocks to compute (the others are left NaN): a sample for
            shapes too large to do whole on a CPU.

    Returns:
        ``o`` ``[B, H, N, D]`` in q's dtype (and ``lse`` when asked).
    """
    B, H, N, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if q_blocks is None and N <= _WHOLE_ROWS_MAX_N:
        if not return_lse:
            return _block_sparse_sdpa(q, k, v, mask, scale)
        return _block_sparse_whole(q, k, v, mask, scale, return_lse)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, N), float("nan"), dtype=torch.float32, device=q.device)
    counts = mask.kv_num_blocks.cpu()
    indices = mask.kv_indices.cpu()
    blocks = range(mask.num_q_blocks) if q_blocks is None else q_blocks.tolist()
    for h in range(H):
        for qb in blocks:
            rows = slice(qb * mask.block_q, min((qb + 1) * mask.block_q, N))
            kv = indices[h, qb, : counts[h, qb]].to(q.device)
            if kv.numel() == 0:  # attends to nothing: zero output, lse -inf
                out[:, h, rows] = 0
                lse[:, h, rows] = float("-inf")
                continue
            tok = _block_tokens(kv, mask.block_k, N)
            s = torch.einsum("bqd,bkd->bqk", q[:, h, rows].float(), k[:, h, tok].float()) * scale
            row_lse = torch.logsumexp(s, dim=-1)
            p = torch.exp(s - row_lse[..., None])
            out[:, h, rows] = torch.einsum("bqk,bkd->bqd", p, v[:, h, tok].float()).to(q.dtype)
            lse[:, h, rows] = row_lse
    return (out, lse) if return_lse else out


_WHOLE_ROWS_MAX_N = 4096  # up to here a head's N x N scores are held at once (64 MB in float32): tiny models


def _block_sparse_whole(q, k, v, mask: BlockSparseMask, scale: float, return_lse: bool):
    """`block_sparse_attention` for small ``N``: one head's whole score matrix at a time, masked by the block
    mask expanded to tokens (the same float32 math as the per-block loop, without its Python loop)."""
    B, H, N, D = q.shape
    nqb, nkb = mask.num_q_blocks, math.ceil(N / mask.block_k)
    counts = mask.kv_num_blocks.to(q.device).long()
    indices = mask.kv_indices.to(q.device).long()
    listed = torch.arange(indices.shape[-1], device=q.device)[None, None, :] < counts[..., None]  # [H, NQB, MAXK]
    out = torch.empty_like(q)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    for h in range(H):
        blocks = torch.zeros(nqb, nkb + 1, dtype=torch.bool, device=q.device)  # column nkb takes unlisted entries
        blocks.scatter_(1, torch.where(listed[h], indices[h].clamp(0, nkb - 1), nkb), True)
        allowed = blocks[:, :nkb].repeat_interleave(mask.block_q, 0)[:N].repeat_interleave(mask.block_k, 1)[:, :N]
        s = torch.einsum("bqd,bkd->bqk", q[:, h].float(), k[:, h].float()) * scale
        s = s.masked_fill(~allowed, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)  # -inf where a row attends to nothing
        p = torch.exp(s - row_lse.nan_to_num(neginf=0.0)[..., None])  # exp(-inf) = 0 on those rows
        out[:, h] = torch.einsum("bqk,bkd->bqd", p, v[:, h].float()).to(q.dtype)
        lse[:, h] = row_lse
    return (out, lse) if return_lse else out


_TOKEN_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # mask -> its token mask, while it lives


def _block_sparse_sdpa(q, k, v, mask: BlockSparseMask, scale: float) -> torch.Tensor:
    """`block_sparse_attention` for small ``N`` without the logsumexp: PyTorch's fused attention in float32 over
    the token mask (built once per mask object and kept on it), about 2x faster on a CPU than the einsum path,
    which the runtime's CPU generations feel. Rows whose query block lists no key block give zeros."""
    N = q.shape[2]
    allowed = _TOKEN_MASKS.get(mask)
    if allowed is None or allowed.device != q.device:
        allowed = mask.token_mask().to(q.device)
        _TOKEN_MASKS[mask] = allowed
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=allowed[None], scale=scale)
    empty = (mask.kv_num_blocks.to(q.device) == 0).repeat_interleave(mask.block_q, -1)[:, :N]  # [H, N]
    if bool(empty.any()):
        out = out.masked_fill(empty[None, :, :, None], 0.0)
    return out.to(q.dtype)


def masked_dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_mask: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Dense attention restricted to a token mask ``[H, N, N]`` (True = attend), float32 math. Small N only."""
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    s = s.masked_fill(~token_mask[None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows that attend to nothing give zeros
    return torch.einsum("bhqk,bhkd->bhqd", p, v.float()).to(q.dtype)


def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    lse: torch.Tensor | None = None,
    chunk_tokens: int = 1 << 22,
) -> torch.Tensor:
    """Softmax mass per (query block, key block), never holding more than one chunk of rows.

    Args:
        q, k: ``[B, H, N, D]``.
        block_q, block_k: block sizes in tokens.
        scale: softmax scale, default ``1/sqrt(D)``.
        lse: optional natural-log row logsumexp ``[B, H, N]``; computed when absent.
        chunk_tokens: scores held at once per (batch, head) are about ``chunk_tokens`` floats.

    Returns:
        ``[B, H, NQB, NKB]`` float32: for each block pair, the sum over its query tokens and key tokens of
        ``softmax(q k^T * scale)``. A query block's row sums to its number of tokens.
    """
    B, H, N, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    nqb, nkb = math.ceil(N / block_q), math.ceil(N / block_k)
    out = torch.zeros(B, H, nqb, nkb, dtype=torch.float32, device=q.device)
    rows_per_chunk = max(block_q, (chunk_tokens // max(N, 1)) // block_q * block_q)
    kf = k.float()
    full_k = (N // block_k) * block_k  # key columns in whole blocks; the ragged tail is summed on its own
    for r0 in range(0, N, rows_per_chunk):
        r1 = min(N, r0 + rows_per_chunk)
        s = torch.einsum("bhqd,bhkd->bhqk", q[:, :, r0:r1].float() * scale, kf)  # [B, H, R, N]
        # in place: s -> exp(s - row max) (or exp(s - lse)); one buffer of R x N per chunk
        if lse is None:
            s.sub_(s.amax(-1, keepdim=True)).exp_()
        else:
            s.sub_(lse[:, :, r0:r1, None].float()).exp_()
        cols = s[..., :full_k].unflatten(-1, (full_k // block_k, block_k)).sum(-1)  # [B, H, R, NKB]
        if full_k < N:
            cols = torch.cat([cols, s[..., full_k:].sum(-1, keepdim=True)], -1)
        if lse is None:  # normalise each row by its sum (the softmax denominator)
            cols.div_(cols.sum(-1, keepdim=True))
        full_q = ((r1 - r0) // block_q) * block_q  # chunks start on a block boundary
        b0 = r0 // block_q
        out[:, :, b0 : b0 + full_q // block_q] += cols[:, :, :full_q].view(B, H, full_q // block_q, block_q, nkb).sum(3)
        if full_q < r1 - r0:
            out[:, :, b0 + full_q // block_q] += cols[:, :, full_q:].sum(2)
    return out
