"""Per-head search cost at Wan2.1-14B 720p size (591 x 591 blocks), with and without sink candidates (CPU).

A quick A/B where `benchmarks/search.py` (the whole 4,800-head run) cannot be timed fairly, e.g. on a machine
shared with other jobs: the same planted heads (`tests/planted.py`'s generator, as `benchmarks/search.py` uses)
are searched with ``--sinks 0`` and ``--sinks 4``, interleaved, one thread, and the CPU time per head is reported
(process time, less sensitive to other jobs than wall time)::

    python benchmarks/search_head.py [--heads 16] [--trials 32]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "tests")]

from planted import planted_mass, random_head_pattern  # noqa: E402

from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.search.scoring import ExactScorer, HeadTables, LayoutTables  # noqa: E402
from compactsearch.search.space import SearchSpace  # noqa: E402
from compactsearch.search.study import HeadSettings, search_head  # noqa: E402
from compactsearch.tile_choice import default_tiling  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--trials", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    geometry = VideoGeometry(21, 45, 80)
    layout = TileLayout(geometry, default_tiling(geometry)[0], 128)
    lt = LayoutTables(layout)
    scorers = {0: ExactScorer(layout), 4: ExactScorer(layout)}  # one mask cache each, as one worker has
    space = SearchSpace(layout.grid_thw, 3)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    masses = [planted_mass(layout, random_head_pattern(layout.grid_thw, rng), 0.95, 0.0, gen)
              for _ in range(args.heads)]
    cpu: dict[int, list[float]] = {0: [], 4: []}
    for i, m in enumerate(masses):
        for sinks in (0, 4):
            t = time.process_time()
            search_head(HeadTables(lt, m), scorers[sinks], m, space, HeadSettings(trials=args.trials, sinks=sinks),
                        i)
            cpu[sinks].append(time.process_time() - t)
    print(f"{geometry.describe()}, {layout.describe()}; {args.heads} planted heads, {args.trials} trials")
    for sinks, ts in cpu.items():
        print(f"sinks {sinks}: CPU per head median {1e3 * statistics.median(ts):.0f} ms, mean "
              f"{1e3 * statistics.mean(ts):.0f} ms")


if __name__ == "__main__":
    main()
