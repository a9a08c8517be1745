"""Recipe loading: strict, path-precise errors; the shipped recipes all load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compactsearch.errors import InputError
from compactsearch.profile.recipe import load_recipe, read_prompts, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _base(**over) -> dict:
    d = {
        "model": {"id": "tiny-random-wan", "adapter": "wan"},
        "video": {"height": 128, "width": 128, "frames": 9},
        "sampling": {"steps": 10, "guidance": 5.0},
        "prompts": ["a cat", "a dog"],
        "profile": {"buckets": [[0, 4], [4, 10]]},
    }
    d.update(over)
    return d


def test_defaults_and_bucket_map():
    r = recipe_from_dict(_base())
    assert r.dtype == "bfloat16" and r.offload == "none" and r.block_size is None and r.tile is None
    assert r.profiled_steps == tuple(range(10)) and r.buckets == ((0, 4), (4, 10))
    assert r.bucket_of_step()[3] == 0 and r.bucket_of_step()[4] == 1
    assert [r.seed_of(i) for i in range(2)] == [0, 1]


def test_every_n_steps_keeps_the_last_step():
    r = recipe_from_dict(_base(profile={"buckets": [[0, 4], [4, 10]], "steps": {"every": 3}}))
    assert r.profiled_steps == (0, 3, 6, 9)


@pytest.mark.parametrize("over, match", [
    ({"modle": {}}, r"^modle: unknown key"),
    ({"model": {"id": "x", "adapter": "sora"}}, r"^model.adapter: unknown adapter 'sora'; known adapters: cogvideox"),
    ({"model": {"id": "x", "adapter": "wan", "dtype": "fp8"}}, r"^model.dtype: must be one of"),
    ({"sampling": {"steps": 0, "guidance": 5.0}}, r"^sampling.steps: must be >= 1"),
    ({"sampling": {"steps": 10}}, r"^sampling: missing required key 'guidance'"),
    ({"profile": {"buckets": [[0, 4], [3, 10]]}}, r"^profile.buckets\[1\]: \[3, 10\) must be non-empty, ascending"),
    ({"profile": {"buckets": [[0, 4], [4, 11]]}}, r"^profile.buckets\[1\]: .*within sampling.steps \(10\)"),
    ({"profile": {"buckets": [[0, 4], [6, 10]], "steps": [2, 5]}}, r"^profile.steps: step 5 lies in no bucket"),
    ({"profile": {"buckets": [[0, 4], [4, 10]], "steps": [1, 2]}},
     r"^profile.buckets\[1\]: \[4, 10\) holds no profiled"),
    ({"profile": {"branch": "both"}}, r"^profile.branch: must be one of cond, uncond"),
    ({"tiling": {"tile": [1, 4, 4], "block_size": 128}}, r"^tiling.tile: \[1, 4, 4\] holds 16 tokens"),
    ({"tiling": {"block_size": 32}}, r"^tiling.block_size: must be one of \(64, 128\)"),
    ({"tiling": {"tile": [1, 8, 8]}}, r"^tiling: give block_size together with tile"),
    ({"prompts": []}, r"^prompts: needs at least one prompt"),
    ({"prompts": ["ok", 3]}, r"^prompts\[1\]: expected a non-empty string"),
])
def test_errors_name_the_path(over, match):
    with pytest.raises(InputError, match=match):
        recipe_from_dict(_base(**over))


def test_load_recipe_names_the_file_and_resolves_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("# calibration\n\na fox in snow\n  waves at dusk  \n")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_base(prompts="p.txt")))
    assert load_recipe(path).prompts == ("a fox in snow", "waves at dusk")
    path.write_text(yaml.safe_dump(_base(prompts="missing.txt")))
    with pytest.raises(InputError, match=r"^recipe .*r.yaml: prompts: prompt file .*missing.txt does not exist"):
        load_recipe(path)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    if r.model_id.startswith("tiny-"):  # random weights: a few prompts to exercise the code
        assert r.prompts
        return
    # the bundled tiny model draws from a 37-word vocabulary: 6 prompts cover every shape, motion and texture
    least = 6 if r.model_id == "compactsearch/tiny-wan" else 16
    assert len(r.prompts) >= least and len(r.holdout_prompts) >= 4
    assert not set(r.prompts) & set(r.holdout_prompts)
    assert len(set(r.prompts)) == len(r.prompts)
