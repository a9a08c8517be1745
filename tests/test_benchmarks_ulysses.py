"""`benchmarks/ulysses.py` at tiny size on the CPU: the one-process reference, then Ulysses 2 under torchrun (gloo)
against it: identical weights, equal outputs, rank 0 built only its heads' masks, the row written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.ulysses import local_config
from compactsearch.config import summarize
from compactsearch.geometry import VideoGeometry
from tests.conftest import single_process_env

ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path: Path, *launcher: str) -> dict:
    env = single_process_env(OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, *launcher, str(ROOT / "benchmarks" / "ulysses.py"), "--size", "tiny",
                          "--device", "cpu", "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-2])


def test_local_config_draws_different_heads_near_density_0_3():
    cfg = local_config(VideoGeometry(21, 45, 80), layers=2, heads=40, head_dim=128, steps=4)
    assert (cfg.tile, cfg.block_size) == ((4, 8, 4), 128)
    assert 0.2 <= summarize(cfg)["density"] <= 0.4
    assert len({h.pattern for h in cfg.buckets[0].layers[0].heads}) > 20


def test_ulysses_benchmark_tiny_on_two_gloo_processes_matches_one(tmp_path):
    one = bench(tmp_path)
    assert one["degree"] == 1 and one["rank0_mask_heads"] == ["None"] and "sparse_rel_err" not in one
    two = bench(tmp_path, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    assert two["degree"] == 2 and two["rank0_mask_heads"] == ["(0, 1)"]
    assert two["fingerprint"] == one["fingerprint"] and two["density"] == one["density"]
    assert two["dense_rel_err"] < 1e-5 and two["sparse_rel_err"] < 1e-5
    assert two["speedup_ratio"] == round(two["speedup"] / one["speedup"], 4)
    assert (tmp_path / "ulysses-2-tiny-2l.md").read_text().startswith("| 2 | 2 | 4 |")
