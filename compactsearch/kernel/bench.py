"""Time the bundled block-sparse kernel against dense cuDNN attention on the same inputs (GPU only).

Used by ``compactsearch validate --kernel triton``. Limits: CUDA tensors only; times with CUDA events, median of
``reps`` runs after one warm-up; the inputs should fill the GPU (a real layer), else launch overhead dominates.
"""

from __future__ import annotations

import statistics

import torch

__all__ = ["time_against_dense", "median_ms"]


def median_ms(fn, reps: int) -> float:
    """Median milliseconds of ``reps`` runs of ``fn`` after one warm-up, timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_against_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, reps: int = 10,
                       dense_ms: float | None = None) -> dict:
    """Median time of the Triton block-sparse forward and of cuDNN SDPA dense attention.

    Args:
        q, k, v: ``[B, H, N, D]`` CUDA tensors in tile order (bf16/fp16), ``D`` in {64, 128}.
        mask: the layer's `compact_attn.BlockSparseMask`, on q's device.
        reps: timed runs per kernel (after one warm-up each).
        dense_ms: the dense time measured earlier for the same shape and dtype (it depends on nothing else);
            when given, cuDNN is not run again.

    Returns:
        ``{"ms_sparse": float, "ms_dense_cudnn": float, "speedup": ms_dense_cudnn / ms_sparse}``.

    Raises:
        ValueError: inputs not on CUDA, or inconsistent with the mask (from the kernel's checks).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from compact_attn import block_sparse_attention

    if q.device.type != "cuda":
        raise ValueError(f"time_against_dense needs CUDA tensors, got {q.device}")
    ms_sparse = median_ms(lambda: block_sparse_attention(q, k, v, mask, backend="triton"), reps)
    ms_dense = dense_ms
    if ms_dense is None:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ms_dense = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), reps)
    return {"ms_sparse": ms_sparse, "ms_dense_cudnn": ms_dense, "speedup": ms_dense / ms_sparse}
