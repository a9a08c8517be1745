"""Token reordering around the attention kernel: model order to tile order (q, k, v) and back (the output).

A diffusers processor hands over ``[B, H, N, D]`` views of ``[B, N, H, D]`` projections in model token order; the
kernel takes q, k, v contiguous ``[B, H, N, D]`` in tile order, and the processor lays the output out as
``[B, N, H * D]`` in model order afterwards.

- `to_tile_order(q, k, v, perm)`: the three gathers in one launch (CUDA), position ``i`` of the result holding
  token ``perm[i]``;
- `to_model_order(o, perm)`: the output written straight into ``[B, N, H, D]`` memory at model positions, returned
  as its ``[B, H, N, D]`` view, so the processor's ``transpose(1, 2).flatten(2, 3)`` is a view, not a copy.

On an H200 ``torch.index_select`` on the views plus the processor's copy took 2.0 ms per CogVideoX-5B layer call
at density 0.3 (the kernel itself 5.5 ms; `benchmarks/attention_call.py`), enough to hold whole sparse steps
under 0.95 of their Amdahl limit. The Triton kernels here move each row once. On other devices (and with
``backend="reference"``) the same results come from ``index_select``/``index_copy_``, which are also the tests'
reference.
"""

from __future__ import annotations

import torch

from compact_attn._config import INTERPRET

__all__ = ["to_tile_order", "to_model_order"]

_BLOCK_N = 64  # tokens per program


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    if backend == "reference":
        return False
    return x.is_cuda or (INTERPRET and backend == "triton")


def to_tile_order(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, perm: torch.Tensor,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q[:, :, perm], k[:, :, perm], v[:, :, perm])``, contiguous ``[B, H, N, D]``.

    Args:
        q, k, v: ``[B, H, N, D]`` of one shape and dtype, any strides with a contiguous last dim.
        perm: ``[N]`` int64 on their device, the model position of each tile-order position.
        backend: ``"auto"`` (the Triton kernel on CUDA), ``"triton"`` or ``"reference"`` (``index_select``).
    """
    if not _use_triton(q, backend) or any(t.stride(-1) != 1 for t in (q, k, v)):
        return tuple(t.index_select(2, perm) for t in (q, k, v))
    import triton

    from compact_attn._permute_kernels import gather_rows

    B, H, N, D = q.shape
    outs = tuple(torch.empty((B, H, N, D), dtype=q.dtype, device=q.device) for _ in range(3))
    strides = [s for t in (q, k, v) for s in t.stride()[:3]]
    gather_rows[(triton.cdiv(N, _BLOCK_N), B * H)](q, k, v, *outs, perm, *strides, H, N, D=D, BLOCK_N=_BLOCK_N)
    return outs


def to_model_order(o: torch.Tensor, perm: torch.Tensor, backend: str = "auto",
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``y`` with ``y[:, :, perm] = o``: a ``[B, H, N, D]`` view of new contiguous ``[B, N, H, D]`` memory, or
    ``out`` when given.

    Args:
        o: ``[B, H, N, D]`` in tile order, contiguous last dim.
        perm: as in `to_tile_order`.
        backend: as in `to_tile_order`.
        out: optional ``[B, H, N, D]`` target (any strides); e.g. a slice of a caller's ``[B, N, H, D]`` buffer,
            so the result needs no further copy.
    """
    B, H, N, D = o.shape
    if out is not None and tuple(out.shape) != (B, H, N, D):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(B, H, N, D)}")
    y = out if out is not None else torch.empty((B, N, H, D), dtype=o.dtype, device=o.device).transpose(1, 2)
    if not _use_triton(o, backend) or o.stride(-1) != 1 or y.stride(-1) != 1:
        return y.index_copy_(2, perm, o)
    import triton

    from compact_attn._permute_kernels import scatter_rows

    scatter_rows[(triton.cdiv(N, _BLOCK_N), B * H)](o, y, perm, *o.stride()[:3], *y.stride()[:3], H, N, D=D,
                                                   BLOCK_N=_BLOCK_N)
    return y
