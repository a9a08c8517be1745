"""The whole search: config output, exactness, determinism, storage, resume, workers, held-out prompts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted import KINDS, planted_profile

from compactsearch.config import load_config, summarize
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.search import SearchSettings, default_storage, run_search
from compactsearch.search.scoring import ExactScorer
from compactsearch.tiling import TileLayout

ROOT = Path(__file__).resolve().parents[1]
GEO, TILE, BS = VideoGeometry(9, 20, 28), (2, 8, 8), 64


def kinds(layers, heads, shift=0):
    return [[KINDS[(l + h + shift) % len(KINDS)] for h in range(heads)] for l in range(layers)]


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    prof, _ = planted_profile(GEO, TILE, BS, kinds(3, 4), buckets=2, prompts=3, seed=3)
    return prof.save(tmp_path_factory.mktemp("prof") / "profile")


def comparable(cfg):
    d = cfg.to_dict()
    d.pop("provenance")
    return d


def test_config_is_exact_within_budget_and_valid(profile_dir, tmp_path):
    out = tmp_path / "c.yaml"
    res = run_search(profile_dir, SearchSettings(budget=0.45), out)
    cfg = load_config(out)
    s = summarize(cfg)
    assert s["density"] <= 0.45 + 0.005
    for k in ("density", "density_sparse_steps", "bucket_density", "recall_mean", "recall_min"):
        assert cfg.summary[k] == s[k]
    layout = TileLayout(GEO, TILE, BS)
    scorer = ExactScorer(layout)
    from compactsearch.profile.store import Profile

    prof = Profile.load(profile_dir)
    for bi, bucket in enumerate(cfg.buckets):
        pb = bucket.id  # the profile's bucket number
        assert cfg.bucket_steps(bi)[1] == prof.buckets[pb][1]
        for lc in bucket.layers:
            mass = prof.mass(pb, lc.layer)
            built = cfg.layer_mask(bi, lc.layer, layout).head_density()
            for hc in lc.heads:
                e = scorer.score(hc.pattern, mass[hc.head])
                assert hc.recall == pytest.approx(e.recall, abs=1e-5)
                assert hc.density == pytest.approx(float(built[hc.head]), abs=1e-5)
    prov = cfg.provenance
    assert prov["kind"] == "searched" and prov["profile_hash"] == prof.content_hash and prov["seed"] == 0
    n = 12 * len(cfg.buckets)
    assert cfg.search["budget"] == 0.45 and cfg.summary["baselines"]["heads_dominating_baselines"] == f"{n}/{n}"
    assert cfg.summary["baselines"]["density_saved_vs_best_cube"] >= 0
    assert res.heads_searched == 24 and default_storage(out).exists()
    # the lead's validate accepts it
    from compactsearch.cli import main

    with pytest.raises(SystemExit) as e:
        main(["validate", str(out), "--no-numerics"])
    assert e.value.code == 0


def test_deterministic_reuses_storage_and_workers_agree(profile_dir, tmp_path):
    a = run_search(profile_dir, SearchSettings(budget=0.5, seed=5), tmp_path / "a.yaml")
    b = run_search(profile_dir, SearchSettings(budget=0.5, seed=5), tmp_path / "b.yaml", workers=2)
    assert comparable(a.config) == comparable(b.config)
    # resume on a finished run reuses every head; another budget is re-allocated from storage
    c = run_search(profile_dir, SearchSettings(budget=0.6, seed=5), tmp_path / "a.yaml", resume=True)
    assert c.heads_reused == 24 and c.heads_searched == 0
    assert c.config.summary["density"] <= 0.6 + 1e-9 and c.config.summary["density"] > a.config.summary["density"]
    # without --resume the default database is refused, and kept; --fresh starts over
    with pytest.raises(InputError, match="add --resume to continue it, or --fresh"):
        run_search(profile_dir, SearchSettings(budget=0.5, seed=5), tmp_path / "a.yaml")
    assert default_storage(tmp_path / "a.yaml").exists()
    d = run_search(profile_dir, SearchSettings(budget=0.5, seed=5), tmp_path / "a.yaml", fresh=True)
    assert d.heads_searched == 24 and comparable(d.config) == comparable(a.config)


def test_shared_storage_url(profile_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = run_search(profile_dir, SearchSettings(budget=0.5), tmp_path / "a.yaml", storage=url)
    b = run_search(profile_dir, SearchSettings(budget=0.5), tmp_path / "b.yaml", storage=url)
    assert a.heads_searched == 24 and b.heads_reused == 24
    assert comparable(a.config) == comparable(b.config)
    assert not default_storage(tmp_path / "a.yaml").exists()


def _done_heads(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM study_user_attributes WHERE key = 'result'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_killed_search_resumes_to_the_same_config(tmp_path):
    prof, _ = planted_profile(GEO, TILE, BS, kinds(12, 4, 1), buckets=2, seed=4)
    pdir = prof.save(tmp_path / "profile")
    total = 2 * 12 * 4
    out = tmp_path / "killed.yaml"
    db = default_storage(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "kernels")])}
    proc = subprocess.Popen([sys.executable, "-m", "compactsearch", "search", str(pdir), "--budget", "0.5",
                             "--workers", "1", "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while _done_heads(db) < 8 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _done_heads(db)
    assert 0 < done < total, f"the kill should land mid-run ({done}/{total} heads stored)"
    assert not out.exists()
    resumed = run_search(pdir, SearchSettings(budget=0.5), out, resume=True)
    assert resumed.heads_reused == done and resumed.heads_searched == total - done
    clean = run_search(pdir, SearchSettings(budget=0.5), tmp_path / "clean.yaml")
    assert clean.heads_searched == total
    assert comparable(resumed.config) == comparable(clean.config)


def test_holdout_reports_held_out_recall(profile_dir, tmp_path):
    res = run_search(profile_dir, SearchSettings(budget=0.5, holdout=1, seed=2), tmp_path / "h.yaml")
    h = res.summary["holdout"]
    assert len(h["prompt_indices"]) == 1 and h["prompts"][0].startswith("planted prompt")
    assert 0.8 < h["recall_mean_holdout"] <= 1.0
    assert abs(h["recall_mean_holdout"] - h["recall_mean_calibration"]) < 0.02
    assert len(res.summary["holdout_per_head"]) == 24
    assert "holdout_per_head" not in load_config(tmp_path / "h.yaml").summary


def test_budget_counts_the_whole_run(tmp_path):
    # two buckets of 10 steps; the warm-up is chosen at step granularity with the patterns
    prof, _ = planted_profile(GEO, TILE, BS, [["global", "local"], ["cross", "decay"]], buckets=2, seed=5)
    for budget in (0.3, 0.5, 0.7):
        res = run_search(prof, SearchSettings(budget=budget), tmp_path / f"w{budget}.yaml")
        s = summarize(load_config(tmp_path / f"w{budget}.yaml"))
        assert s["density"] <= budget + 0.005 and s["density"] == res.summary["density"]
        assert res.summary["cost_vs_dense"] <= budget + 1e-9
        w = res.config.dense_warmup
        assert s["dense_steps"] == w and res.summary["dense_warmup_steps"] == w
        assert [(b.id, res.config.bucket_steps(i)) for i, b in enumerate(res.config.buckets)] == \
            [(b, (max(a, w), e)) for b, (a, e) in enumerate([(0, 10), (10, 20)]) if e > w]
    # one bucket [0, 20): the recipe's warm-up is the least; the bucket is clipped to the chosen warm-up
    prof, _ = planted_profile(GEO, TILE, BS, [["local", "cross"]], buckets=1, seed=5, steps_per_bucket=20,
                              recipe={"profile": {"dense_warmup": 6}})
    res = run_search(prof, SearchSettings(budget=0.5), tmp_path / "r.yaml")
    cfg = load_config(tmp_path / "r.yaml")
    assert cfg.dense_warmup >= 6 and cfg.bucket_steps(0) == (cfg.dense_warmup, 20)
    assert summarize(cfg)["density"] <= 0.505
    # below the cheapest whole run (6 dense steps of 20 alone are 0.3): one line naming the least budget
    with pytest.raises(InputError, match=r"budget 0.3 is too small for the whole run: .* 6 dense steps need "
                       r"0\.3\d+ of dense attention; use --budget >= 0\.3\d+"):
        run_search(prof, SearchSettings(budget=0.3), tmp_path / "x.yaml")


def test_input_errors(profile_dir, tmp_path):
    with pytest.raises(InputError, match=r"--budget must lie in \(0, 1\]"):
        run_search(profile_dir, SearchSettings(budget=1.5), tmp_path / "x.yaml")
    with pytest.raises(InputError, match="use --budget >= 0.0"):
        run_search(profile_dir, SearchSettings(budget=0.001), tmp_path / "x.yaml")
    with pytest.raises(InputError, match="does not exist"):
        run_search(tmp_path / "nope", SearchSettings(budget=0.3), tmp_path / "x.yaml")
    with pytest.raises(InputError, match="leaves no calibration prompt"):
        run_search(profile_dir, SearchSettings(budget=0.5, holdout=3), tmp_path / "x.yaml")
    prof, _ = planted_profile(GEO, TILE, BS, [["local"]], seed=1)
    with pytest.raises(InputError, match="needs per-prompt tensors"):
        run_search(prof, SearchSettings(budget=0.5, holdout=1), tmp_path / "x.yaml")


def test_tiny_model_profile_search_dominates_baselines(tmp_path, capsys):
    """A real profile of the bundled tiny Wan model: every head's front dominates greedy and best cube."""
    from compactsearch.cli import main

    with pytest.raises(SystemExit) as e:
        main(["profile", str(ROOT / "recipes" / "tiny-random-wan.yaml"), "--out", str(tmp_path / "prof")])
    assert e.value.code == 0, capsys.readouterr().err
    res = run_search(tmp_path / "prof", SearchSettings(budget=0.9, recall=0.9, objective="recall"),
                     tmp_path / "tiny.yaml")
    for r in res.results.values():
        for base in (r.greedy, r.cube):
            assert any(p.recall >= base.recall and p.blocks <= base.blocks for p in r.front)
        assert r.cheapest_feasible(0.9).blocks <= min(r.greedy.blocks, r.cube.blocks)
    n = sum(len(b.layers) * res.config.num_heads for b in res.config.buckets)
    assert res.summary["baselines"]["heads_dominating_baselines"] == f"{n}/{n}"
    assert res.summary["density"] <= 0.9 + 0.005
    load_config(tmp_path / "tiny.yaml")


def test_two_processes_share_one_storage(tmp_path):
    """Two workers on one database split the units between them and write the same config."""
    prof, _ = planted_profile(GEO, TILE, BS, kinds(8, 3, 2), buckets=2, seed=6)
    pdir = prof.save(tmp_path / "profile")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "kernels")])}
    procs = [subprocess.Popen([sys.executable, "-m", "compactsearch", "search", str(pdir), "--budget", "0.5",
                               "--workers", "1", "--storage", url, "--out", str(tmp_path / f"{n}.yaml"), "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    import json

    searched = [json.loads(o[0])["heads_searched"] for o in outs]
    assert sum(searched) == 2 * 8 * 3
    assert comparable(load_config(tmp_path / "a.yaml")) == comparable(load_config(tmp_path / "b.yaml"))


def test_keep_trials_stores_the_optuna_studies(tmp_path):
    import optuna

    prof, _ = planted_profile(GEO, TILE, BS, [["local", "cross"]], seed=8)
    out = tmp_path / "k.yaml"
    res = run_search(prof, SearchSettings(budget=0.6, trials=4), out, keep_trials=True)
    key = res.config.provenance["run_key"]
    study = optuna.load_study(study_name=f"{key}:b0:l0:h1", storage=f"sqlite:///{default_storage(out)}")
    assert len(study.trials) == 4
    assert all(t.constraints for t in study.trials) and study.directions[0].name == "MAXIMIZE"
    assert study.user_attrs["result"]["head"] == 1
