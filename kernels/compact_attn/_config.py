"""Launch configurations for the Triton kernels: a fixed config per GPU generation, full autotune opt-in.

Limits, stated plainly:
- The Hopper (sm_90) configs were tuned on one H200 (torch 2.11, triton 3.6) with the sweep in
  ``benchmarks/kernel.py``; see ``benchmarks/KERNEL_NOTES.md``. Other generations get a safe default that is
  correct but untuned.
- ``COMPACT_ATTN_AUTOTUNE=1`` replaces the fixed config of the Triton-language kernel with a Triton autotune
  sweep (slow first call per shape; the result is cached by Triton per process). Where the Gluon kernel runs
  (Hopper), it runs regardless: the sweep tunes the kernel that covers the other cases.
- On Hopper (sm_90) with Gluon's list-form ``warp_specialize`` (Triton >= 3.6) the default is the
  warp-specialised Gluon kernel (``warp_specialized=True``; H200: 1.04x cuDNN dense at 69,120 tokens, fraction of
  ideal ~1.0 on sparse masks); its other knobs (``pingpong``, ``persistent``) were swept on the H200 only.
- Features are detected, never assumed: tensor descriptors (TMA) need ``tl.make_tensor_descriptor`` and
  ``triton.set_allocator`` (Triton >= 3.4) and a Hopper-class GPU; older Triton (torch 2.6 ships 3.2) uses
  the pointer path. (``tl.range(..., warp_specialize=True)`` was measured and dropped: on sm_90 Triton 3.6
  did not partition this loop, same times; see KERNEL_NOTES.md.)
- Heads whose mask keeps every block go to PyTorch's fused SDPA by default (``AttnConfig.dense_heads``,
  `dense_heads_default`): cuDNN's dense attention is faster than this kernel run dense at head dim 128 (H200,
  75,600 tokens: 202 against 223 ms), but slower at head dim 64 (17,776 tokens: 9.1 against 8.2 ms), so on
  Hopper d <= 64 keeps them on the kernel. ``COMPACT_ATTN_DENSE_HEADS`` (``sdpa`` or ``kernel``) overrides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from compact_attn import attention_ws

__all__ = [
    "AttnConfig",
    "MassConfig",
    "HAS_TMA",
    "DENSE_HEADS",
    "HEAD_ORDER_KV_BYTES",
    "INTERPRET",
    "attention_config",
    "dense_heads_default",
    "mass_config",
    "autotune_enabled",
    "attention_autotune_configs",
]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# "auto" work order: head by head once one head's K + V pass this (75,600 x 128 bf16 is 36.9 MiB, 69,120 is 33.8,
# 32,760 is 16.0). 24 MiB: at 69,120 head order was 0.1-4.5% faster than heaviest-first at every density
# (KERNEL_NOTES.md section 10).
HEAD_ORDER_KV_BYTES = 24 * 2**20
HAS_TMA = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")
HAS_GLUON = attention_ws.HAS_GLUON  # the warp-specialised Hopper kernel can be built
# Where heads that keep every block run: PyTorch's fused SDPA (cuDNN first), or this package's Triton kernel.
DENSE_HEADS = ("sdpa", "kernel")


@dataclass(frozen=True)
class AttnConfig:
    """One launch configuration of the block-sparse forward.

    ``block_m`` must divide the mask's ``block_q`` and ``block_n`` its ``block_k`` (the wrapper clamps both
    to the mask's block sizes). ``use_tma`` is a request: the wrapper drops it where the Triton build, the device
    or the tensor strides cannot honour it. ``order``: launch order of the work
    items, ``"lpt"`` (heaviest first over all heads), ``"head"`` (head by head, heaviest first in each),
    ``"natural"`` (head by head, query blocks in tile order), or
    ``"auto"``: ``"head"`` when one head's K and V exceed `HEAD_ORDER_KV_BYTES` (then programs of several
    heads running together would share the H200's 50 MB L2 poorly), else ``"lpt"``.
    ``dense_heads``: where heads whose mask keeps every key block for every query block run. ``"sdpa"``:
    ``torch.nn.functional.scaled_dot_product_attention`` (cuDNN, then flash, efficient, math), the same math,
    for bf16/fp16 without ``return_lse``; the other heads run on the kernel, into the same output.
    ``"kernel"``: every head on the Triton kernel. `attention_config` fills it from `dense_heads_default`.
    ``warp_specialized``: run the Gluon kernel (`compact_attn.attention_ws`: a TMA producer warp and two consumer
    warpgroups with asynchronous wgmma, FlashAttention-3's structure) where it can run (Hopper, 128 x 128 mask
    blocks, bf16/fp16; else this config's Triton kernel); the tile fields then do not apply. ``pingpong``: its
    two consumer warpgroups take turns issuing their matrix multiplies. ``persistent``: one program per SM
    looping over the work units (the next unit's loads overlap the current unit's end), else one per unit.
    """

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    use_tma: bool = False
    order: str = "auto"
    dense_heads: str = "sdpa"
    warp_specialized: bool = False
    pingpong: bool = True
    persistent: bool = True

    def describe(self) -> str:
        flags = "".join(f for f, on in (("+tma", self.use_tma), (f"+{self.order}", self.order != "auto"),
                                          ("+kdense", self.dense_heads == "kernel"),
                                          ("+ws", self.warp_specialized),
                                          ("+nopp", self.warp_specialized and not self.pingpong),
                                          ("+nopers", self.warp_specialized and not self.persistent)) if on)
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}{flags}"


@dataclass(frozen=True)
class MassConfig:
    """Launch configuration of the two block-mass passes (row logsumexp, then block sums)."""

    lse_block_m: int = 128
    lse_block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    sums_warps: int = 8
    sums_stages: int = 3
    sums_group: int = 1  # key blocks per cross-warp reduction in pass 2 (`mass_kernel._block_sums`)

    def describe(self) -> str:
        group = f"g{self.sums_group}" if self.sums_group > 1 else ""
        return (f"lse m{self.lse_block_m}n{self.lse_block_n}w{self.num_warps}s{self.num_stages} "
                f"sums w{self.sums_warps}s{self.sums_stages}{group}")


def autotune_enabled() -> bool:
    """True when ``COMPACT_ATTN_AUTOTUNE=1`` on a GPU: sweep configs with Triton's autotuner instead of the fixed
    one. Ignored under the interpreter (the autotuner times on a device)."""
    return os.environ.get("COMPACT_ATTN_AUTOTUNE", "0") == "1" and not INTERPRET


def _capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda" or INTERPRET:
        return (0, 0)
    return torch.cuda.get_device_capability(device)


def dense_heads_default(device: torch.device, head_dim: int) -> str:
    """Where dense heads run by default: ``COMPACT_ATTN_DENSE_HEADS`` (``sdpa`` or ``kernel``) when set; else
    ``"kernel"`` on Hopper (sm_90), where the warp-specialised kernel beats cuDNN dense on the H200 (d=128,
    69,120 tokens: 145 against 155 ms; 75,600: 179 against 200) and the Triton-language kernel did at d <= 64
    (CogVideoX, 17,776 tokens: 8.17 against 8.95 ms); ``"sdpa"`` everywhere else (the Triton-language kernel at
    d=128 on the H200 was 0.86-0.91x cuDNN).

    Raises:
        ValueError: ``COMPACT_ATTN_DENSE_HEADS`` set to anything else.
    """
    env = os.environ.get("COMPACT_ATTN_DENSE_HEADS", "").strip().lower()
    if env:
        if env not in DENSE_HEADS:
            raise ValueError(f"COMPACT_ATTN_DENSE_HEADS must be one of {', '.join(DENSE_HEADS)}, got {env!r}")
        return env
    major = _capability(device)[0]
    if major == 9 and HAS_GLUON:
        return "kernel"
    return "kernel" if major >= 9 and head_dim <= 64 else "sdpa"


def attention_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> AttnConfig:
    """The fixed forward config for this device, head dim and dtype.

    Hopper (sm_90) and newer: one warpgroup, 128x64 tiles (d=128) or 64x128 (d=64), TMA; measured on the H200.
    Ampere/Ada (sm_8x): 128x64 tiles, 8 warps, 3 stages (the Triton tutorial's choice there).
    Anything else, fp32, and the interpreter: small safe tiles. Dense heads: `dense_heads_default`.
    """
    return replace(_kernel_config(device, head_dim, dtype), dense_heads=dense_heads_default(device, head_dim))


def _kernel_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> AttnConfig:
    major, _ = _capability(device)
    if INTERPRET or device.type != "cuda":
        return AttnConfig(block_m=128, block_n=64, num_warps=4, num_stages=1, use_tma=False)
    if dtype == torch.float32:
        return AttnConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    if major >= 9:
        # Hopper: the warp-specialised Gluon kernel where it runs (sm_90, 128 x 128 mask blocks; H200, d=128:
        # 640-674 TFLOP/s dense at 69,120 tokens, 1.04-1.05x cuDNN; BENCHMARKS.md). The tile fields are the
        # Triton-language kernel's, for the inputs the Gluon one cannot take. Its H200 sweeps (KERNEL_NOTES.md):
        # one warpgroup per program and tiles small enough for 2 programs per SM, so one program's softmax
        # overlaps the other's MMAs. d=128: 542 TFLOP/s dense at 69,120 tokens (0.86x cuDNN) against 459 for
        # 128x128 tiles with 8 warps; d=64: on par with cuDNN at 17,776 tokens. (Lazy rescaling, the FMA-polynomial
        # exp2, packed 16-bit exp2 and QK^T pipelining were measured slower and removed: KERNEL_NOTES.md.)
        ws = HAS_GLUON and major == 9
        if head_dim <= 64:  # d=64 without ping-pong: it won 3 of 4 points in one sweep, 2 of 5 in the next, a tie
            # (CogVideoX; BENCHMARKS.md, "Sweeps behind the defaults")
            return AttnConfig(block_m=64, block_n=128, num_warps=4, num_stages=3, use_tma=HAS_TMA, warp_specialized=ws,
                              pingpong=False)
        return AttnConfig(block_m=128, block_n=64, num_warps=4, num_stages=2, use_tma=HAS_TMA, warp_specialized=ws)
    if major == 8:
        return AttnConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)
    return AttnConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)


def attention_autotune_configs(head_dim: int) -> list[AttnConfig]:
    """The opt-in sweep: BLOCK_M 64/128, BLOCK_N 64/128, 4/8 warps, 2-4 stages, TMA where available."""
    out = []
    for bm in (64, 128):
        for bn in (64, 128):
            for warps in (4, 8):
                if warps == 8 and bm * bn < 128 * 64:
                    continue  # 8 warps on a small tile leaves warps idle (the tutorial prunes these too)
                for stages in (2, 3, 4):
                    for tma in (False, True) if HAS_TMA else (False,):
                        out.append(AttnConfig(bm, bn, warps, stages, use_tma=tma))
    return out


def mass_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> MassConfig:
    """The fixed block-mass config for this device (pass 2 tiles are the mask's block sizes)."""
    major, _ = _capability(device)
    if INTERPRET or device.type != "cuda":
        return MassConfig(lse_block_m=64, lse_block_n=64, num_warps=4, num_stages=1, sums_warps=4, sums_stages=1)
    if dtype == torch.float32:
        return MassConfig(lse_block_m=64, lse_block_n=32, num_warps=4, num_stages=2, sums_warps=4, sums_stages=2)
    if major >= 9:  # H200 sweep (KERNEL_NOTES.md): 2 stages beat 3 by 22% (237.6 vs 303.8 ms, Wan 14B 720p);
        # the row reduction once per 4 key blocks: pass 2 alone (given the lse) 124.9 -> 109.6 ms (2026-12-02)
        return MassConfig(lse_block_m=128, lse_block_n=128, num_warps=8, num_stages=2, sums_warps=8, sums_stages=2,
                          sums_group=4)
    return MassConfig(lse_block_m=128, lse_block_n=64, num_warps=8, num_stages=3, sums_warps=8, sums_stages=3)
