"""Profile one real-size self-attention layer through the capture path: time and peak GPU memory.

Builds a Wan2.1-14B-sized self-attention layer (5120 wide, 40 heads x 128, RMSNorm across heads, random bf16
weights) on a 720p x 81-frame grid (21 x 45 x 80 = 75,600 tokens), projects random hidden states to q/k/v and
hands them to `BlockMassCapture` exactly as an adapter's processor does in capture mode: permute q and k to
tile order, `compact_attn.block_mass` (Triton on CUDA), accumulate ``[H, NQB, NKB]``. It needs no diffusers.
An N x N score tensor for this layer would be 75,600^2 x 40 x 2 bytes = 457 GB, so the peak memory shows
none is materialised. Also checks rows sum to block sizes and two heads against the PyTorch reference.

Then the whole capture-mode call three ways (`BlockMassCapture.capture_attention`): two passes (the model's own
SDPA, then the block mass on its own), one pass (the attention through `compact_attn.block_sparse_attention`
with an all-dense mask and ``return_lse``, the block mass from that logsumexp) and fused (the forward writes each
key block's share of the softmax denominator, `compact_attn.attention_with_block_mass`), each as a multiple of
SDPA, with the outputs and masses checked against the two-pass ones.

Usage (GPU):  python benchmarks/profile_layer.py
Small CPU smoke run:  python benchmarks/profile_layer.py --frames 2 --height 8 --width 8 --heads 2 --device cpu
Tested on one H200 only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "kernels")]

from compact_attn import reference  # noqa: E402
from compactsearch.adapters.base import AttentionCall  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.profile.capture import BlockMassCapture  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--height", type=int, default=45)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    geometry = VideoGeometry(args.frames, args.height, args.width)
    n, h, d = geometry.seq_len, args.heads, args.head_dim
    width = h * d
    torch.manual_seed(0)
    with torch.no_grad():
        to_q, to_k, to_v = (torch.nn.Linear(width, width, device=dev, dtype=dtype) for _ in range(3))
        norm_q = torch.nn.RMSNorm(width, eps=1e-6, device=dev, dtype=dtype)
        norm_k = torch.nn.RMSNorm(width, eps=1e-6, device=dev, dtype=dtype)
        x = torch.randn(1, n, width, device=dev, dtype=dtype)
        q = norm_q(to_q(x)).unflatten(2, (h, d)).transpose(1, 2)  # [1, H, N, D], model order
        k = norm_k(to_k(x)).unflatten(2, (h, d)).transpose(1, 2)
        v = to_v(x).unflatten(2, (h, d)).transpose(1, 2)
        del x
    sink = BlockMassCapture({0: 0}, block_size=args.block_size, geometry=geometry)
    call = AttentionCall(0, geometry, None, 0, "cond", ("cond",), 0)
    print(f"layer: {geometry.describe()}, {h} heads x {d}, {dtype}, {sink.layout.describe()}")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    times = []
    for rep in range(args.reps + 1):
        sink.start_prompt()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        sync()
        t0 = time.perf_counter()
        sink(call, q, k, v)
        sync()
        if rep:  # the first run compiles the kernels
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if cuda else 0
    mass = sink.prompt_result().mass[(0, 0)]
    layout = sink.layout
    rows = mass.sum(-1)
    row_err = (rows - layout.block_lengths().float()[None]).abs().max().item()
    # Two heads against the PyTorch reference (chunked, float32).
    qt, kt = layout.to_tile_order(q[:, :2]), layout.to_tile_order(k[:, :2])
    ref = reference.block_mass(qt, kt, args.block_size, args.block_size)[0].cpu()
    ref_err = (mass[:2] - ref).abs().max().item()
    sdpa_ms = float("nan")
    if cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with torch.no_grad(), sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
            sync()
            t0 = time.perf_counter()
            for _ in range(args.reps):
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
            sync()
            sdpa_ms = (time.perf_counter() - t0) / args.reps * 1e3
    # the whole capture-mode call, two passes vs one pass
    def dense():
        if not cuda:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    modes = {}
    for mode in ("off", "on", "fused"):
        s = BlockMassCapture({0: 0}, block_size=args.block_size, geometry=geometry, one_pass=mode)
        ts = []
        for rep in range(args.reps + 1):
            s.start_prompt()
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                o = s.capture_attention(call, q, k, v, dense, lambda x: x)
            sync()
            if rep:
                ts.append(time.perf_counter() - t0)
        modes[mode] = (sorted(ts)[len(ts) // 2], o, s.prompt_result().mass[(0, 0)])
    o_err = max((modes[m][1].float() - modes["off"][1].float()).abs().max().item() for m in ("on", "fused"))
    m_err = max((modes[m][2] - modes["off"][2]).abs().max().item() for m in ("on", "fused"))
    for mode, label in (("off", "two passes (SDPA, then block mass)"), ("on", "one pass (kernel + lse, mass)"),
                        ("fused", "fused (kernel writes block lse, mass summed)")):
        ratio = modes[mode][0] * 1e3 / sdpa_ms if cuda else float("nan")
        print(f"capture-mode call, {label}: {modes[mode][0] * 1e3:.1f} ms = {ratio:.2f}x SDPA")
    print(f"one pass and fused vs two passes: max |output diff| {o_err:.3g}, max |mass diff| {m_err:.3g}")
    gib = 1024**3
    inputs = 3 * n * width * (2 if cuda else 4) / gib
    print(f"capture (permute + block_mass + accumulate): median {sorted(times)[len(times) // 2] * 1e3:.1f} ms "
          f"over {len(times)} runs (min {min(times) * 1e3:.1f} ms)")
    print(f"dense attention of the same layer (SDPA, what capture mode also runs): {sdpa_ms:.1f} ms")
    print(f"peak GPU memory during capture: {peak / gib:.2f} GiB (allocated before: {base / gib:.2f} GiB; "
          f"q/k/v {inputs:.2f} GiB; N x N scores would be {n * n * h * 2 / gib:.0f} GiB)")
    print(f"mass [H, NQB, NKB] = {list(mass.shape)}, {mass.numel() * 4 / 2**20:.0f} MiB float32; "
          f"max |row sum - block tokens| {row_err:.3g}; max |mass - reference| (2 heads) {ref_err:.3g}")
    ok = (row_err < 0.05 * args.block_size and ref_err < 0.05 * math.sqrt(args.block_size)
          and o_err < (0.05 if cuda else 1e-4) and m_err < 0.05 * math.sqrt(args.block_size))
    print("check:", "ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
