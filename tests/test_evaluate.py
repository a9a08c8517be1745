"""Metrics, video files, baselines, `evaluate` / `generate`, and the end-to-end loop through the CLI."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import pytest
import torch

from compactsearch.adapters import register_model
from compactsearch.cli import main
from compactsearch.config import load_config, summarize
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import Pattern
from compactsearch.profile.recipe import load_recipe
from compactsearch.quality import evaluate, psnr, ssim
from compactsearch.search.baselines import baseline_configs
from compactsearch.tinymodel.model import TINY_WAN_CONFIG, build_pipeline, build_transformer
from compactsearch.video import side_by_side, write_video
from tests.planted import planted_profile
from tests.test_runtime import OWN_FRAME, WAN_GEOMETRY, make_config

RECIPE = "recipes/tiny-random-wan.yaml"


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# ------------------------------------------------------------------------------------------------ metrics
def test_psnr_and_ssim_on_known_inputs():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 20, 24, generator=g)
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    b = (a + 0.1).clamp(max=10)  # MSE 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-4)
    # constant frames: SSIM is the luminance term (2 ma mb + C1) / (ma^2 + mb^2 + C1) exactly
    c, d = torch.full((2, 3, 16, 16), 0.3), torch.full((2, 3, 16, 16), 0.6)
    c1 = 0.01**2
    assert ssim(c, d) == pytest.approx((2 * 0.3 * 0.6 + c1) / (0.09 + 0.36 + c1), rel=1e-4)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert ssim(a, noisy) == pytest.approx(ssim(noisy, a), abs=1e-6) and ssim(a, noisy) < 0.9
    assert ssim(a[:, :, :5, :7], noisy[:, :, :5, :7]) < 1.0  # frames smaller than the window still work
    with pytest.raises(ValueError, match=r"\[F, 3, H, W\]"):
        psnr(a[0], a[0])


def test_gif_and_mp4_files(tmp_path):
    v = torch.rand(4, 3, 16, 20)
    path = write_video(tmp_path / "v.gif", side_by_side(v, v), fps=8)
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 4 and frames.shape[1:3] == (16 * 8, 42 * 8)  # scaled up to a 128-pixel short side
    with pytest.raises(InputError, match="write a .gif or an .mp4"):
        write_video(tmp_path / "v.avi", v)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="needs imageio-ffmpeg"):
            write_video(tmp_path / "v.mp4", v)
    else:
        assert write_video(tmp_path / "v.mp4", v).stat().st_size > 0


# ------------------------------------------------------------------------------------------------ baselines
def test_baselines_match_the_density_and_use_one_cube_everywhere():
    geometry = VideoGeometry(4, 16, 16)
    prof, _ = planted_profile(geometry, (1, 8, 8), 64, [["local", "cross", "decay"], ["global", "far", "local"]])
    heads = [Pattern.local(1, 2, 2), Pattern.local(0, 1, 2), Pattern.local(2, 1, 1)]
    cfg = make_config(geometry, 2, 3, 16, heads, steps=10, warmup=0)
    target = summarize(cfg)["bucket_density"][0]
    base = baseline_configs(prof, cfg)
    assert set(base) == {"best-cube", "greedy"}
    for name, b in base.items():
        assert b.buckets[0].run == cfg.buckets[0].run and b.dense_warmup == cfg.dense_warmup
        assert summarize(b)["bucket_density"][0] <= target + 1e-9, name
        assert b.provenance["kind"] == f"baseline-{name}"
    cube = {h.pattern for lc in base["best-cube"].buckets[0].layers for h in lc.heads}
    assert len(cube) == 1 and len(next(iter(cube)).groups) == 1
    assert summarize(base["greedy"])["bucket_density"][0] > 0.8 * target  # bisected close to the target
    with pytest.raises(InputError, match="differ in geometry"):
        baseline_configs(prof, make_config(VideoGeometry(4, 16, 8), 2, 3, 16, heads, steps=10, warmup=0))


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_dense_config_is_exact_and_sparse_is_not(tmp_path):
    recipe = load_recipe(RECIPE)
    dense_cfg = make_config(WAN_GEOMETRY, 2, 2, 16, [Pattern.dense()], warmup=0)
    sparse_cfg = make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME], warmup=1)
    rep = evaluate(recipe, {"dense": dense_cfg, "sparse": sparse_cfg}, ["a cat", "a dog"], video_dir=tmp_path)
    res = {r.name: r for r in rep.results}
    assert rep.seeds == (0, 1) and len(res["sparse"].per_prompt) == 2
    assert res["dense"].psnr > 80 and res["dense"].ssim == pytest.approx(1.0, abs=1e-6)
    assert res["sparse"].psnr < res["dense"].psnr and res["sparse"].ssim < 1.0
    # whole run: 1 dense warm-up step of 4, then 3 steps at 1/3 (each frame sees its own frame)
    assert res["dense"].density == 1.0 and res["sparse"].density == pytest.approx((1 + 3 / 3) / 4, abs=1e-4)
    assert rep.dense_attention_s_per_step > 0 and res["sparse"].attention_s_per_step > 0
    assert len(rep.videos) == 4 and all(iio.imread(p, index=None).shape[0] == 3 for p in rep.videos)
    data = rep.to_json()
    assert json.loads(json.dumps(data))["configs"][1]["name"] == "sparse"


def test_evaluate_and_generate_cli_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME]).save(cfg)
    wrong = tmp_path / "wrong.yaml"  # another model: 3 layers (another grid or step count would be retargeted)
    make_config(WAN_GEOMETRY, 3, 2, 16, [OWN_FRAME]).save(wrong)
    cases = [
        (["evaluate", RECIPE, "--config", cfg], "has no holdout_prompts"),
        (["evaluate", RECIPE, "--config", tmp_path / "none.yaml", "--prompts", RECIPE], "does not exist"),
        (["generate", RECIPE, "--prompt", "a cat", "--out", tmp_path / "x.gif", "--compare"], "--compare needs"),
        (["generate", RECIPE, "--prompt", "a cat", "--out", tmp_path / "x.avi"], "write a .gif or an .mp4"),
        (["generate", RECIPE, "--prompt", "a cat", "--out", tmp_path / "x.gif", "-c", wrong],
         "the config is for 3 self-attention layers"),
    ]
    for args, msg in cases:
        code, _, err = cli(capsys, *args)
        assert code == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1, (args, err)


# ------------------------------------------------------------------------------------------------ end to end
def test_profile_search_validate_evaluate_generate_end_to_end(tmp_path, capsys):
    """The whole loop through the CLI on tiny-random-wan: every artefact written, every exit code 0."""
    prof, cfg = tmp_path / "prof", tmp_path / "cfg.yaml"
    code, out, _ = cli(capsys, "profile", RECIPE, "--out", prof, "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["prompts"] == 3
    code, out, _ = cli(capsys, "search", prof, "--budget", "0.6", "--out", cfg, "--trials", "8", "--workers", "1",
                       "--json")
    assert code == 0 and json.loads(out)["summary"]["density"] <= 0.6
    code, out, _ = cli(capsys, "validate", cfg, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat sleeps\n")
    code, out, err = cli(capsys, "evaluate", RECIPE, "--config", cfg, "--prompts", prompts, "--baselines", prof,
                         "--json")
    assert code == 0 and "PSNR" in err
    data = json.loads(out)
    assert [c["name"] for c in data["configs"]] == ["cfg", "best-cube", "greedy"]
    assert all(math.isfinite(c["psnr"]) and 0 < c["ssim"] <= 1 for c in data["configs"])
    gif = tmp_path / "cmp.gif"
    code, out, _ = cli(capsys, "generate", RECIPE, "-c", cfg, "--compare", "-p", "a cat", "-o", gif, "--json")
    assert code == 0 and json.loads(out)["mode"] == "dense | sparse" and gif.stat().st_size > 0
    assert load_config(cfg).model_id == "tiny-random-wan"


def test_tiny_video_pipeline_runs_the_loop(tmp_path, capsys):
    """The tiny model's own pipeline class (random weights, small) through profile -> search -> evaluate."""
    register_model("test-tiny-video", "wan", "small random TinyVideoPipeline for tests",
                   lambda dtype: build_pipeline(build_transformer(dict(TINY_WAN_CONFIG, num_layers=1,
                                                                       num_attention_heads=2), seed=0)))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: test-tiny\nmodel: {id: test-tiny-video, adapter: wan, dtype: float32}\n"
        "video: {height: 16, width: 32, frames: 4}\nsampling: {steps: 3, guidance: 2.0}\n"
        "prompts: [a big red circle moves right over a striped navy background]\n"
        "holdout_prompts: [a small white square bounces over a plain black background]\n"
        "tiling: {tile: [1, 8, 8], block_size: 64}\nprofile: {buckets: [[0, 1], [1, 3]]}\n")
    prof, cfg = tmp_path / "prof", tmp_path / "cfg.yaml"
    assert cli(capsys, "profile", recipe, "--out", prof, "--device", "cpu")[0] == 0
    assert cli(capsys, "search", prof, "--budget", "0.5", "--out", cfg, "--trials", "8", "--workers", "1")[0] == 0
    code, out, _ = cli(capsys, "evaluate", recipe, "--config", cfg, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["prompts"] == ["a small white square bounces over a plain black background"]
    assert data["configs"][0]["density"] <= 0.5 and data["configs"][0]["psnr"] > 10
