"""Mask build speed: every mask of a Wan2.1-14B 720p config (40 layers x 40 heads, one bucket), CPU.

Layers are built `--threads` at a time (`compactsearch.masks.build_masks`). Every head gets its own
pattern (random frame groups and windows, seeded), so the per-pattern cache in `build_layer_mask` cannot
help: this is the worst case a searched config can present.

    python benchmarks/masks.py [--threads 2] [--repeats 3] [--sinks 4]

With ``--sinks S`` every random head also gets S sink key tiles (random tiles of the grid).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from compactsearch.geometry import VideoGeometry
from compactsearch.masks import build_masks
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.tile_choice import default_tiling
from compactsearch.tiling import TileLayout


def random_pattern(rng: random.Random, grid: tuple[int, int, int], sinks: int = 0) -> Pattern:
    nt, nh, nw = grid
    groups, lo = [], 0
    for _ in range(rng.randint(1, 3)):
        if lo > nt - 1:
            break
        hi = rng.randint(lo, nt - 1)
        wins = tuple(Window(rng.randint(1, nh), rng.randint(1, nw)) for _ in range(rng.randint(1, 2)))
        groups.append(FrameGroup(lo, hi, wins))
        lo = hi + 1 + rng.randint(0, 1)
    cells = rng.sample(range(nt * nh * nw), sinks)
    return Pattern(tuple(groups), tuple((c // (nh * nw), (c // nw) % nh, c % nw) for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", type=str, default=None, help="time this config's masks instead (one bucket)")
    ap.add_argument("--bucket", type=int, default=0)
    ap.add_argument("--sinks", type=int, default=0, help="sink key tiles per random head (0..4)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.config:
        from compactsearch.config import load_config

        cfg = load_config(args.config)
        layout = cfg.layout()
        layers = [lc.patterns() for lc in cfg.buckets[args.bucket].layers]
        geometry = cfg.geometry
        distinct = sum(len(set(p)) for p in layers) / len(layers)
        kind = f"config {args.config} bucket {args.bucket}, {distinct:.1f} distinct patterns per layer on average"
    else:
        geometry = VideoGeometry(21, 45, 80)
        tile, block = default_tiling(geometry)
        layout = TileLayout(geometry, tile, block)
        rng = random.Random(0)
        layers = [[random_pattern(rng, layout.grid_thw, args.sinks) for _ in range(40)] for _ in range(40)]
        kind = "distinct random patterns" + (f", {args.sinks} sinks each" if args.sinks else "")
    times, masks = [], None
    for _ in range(args.repeats):
        masks = None  # drop the last run's masks (~2.2 GB) first: each run is one build from the same state
        t0 = time.perf_counter()
        masks = build_masks(layers, layout, workers=args.threads)
        times.append(time.perf_counter() - t0)
    density = sum(m.density() for m in masks) / len(masks)
    print(f"{geometry.describe()}, {layout.describe()}")
    print(f"{len(layers)} layers x {len(layers[0])} heads, {kind}, mean density {density:.3f}")
    print(f"all masks: median {statistics.median(times):.3f} s over {args.repeats} runs "
          f"({args.threads} threads; runs: {', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    main()
