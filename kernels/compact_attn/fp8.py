"""FP8 attention semantics: how Q, K, V and P are quantised, written as the kernel's loop in PyTorch.

The scheme (SageAttention-style, on the kernel's own blocks) that an FP8 kernel path is to implement and that this
module defines and measures on any device:

- **Q**: one scale per (batch, head, query block): ``s_q = max|q| / 448`` over the block, ``q8 = e4m3(q / s_q)``.
- **K**: smoothed first, ``k - mean over the valid tokens`` (per batch and head: it adds the same ``q . mean`` to
  every score of a row, which softmax ignores), then one scale per (batch, head, key block) as for Q.
- **Scores** ``(q8 k8^T) s_q s_k * scale`` accumulated in float32 (an FP8 tensor-core MMA with fp32 accumulation).
- **P**: the online softmax's ``p = exp(s - m_running)`` lies in (0, 1]; it is quantised as ``e4m3(448 p) / 448``
  for the ``P V`` product, while the row sum ``l`` takes the unquantised ``p`` (as flash kernels keep it).
- **V**: one scale per (batch, head, channel) over all tokens, ``v8 = e4m3(v / s_v)``; the output is
  ``acc * s_v / l``.

`attention_blocks` runs that loop (query block by query block, key blocks in the mask's order, online softmax)
with ``precision="fp8"``; ``"bf16"`` runs the same loop with P rounded to bfloat16 (what the bf16 kernel's
``P V`` MMA takes) and inputs as given, ``"fp32"`` with nothing rounded; ``"int8-fp8"`` and ``"int8-bf16"`` take
Q and K as int8 instead (the same per-block scales over 127; Hopper's int8 MMA runs at the FP8 rate) with P and V
in e4m3 or bf16. ``benchmarks/fp8_error.py`` compares them against fp32 attention (BENCHMARKS.md, "FP8"). Not yet
a kernel option: `compact_attn.block_sparse_attention` runs bf16/fp16.
"""

from __future__ import annotations

import math

import torch

from compact_attn.mask import BlockSparseMask

__all__ = ["FP8_MAX", "quantize_blocks", "quantize_channels", "attention_blocks", "PRECISIONS"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn
PRECISIONS = ("fp32", "bf16", "fp8", "int8-fp8", "int8-bf16")
INT8_MAX = 127.0
_E4M3 = torch.float8_e4m3fn


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest e4m3 value (saturating at +-448), returned as float32."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(_E4M3).float()


def quantize_blocks(x: torch.Tensor, block: int, smooth: bool = False, fmt: str = "e4m3"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x8, scales)``: ``x`` ``[B, H, N, D]`` (minus its token mean when ``smooth``) in e4m3 (``fmt="e4m3"``) or
    int8 (``"int8"``) values, as float32, with one scale per (batch, head, ``block`` tokens), ``scales``
    ``[B, H, NB]``; ``x8 * scale`` approximates ``x`` (or the smoothed ``x``)."""
    x = x.float()
    if smooth:
        x = x - x.mean(2, keepdim=True)
    B, H, N, D = x.shape
    nb = math.ceil(N / block)
    pad = torch.nn.functional.pad(x, (0, 0, 0, nb * block - N))
    amax = pad.view(B, H, nb, block * D).abs().amax(-1)
    top = FP8_MAX if fmt == "e4m3" else INT8_MAX
    scales = (amax / top).clamp_min(1e-30)
    x = pad / scales.repeat_interleave(block, -1)[..., None]
    x8 = _e4m3(x) if fmt == "e4m3" else torch.round(x).clamp(-INT8_MAX, INT8_MAX)
    return x8[:, :, :N], scales


def quantize_channels(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v8, scales)``: one scale per (batch, head, channel) over all tokens, ``scales`` ``[B, H, 1, D]``."""
    v = v.float()
    scales = (v.abs().amax(2, keepdim=True) / FP8_MAX).clamp_min(1e-30)
    return _e4m3(v / scales), scales


def attention_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask,
                     precision: str = "fp8", scale: float | None = None,
                     q_blocks: torch.Tensor | None = None) -> torch.Tensor:
    """Block-sparse attention in the kernel's loop order at ``precision`` (module docstring).

    Args:
        q, k, v: ``[B, H, N, D]`` in tile order.
        mask: the layer's `BlockSparseMask`.
        precision: one of `PRECISIONS` (module docstring).
        scale: softmax scale, default ``1/sqrt(D)``.
        q_blocks: optional query blocks to compute (the other rows are NaN).

    Returns:
        ``[B, H, N, D]`` float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    B, H, N, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    bq, bk = mask.block_q, mask.block_k
    if precision in ("fp8", "int8-fp8", "int8-bf16"):
        fmt = "e4m3" if precision == "fp8" else "int8"
        qx, sq = quantize_blocks(q, bq, fmt=fmt)
        kx, sk = quantize_blocks(k, bk, smooth=True, fmt=fmt)
    else:
        qx, kx = q.float(), k.float()
        sq, sk = torch.ones(B, H, math.ceil(N / bq)), torch.ones(B, H, math.ceil(N / bk))
    p_fp8 = precision in ("fp8", "int8-fp8")
    if p_fp8:
        vx, sv = quantize_channels(v)
    else:
        vx, sv = v.float(), torch.ones(B, H, 1, D)
    out = torch.full((B, H, N, D), float("nan"))
    counts, indices = mask.kv_num_blocks.cpu(), mask.kv_indices.cpu()
    blocks = range(mask.num_q_blocks) if q_blocks is None else q_blocks.tolist()
    for h in range(H):
        for qb in blocks:
            rows = slice(qb * bq, min((qb + 1) * bq, N))
            n = rows.stop - rows.start
            m = torch.full((B, n), float("-inf"))
            lsum = torch.zeros(B, n)
            acc = torch.zeros(B, n, D)
            for kb in indices[h, qb, : counts[h, qb]].tolist():
                cols = slice(kb * bk, min((kb + 1) * bk, N))
                s = torch.einsum("bqd,bkd->bqk", qx[:, h, rows], kx[:, h, cols])
                s = s * (sq[:, h, qb] * sk[:, h, kb] * scale)[:, None, None]
                m_new = torch.maximum(m, s.amax(-1))
                alpha = torch.exp(m - m_new)
                p = torch.exp(s - m_new[..., None])
                lsum = lsum * alpha + p.sum(-1)
                if p_fp8:
                    p = _e4m3(p * FP8_MAX) / FP8_MAX
                elif precision != "fp32":
                    p = p.to(torch.bfloat16).float()
                acc = acc * alpha[..., None] + torch.einsum("bqk,bkd->bqd", p, vx[:, h, cols])
                m = m_new
            o = acc * sv[:, h] / lsum.clamp_min(1e-30)[..., None]
            out[:, h, rows] = torch.where(torch.isfinite(m)[..., None], o, torch.zeros_like(o))
    return out
