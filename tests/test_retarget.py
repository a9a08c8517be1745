"""Retargeting a config to another token grid or step count: the mapping rules, the command, its errors."""

from __future__ import annotations

import json

import pytest

from compactsearch.cli import main
from compactsearch.config import load_config, summarize
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.retarget import retarget, retarget_pattern, token_grid
from compactsearch.tiling import TileLayout
from compactsearch.validation import validate_config
from tests.conftest import small_config


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_token_rule_keeps_token_extents_and_whole_axes():
    old = TileLayout(VideoGeometry(8, 16, 16), (2, 4, 8), 64)      # tile grid 4 x 4 x 2
    new = TileLayout(VideoGeometry(16, 32, 32), (2, 4, 8), 64)     # tile grid 8 x 8 x 4
    p = Pattern((FrameGroup(0, 1, (Window(3, 1), Window(4, 2))), FrameGroup(2, 3, (Window(1, 2),))))
    q = retarget_pattern(p, old, new, "tokens")
    # same tokens: 3 rows of 4 -> 3 tiles; a whole axis (4 of 4 rows, 2 of 2 cols) stays whole (8 rows, 4 cols)
    assert q.groups[0] == FrameGroup(0, 1, (Window(3, 1), Window(8, 4)))
    # dt 2 of 2-frame tiles = 4 frames -> dt 2; dt 3 was the last distance: it becomes the new last (7)
    assert q.groups[1] == FrameGroup(2, 7, (Window(1, 4),))
    f = retarget_pattern(p, old, new, "fraction")  # same share of the grid: every extent doubles
    assert f.groups[0] == FrameGroup(0, 2, (Window(6, 2), Window(8, 4)))  # distance 1 tile (2 frames) -> 4 frames
    assert f.groups[1] == FrameGroup(3, 7, (Window(2, 4),))  # it started right after group 0: it still does
    assert retarget_pattern(Pattern.dense(), old, new) == Pattern.dense()
    # sink key tiles keep their share of the grid: (0, 0, 0) stays, (3, 1, 1) of 4 x 4 x 2 -> (6, 2, 2) of 8 x 8 x 4
    sunk = Pattern(p.groups, ((0, 0, 0), (3, 1, 1)))
    for rule in ("tokens", "fraction"):
        assert retarget_pattern(sunk, old, new, rule).sinks == ((0, 0, 0), (6, 2, 2))
    small = TileLayout(VideoGeometry(2, 8, 8), (2, 4, 8), 64)  # a 1 x 2 x 1 tile grid
    assert retarget_pattern(Pattern(p.groups, ((0, 0, 1), (3, 3, 1))), old, small).sinks == ((0, 0, 0), (0, 1, 0))


def test_groups_stay_ascending_and_disjoint_on_a_smaller_grid():
    old = TileLayout(VideoGeometry(16, 16, 16), (2, 4, 8), 64)     # 8 tile frames
    new = TileLayout(VideoGeometry(4, 16, 16), (2, 4, 8), 64)      # 2 tile frames
    p = Pattern((FrameGroup(0, 0, (Window(2, 2),)), FrameGroup(1, 2, (Window(1, 1),)),
                 FrameGroup(3, 7, (Window(1, 2),))))
    q = retarget_pattern(p, old, new, "fraction")
    assert [(g.dt_lo, g.dt_hi) for g in q.groups] == [(0, 0), (1, 1)]  # the last group found no distance left
    for rule in ("tokens", "fraction"):
        q = retarget_pattern(p, old, new, rule)
        assert q.check_grid(new.grid_thw) is None
        assert all(a.dt_hi < b.dt_lo for a, b in zip(q.groups, q.groups[1:]))


def test_retargeted_configs_are_valid_and_declare_their_densities():
    cfg = small_config()  # 8 x 16 x 16 + 60 text at the back
    for grid in ((12, 16, 16), (16, 24, 24), (5, 9, 13)):
        new = retarget(cfg, grid)
        assert new.geometry == VideoGeometry(*grid, 60, "back") and new.provenance["kind"] == "retargeted"
        assert new.provenance["from"]["grid"] == [8, 16, 16] and new.summary == summarize(new)
        report = validate_config(new, numerics=False, max_waste=1.0)  # tiny grids: big blocks waste a lot
        assert report.ok, [c for c in report.checks if not c.ok]
        assert [b.run for b in new.buckets] == [b.run for b in cfg.buckets] and new.warmup == cfg.warmup
    steps = retarget(cfg, num_steps=25)  # steps only: the heads are untouched
    assert steps.buckets == cfg.buckets and steps.num_steps == 25 and steps.plan().warmup == 5
    assert retarget(cfg, (8, 16, 16)).buckets == cfg.buckets


def test_bad_targets_are_refused():
    cfg = small_config()
    with pytest.raises(InputError, match="three positive integers"):
        retarget(cfg, (0, 16, 16))
    with pytest.raises(InputError, match="smaller than two kernel blocks"):
        retarget(cfg, (1, 4, 4))
    with pytest.raises(InputError, match="--rule must be one of"):
        retarget(cfg, (8, 16, 16), rule="nearest")
    with pytest.raises(InputError, match="--steps must be a positive integer"):
        retarget(cfg, num_steps=0)


def test_pixel_sizes_go_through_the_family_factors():
    cfg = small_config()  # adapter wan: VAE 4 x 8, patch 1 x 2 x 2
    assert token_grid(cfg, 81, 480, 832) == (21, 30, 52)
    assert token_grid(cfg, 121, 720, 1280) == (31, 45, 80)
    with pytest.raises(InputError, match="multiples of 16"):
        token_grid(cfg, 81, 100, 832)
    with pytest.raises(InputError, match="1 \\+ a multiple of 4"):
        token_grid(cfg, 80, 480, 832)


def test_retarget_command(tmp_path, capsys):
    src = tmp_path / "c.yaml"
    small_config().save(src)
    out = tmp_path / "n.yaml"
    code, stdout, err = run(["retarget", str(src), "--grid", "12,16,16", "--steps", "20", "--out", str(out),
                             "--json"], capsys)
    assert code == 0, err
    new = load_config(out)
    assert new.geometry.thw == (12, 16, 16) and new.num_steps == 20 and "over the whole run" in err
    assert json.loads(stdout)["summary"]["density"] == new.summary["density"]
    code, _, err = run(["validate", str(out), "--no-numerics"], capsys)
    assert code == 0, err
    # one-line errors, exit 2, nothing written
    bad = [
        (["--grid", "0,16,16"], "sizes must be positive"),
        (["--grid", "-3,16,16"], "sizes must be positive"),
        (["--grid", "1,4,4"], "smaller than two kernel blocks"),
        (["--grid", "12,16"], "takes three integers"),
        (["--video", "80,480,832"], "1 + a multiple of 4"),
        ([], "say what to retarget to"),
        (["--grid", "12,16,16", "--video", "81,480,832"], "give one of"),
    ]
    for args, msg in bad:
        target = tmp_path / "bad.yaml"
        code, _, err = run(["retarget", str(src), *args, "--out", str(target)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (args, err)
        assert not target.exists()


def test_retarget_to_a_profile_of_another_model_is_refused(tmp_path, capsys):
    import torch

    from compactsearch.profile.store import Profile

    cfg = small_config()
    src = tmp_path / "c.yaml"
    cfg.save(src)
    layout = TileLayout(VideoGeometry(4, 16, 16), (2, 4, 8), 64)
    nb = layout.num_blocks
    mass = torch.full((1, 2, 5, nb, nb), 64.0 / nb)  # 5 heads: another model than the config's 3
    Profile.from_block_mass(mass, geometry=layout.geometry, tile=(2, 4, 8), block_size=64,
                            model={"id": "other/model", "adapter": "wan"}).save(tmp_path / "p")
    target = tmp_path / "bad.yaml"
    code, _, err = run(["retarget", str(src), "--profile", str(tmp_path / "p"), "--out", str(target)], capsys)
    assert code == 2 and "another model" in err and len(err.strip().splitlines()) == 1 and not target.exists()

