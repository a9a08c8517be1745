"""How close the searched patterns come to the unstructured oracle, and what sinks and Optuna's trials add (CPU).

On smooth, real-like heads at Wan 2.1 1.3B 480p size (`tests/smooth.py`: 3D Gaussian kernels of block-centre
distance with log-normal noise, temporal stripes, same-frame global heads, Gaussian heads with 1-4 sink key
blocks holding 10-30% of every row's mass) and on planted sink heads (`tests/planted.py`, ``SINK_KINDS``), runs
`compactsearch.search.run_search` (recall objective: these profiles have no value statistics) at whole-model
budgets 0.3 and 0.15, for each combination of sink candidates (0, 4) and Optuna trials per head (0 = baselines
and the Lagrangian sweep only, 32, 96), and prints per run: the pattern efficiency (mean recall / mean recall of
the top blocks by mass at each head's density), the mean recall, the efficiency per head kind, heads dominating
greedy and best cube, and the search's wall time::

    python benchmarks/oracle.py [--layers 2 --heads 12] [--trials 0 32 96] [--sinks 0 4] [--budgets 0.3 0.15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "tests")]

from planted import SINK_KINDS, planted_profile  # noqa: E402
from smooth import SMOOTH_KINDS, WAN13_480P, smooth_profile  # noqa: E402

from compactsearch.search import SearchSettings, run_search  # noqa: E402


def run(profile, kinds: dict, budget: float, trials: int, sinks: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = run_search(profile, SearchSettings(budget=budget, trials=trials, sinks=sinks, objective="recall"),
                         Path(tmp) / "c.yaml", workers=workers)
        seconds = time.perf_counter() - t0
    by_kind = defaultdict(lambda: [0.0, 0.0])
    for lc in out.config.buckets[0].layers:
        for hc in lc.heads:
            k = kinds[(lc.layer, hc.head)]
            by_kind[k][0] += hc.recall
            by_kind[k][1] += hc.oracle_recall
    s = out.summary
    return {"efficiency": s["pattern_efficiency"], "recall": s["recall_mean"], "oracle": s["oracle_recall_mean"],
            "density": s["density"], "dominating": s["baselines"]["heads_dominating_baselines"],
            "kinds": {k: r / o for k, (r, o) in by_kind.items()}, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--trials", type=int, nargs="*", default=[0, 32, 96])
    ap.add_argument("--sinks", type=int, nargs="*", default=[0, 4])
    ap.add_argument("--budgets", type=float, nargs="*", default=[0.3, 0.15])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    smooth, info = smooth_profile(layers=args.layers, heads=args.heads, seed=args.seed)
    kinds = [[SINK_KINDS[(l * args.heads + h) % len(SINK_KINDS)] for h in range(args.heads)]
             for l in range(args.layers)]
    planted, _ = planted_profile(WAN13_480P, (4, 8, 4), 128, kinds, seed=args.seed)
    profiles = {
        "smooth": (smooth, {k: v[0] for k, v in info.items()}),
        "planted-sinks": (planted, {(l, h): kinds[l][h] for l in range(args.layers) for h in range(args.heads)}),
    }
    print(f"{WAN13_480P.describe()}, {smooth.layout().describe()}; {args.layers} layers x {args.heads} heads; "
          f"smooth kinds {', '.join(SMOOTH_KINDS)}; planted {', '.join(SINK_KINDS)}")
    for name, (prof, k) in profiles.items():
        for budget in args.budgets:
            for sinks in args.sinks:
                for trials in args.trials:
                    r = run(prof, k, budget, trials, sinks, args.workers)
                    per_kind = " ".join(f"{kk} {v:.4f}" for kk, v in sorted(r["kinds"].items()))
                    print(f"{name:>13} budget {budget:.2f} sinks {sinks} trials {trials:>3}: efficiency "
                          f"{r['efficiency']:.4f} (recall {r['recall']:.4f} / oracle {r['oracle']:.4f}, density "
                          f"{r['density']:.4f}), dominating {r['dominating']}, {r['seconds']:.1f} s | {per_kind}",
                          flush=True)


if __name__ == "__main__":
    main()
