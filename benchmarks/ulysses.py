"""Ulysses sequence parallelism at Wan 2.1 14B size (random weights, 720p, 81 frames): sparse against dense on N
GPUs, and both against one GPU.

    python3 benchmarks/ulysses.py --out OUT                          # one GPU: the reference (OUT/ulysses-1-*.pt)
    torchrun --nproc-per-node 2 benchmarks/ulysses.py --out OUT      # Ulysses 2 (4, 8 alike), against it
    python3 benchmarks/ulysses.py --size tiny --device cpu --out OUT # the same code paths on a CPU (gloo), tiny

Every process builds the same pipeline (`build_family_pipeline("wan-14b", "real")`, seed 0: identical weights,
checked by a fingerprint), puts it under Ulysses (`compactsearch.distributed.enable_ulysses`), and generates one
prompt dense and with a config (`compactsearch.apply`, every step sparse): each head of every layer a local window
pattern at block density 0.2-0.4 (mean ~0.3), drawn per head with a seed, so the ranks' heads run different masks.
Step times are the median after the first step, rank 0's. Under Ulysses the run is compared with the one-GPU
reference of the same size, ``--layers`` and ``--steps``: relative error of the dense and of the sparse latents
(the dense difference is the bf16 scale: diffusers' own Ulysses path against one GPU), and the sparse-over-dense
step speed-up against the reference's (``ratio``). Writes ``OUT/ulysses-<N>-<size>-<layers>l.json`` and ``.md``
(a BENCHMARKS.md row) atomically, and prints the row.

Two processes sharing one GPU over gloo do not work: diffusers' output all-gather (``proj_out``) crashes gloo on
CUDA tensors (a segmentation fault, measured 2026-12-02); the run needs one GPU per process and NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

from benchmarks.e2e import median_after_first, timed_latents  # noqa: E402
from compactsearch._io import atomic_write_text, atomic_write_with  # noqa: E402
from compactsearch.adapters import get_adapter  # noqa: E402
from compactsearch.adapters.pipelines import build_family_pipeline  # noqa: E402
from compactsearch.adapters.registry import video_grid  # noqa: E402
from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig, summarize  # noqa: E402
from compactsearch.distributed import enable_ulysses, parallel_run  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.masks import build_layer_mask  # noqa: E402
from compactsearch.patterns import Pattern  # noqa: E402
from compactsearch.tile_choice import default_tiling  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402

SIZES = {  # family, (frames, height, width), dtype, text tokens
    "real": ("wan-14b", (81, 720, 1280), torch.bfloat16, 512),  # 21 x 45 x 80 tokens
    "tiny": ("wan", (9, 384, 384), torch.float32, 32),  # 3 x 24 x 24 tokens, 2 heads
}
PROMPT = "a red fox runs through fresh snow at dawn, the camera tracking it low over the ground"
HEADER = ("| GPUs | layers | steps | density | dense step s | sparse step s | speed-up | one-GPU speed-up | ratio | "
          "dense rel. err | sparse rel. err | peak GB |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
          "---: | ---: | ---: | ---: |")


def local_config(geometry: VideoGeometry, layers: int, heads: int, head_dim: int, steps: int, seed: int = 0
                 ) -> Config:
    """Every head of every layer a local window pattern of block density 0.2-0.4, drawn with ``seed``."""
    tile, block = default_tiling(geometry, head_dim)
    layout = TileLayout(geometry, tile, block)
    nt, nh, nw = layout.grid_thw
    candidates = [Pattern.local(dt, h, w) for dt in range(nt) for h in range(1, nh + 1) for w in range(1, nw + 1)]
    density = {p: build_layer_mask([p], layout).density() for p in candidates}
    pool = [p for p in candidates if 0.2 <= density[p] <= 0.4]
    rng = random.Random(seed)
    lcs = tuple(LayerConfig(li, tuple(HeadConfig(h, rng.choice(pool)) for h in range(heads))) for li in range(layers))
    return Config(model_id="random-wan", adapter="wan", geometry=geometry, num_layers=layers, num_heads=heads,
                  head_dim=head_dim, tile=tile, block_size=block, num_steps=steps, warmup=0.0,
                  buckets=(Bucket.of_steps((0, steps), steps, lcs),), provenance={"kind": "example"})


def timed_generation(pipe, video: tuple[int, int, int], text: int, steps: int, device: str
                     ) -> tuple[torch.Tensor, list[float]]:
    """One generation (latents on the CPU), seconds per step."""
    frames, height, width = video
    kwargs = dict(prompt=PROMPT, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                  guidance_scale=1.0, max_sequence_length=text, generator=torch.Generator("cpu").manual_seed(0))
    latents, times = timed_latents(pipe, kwargs, device)
    return latents.float().cpu(), times["steps"]


def fingerprint(pipe) -> float:
    """A number the weights determine (equal builds give equal numbers)."""
    t = pipe.transformer
    return float(sum(p.detach().float().sum() for p in (t.blocks[0].attn1.to_q.weight, t.blocks[-1].ffn.net[2].weight,
                                                t.proj_out.weight)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run(args, degree: int, rank: int, device: str) -> dict | None:
    from compactsearch.runtime import apply

    family, video, dtype, text = SIZES[args.size]
    overrides = {"num_layers": args.layers} if args.layers else None
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pipe = build_family_pipeline(family, args.size, dtype, seed=0, overrides=overrides)
    finally:
        torch.set_default_dtype(old)
    pipe.set_progress_bar_config(disable=True)
    tr = pipe.transformer
    c = tr.config
    geometry = VideoGeometry(*video_grid(pipe, get_adapter("wan"), *video))
    cfg = local_config(geometry, c.num_layers, c.num_attention_heads, c.attention_head_dim, args.steps)
    if degree > 1:
        enable_ulysses(pipe, "wan", degree, video)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    dense, dense_steps = timed_generation(pipe, video, text, args.steps, device)
    with apply(pipe, cfg) as rt:
        sparse, sparse_steps = timed_generation(pipe, video, text, args.steps, device)
        mask_heads = sorted({str(k[3]) for k in rt._masks})  # (start, stop) of this rank's heads; None: all
    if rank:
        return None
    d, s = median_after_first(dense_steps), median_after_first(sparse_steps)
    row = {"degree": degree, "size": args.size, "layers": c.num_layers, "steps": args.steps,
           "video": list(video), "density": round(float(summarize(cfg)["density"]), 4),
           "rank0_mask_heads": mask_heads, "dense_step_s": round(d, 4),
           "sparse_step_s": round(s, 4), "speedup": round(d / s, 4), "fingerprint": fingerprint(pipe),
           "peak_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    ref_path = Path(args.out) / f"ulysses-1-{args.size}-{row['layers']}l-{args.steps}s.safetensors"
    if degree == 1:
        atomic_write_with(ref_path, lambda p: save_file({"dense": dense, "sparse": sparse}, str(p),
                                                        metadata={"row": json.dumps(row)}))
    elif ref_path.exists():
        with safe_open(str(ref_path), "pt") as f:
            one = json.loads(f.metadata()["row"])
            ref = {k: f.get_tensor(k) for k in ("dense", "sparse")}
        if one["fingerprint"] != row["fingerprint"]:
            raise SystemExit(f"the reference {ref_path} was built with other weights: run it again")
        row["dense_rel_err"] = round(rel_err(dense, ref["dense"]), 6)
        row["sparse_rel_err"] = round(rel_err(sparse, ref["sparse"]), 6)
        row["one_gpu_speedup"] = one["speedup"]
        row["speedup_ratio"] = round(row["speedup"] / one["speedup"], 4)
    else:
        print(f"no one-GPU reference {ref_path}: run `python3 benchmarks/ulysses.py` with the same --size, --layers "
              "and --steps first for the comparison", file=sys.stderr)
    return row


def markdown_row(r: dict) -> str:
    def f(k, fmt="{}"):
        return "-" if r.get(k) is None else fmt.format(r[k])

    return (f"| {r['degree']} | {r['layers']} | {r['steps']} | {r['density']:.3f} | {r['dense_step_s']:.3f} | "
            f"{r['sparse_step_s']:.3f} | {r['speedup']:.2f}x | {f('one_gpu_speedup', '{:.2f}x')} | "
            f"{f('speedup_ratio', '{:.3f}')} | {f('dense_rel_err', '{:.2e}')} | {f('sparse_rel_err', '{:.2e}')} | "
            f"{f('peak_gb')} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=None, help="transformer depth [default: 40, the real model]")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", choices=sorted(SIZES), default="real")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--header", action="store_true")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    degree = int(os.environ.get("WORLD_SIZE", "1"))
    if degree == 1:
        row = run(args, 1, 0, "cuda:0" if args.device == "cuda" else "cpu")
    else:
        with parallel_run(f"ulysses:{degree}", args.device) as par:
            row = run(args, degree, par.rank, par.device)
    if row is None:
        return 0
    name = f"ulysses-{degree}-{args.size}-{row['layers']}l"
    atomic_write_text(Path(args.out) / f"{name}.json", json.dumps(row, indent=1) + "\n")
    atomic_write_text(Path(args.out) / f"{name}.md", markdown_row(row) + "\n")
    if args.header:
        print(HEADER)
    print(json.dumps(row))
    print(markdown_row(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
