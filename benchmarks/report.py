"""CPU benchmark of `compactsearch report` at Wan2.1-14B 720p size: 40 layers x 40 heads x 3 buckets.

Builds (once; reused from ``--work`` afterwards) a synthetic profile of the Wan-14B 720p geometry (21x45x80
latent tokens, tile 4x8x8, 591 x 591 blocks of 128 per head), every head a planted pattern (local, cross,
global, time-decaying or far-frame, sizes varied per head; `tests/planted.py`) plus noise, with its statistics
table, and a config whose patterns are the planted ones. Then times, in a fresh process::

    compactsearch report PROFILE --config CONFIG --head 20.7 --out DIR

The acceptance target is <= 5 minutes on the CPU::

    python benchmarks/report.py                        # profile in /tmp/compactsearch-bench-report (~3.3 GB)
    python benchmarks/report.py --recompute-stats      # also time a profile without its statistics table

The profile takes a few minutes to build (float16, as `Profile.save` always writes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "tests")]

from _timing import timed  # noqa: E402
from planted import planted_mass, random_head_pattern  # noqa: E402

from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.patterns import Pattern  # noqa: E402
from compactsearch.profile.stats import head_stats  # noqa: E402
from compactsearch.profile.store import Profile  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402

GEOMETRY = VideoGeometry(21, 45, 80)
TILE = (4, 8, 8)
LAYERS, HEADS = 40, 40
BUCKETS = [(15, 25), (25, 35), (35, 50)]
STEPS, WARMUP = 50, 15


def planted_patterns(bucket: int, layer: int, grid) -> list[Pattern]:
    rng = random.Random(1000 * bucket + layer)
    return [random_head_pattern(grid, rng) for _ in range(HEADS)]


class SyntheticProfile(Profile):
    """Mass generated per (bucket, layer) on demand, so `save` streams it to disk; stats gathered on the way."""

    @property
    def stats(self) -> pd.DataFrame:
        return pd.DataFrame(self.__dict__.setdefault("_rows", []))

    @stats.setter
    def stats(self, value) -> None:
        self.__dict__.setdefault("_rows", [])

    def mass(self, bucket: int, layer: int) -> torch.Tensor:
        if self.root is not None:
            return super().mass(bucket, layer)
        layout = TileLayout(GEOMETRY, TILE, 128)
        gen = torch.Generator().manual_seed(1000 * bucket + layer)
        m = torch.stack([planted_mass(layout, p, 0.95, 0.0, gen)
                         for p in planted_patterns(bucket, layer, layout.grid_thw)])
        self.__dict__["_rows"] += [{"bucket": bucket, "layer": layer, "head": h, "prompt": -1, **s}
                                   for h, s in enumerate(head_stats(m, layout))]
        return m


def build(path: Path, config_path: Path) -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    prof = SyntheticProfile(geometry=GEOMETRY, num_layers=LAYERS, num_heads=HEADS, tile=TILE, block_size=128,
                            buckets=BUCKETS, num_steps=STEPS, model={"id": "synthetic-wan2.1-14b-720p",
                                                                    "adapter": "wan", "heads": HEADS, "head_dim": 128},
                            recipe={"profile": {"dense_warmup": WARMUP}})
    t = time.perf_counter()
    prof.save(path)
    print(f"built {path} in {time.perf_counter() - t:.0f} s", flush=True)
    grid = TileLayout(GEOMETRY, TILE, 128).grid_thw
    buckets = tuple(Bucket.of_steps(rng, STEPS, tuple(LayerConfig(l, tuple(HeadConfig(h, p) for h, p in
                                                                          enumerate(planted_patterns(b, l, grid))))
                                                     for l in range(LAYERS)), b)
                    for b, rng in enumerate(BUCKETS))
    Config(model_id="synthetic-wan2.1-14b-720p", adapter="wan", geometry=GEOMETRY, num_layers=LAYERS, num_heads=HEADS,
           head_dim=128, tile=TILE, block_size=128, num_steps=STEPS, warmup=WARMUP / STEPS, buckets=buckets,
           provenance={"kind": "planted"}).save(config_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/compactsearch-bench-report"))
    ap.add_argument("--head", default="20.7")
    ap.add_argument("--recompute-stats", action="store_true",
                    help="also time a copy of the profile without stats.parquet (labels recomputed from the mass)")
    args = ap.parse_args()
    prof_dir, config = args.work / "wan14b-720p-profile", args.work / "planted-config.yaml"
    if not (prof_dir / "profile.yaml").exists() or not config.exists():
        build(prof_dir, config)
    out = args.work / "report"

    def cmd(profile: Path, out: Path) -> list[str]:
        return [sys.executable, "-m", "compactsearch", "report", str(profile), "--config", str(config), "--head",
                args.head, "--out", str(out), "--json"]

    wall, cpu, stdout = timed(cmd(prof_dir, out))
    res = json.loads(stdout)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"cores {os.cpu_count()}, {LAYERS} layers x {HEADS} heads x {len(BUCKETS)} buckets, "
          f"{TileLayout(GEOMETRY, TILE, 128).num_blocks} blocks per side")
    print(f"report wall time {wall:.1f} s ({wall / 60:.2f} min), CPU time {cpu:.0f} s; {len(res['figures'])} figures, "
          f"{size / 1e6:.1f} MB written; summary {json.dumps(res['summary'].get('config', {}))}")
    if args.recompute_stats:
        bare = args.work / "profile-without-stats"
        if bare.exists():
            shutil.rmtree(bare)
        shutil.copytree(prof_dir, bare, copy_function=os.link)  # hard links: no copy of the mass
        (bare / "stats.parquet").unlink()  # unlink first: writing through the hard link would change the original
        pd.DataFrame({"bucket": []}).to_parquet(bare / "stats.parquet")
        wall, cpu, _ = timed(cmd(bare, args.work / "report-recomputed"))
        print(f"without stats.parquet (labels recomputed): wall time {wall:.1f} s ({wall / 60:.2f} min), "
              f"CPU time {cpu:.0f} s")


if __name__ == "__main__":
    main()
