"""The kernel path of `validate`: run the bundled Triton kernel on a config's masks and check it.

Modes:
- ``triton`` (needs CUDA): per layer, q/k/v (random bf16, or the q/k/v a profile captured for that layer)
  through the Triton kernel; sampled query blocks compared with an fp32 reference; timed against dense cuDNN
  SDPA (`compactsearch.kernel.bench.time_against_dense`), the speed-up reported per layer.
- ``interpret`` (CPU): the same kernel in Triton's interpreter (``TRITON_INTERPRET=1``) on a sample of heads and
  query blocks: the other query blocks get an empty key list, so the interpreter only walks the sampled ones.

Tolerance, as PyTorch's own low-precision error sets it: ``err(kernel, fp32) <= 2 * err(torch bf16, fp32) +
1e-3`` on the sampled rows, where "fp32" is `compact_attn.reference.masked_dense_attention` and "torch bf16" the
same masked attention computed in bf16 by PyTorch (`_lowp_rows`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

import compact_attn
from compact_attn import reference
from compact_attn.mask import BlockSparseMask
from compactsearch.config import Config
from compactsearch.errors import InputError
from compactsearch.validation import Check, row_token_mask

__all__ = ["make_kernel_check", "KERNEL_MODES"]

KERNEL_MODES = ("none", "interpret", "triton")
KERNEL_HEAD_DIMS = compact_attn.HEAD_DIMS


def _lowp_rows(q, k, v, allowed, rows, dtype):
    """The masked attention of ``rows`` computed by PyTorch in ``dtype`` (bf16/fp16), as float32 ``[h, r, D]``:
    the yardstick of the kernel's own low-precision error."""
    s = torch.einsum("hqd,hkd->hqk", q[0][:, rows].to(dtype), k[0].to(dtype)) * (1.0 / math.sqrt(k.shape[-1]))
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")).float(), -1).nan_to_num(0.0).to(dtype)
    return torch.einsum("hqk,hkd->hqd", p, v[0].to(dtype)).float()


def _sample_rows(mask: BlockSparseMask, q_blocks: torch.Tensor, device) -> torch.Tensor:
    rows = [torch.arange(b * mask.block_q, min((b + 1) * mask.block_q, mask.seq_len)) for b in q_blocks.tolist()]
    return torch.cat(rows).to(device)


def make_kernel_check(
    mode: str,
    *,
    sample_heads: int = 2,
    sample_blocks: int = 4,
    seed: int = 0,
    samples: Callable[[int], dict | None] | None = None,
) -> Callable[[Config, BlockSparseMask, int, int], Check] | None:
    """A per-layer check for `validate_config`, or None for mode ``none``.

    Args:
        mode: ``none``, ``interpret`` or ``triton``.
        samples: optional ``layer -> {"q","k","v","heads"}`` captured tensors (a profile's), used instead of
            random inputs when present for that layer.
    """
    if mode not in KERNEL_MODES:
        raise InputError(f"--kernel must be one of {', '.join(KERNEL_MODES)}, got {mode!r}")
    if mode == "none":
        return None
    if mode == "triton" and not torch.cuda.is_available():
        raise InputError("--kernel triton needs a CUDA GPU; on a CPU use --kernel interpret")
    if mode == "interpret":
        if "triton" in __import__("sys").modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise InputError("--kernel interpret must start with TRITON_INTERPRET=1 set before triton loads")
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        from compact_attn.attention import block_sparse_attention_triton
    except ImportError as e:  # triton missing
        raise InputError(f"--kernel {mode} needs the triton package: pip install triton ({e})") from e
    device = torch.device("cuda" if mode == "triton" else "cpu")
    dtype = torch.bfloat16 if mode == "triton" else torch.float16
    gen = torch.Generator().manual_seed(seed)  # which heads and query blocks to sample
    # Random q/k/v are drawn on the device: a Wan-14B layer is 3 x 387M values, ~10 s per layer on a CPU generator.
    gen_qkv = torch.Generator(device=device).manual_seed(seed)
    dense_ms: dict[tuple, float] = {}  # cuDNN dense time per (shape, dtype): the same for every layer

    def check(config: Config, mask: BlockSparseMask, bucket: int, layer: int) -> Check:
        if config.head_dim not in KERNEL_HEAD_DIMS:
            return Check("kernel", False, f"head dim {config.head_dim}: the kernel takes head dims "
                                          f"{' or '.join(map(str, KERNEL_HEAD_DIMS))} only (the model runs dense "
                                          "attention or the reference)")
        captured = samples(layer) if samples is not None else None
        if captured is not None:
            heads = captured["heads"].tolist()
            q, k, v = (captured[n].to(device=device, dtype=dtype) for n in ("q", "k", "v"))
            source = "captured"
        else:
            n_heads = config.num_heads if mode == "triton" else min(sample_heads, config.num_heads)
            heads = sorted(torch.randperm(config.num_heads, generator=gen)[:n_heads].tolist())
            q, k, v = (torch.randn(1, len(heads), mask.seq_len, config.head_dim, generator=gen_qkv, device=device)
                       .to(dtype) for _ in range(3))
            source = "random"
        sub = BlockSparseMask(mask.kv_num_blocks[heads], mask.kv_indices[heads], mask.block_q, mask.block_k,
                              mask.seq_len, check=False)
        q_blocks = torch.randperm(mask.num_q_blocks, generator=gen)[: min(sample_blocks, mask.num_q_blocks)]
        if mode == "interpret":  # only the sampled query blocks keep their key lists
            keep = torch.zeros(mask.num_q_blocks, dtype=torch.bool)
            keep[q_blocks] = True
            sub = BlockSparseMask(torch.where(keep, sub.kv_num_blocks, 0), sub.kv_indices, mask.block_q,
                                  mask.block_k, mask.seq_len, check=False)
        sub = sub.to(device)
        out = torch.full_like(q, float("nan"))
        block_sparse_attention_triton(q, k, v, sub, out=out)
        rows = _sample_rows(mask, q_blocks, device)
        allowed = row_token_mask(sub.to_dense(), rows, mask.block_q, mask.block_k, mask.seq_len)
        ref = reference.masked_dense_attention(q[:, :, rows].float(), k.float(), v.float(), allowed)[0]
        low = _lowp_rows(q, k, v, allowed, rows, dtype)
        got = out[0][:, rows].float()
        err, err_torch = float((got - ref).abs().max()), float((low - ref).abs().max())
        ok = bool(torch.isfinite(got).all()) and err <= 2 * err_torch + 1e-3
        detail = (f"bucket {bucket} layer {layer}: max err {err:.2e} vs torch {dtype} {err_torch:.2e} "
                  f"({len(heads)} heads, {len(q_blocks)} query blocks, {source} q/k/v)")
        if mode == "triton":
            from compactsearch.kernel.bench import time_against_dense

            key = (tuple(q.shape), q.dtype)
            t = time_against_dense(q, k, v, sub, reps=5, dense_ms=dense_ms.get(key))
            dense_ms[key] = t["ms_dense_cudnn"]
            detail += (f"; {t['ms_sparse']:.2f} ms vs cuDNN dense {t['ms_dense_cudnn']:.2f} ms = "
                       f"{t['speedup']:.2f}x at density {sub.density():.3f}")
        return Check("kernel", ok, detail)

    return check
