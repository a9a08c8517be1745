"""Retargeting vs searching natively: recall on a profile made at the target grid, at the same whole-run density.

For each target profile: the source config is retargeted to the target's grid (and tiling) by each rule; a config
is searched natively on the target profile at the retargeted config's whole-run density; both are scored on the
target profile (exact recall per head, dense steps counted at 1).

    # real profiles (the tiny model: profile natively at each target first)
    python benchmarks/retarget.py tiny --source-profile P8 --targets P12 P16 P48 --budget 0.3 --work DIR
    # synthetic Wan 2.1 heads, made at both geometries from the same definitions (480p -> 720p, 81 -> 121 frames)
    python benchmarks/retarget.py synthetic --work DIR

Prints one markdown row per (target, rule); --json writes them too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from compactsearch.config import Config, load_config, summarize
from compactsearch.geometry import VideoGeometry
from compactsearch.profile.store import Profile
from compactsearch.retarget import RULES, retarget
from compactsearch.search import SearchSettings, run_search
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.search.scoring import ExactScorer
from compactsearch.tile_choice import default_tiling
from compactsearch.tiling import TileLayout

ROW = ("| {target} | {rule} | {density:.4f} | {recall:.4f} | {native_density:.4f} | {native_recall:.4f} | {delta:+.4f} "
       "| {fid} |")


def _fid(row: dict) -> str:
    """The fidelity column: retargeted / native (estimated relative output error 1 - fidelity in brackets)."""
    if row["fidelity"] is None or row["native_fidelity"] is None:
        return "-"
    return (f"{row['fidelity']:.5f} / {row['native_fidelity']:.5f} "
            f"(error x{(1 - row['fidelity']) / max(1 - row['native_fidelity'], 1e-12):.2f})")


def config_scores(cfg: Config, prof: Profile) -> dict:
    """Whole-run figures of ``cfg`` on ``prof`` (dense steps at 1): ``recall``, ``recall_sparse`` (mean over the
    sparse steps) and, where the profile has value statistics, ``fidelity`` (`HeadFidelity`: 1 - the heads'
    estimated relative output error), the search's own predictor of output quality."""
    layout = prof.layout()
    if (cfg.geometry, tuple(cfg.tile), cfg.block_size) != (prof.geometry, tuple(prof.tile), prof.block_size):
        raise SystemExit("the config and the profile differ in geometry or tiling")
    scorer = ExactScorer(layout)
    plan = cfg.plan(prof.num_steps)
    cache: dict[tuple[int, int], tuple[float, float | None]] = {}
    recall, sparse, fidelity, n_sparse = 0.0, 0.0, 0.0, 0
    has_values = True
    for step in range(prof.num_steps):
        bi = plan.bucket_of(step)
        if bi is None:
            recall += 1.0
            fidelity += 1.0
            continue
        pb = next(i for i, (a, b) in enumerate(prof.buckets) if a <= step < b)
        if (bi, pb) not in cache:
            rs, fs = [], []
            for lc in cfg.buckets[bi].layers:
                mass, factor = prof.mass(pb, lc.layer), prof.value_factor(pb, lc.layer)
                for hc in lc.heads:
                    rs.append(scorer.score(hc.pattern, mass[hc.head]).recall)
                    if factor is not None:
                        fs.append(HeadFidelity(mass[hc.head], factor[hc.head], scorer.block_mask).fidelity(hc.pattern))
            cache[(bi, pb)] = (sum(rs) / len(rs), sum(fs) / len(fs) if fs else None)
        r, f = cache[(bi, pb)]
        has_values = has_values and f is not None
        recall += r
        sparse += r
        fidelity += f or 0.0
        n_sparse += 1
    n = prof.num_steps
    return {"recall": recall / n, "recall_sparse": sparse / max(n_sparse, 1),
            "fidelity": fidelity / n if has_values else None}


def compare(source: Config, target: Profile, name: str, work: Path, rules=RULES, objective: str = "auto"
            ) -> list[dict]:
    rows = []
    for rule in rules:
        rt = retarget(source, target.geometry.thw, target.num_steps, rule,
                      tiling=(tuple(target.tile), target.block_size))
        rt.save(work / f"{name}-{rule}.yaml")
        density = summarize(rt)["density"]
        native_out = work / f"{name}-native-{rule}.yaml"
        res = run_search(target, SearchSettings(budget=density, objective=objective), native_out, workers=1)
        native = res.config
        got, nat = config_scores(rt, target), config_scores(native, target)
        rows.append({"target": name, "rule": rule, "density": density, "recall": got["recall"],
                     "recall_sparse": got["recall_sparse"], "fidelity": got["fidelity"],
                     "native_density": summarize(native)["density"], "native_recall": nat["recall"],
                     "native_recall_sparse": nat["recall_sparse"], "native_fidelity": nat["fidelity"],
                     "delta": got["recall"] - nat["recall"],
                     "config": str(work / f"{name}-{rule}.yaml"), "native_config": str(native_out)})
        print(ROW.format(**rows[-1], fid=_fid(rows[-1])), flush=True)
    return rows


# ------------------------------------------------------------------------------------------ synthetic heads
def _block_centres(layout: TileLayout) -> torch.Tensor:
    """``[num_video_blocks, 3]`` mean (t, y, x) token coordinates of each video block."""
    g = layout.geometry
    n = g.video_tokens
    idx = layout.perm[:n]  # model-order index of each tile-order video position (video first when no text)
    t, rem = idx // (g.height * g.width), idx % (g.height * g.width)
    coords = torch.stack([t, rem // g.width, rem % g.width], 1).float()
    bs = layout.block_size
    nvb = math.ceil(n / bs)
    pad = nvb * bs - n
    c = torch.cat([coords, coords[-1:].expand(pad, 3)]) if pad else coords
    return c.view(nvb, bs, 3).mean(1)


# Each head: (kind, parameters). "tokens" heads are defined by offsets in tokens (RoPE-like); "fraction" heads by
# offsets as a share of the grid (content-like); "stripe": the same place in every frame; "frame": its own
# frame, everywhere. Widths are Gaussian sigmas (frames, rows/cols).
HEADS = [("tokens", 1.5, 4.0), ("tokens", 3.0, 8.0), ("tokens", 0.7, 12.0), ("fraction", 0.08, 0.12),
         ("fraction", 0.2, 0.06), ("stripe", 0.0, 3.0), ("frame", 0.6, 0.0), ("tokens", 6.0, 3.0)]


def synthetic_mass(layout: TileLayout, seed: int = 0) -> torch.Tensor:
    g = layout.geometry
    c = _block_centres(layout)
    d = (c[:, None, :] - c[None, :, :]).abs()  # [NB, NB, 3]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for kind, st, ss in HEADS:
        if kind == "tokens":
            logit = -0.5 * ((d[..., 0] / st) ** 2 + (d[..., 1] / ss) ** 2 + (d[..., 2] / ss) ** 2)
        elif kind == "fraction":
            logit = -0.5 * ((d[..., 0] / (st * g.frames)) ** 2 + (d[..., 1] / (ss * g.height)) ** 2
                            + (d[..., 2] / (ss * g.width)) ** 2)
        elif kind == "stripe":
            logit = -0.5 * ((d[..., 1] / ss) ** 2 + (d[..., 2] / ss) ** 2)
        else:
            logit = -0.5 * (d[..., 0] / st) ** 2
        w = torch.exp(logit) * torch.exp(0.5 * torch.randn(logit.shape, generator=gen))
        w = w + 1e-4 * w.mean()
        out.append(w / w.sum(1, keepdim=True) * layout.block_size)
    return torch.stack(out)


def synthetic_profile(geometry: VideoGeometry, root: Path) -> Profile:
    if (root / "profile.yaml").exists():
        return Profile.load(root)
    tile, bs = default_tiling(geometry)
    layout = TileLayout(geometry, tile, bs)
    mass = synthetic_mass(layout)[None, None]  # one bucket, one layer
    prof = Profile.from_block_mass(mass, geometry=geometry, tile=tile, block_size=bs, buckets=[(0, 10)],
                                   num_steps=10, model={"id": "synthetic-wan2.1", "adapter": "wan",
                                                        "heads": len(HEADS), "head_dim": 128})
    prof.save(root)
    return Profile.load(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["tiny", "synthetic"])
    ap.add_argument("--source-profile", type=Path)
    ap.add_argument("--targets", type=Path, nargs="*", default=[])
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/compactsearch-retarget"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--objective", default="auto", help="search objective (auto: fidelity with value statistics)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print("| target | rule | retargeted density | recall | native density | native recall | difference "
          "| fidelity, retargeted / native |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    if args.mode == "tiny":
        src_cfg = args.work / "source.yaml"
        source = run_search(args.source_profile, SearchSettings(budget=args.budget, objective=args.objective),
                            src_cfg, workers=1).config
        for t in args.targets:
            rows += compare(source, Profile.load(t), t.name, args.work, objective=args.objective)
    else:
        src = synthetic_profile(VideoGeometry(21, 30, 52), args.work / "wan480p-81f")
        source = run_search(src, SearchSettings(budget=args.budget, objective="recall"), args.work / "source.yaml",
                            workers=1).config
        for name, geo in (("720p-81f", VideoGeometry(21, 45, 80)), ("480p-121f", VideoGeometry(31, 30, 52))):
            rows += compare(source, synthetic_profile(geo, args.work / f"wan{name}"), name, args.work)
    density = load_config(args.work / "source.yaml").summary["density"]
    print(f"({time.perf_counter() - t0:.0f} s; source config: whole-run density {density})", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
