"""`compactsearch search` on the command line: output, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from planted import planted_profile
from safetensors.torch import load_file, save_file

from compactsearch.cli import main
from compactsearch.config import load_config
from compactsearch.geometry import VideoGeometry

GEO, TILE, BS = VideoGeometry(9, 20, 28), (2, 8, 8), 64


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    prof, _ = planted_profile(GEO, TILE, BS, [["local", "cross", "decay"], ["far", "global", "local"]], buckets=1,
                              prompts=2, seed=9)
    return prof.save(tmp_path_factory.mktemp("cli") / "profile")


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_search_writes_config_and_json(profile_dir, tmp_path, capsys):
    out = tmp_path / "cfg.yaml"
    code, stdout, err = run(["search", str(profile_dir), "--budget", "0.5", "--recall", "0.9", "--trials", "12",
                             "--workers", "1", "--holdout", "1", "--seed", "3", "--out", str(out), "--json"], capsys)
    assert code == 0, err
    data = json.loads(stdout)
    assert data["config"] == str(out) and data["summary"]["density"] <= 0.505
    assert data["summary"]["holdout"]["recall_mean_holdout"] > 0.8
    assert "wrote" in err and "density" in err
    cfg = load_config(out)
    assert cfg.search["trials"] == 12 and cfg.provenance["arguments"]["holdout"] == 1
    code, _, err = run(["inspect", str(out)], capsys)
    assert code == 0
    code, _, err = run(["validate", str(out)], capsys)
    assert code == 0, err


def test_default_out_next_to_profile(profile_dir, tmp_path, capsys):
    code, _, err = run(["search", str(profile_dir), "--budget", "0.6", "--trials", "8", "--workers", "1"], capsys)
    assert code == 0, err
    assert (profile_dir.parent / "profile.config.yaml").exists()
    assert (profile_dir.parent / "profile.config.yaml.optuna.db").exists()


@pytest.mark.parametrize("args,msg", [
    (["--budget", "0"], "--budget must lie in (0, 1]"),
    (["--budget", "1.2"], "--budget must lie in (0, 1]"),
    (["--budget", "0.5", "--recall", "0"], "--recall must lie in (0, 1]"),
    (["--budget", "0.001"], "is too small"),
    (["--budget", "0.5", "--holdout", "2"], "leaves no calibration prompt"),
    (["--budget", "0.5", "--sampler", "grid"], "--sampler must be one of"),
])
def test_bad_arguments_are_one_line_errors(profile_dir, tmp_path, capsys, args, msg):
    code, _, err = run(["search", str(profile_dir), "--out", str(tmp_path / "x.yaml"), "--workers", "1", *args],
                       capsys)
    assert code == 2
    assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.yaml").exists()


def test_missing_profile(tmp_path, capsys):
    code, _, err = run(["search", str(tmp_path / "none"), "--budget", "0.3"], capsys)
    assert code == 2 and "does not exist" in err


def _copy(profile_dir, tmp_path):
    import shutil

    dst = tmp_path / "p"
    shutil.copytree(profile_dir, dst)
    return dst


def test_nan_in_block_mass(profile_dir, tmp_path, capsys):
    p = _copy(profile_dir, tmp_path)
    f = p / "mass" / "b0_l1.safetensors"
    t = load_file(str(f))
    t["mass"][1, 2, 3] = float("nan")
    save_file({k: v.contiguous() for k, v in t.items()}, str(f))
    code, _, err = run(["search", str(p), "--budget", "0.5", "--workers", "1", "--out", str(tmp_path / "x.yaml")],
                       capsys)
    assert code == 2 and "contains NaN" in err and "bucket 0, layer 1" in err


def test_corrupt_profile(profile_dir, tmp_path, capsys):
    p = _copy(profile_dir, tmp_path)
    (p / "mass" / "b0_l0.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = run(["search", str(p), "--budget", "0.5", "--workers", "1", "--out", str(tmp_path / "x.yaml")],
                       capsys)
    assert code == 2 and "corrupt" in err
    (p / "profile.yaml").write_text("format: [")
    code, _, err = run(["search", str(p), "--budget", "0.5"], capsys)
    assert code == 2 and "not valid YAML" in err


def test_cost_model_option(profile_dir, tmp_path, capsys):
    cm = tmp_path / "cost.json"
    cm.write_text(json.dumps({"per_block": 1.0, "per_query_block": 20.0}))
    out = tmp_path / "cm.yaml"
    code, stdout, err = run(["search", str(profile_dir), "--budget", "0.5", "--trials", "8", "--workers", "1",
                             "--cost-model", str(cm), "--out", str(out), "--json"], capsys)
    assert code == 0, err
    s = json.loads(stdout)["summary"]
    assert s["cost_vs_dense"] <= 0.5 + 1e-9 and s["density"] <= s["cost_vs_dense"]
    assert load_config(out).search["cost_model"] == {"per_block": 1.0, "per_query_block": 20.0}
    assert torch.isfinite(torch.tensor(s["density"]))
