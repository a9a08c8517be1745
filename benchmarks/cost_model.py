"""Measure the block-sparse kernel's cost model for one geometry on the GPU and write it for ``search --cost-model``.

    python benchmarks/cost_model.py --tokens 32760 --heads 12 --head-dim 128 --block 128 --out wan13b-cost.yaml
    python benchmarks/cost_model.py --profile PROFILE --out cost.yaml     # the geometry of a profile
    compactsearch search PROFILE --budget 0.3 --cost-model cost.yaml

The kernel's time for one layer is modelled as ``per_block * computed blocks + per_query_block * query blocks``
(every head's query blocks pay a fixed start: loading q, writing o), fitted by least squares to the kernel's time
on masks where every query block keeps ``k`` key blocks (random ones, so no locality helps), for ``k`` from 1 to
all. ``per_dense_head`` is the time of one head of cuDNN's dense attention (what a dense head costs when it is
routed to SDPA), written beside them for reference; `compactsearch.search.scoring.CostModel` reads
``per_block`` and ``per_query_block``. Times are in seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

import compact_attn  # noqa: E402
from compact_attn.mask import BlockSparseMask  # noqa: E402
from compactsearch._io import atomic_write_text  # noqa: E402
from compactsearch.kernel.bench import median_ms  # noqa: E402

__all__ = ["fit_cost_model", "measure_cost_model", "write_cost_model"]


def fit_cost_model(points: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Least squares ``t = a * blocks + b * query_blocks`` over ``(blocks, query_blocks, seconds)`` points.

    Returns:
        ``(per_block, per_query_block, relative RMS residual)``; ``per_query_block`` is clipped at 0 (the
        fit is redone with ``a`` alone then).
    """
    x = torch.tensor([[p[0], p[1]] for p in points], dtype=torch.float64)
    y = torch.tensor([p[2] for p in points], dtype=torch.float64)
    sol = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    a, b = float(sol[0]), float(sol[1])
    if b < 0:
        a, b = float((x[:, 0] @ y) / (x[:, 0] @ x[:, 0])), 0.0
    pred = x[:, 0] * a + x[:, 1] * b
    rel = float(((pred - y) ** 2).mean().sqrt() / y.mean()) if len(points) else 0.0
    return a, b, rel


def _time(fn, device: torch.device, reps: int) -> float:
    """Median seconds of ``reps`` runs after one warm-up (CUDA events on a GPU, the host clock on a CPU)."""
    if device.type == "cuda":
        return median_ms(fn, reps) / 1000.0
    import time

    fn()  # compile / plan
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _mask(heads: int, n: int, block: int, keep: int, device: torch.device, seed: int) -> BlockSparseMask:
    nb = math.ceil(n / block)
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(heads, nb, nb, generator=g).argsort(-1)[..., :keep]
    dense = torch.zeros(heads, nb, nb, dtype=torch.bool).scatter_(-1, order, True)
    return BlockSparseMask.from_dense(dense, block, block, n).to(device)


def measure_cost_model(tokens: int, heads: int, head_dim: int, block: int, device: str = "cuda",
                       dtype: torch.dtype = torch.bfloat16, points: int = 6, reps: int = 5,
                       backend: str = "auto") -> dict:
    """Fit the cost model on random masks of ``points`` densities at this geometry (see the module docstring)."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, head_dim, device=dev, dtype=dtype, generator=g) for _ in range(3))
    nb = math.ceil(tokens / block)
    keeps = sorted({max(1, round(nb * f)) for f in [i / (points - 1) for i in range(points)]} | {nb})
    samples = []
    for i, keep in enumerate(keeps):
        mask = _mask(heads, tokens, block, keep, dev, i)
        sec = _time(lambda m=mask: compact_attn.block_sparse_attention(q, k, v, m, backend=backend,
                                                                       dense_heads="kernel"), dev, reps)
        samples.append((float(heads * nb * keep), float(heads * nb), sec))
    per_block, per_query_block, residual = fit_cost_model(samples)
    if dev.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def dense():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    else:
        def dense():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    per_dense_head = _time(dense, dev, reps) / heads
    return {
        "per_block": per_block,
        "per_query_block": per_query_block,
        "per_dense_head": per_dense_head,
        "unit": "s",
        "fit_relative_rms": round(residual, 4),
        "geometry": {"tokens": tokens, "heads": heads, "head_dim": head_dim, "block": block, "dtype": str(dtype)},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "points": [{"blocks": b, "query_blocks": qb, "seconds": s} for b, qb, s in samples],
    }


def write_cost_model(path: Path, model: dict) -> Path:
    """Write ``{cost_model: model}`` as YAML (atomically), the layout ``search --cost-model`` reads."""
    atomic_write_text(Path(path), yaml.safe_dump({"cost_model": model}, sort_keys=False))
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="a profile directory: its sequence length, heads, head dim and block size")
    ap.add_argument("--tokens", type=int, help="sequence length (video + text tokens)")
    ap.add_argument("--heads", type=int)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128))
    ap.add_argument("--block", type=int, default=128, choices=(64, 128))
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "cost_model.yaml"))
    args = ap.parse_args(argv)
    if args.profile:
        from compactsearch.errors import InputError
        from compactsearch.profile.store import Profile

        try:
            p = Profile.load(Path(args.profile))
        except InputError as e:
            ap.error(str(e))
        args.tokens, args.heads, args.block = p.geometry.seq_len, p.model["heads"], p.block_size
        args.head_dim = p.model.get("head_dim") or args.head_dim
    if args.tokens is None or args.heads is None:
        ap.error("give --profile, or --tokens and --heads")
    if args.head_dim not in (64, 128) or args.block not in (64, 128):
        ap.error(f"the kernel takes head dim 64 or 128 and blocks of 64 or 128, not {args.head_dim} and {args.block}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    if args.tokens < args.block or args.heads < 1 or args.points < 2:
        ap.error("--tokens must be at least one block, --heads >= 1, --points >= 2")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = measure_cost_model(args.tokens, args.heads, args.head_dim, args.block, args.device, dtype, args.points,
                               args.reps)
    write_cost_model(Path(args.out), model)
    print(f"per_block {model['per_block']:.3e} s, per_query_block {model['per_query_block']:.3e} s, "
          f"per_dense_head {model['per_dense_head']:.3e} s (fit rms {model['fit_relative_rms']:.1%}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
