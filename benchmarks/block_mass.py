"""GPU benchmark of the Triton block mass (one layer, all heads) against that layer's cuDNN dense attention.

Not a test: needs a CUDA GPU::

    PYTHONPATH=kernels:. python3 benchmarks/block_mass.py --out $OUT            # table (BENCHMARKS.md)
    PYTHONPATH=kernels:. python3 benchmarks/block_mass.py --sweep --out $OUT    # config sweep, Wan 14B 720p

Columns: ms (median) of the two-pass block mass (row logsumexp, then block sums) and of the one-pass variant
given the row logsumexp (``lse=``), each over cuDNN SDPA dense attention of the same layer (target <= 1.5x);
extra device memory beyond inputs and output (target O(N): the ``[B, H, N]`` float32 logsumexp).

Correctness: the output is poisoned with NaN first and must be fully written; every query block's row must sum
to its token count (all heads); on 2 heads the whole map is compared with `compact_attn.reference.block_mass`
on the same (bf16-rounded) inputs in fp32.

Limits: imports only torch, triton and compact_attn.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from compact_attn import reference
from compact_attn._config import MassConfig
from compact_attn.mass_kernel import block_mass_triton
from compactsearch.kernel.bench import median_ms  # noqa: E402

# name: (tokens, heads, head_dim)
SHAPES = {
    "wan1.3b-480p": (32760, 12, 128),
    "wan14b-720p": (75600, 40, 128),
    "wan14b-69f": (69120, 40, 128),
    "hunyuan-720p": (119056, 24, 128),
    "cogvideox-5b": (17776, 48, 64),
}
SWEEP = [
    MassConfig(128, 128, 8, 3, 8, 3),
    MassConfig(128, 128, 8, 2, 8, 2),
    MassConfig(128, 64, 8, 3, 8, 3),
    MassConfig(128, 64, 4, 3, 4, 3),
    MassConfig(128, 128, 8, 4, 8, 4),
    MassConfig(128, 128, 8, 3, 4, 3),
    MassConfig(128, 128, 8, 2, 8, 2, 4),
    MassConfig(128, 128, 8, 2, 8, 2, 8),
    MassConfig(128, 128, 8, 2, 8, 2, 16),
    MassConfig(128, 128, 8, 2, 4, 2, 8),
]


bench = median_ms  # median ms after one warm-up, CUDA events (shared with `compactsearch validate`)


def cudnn_ms(q, k, v, reps: int) -> tuple[float, torch.Tensor]:
    """cuDNN dense attention time and its natural-log row logsumexp ``[B, H, N]`` (for the one-pass path)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms = bench(functools.partial(F.scaled_dot_product_attention, q, k, v), reps)
    # LSE of the same scores, from the fp32 flash path of PyTorch's private op when present, else chunked.
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    scale = 1 / math.sqrt(q.shape[-1])
    for h in range(q.shape[1]):
        for r0 in range(0, q.shape[2], 8192):
            s = torch.einsum("bqd,bkd->bqk", q[:, h, r0:r0 + 8192].float(), k[:, h].float()) * scale
            lse[:, h, r0:r0 + 8192] = torch.logsumexp(s, -1)
    return ms, lse


def check(q, k, out, block: int, heads_checked: int = 2) -> dict:
    B, H, N, D = q.shape
    nan = bool(torch.isnan(out).any())
    tokens = torch.clamp(N - torch.arange(out.shape[2], device=q.device) * block, max=block).float()
    rowsum_err = float((out.sum(-1) - tokens).abs().max() / block)
    ref = reference.block_mass(q[:, :heads_checked], k[:, :heads_checked], block, block)
    ref_err = float((out[:, :heads_checked] - ref).abs().max() / block)
    return {"nan": nan, "rowsum_err": rowsum_err, "ref_err": ref_err,
            "ok": (not nan) and rowsum_err < 1e-3 and ref_err < 1e-3}


def run(name: str, cfgs: list[MassConfig | None], reps: int, rows: list[dict], block: int = 128) -> None:
    N, H, D = SHAPES[name]
    dev = torch.device("cuda")
    q, k, v = (torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    dense, lse = cudnn_ms(q, k, v, reps)
    nqb = math.ceil(N / block)
    for cfg in cfgs:
        out = torch.full((1, H, nqb, nqb), float("nan"), device=dev)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        block_mass_triton(q, k, block, block, out=out, config=cfg)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        chk = check(q, k, out, block)
        ms2 = bench(functools.partial(block_mass_triton, q, k, block, block, out=out, config=cfg), reps)
        ms1 = bench(functools.partial(block_mass_triton, q, k, block, block, lse=lse, out=out, config=cfg), reps)
        out1 = torch.full_like(out, float("nan"))
        block_mass_triton(q, k, block, block, lse=lse, out=out1, config=cfg)
        chk1 = check(q, k, out1, block)
        label = "default" if cfg is None else cfg.describe()
        rows.append(dict(shape=name, tokens=N, heads=H, d=D, config=label, cudnn_ms=dense, two_pass_ms=ms2,
                         x_cudnn=ms2 / dense, one_pass_ms=ms1, x_cudnn_1=ms1 / dense, extra_mb=extra / 2**20,
                         lse_mb=4 * H * N / 2**20, **chk, ok1=chk1["ok"], ref_err1=chk1["ref_err"]))
        print_row(rows[-1])


def print_row(r: dict) -> None:
    ok = "ok" if r["ok"] and r["ok1"] else "FAIL"
    print(f"{r['shape']:>13} {r['tokens']:>6} {r['heads']:>3} {r['config']:>26} {r['cudnn_ms']:8.2f} "
          f"{r['two_pass_ms']:8.2f} {r['x_cudnn']:5.2f} {r['one_pass_ms']:8.2f} {r['x_cudnn_1']:5.2f} "
          f"{r['extra_mb']:8.1f} {r['lse_mb']:7.1f} {r['ref_err']:.1e} {ok}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-configs", type=int, nargs="*", default=None,
                    help="indices into the sweep list (default: all)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import triton

    head = (f"# {time.strftime('%Y-%m-%d %H:%M')} {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"triton {triton.__version__}, cmd: {' '.join(sys.argv)}")
    print(head)
    print(f"{'shape':>13} {'tokens':>6} {'H':>3} {'config':>26} {'cudnn':>8} {'2-pass':>8} {'x':>5} {'1-pass':>8} "
          f"{'x':>5} {'extraMB':>8} {'lseMB':>7} {'err':>7}", flush=True)
    rows: list[dict] = []
    try:
        if args.sweep:
            cfgs = SWEEP if args.sweep_configs is None else [SWEEP[i] for i in args.sweep_configs]
            run("wan14b-720p", cfgs, args.reps, rows)
        else:
            for name in args.shapes:
                run(name, [None], args.reps, rows)
    finally:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"block_mass_{'sweep' if args.sweep else 'table'}.json"), "w") as f:
            json.dump({"header": head, "rows": rows}, f, indent=1)
        print("\n" + head)
        for r in rows:
            print_row(r)


if __name__ == "__main__":
    main()
