"""Config and profile formats: round trips, strict loading with path-precise errors."""

from __future__ import annotations

import pytest
import torch

from compactsearch.config import config_from_dict, load_config, summarize
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.masks import build_layer_mask, pattern_block_mask
from compactsearch.profile import Profile
from compactsearch.tiling import TileLayout
from tests.conftest import small_config


def test_config_round_trip(tmp_path):
    cfg = small_config()
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = load_config(path)
    assert again == cfg
    again.save(tmp_path / "d.yaml")
    assert (tmp_path / "d.yaml").read_text() == path.read_text()  # stable, diff-friendly output
    assert "windows: [[1, 2], [3, 1]]" in path.read_text()


def test_config_schedule_and_masks():
    cfg = small_config()
    assert [cfg.bucket_for_step(s) for s in range(10)] == [None, None, 0, 0, 0, 0, 1, 1, 1, 1]
    masks = cfg.masks()
    assert len(masks) == 4
    layout = cfg.layout()
    for (bi, li), m in masks.items():
        for h, hc in enumerate(cfg.buckets[bi].layers[li].heads):
            assert torch.equal(m.to_dense()[h], pattern_block_mask(hc.pattern, layout))
    s = summarize(cfg)
    assert 0 < s["density_sparse_steps"] < s["density"] < 1 and s["steps"] == 10 and s["dense_steps"] == 2
    # the whole run: 2 dense steps at 1, 4 + 4 sparse steps at their bucket's density
    d = s["bucket_density"]
    assert s["density"] == pytest.approx((2 + 4 * d[0] + 4 * d[1]) / 10, abs=1e-5)
    assert s["est_attention_speedup"] == pytest.approx(1 / s["density"], abs=2e-3)


def test_schedule_is_fractions_of_the_run():
    cfg = small_config()  # warm-up 0.2, buckets [0.2, 0.6) and [0.6, 1.0), searched at 10 steps
    assert cfg.plan(20).warmup == 4 and cfg.plan(20).ranges == ((4, 12), (12, 20))
    assert cfg.plan(6).warmup == 1 and cfg.plan(6).ranges == ((1, 4), (4, 6))  # 1.2 -> 1, 3.6 -> 4
    assert [cfg.bucket_for_step(s, 5) for s in range(5)] == [None, 0, 0, 1, 1]
    assert cfg.plan(1).warmup == 0 and cfg.plan(1).ranges == ((0, 1), (1, 1))  # one step: bucket 0 runs it
    assert summarize(cfg, num_steps=20)["dense_steps"] == 4


def test_v1_configs_load_converted():
    d = small_config().to_dict()
    d["format"] = "compactsearch/v1"
    d["schedule"] = {"steps": 10, "dense_warmup": 2}
    for b, steps in zip(d["buckets"], ([2, 6], [6, 10])):
        b.pop("run")
        b.pop("bucket")
        b["steps"] = steps
    cfg = config_from_dict(d)
    assert cfg.source_format == "compactsearch/v1" and cfg == small_config()
    assert cfg.to_dict()["format"] == "compactsearch/v2"
    d["schedule"]["dense_warmup"] = 11
    with pytest.raises(InputError, match=r"schedule.dense_warmup: 11 is more than schedule.steps"):
        config_from_dict(d)



@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="compactsearch/v3"), "format: expected one of compactsearch/v1, compactsearch/v2"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["geometry"].update(frames="21"), "geometry.frames: expected an integer"),
        (lambda d: d["buckets"][1]["layers"][1]["heads"][2].update(colour="red"),
         r"buckets\[1\].layers\[1\].heads\[2\].colour: unknown key"),
        (lambda d: d["buckets"][0]["layers"][0]["heads"][1]["groups"][0]["windows"].__setitem__(1, [9, 1]),
         r"buckets\[0\].layers\[0\].heads\[1\].groups\[0\].windows\[1\]: window \[9, 1\] is larger than the tile grid"),
        (lambda d: d["geometry"].update(heads=4),
         r"buckets\[0\].layers\[0\].heads: has 3 heads but geometry.heads is 4"),
        (lambda d: d["geometry"].update(layers=3), r"buckets\[0\].layers: has 2 layers but geometry.layers is 3"),
        (lambda d: d["buckets"][0]["layers"][0]["heads"][0].update(recall="high"),
         r"heads\[0\].recall: expected a number"),
        (lambda d: d["buckets"][0].update(run=[0.1, 0.4]), r"buckets\[0\].run: \[0.1, 0.4\) must be non-empty, "
         "start at or after the dense warm-up"),
        (lambda d: d["buckets"][1].update(run=[0.6, 1.5]), r"buckets\[1\].run\[1\]: must lie in \[0.0, 1.0\]"),
        (lambda d: d["buckets"][1].update(bucket=0), r"buckets\[1\].bucket: bucket numbers must ascend"),
        (lambda d: d["schedule"].update(dense_warmup=3), r"schedule.dense_warmup: unknown key"),
        (lambda d: d["tiling"].update(block_size=96), "tiling.block_size: must be one of"),
        (lambda d: d.pop("model"), "missing required key 'model'"),
    ],
)
def test_config_errors_name_the_path(mutate, message):
    d = small_config().to_dict()
    mutate(d)
    with pytest.raises(InputError, match=message):
        config_from_dict(d)


def _planted_mass(layout: TileLayout, heads: int, seed: int) -> torch.Tensor:
    """Softmax-like block mass: random positive weights, rows normalised to each query block's token count."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(heads, layout.num_blocks, layout.num_blocks, generator=g) ** 4
    lengths = layout.block_lengths().float()
    w = w * lengths[None, None, :]  # a key block's share grows with its tokens
    return w / w.sum(-1, keepdim=True) * lengths[None, :, None]


def test_profile_round_trip(tmp_path):
    geometry = VideoGeometry(5, 9, 11, 7, "front")
    layout = TileLayout(geometry, (2, 4, 8), 64)
    mass = torch.stack([torch.stack([_planted_mass(layout, 3, 10 * b + l) for l in range(2)]) for b in range(2)])
    per_prompt = torch.stack([mass, mass * 0 + mass.flip(-1)], dim=2)  # [NB, L, P, H, NQB, NKB]
    prof = Profile.from_block_mass(mass, geometry=geometry, tile=(2, 4, 8), block_size=64,
                                   buckets=[(2, 6), (6, 10)], num_steps=10, per_prompt=per_prompt,
                                   prompts=["a red circle", "a blue square"], seeds=[0, 1],
                                   model={"id": "test/tiny", "adapter": "wan"})
    assert set(prof.stats["prompt"]) == {-1, 0, 1}
    assert set(prof.stats["label"]) <= {"local", "cross", "time-variant", "global"}
    out = tmp_path / "prof"
    prof.save(out)
    again = Profile.load(out, verify=True)
    assert again.buckets == [(2, 6), (6, 10)] and again.prompts == ["a red circle", "a blue square"]
    assert again.geometry == geometry and again.tile == (2, 4, 8) and again.block_size == 64
    for b in range(2):
        for l in range(2):
            torch.testing.assert_close(again.mass(b, l), mass[b, l], rtol=2e-3, atol=2e-3)  # float16 storage
            torch.testing.assert_close(again.prompt_mass(b, l), per_prompt[b, l], rtol=2e-3, atol=2e-3)
    assert again.stats.shape == prof.stats.shape
    assert again.content_hash == prof.content_hash
    # saving again gives the same hashes; the directory was replaced atomically
    again.save(tmp_path / "prof2")
    assert Profile.load(tmp_path / "prof2").content_hash == prof.content_hash


def test_profile_errors(tmp_path):
    geometry = VideoGeometry(2, 4, 8)
    with pytest.raises(InputError, match="does not exist"):
        Profile.load(tmp_path / "missing")
    with pytest.raises(InputError, match="expected"):
        Profile.from_block_mass({(0, 0): torch.ones(2, 3, 3)}, geometry=geometry, tile=(2, 4, 8), block_size=64)
    with pytest.raises(InputError, match="NaN"):
        Profile.from_block_mass({(0, 0): torch.full((2, 1, 1), float("nan"))}, geometry=geometry, tile=(2, 4, 8),
                                block_size=64)
    layout = TileLayout(geometry, (2, 4, 8), 64)
    prof = Profile.from_block_mass({(0, 0): _planted_mass(layout, 2, 0)}, geometry=geometry, tile=(2, 4, 8),
                                   block_size=64)
    prof.save(tmp_path / "p")
    (tmp_path / "p" / "mass" / "b0_l0.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="corrupt"):
        Profile.load(tmp_path / "p", verify=True)
    with pytest.raises(InputError, match="corrupt"):
        Profile.load(tmp_path / "p").mass(0, 0)
    from safetensors.torch import save_file

    save_file({"per_prompt": torch.ones(1, 2, 2, 2)}, str(tmp_path / "p" / "mass" / "b0_l0.safetensors"))
    with pytest.raises(InputError, match="b0_l0.safetensors holds no 'mass' tensor"):
        Profile.load(tmp_path / "p").mass(0, 0)


def test_built_masks_are_consistent_with_layout():
    cfg = small_config()
    m = build_layer_mask(cfg.buckets[0].layers[0].patterns(), cfg.layout())
    assert m.num_q_blocks == cfg.layout().num_blocks and m.seq_len == cfg.geometry.seq_len


def _with_sinks():
    """`small_config` (tile grid 4 x 4 x 2) with sinks on head 0 and the search's oracle numbers on head 1."""
    from dataclasses import replace

    from compactsearch.config import HeadConfig

    cfg = small_config()
    buckets = []
    for b in cfg.buckets:
        layers = []
        for lc in b.layers:
            h0, h1, *rest = lc.heads
            p0 = h0.pattern if h0.pattern.is_dense else h0.pattern.with_sinks([(3, 1, 0), (0, 0, 1)])
            heads = (HeadConfig(0, p0), replace(h1, recall=0.9, oracle_recall=0.95, oracle_fidelity=-0.25,
                                                efficiency=0.94737), *rest)
            layers.append(replace(lc, heads=heads))
        buckets.append(replace(b, layers=tuple(layers)))
    return replace(cfg, buckets=tuple(buckets))


def test_config_sinks_and_oracle_round_trip(tmp_path):
    cfg = _with_sinks()
    path = tmp_path / "c.yaml"
    cfg.save(path)
    text = path.read_text()
    assert "sinks: [[0, 0, 1], [3, 1, 0]]" in text  # sorted, next to groups
    assert "oracle_recall: 0.95" in text and "efficiency: 0.94737" in text
    again = load_config(path)
    assert again == cfg
    layout = cfg.layout()
    masks = again.masks()
    for (bi, li), m in masks.items():
        for h, hc in enumerate(again.buckets[bi].layers[li].heads):
            assert torch.equal(m.to_dense()[h], pattern_block_mask(hc.pattern, layout))
    s = summarize(again)
    assert s["oracle_recall_mean"] == pytest.approx(0.95)
    assert s["pattern_efficiency"] == pytest.approx(0.9 / 0.95, abs=1e-5)


def _head(d, b=0, l=0, h=0):
    return d["buckets"][b]["layers"][l]["heads"][h]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: _head(d).update(sinks=[[4, 0, 0]]),
         r"buckets\[0\].layers\[0\].heads\[0\].sinks\[0\]: key tile \[4, 0, 0\] lies outside the tile grid "
         r"\[4, 4, 2\]"),
        (lambda d: _head(d).update(sinks=[[0, 0, 1], [0, 0, 1]]),
         r"heads\[0\].sinks\[1\]: key tile \[0, 0, 1\] is listed twice"),
        (lambda d: _head(d).update(sinks=[[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1], [2, 0, 0]]),
         r"heads\[0\].sinks: at most 4 sinks, got 5"),
        (lambda d: _head(d).update(sinks=[[0, 0]]), r"heads\[0\].sinks\[0\]: expected 3 entries"),
        (lambda d: _head(d).update(sinks=[[0, -1, 0]]), r"heads\[0\].sinks\[0\]\[1\]: must be >= 0"),
        (lambda d: _head(d).update(sinks="top"), r"heads\[0\].sinks: expected a list"),
        (lambda d: _head(d, l=1, h=2).update(sinks=[[0, 0, 0]]),
         r"buckets\[0\].layers\[1\].heads\[2\].sinks: a dense pattern has no sinks"),
        (lambda d: _head(d).update(efficiency=1.5), r"heads\[0\].efficiency: must lie in \[0.0, 1.0\]"),
        (lambda d: _head(d).update(oracle_recall="x"), r"heads\[0\].oracle_recall: expected a number"),
    ],
)
def test_config_sink_errors_name_the_path(mutate, message):
    d = small_config().to_dict()
    mutate(d)
    with pytest.raises(InputError, match=message):
        config_from_dict(d)
