"""End to end on the bundled trained tiny model: `profile` (no recipe: the default) -> `search --budget 0.3` ->
`validate` -> `evaluate` with the baselines, through the CLI, on the CPU."""

from __future__ import annotations

import json
import math

import pytest

from compactsearch.cli import main
from compactsearch.config import load_config
from compactsearch.profile.recipe import default_recipe_path, load_recipe
from compactsearch.profile.store import Profile


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_default_recipe_is_the_shipped_tiny_one():
    r = load_recipe(default_recipe_path())
    assert r.model_id == "compactsearch/tiny-wan" and r.name == "tiny"
    assert (r.height, r.width, r.frames) == (32, 32, 8)
    assert not set(r.prompts) & set(r.holdout_prompts)


def test_tiny_model_loop_through_the_cli(tmp_path, capsys):
    recipe = load_recipe(default_recipe_path())
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(recipe.prompts[:2]) + "\n")  # 2 of the 6 calibration prompts: keeps CI short
    held = tmp_path / "held.txt"
    held.write_text(recipe.holdout_prompts[0] + "\n")
    prof, cfg = tmp_path / "prof", tmp_path / "tiny-0.3.yaml"

    code, out, err = cli(capsys, "profile", "--prompts", calib, "--out", prof, "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["prompts"] == 2
    p = Profile.load(prof)
    assert p.has_values and p.model["id"] == "compactsearch/tiny-wan"
    labels = p.stats[p.stats["prompt"] == -1]["label"].value_counts()
    assert len(labels) >= 2, labels  # trained heads differ (random weights give one label)

    code, out, err = cli(capsys, "search", prof, "--budget", "0.3", "--out", cfg, "--workers", "1", "--json")
    assert code == 0, err
    s = json.loads(out)["summary"]
    assert s["objective"] == "fidelity" and abs(s["density"] - 0.3) <= 0.005

    code, out, err = cli(capsys, "validate", cfg, "--json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True

    # the kernel check on the q/k/v the profile captured (Triton's interpreter on this CPU)
    code, out, err = cli(capsys, "validate", cfg, "--json", "--no-numerics", "--kernel", "interpret",
                         "--profile", prof, "--sample-blocks", "2")
    assert code == 0, err
    results = json.loads(out)["kernel_results"]
    n_masks = sum(len(b.layers) for b in load_config(cfg).buckets)  # every sparse bucket's layers
    assert len(results) == n_masks and all("captured q/k/v" in r for r in results), results

    code, out, err = cli(capsys, "evaluate", "--config", cfg, "--prompts", held, "--baselines", prof, "--json")
    assert code == 0, err
    data = json.loads(out)
    names = [c["name"] for c in data["configs"]]
    assert names == ["tiny-0.3", "best-cube", "greedy"]
    for c in data["configs"]:  # a sanity floor: 0.3 of the whole run on a 2-prompt profile, baselines included
        assert math.isfinite(c["psnr"]) and c["psnr"] > 10 and 0 < c["ssim"] <= 1
    assert load_config(cfg).model_id == "compactsearch/tiny-wan"
