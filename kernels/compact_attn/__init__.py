"""compact_attn: block-sparse attention and block-mass kernels for video DiTs, with PyTorch references.

Public API: `BlockSparseMask`, `block_sparse_attention`, `block_mass`, and `reference` (pure PyTorch).

Backends: ``backend="auto"`` runs the Triton kernels on CUDA tensors and the PyTorch reference otherwise;
``"triton"`` and ``"reference"`` force one. The environment variable ``COMPACT_ATTN_BACKEND`` (``triton`` or
``reference``) overrides ``"auto"``. Under ``TRITON_INTERPRET=1`` the Triton kernels also run on CPU tensors
(slowly; that is how the tests run them). Triton is imported only when a Triton backend is used.

Dense heads: on the Triton backend, heads whose mask keeps every block run through PyTorch's fused SDPA
(cuDNN first), which is faster dense than the block-sparse kernel at head dim 128 (on Hopper at head dim 64
the kernel is faster and keeps them); ``dense_heads=`` or ``COMPACT_ATTN_DENSE_HEADS`` (``sdpa``/``kernel``)
choose.
"""

from __future__ import annotations

import math
import os

import torch

from compact_attn import reference
from compact_attn.mask import BlockSparseMask

HEAD_DIMS = (64, 128)  # the head dims the kernels take

__all__ = [
    "HEAD_DIMS",
    "BlockSparseMask",
    "reference",
    "block_sparse_attention",
    "block_mass",
    "attention_with_block_mass",
    "resolve_backend",
    "check_attention_inputs",
    "check_mass_inputs",
]

BACKENDS = ("auto", "triton", "reference")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"triton"`` or ``"reference"`` for a requested backend and the inputs' device.

    Raises:
        ValueError: unknown backend name (argument or ``COMPACT_ATTN_BACKEND``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("COMPACT_ATTN_BACKEND", "").strip().lower()
        if env:
            if env not in ("triton", "reference"):
                raise ValueError(f"COMPACT_ATTN_BACKEND must be 'triton' or 'reference', got {env!r}")
            return env
        return "triton" if device.type == "cuda" else "reference"
    return backend


# ------------------------------------------------------------------------------------------ input checks
def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask,
                           scale: float | None) -> float:
    """Validate the forward's inputs (both backends); return the softmax scale. Raises ValueError."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D] (4 dims), got shape {tuple(t.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have one shape [B, H, N, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q, k, v must be bfloat16, float16 or float32, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}")
    B, H, N, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim must be 64 or 128, got {D}")
    if N == 0 or B == 0 or H == 0:
        raise ValueError(f"q has an empty dimension: shape {tuple(q.shape)}")
    if not isinstance(mask, BlockSparseMask):
        raise ValueError(f"mask must be a compact_attn.BlockSparseMask, got {type(mask).__name__}")
    if mask.num_heads != H:
        raise ValueError(f"mask has {mask.num_heads} heads but q has {H}")
    if mask.seq_len != N:
        raise ValueError(f"mask.seq_len is {mask.seq_len} but q has {N} tokens")
    if mask.device != q.device:
        raise ValueError(f"mask is on {mask.device} but q is on {q.device}: use mask.to(q.device)")
    if scale is None:
        return 1.0 / math.sqrt(D)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def check_mass_inputs(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, scale: float | None,
                      lse: torch.Tensor | None) -> float:
    """Validate block-mass inputs (both backends); return the softmax scale. Raises ValueError."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D] (4 dims), got shape {tuple(t.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"q and k must have one shape [B, H, N, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q, k must be bfloat16, float16 or float32, got {q.dtype}")
    if k.dtype != q.dtype:
        raise ValueError(f"q and k must share a dtype; got {q.dtype} and {k.dtype}")
    if k.device != q.device:
        raise ValueError(f"q and k must be on one device; got {q.device} and {k.device}")
    B, H, N, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim must be 64 or 128, got {D}")
    if N == 0 or B == 0 or H == 0:
        raise ValueError(f"q has an empty dimension: shape {tuple(q.shape)}")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(blk, int) or isinstance(blk, bool) or blk < 1:
            raise ValueError(f"{name} must be a positive int, got {blk!r}")
    if lse is not None:
        if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != (B, H, N):
            shape = tuple(lse.shape) if isinstance(lse, torch.Tensor) else type(lse).__name__
            raise ValueError(f"lse must be a [B, H, N] = {(B, H, N)} tensor, got {shape}")
        if lse.device != q.device:
            raise ValueError(f"lse is on {lse.device} but q is on {q.device}")
    if scale is None:
        return 1.0 / math.sqrt(D)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


# ----------------------------------------------------------------------------------------- entry points
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
    dense_heads: str | None = None,
):
    """Block-sparse attention forward: each query block attends to the key blocks its mask row lists.

    Args:
        q, k, v: ``[B, H, N, D]`` in tile order; bf16 or fp16 (fp32 accepted); ``D`` in {64, 128}.
        mask: `BlockSparseMask` with ``H`` heads and ``seq_len == N``, on q's device.
        scale: softmax scale, default ``1/sqrt(D)``.
        return_lse: also return the natural-log row logsumexp ``[B, H, N]`` float32.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see the module docstring).
        dense_heads: Triton backend only: ``"sdpa"`` runs heads whose mask keeps every block through PyTorch's
            fused SDPA (cuDNN first; bf16/fp16, not with ``return_lse``), ``"kernel"`` keeps them on the Triton
            kernel; ``None``: ``COMPACT_ATTN_DENSE_HEADS`` if set, else the measured default
            (`compact_attn._config.dense_heads_default`). Same function either way.

    Returns:
        ``o`` ``[B, H, N, D]`` in q's dtype (and ``lse`` when ``return_lse``). Rows whose query block lists
        no key block get ``o = 0``, ``lse = -inf``.

    Raises:
        ValueError: inconsistent shapes, dtypes, devices, head dim, a mask that does not fit q, or an unknown
            ``dense_heads``.
    """
    scale = check_attention_inputs(q, k, v, mask, scale)
    if dense_heads is not None and dense_heads not in ("sdpa", "kernel"):
        raise ValueError(f"dense_heads must be 'sdpa' or 'kernel', got {dense_heads!r}")
    if resolve_backend(backend, q.device) == "reference":
        return reference.block_sparse_attention(q, k, v, mask, scale=scale, return_lse=return_lse)
    from compact_attn.attention import block_sparse_attention_triton

    return block_sparse_attention_triton(q, k, v, mask, scale=scale, return_lse=return_lse, dense_heads=dense_heads)


def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    lse: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax mass per (query block, key block), never materialising N x N.

    Args:
        q, k: ``[B, H, N, D]`` in tile order; bf16 or fp16 (fp32 accepted); ``D`` in {64, 128}.
        block_q, block_k: block sizes in tokens ({16, 32, 64, 128} for the Triton backend).
        scale: softmax scale, default ``1/sqrt(D)``.
        lse: optional natural-log row logsumexp ``[B, H, N]`` of the same scores; when given, one pass.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``[B, H, NQB, NKB]`` float32; query block i's row sums to its token count.

    Raises:
        ValueError: inconsistent shapes, dtypes, devices, head dim or block sizes.
    """
    scale = check_mass_inputs(q, k, block_q, block_k, scale, lse)
    if resolve_backend(backend, q.device) == "reference":
        return reference.block_mass(q, k, block_q, block_k, scale=scale, lse=lse)
    from compact_attn.mass_kernel import block_mass_triton

    return block_mass_triton(q, k, block_q, block_k, scale=scale, lse=lse)


def attention_with_block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float | None = None,
    backend: str = "auto",
    config=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention forward, its row logsumexp and the block mass of its softmax in one pass over the keys.

    The Triton kernel writes, next to the output, each listed key block's share of every row's softmax
    denominator (``[B, H, NKB, N]`` float32, 4 bytes per row and key block); a small kernel sums them per query
    block. The block mass equals `block_mass` of the same scores (over the blocks the mask lists; unlisted: 0).

    Args:
        q, k, v, mask, scale: as `block_sparse_attention`; ``mask.block_q`` in {16, 32, 64, 128}.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (the forward with ``return_lse``, then `block_mass`
            with that lse, the blocks the mask does not list set to 0).
        config: an `AttnConfig` for the Triton forward (tests, benchmarks); default the fixed per-GPU one.

    Returns:
        ``(o, lse, mass)``: ``[B, H, N, D]``, natural-log ``[B, H, N]`` float32, ``[B, H, NQB, NKB]`` float32.
    """
    check_attention_inputs(q, k, v, mask, scale)
    if resolve_backend(backend, q.device) == "reference":
        o, lse = reference.block_sparse_attention(q, k, v, mask, scale=scale, return_lse=True)
        mass = reference.block_mass(q, k, mask.block_q, mask.block_k, scale=scale, lse=lse)
        return o, lse, torch.where(mask.to_dense().to(mass.device)[None], mass, 0.0)  # empty rows: lse -inf
    from compact_attn.attention import block_sparse_attention_triton
    from compact_attn.mass_kernel import block_mass_from_block_lse

    B, H, N, _ = q.shape
    blse = torch.full((B, H, mask.num_kv_blocks, N), float("-inf"), dtype=torch.float32, device=q.device)
    o, lse = block_sparse_attention_triton(q, k, v, mask, scale=scale, return_lse=True, block_lse=blse,
                                           config=config)
    return o, lse, block_mass_from_block_lse(blse, lse, mask.block_q)
