"""GPU benchmark of the block-sparse attention forward against cuDNN SDPA, PyTorch flash and FlexAttention.

Not a test: needs a CUDA GPU. One run prints one table (and writes it, with a JSON log, under ``--out``)::

    PYTHONPATH=kernels:. python3 benchmarks/kernel.py --out $OUT            # the full table (BENCHMARKS.md)
    PYTHONPATH=kernels:. python3 benchmarks/kernel.py --sweep --geometries wan14b-69f --out $OUT  # config sweep

Masks are real pattern masks built with `compactsearch.patterns` on each model's default tile layout: for a
target density every head gets a local window, a cross (two thin windows) or a frame-grouped pattern (near
frames wide, far frames narrow), cycling over heads, each picked to land near the target block density.
Text blocks are dense. Columns: ms (median of ``--reps`` timed runs after a warm-up), ``x cuDNN`` (cuDNN dense
time / this time), ``ideal`` (fraction of ideal = speed-up over cuDNN dense x block density), TFLOP/s on the
computed blocks (``4 * D * token pairs computed / time``; dense rivals count all pairs).

Dense heads: the entry point runs heads whose mask keeps every block through PyTorch's SDPA (cuDNN first;
``AttnConfig.dense_heads``), so the ``dense`` row's ``triton`` time is that path; the ``triton-kdense`` row times
the Triton kernel on the same dense mask, and the ``split0.30`` mask (the 0.30 mix with every 4th head dense)
times the split path (SDPA on the dense heads, the kernel on the rest, one output). ``--sweep`` always times the
kernel itself (dense heads on the kernel).

Correctness, per kernel run: the output buffer is poisoned with NaN first and must come back NaN-free; on a
sample of query blocks of every head (first, last/ragged, and random ones) the relative error against an
fp32 reference must be <= 2x PyTorch's own bf16 error on the same rows (+1e-5).

Limits: imports only torch, triton, compact_attn and the pure modules of compactsearch (geometry, tiling,
patterns), so it runs on the bare GPU image without optuna or diffusers.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
import types
from dataclasses import replace

import torch
import torch.nn.functional as F

# Import compactsearch's pure modules without its package __init__ (which pulls optional dependencies).
if "compactsearch" not in sys.modules:
    _pkg = types.ModuleType("compactsearch")
    _pkg.__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compactsearch")]
    sys.modules["compactsearch"] = _pkg

from compact_attn import BlockSparseMask  # noqa: E402
from compact_attn._config import AttnConfig, attention_config  # noqa: E402
from compact_attn.attention import block_sparse_attention_triton  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.kernel.bench import median_ms  # noqa: E402
from compactsearch.masks import build_layer_mask, pattern_block_mask
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.tile_choice import default_tile_shape  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402

# name: (geometry, heads, head_dim)
GEOMETRIES = {
    "wan1.3b-480p": (VideoGeometry(21, 30, 52), 12, 128),
    "wan14b-720p": (VideoGeometry(21, 45, 80), 40, 128),
    "wan14b-69f": (VideoGeometry(18, 48, 80), 40, 128),
    "hunyuan-720p": (VideoGeometry(33, 45, 80, 256, "back"), 24, 128),
    "cogvideox-5b": (VideoGeometry(13, 30, 45, 226, "front"), 48, 64),
}
DENSITIES = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)

SWEEP = [  # the first is the fixed Hopper default; the rest are neighbours (KERNEL_NOTES.md has all tried)
    AttnConfig(128, 64, 4, 2, use_tma=True, warp_specialized=True),
    AttnConfig(128, 64, 4, 2, use_tma=True, warp_specialized=True, pingpong=False),
    AttnConfig(128, 64, 4, 2, use_tma=True),
    AttnConfig(128, 64, 4, 2, use_tma=True, order="lpt"),
    AttnConfig(128, 64, 4, 2, use_tma=True, order="head"),
    AttnConfig(128, 64, 4, 2),
    AttnConfig(128, 32, 4, 3, use_tma=True),
    AttnConfig(128, 128, 8, 3, use_tma=True),
]
SWEEP_D64 = [  # head dim 64 (CogVideoX); the first is the fixed Hopper default
    AttnConfig(64, 128, 4, 3, use_tma=True, warp_specialized=True),
    AttnConfig(64, 128, 4, 3, use_tma=True, warp_specialized=True, pingpong=False),
    AttnConfig(64, 128, 4, 3, use_tma=True),
    AttnConfig(128, 128, 8, 3, use_tma=True),
    AttnConfig(128, 128, 8, 3),
    AttnConfig(128, 64, 4, 3, use_tma=True),
    AttnConfig(128, 64, 4, 4),
    AttnConfig(128, 64, 8, 3, use_tma=True),
    AttnConfig(128, 128, 4, 3, use_tma=True),
    AttnConfig(64, 64, 4, 3),
]


def parse_config(text: str) -> AttnConfig:
    """The inverse of `AttnConfig.describe`, e.g. ``m64n64w4s3+tma``."""
    m = re.fullmatch(r"m(\d+)n(\d+)w(\d+)s(\d+)((?:\+\w+)*)", text)
    if not m:
        raise SystemExit(f"bad config {text!r}: expected like m128n128w8s3+tma")
    flags = set(m.group(5).split("+")[1:])
    removed = flags & {"pipe", "exp16", "poly", "trip0", "trip1"} | {f for f in flags if f.startswith("lazy")}
    if removed:
        raise SystemExit(f"{text!r}: {', '.join(sorted(removed))} were measured slower and removed from the kernel "
                         "(KERNEL_NOTES.md)")
    return AttnConfig(*(int(m.group(i)) for i in range(1, 5)), use_tma="tma" in flags,
                      order=next((o for o in ("head", "lpt", "natural") if o in flags), "auto"),
                      dense_heads="kernel" if "kdense" in flags else "sdpa",
                      warp_specialized="ws" in flags, pingpong="nopp" not in flags, persistent="nopers" not in flags)


# ------------------------------------------------------------------------------------------------ masks
MASK_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_masks.json")


def _candidates(layout: TileLayout) -> dict[str, list[Pattern]]:
    """Local windows, crosses (two thin windows) and frame-grouped patterns (near frames wide, far narrow)."""
    nt, nh, nw = layout.grid_thw
    fracs = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    local = [Pattern.local(dt, h, w) for dt in range(nt)
             for h, w in sorted({(max(1, round(f * nh)), max(1, round(f * nw))) for f in fracs})]
    cross = [Pattern((FrameGroup(0, dt, (Window(nh, a), Window(c, nw))),))
             for dt in range(nt) for a in sorted({1, 2, max(1, nw // 4), max(1, nw // 3)})
             for c in sorted({1, 2, max(1, nh // 4), max(1, nh // 3)})]
    frame = []
    for dt0 in range(nt - 1):
        for f in (0.3, 0.5, 0.7, 0.9, 1.0):
            near = Window(max(1, round(f * nh)), max(1, round(f * nw)))
            far = Window(max(1, round(f * nh / 2)), max(1, round(f * nw / 2)))
            frame.append(Pattern((FrameGroup(0, dt0, (near,)), FrameGroup(dt0 + 1, nt - 1, (far,)))))
    return {"local": local, "cross": cross, "frame": frame}


def _pattern_to_json(p: Pattern) -> list:
    return [[g.dt_lo, g.dt_hi, [[w.h, w.w] for w in g.windows]] for g in p.groups]


def _pattern_from_json(x: list) -> Pattern:
    return Pattern(tuple(FrameGroup(lo, hi, tuple(Window(h, w) for h, w in wins)) for lo, hi, wins in x))


def choose_patterns(name: str, layout: TileLayout, densities) -> dict[float, list[Pattern]]:
    """Per target density: [local, cross, frame-grouped], each the candidate nearest in block density.

    The search takes tens of seconds on big grids, so its result is cached in ``kernel_masks.json`` (make it
    on any machine with ``--make-masks``); the GPU run only rebuilds the masks from the cached patterns.
    """
    cache = json.load(open(MASK_CACHE)) if os.path.exists(MASK_CACHE) else {}
    key = f"{name}|{layout.tile_thw}"
    entry = cache.get(key, {})
    if all(f"{d:.2f}" in entry for d in densities):
        return {d: [_pattern_from_json(x) for x in entry[f"{d:.2f}"]] for d in densities}
    cands = _candidates(layout)
    dens = {kind: [float(pattern_block_mask(p, layout).float().mean()) for p in ps] for kind, ps in cands.items()}
    out = {}
    for d in densities:
        out[d] = [cands[kind][min(range(len(ps)), key=lambda i: abs(dens[kind][i] - d))]
                  for kind, ps in cands.items()]
        entry[f"{d:.2f}"] = [_pattern_to_json(p) for p in out[d]]
    cache[key] = entry
    with open(MASK_CACHE, "w") as f:  # one line per (geometry, tile): small diffs
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(cache.items())) + "\n}\n")
    return out


SPLIT_DENSITY = 0.3  # the ``split`` mask: this density's mix with every 4th head dense


def build_masks(name: str, geometry: VideoGeometry, heads: int, densities, device,
                split: bool = False) -> list[tuple[str, BlockSparseMask]]:
    """``[(label, mask)]``: one mixed-pattern mask per target density (heads cycle local, cross, frame-grouped),
    then the dense mask; with ``split``, last the `SPLIT_DENSITY` mix with every 4th head dense (the dense-head
    split path)."""
    layout = TileLayout(geometry, default_tile_shape(geometry, 128), 128)
    chosen = choose_patterns(name, layout, sorted({*densities, SPLIT_DENSITY}) if split else densities)
    out = []
    for d in densities:
        mask = build_layer_mask([chosen[d][h % 3] for h in range(heads)], layout)
        out.append((f"mix{d:.2f}", mask.to(device)))
    out.append(("dense", BlockSparseMask.dense_mask(heads, geometry.seq_len, 128, 128).to(device)))
    if split:
        blocks = build_layer_mask([chosen[SPLIT_DENSITY][h % 3] for h in range(heads)], layout).to_dense()
        blocks[::4] = True
        mask = BlockSparseMask.from_dense(blocks, 128, 128, geometry.seq_len)
        out.append((f"split{SPLIT_DENSITY:.2f}", mask.to(device)))
    return out


# ------------------------------------------------------------------------------------------- timing/check
bench = median_ms  # median ms after one warm-up, CUDA events (shared with `compactsearch validate`)


def sample_check(q, k, v, mask: BlockSparseMask, o: torch.Tensor, n_random: int = 2, seed: int = 0) -> dict:
    """Relative error of ``o`` and of PyTorch low-precision SDPA against fp32, on sampled query blocks."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, N, D = q.shape
    g = torch.Generator().manual_seed(seed)
    counts, idx = mask.kv_num_blocks.cpu(), mask.kv_indices.cpu()
    ar = torch.arange(mask.block_k)
    num_k = num_t = den = 0.0
    for h in range(H):
        rand = torch.randint(0, mask.num_q_blocks, (n_random,), generator=g).tolist()
        blocks = {0, mask.num_q_blocks - 1, *rand}
        for qb in blocks:
            rows = slice(qb * mask.block_q, min(N, (qb + 1) * mask.block_q))
            kv = idx[h, qb, : counts[h, qb]]
            tok = (kv[:, None] * mask.block_k + ar[None]).flatten()
            tok = tok[tok < N].to(q.device)
            qs, ks, vs = q[:, h, rows], k[:, h, tok], v[:, h, tok]
            with sdpa_kernel([SDPBackend.MATH]):
                ref = F.scaled_dot_product_attention(*(t.float()[:, None] for t in (qs, ks, vs)))[:, 0]
            low = F.scaled_dot_product_attention(qs[:, None], ks[:, None], vs[:, None])[:, 0].float()
            num_k += float((o[:, h, rows].float() - ref).pow(2).sum())
            num_t += float((low - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
    err_k, err_t = math.sqrt(num_k / den), math.sqrt(num_t / den)
    nan = bool(torch.isnan(o).any())
    return {"err": err_k, "err_torch": err_t, "nan": nan, "ok": (not nan) and err_k <= 2 * err_t + 1e-5}


def dense_rivals(q, k, v, reps: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                out[name] = bench(lambda: F.scaled_dot_product_attention(q, k, v), reps)
        except RuntimeError as e:  # backend unavailable for this shape
            print(f"  {name}: unavailable ({str(e)[:80]})", file=sys.stderr)
            out[name] = float("nan")
    return out


_flex = None


def flex_fn():
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex


def pairs_computed(mask: BlockSparseMask) -> float:
    """Token pairs in the computed blocks (ragged tail counted by its real length)."""
    n = mask.seq_len
    qlen = torch.clamp(n - torch.arange(mask.num_q_blocks) * mask.block_q, max=mask.block_q).double()
    klen = torch.clamp(n - torch.arange(mask.num_kv_blocks) * mask.block_k, max=mask.block_k).double()
    dense = mask.to_dense().cpu().double()
    return float(torch.einsum("hqk,q,k->", dense, qlen, klen))


# ---------------------------------------------------------------------------------------------------- main
def run_table(args, rows: list[dict]) -> None:
    dev = torch.device("cuda")
    for name in args.geometries:
        geom, H, D = GEOMETRIES[name]
        N = geom.seq_len
        t0 = time.time()
        masks = build_masks(name, geom, H, args.densities, dev, split=not args.no_split)
        print(f"# {name}: {geom.describe()}, {H} heads, d={D}; masks built in {time.time() - t0:.1f}s", flush=True)
        q, k, v = (torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        dense = dense_rivals(q, k, v, args.reps)
        dense_flops = 4.0 * H * N * N * D
        for rival in ("cudnn", "flash"):
            x = dense["cudnn"] / dense[rival]
            rows.append(dict(geom=name, tokens=N, heads=H, d=D, mask="dense", density=1.0, kernel=rival + "-dense",
                             ms=dense[rival], x_cudnn=x, ideal=x, tflops=dense_flops / dense[rival] / 1e9))
        for label, mask in masks:
            dens = mask.density()
            flops = 4.0 * D * pairs_computed(mask)
            out = torch.full_like(q, float("nan"))
            ms = bench(functools.partial(block_sparse_attention_triton, q, k, v, mask, out=out), args.reps)
            out.fill_(float("nan"))
            block_sparse_attention_triton(q, k, v, mask, out=out)
            chk = sample_check(q, k, v, mask, out)
            rows.append(dict(geom=name, tokens=N, heads=H, d=D, mask=label, density=dens, kernel="triton", ms=ms,
                             x_cudnn=dense["cudnn"] / ms, ideal=dense["cudnn"] / ms * dens, tflops=flops / ms / 1e9,
                             **chk))
            if not args.no_flex:
                bm = mask.to_flex_block_mask()
                ms_f = bench(functools.partial(flex_fn(), q, k, v, block_mask=bm), args.reps)
                rows.append(dict(geom=name, tokens=N, heads=H, d=D, mask=label, density=dens, kernel="flex", ms=ms_f,
                                 x_cudnn=dense["cudnn"] / ms_f, ideal=dense["cudnn"] / ms_f * dens,
                                 tflops=flops / ms_f / 1e9))
            print_row(rows[-2] if not args.no_flex else rows[-1])
            if not args.no_flex:
                print_row(rows[-1])
            if label == "dense":  # the other dense-heads path on the dense mask (the row above is the default's)
                other = "sdpa" if attention_config(dev, D, q.dtype).dense_heads == "kernel" else "kernel"
                out.fill_(float("nan"))
                kern = functools.partial(block_sparse_attention_triton, q, k, v, mask, out=out, dense_heads=other)
                ms = bench(kern, args.reps)
                out.fill_(float("nan"))
                kern()
                rows.append(dict(geom=name, tokens=N, heads=H, d=D, mask=label, density=dens, kernel=f"triton-{other}",
                                 ms=ms, x_cudnn=dense["cudnn"] / ms, ideal=dense["cudnn"] / ms * dens,
                                 tflops=flops / ms / 1e9, **sample_check(q, k, v, mask, out)))
                print_row(rows[-1])
        q = k = v = out = None
        torch.cuda.empty_cache()


def run_sweep(args, rows: list[dict]) -> None:
    for name in args.geometries:
        _sweep_one(args, rows, name)
        torch.cuda.empty_cache()


def _sweep_one(args, rows: list[dict], name: str) -> None:
    dev = torch.device("cuda")
    geom, H, D = GEOMETRIES[name]
    N = geom.seq_len
    masks = build_masks(name, geom, H, args.densities, dev)
    q, k, v = (torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    dense = dense_rivals(q, k, v, args.reps)
    print(f"# sweep {name}: cudnn {dense['cudnn']:.2f} ms ({4.0 * H * N * N * D / dense['cudnn'] / 1e9:.0f} TFLOP/s), "
          f"flash {dense['flash']:.2f} ms", flush=True)
    # The sweep times the kernel itself: dense heads stay on it (not SDPA).
    variants = [replace(c, dense_heads="kernel") for c in (args.variants or (SWEEP_D64 if D == 64 else SWEEP))]
    for label, mask in masks:
        dens, flops = mask.density(), 4.0 * D * pairs_computed(mask)
        ref_out = None
        for cfg in variants:
            out = torch.full_like(q, float("nan"))
            try:
                fn = functools.partial(block_sparse_attention_triton, q, k, v, mask, out=out, config=cfg)
                ms = bench(fn, args.reps)
            except Exception as e:  # a variant this Triton cannot compile: record and go on
                print(f"  {cfg.describe()}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            out.fill_(float("nan"))
            block_sparse_attention_triton(q, k, v, mask, out=out, config=cfg)
            if ref_out is None:
                chk = sample_check(q, k, v, mask, out)
                ref_out = out.clone()
            else:
                diff = float((out.float() - ref_out.float()).abs().max())
                chk = dict(nan=bool(torch.isnan(out).any()), maxdiff_vs_first=diff, ok=diff < 0.05)
            rows.append(dict(geom=name, tokens=N, heads=H, d=D, mask=label, density=dens, kernel=cfg.describe(), ms=ms,
                             x_cudnn=dense["cudnn"] / ms, ideal=dense["cudnn"] / ms * dens, tflops=flops / ms / 1e9,
                             **chk))
            print_row(rows[-1])


def print_row(r: dict) -> None:
    ok = "" if "ok" not in r else ("ok" if r["ok"] else "FAIL")
    err = f"{r['err']:.2e}/{r['err_torch']:.2e}" if "err" in r else ""
    print(f"{r['geom']:>13} {r['tokens']:>6} {r['mask']:>8} {r['density']:5.3f} {r['kernel']:>22} {r['ms']:9.2f} "
          f"{r['x_cudnn']:6.2f} {r['ideal']:6.2f} {r['tflops']:6.0f} {err:>19} {ok}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    ap.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sweep", action="store_true", help="time the config sweep on each geometry given")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-split", action="store_true", help="leave out the split mask (some heads dense)")
    ap.add_argument("--variants", nargs="+", type=parse_config, help="configs for --sweep, e.g. m64n64w4s3+tma")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--make-masks", action="store_true", help="only search and cache the benchmark patterns (CPU)")
    args = ap.parse_args()
    if args.make_masks:
        for name in args.geometries:
            geom, heads, _ = GEOMETRIES[name]
            t0 = time.time()
            for label, mask in build_masks(name, geom, heads, args.densities, "cpu"):
                print(f"{name:>13} {label:>8} density {mask.density():.3f}  ({time.time() - t0:.1f}s)", flush=True)
        return
    import triton

    gpu = torch.cuda.get_device_name()
    from compact_attn._config import attention_config

    cfgs = {d: attention_config(torch.device("cuda"), d, torch.bfloat16) for d in (128, 64)}
    head = (f"# {time.strftime('%Y-%m-%d %H:%M')} {gpu}, torch {torch.__version__}, triton {triton.__version__}, "
            f"default configs d128 {cfgs[128].describe()}, d64 {cfgs[64].describe()}, dense heads "
            f"{cfgs[128].dense_heads}, cmd: {' '.join(sys.argv)}")
    print(head, flush=True)
    print(f"{'geometry':>13} {'tokens':>6} {'mask':>8} {'dens':>5} {'kernel':>22} {'ms':>9} {'xcuDNN':>6} {'ideal':>6} "
          f"{'TFLOPs':>6} {'err/err_torch':>19}", flush=True)
    rows: list[dict] = []
    try:
        (run_sweep if args.sweep else run_table)(args, rows)
    finally:
        tag = "sweep" if args.sweep else "table"
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"kernel_{tag}.json"), "w") as f:
            json.dump({"header": head, "rows": rows}, f, indent=1)
        print("\n" + head)
        for r in rows:
            print_row(r)
        bad = [r for r in rows if r.get("ok") is False]
        print(f"# correctness: {len(rows) - len(bad)}/{len(rows)} rows ok" + ("" if not bad else " -- FAILURES ABOVE"))


if __name__ == "__main__":
    main()
