"""The GPU benchmarks' logic on the CPU at tiny size: `benchmarks/e2e.py` (one family, the whole path: build, save,
recipe, profile, search, validate, dense and sparse generations, the table row) and `benchmarks/cost_model.py`
(the least-squares fit, the file `search --cost-model` reads)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import cost_model, e2e  # noqa: E402
from compactsearch.search.scoring import CostModel  # noqa: E402


def test_e2e_runs_one_family_at_tiny_size(tmp_path, capsys):
    assert e2e.main(["--family", "ltx", "--size", "tiny", "--device", "cpu", "--out", str(tmp_path), "--steps", "3",
                     "--prompts", "2", "--trials", "2", "--workers", "1"]) == 0
    row = json.loads((tmp_path / "ltx.json").read_text())
    assert row["tokens"] == 1728 and row["size"] == "tiny" and row["sparse_steps"] >= 1
    assert 0 < row["density"] <= 0.305 and 0 < row["attention_share"] <= 1
    for key in ("dense_step_s", "sparse_step_s", "step_speedup", "amdahl_limit", "profile_per_prompt_s",
                "dense_generation_s", "startup_s"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["amdahl_limit"] == pytest.approx(1 / ((1 - row["attention_share"]) + row["attention_share"]
                                                     * row["density"]), rel=1e-3)
    assert [r["section"] for r in row["profile"]["rows"]][:3] == ["load", "attention", "block mass"]
    assert row["mass_row_sum_max_rel_err"] < 1e-3
    md = (tmp_path / "ltx.md").read_text()
    assert md.startswith("| ltx | tiny | 1728 | 3 |") and md.count("|") == e2e.HEADER.splitlines()[0].count("|")
    assert not (tmp_path / "ltx.work" / "model").exists()  # the saved model is removed unless --keep-model
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["family"] == "ltx"


def test_e2e_all_dense_config_and_pattern_diff(tmp_path):
    from compactsearch.config import load_config
    from tests.conftest import small_config

    cfg = tmp_path / "c.yaml"
    src = small_config()  # warm-up 0.2 of 10 steps, buckets [0.2, 0.6) and [0.6, 1.0), 2 layers x 3 heads, 1 dense
    src.save(cfg)
    dense = load_config(e2e._all_dense_config(cfg, tmp_path / "d.yaml"))
    assert dense.dense_warmup == 0 and dense.bucket_steps(0) == (0, 6) and dense.bucket_steps(1) == (6, 10)
    assert all(h.pattern.is_dense for b in dense.buckets for lc in b.layers for h in lc.heads)
    changed = sum(not h.pattern.is_dense for b in src.buckets for lc in b.layers for h in lc.heads)
    assert e2e._pattern_changes(cfg, tmp_path / "d.yaml") == {"heads": 12, "changed": changed,
                                                              "dense_warmup": [0.2, 0.0]}


def test_cost_model_fit_recovers_the_model_and_search_reads_the_file(tmp_path):
    a, b = 2.5e-6, 4e-6
    points = [(h * q * k, h * q, a * h * q * k + b * h * q) for h, q, k in [(12, 256, 1), (12, 256, 64), (12, 256, 128),
                                                                              (12, 256, 256), (40, 591, 100)]]
    pb, pq, rel = cost_model.fit_cost_model(points)
    assert pb == pytest.approx(a, rel=1e-9) and pq == pytest.approx(b, rel=1e-6) and rel < 1e-9
    path = cost_model.write_cost_model(tmp_path / "cm.yaml", {"per_block": pb, "per_query_block": pq,
                                                              "per_dense_head": 1e-3, "unit": "s"})
    cm = CostModel.load(path)
    assert (cm.per_block, cm.per_query_block) == pytest.approx((a, b))


def test_cost_model_measures_on_the_cpu(tmp_path):
    m = cost_model.measure_cost_model(256, 2, 64, 64, device="cpu", dtype=__import__("torch").float32, points=3,
                                      reps=1)
    assert len(m["points"]) == 3 and m["points"][-1]["blocks"] == 2 * 4 * 4  # the last point is all blocks
    assert m["per_dense_head"] > 0 and m["geometry"]["tokens"] == 256
