"""Every family end to end at pipeline level: the six tiny random pipelines (`recipes/tiny-random-<family>.yaml`,
built locally by `compactsearch.adapters.pipelines`) through `profile` -> `search --budget 0.3` -> `validate`
-> `generate` as a user runs them, then `apply` on the real pipeline: sparse steps really run, and on exit the
model computes bit for bit what it computed before. Padded text (HunyuanVideo, Mochi; the prompts pad
differently per guidance branch): an all-dense config gives the dense output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compactsearch.adapters import get_adapter, load_pipeline
from compactsearch.adapters.pipelines import FAMILIES, build_family_pipeline, family_transformer_config
from compactsearch.adapters.registry import video_tokens
from compactsearch.cli import main
from compactsearch.config import load_config
from compactsearch.profile.recipe import load_recipe
from compactsearch.profile.store import Profile
from compactsearch.runtime import apply
from compactsearch.video import pipeline_kwargs

ROOT = Path(__file__).resolve().parent.parent
FAMILY_RECIPES = ["hunyuan-video", "cogvideox-2b", "cogvideox-5b", "ltx", "mochi", "wan22"]


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _latents(pipe, recipe, prompt: str, steps: int | None = None) -> torch.Tensor:
    kw = pipeline_kwargs(recipe, prompt, recipe.seed)
    if steps is not None:
        kw["num_inference_steps"] = steps
    with torch.no_grad():
        return pipe(**kw, output_type="latent").frames


@pytest.mark.parametrize("family", FAMILY_RECIPES)
def test_family_loop_through_the_cli_and_apply_restores(family, tmp_path, capsys):
    recipe_path = ROOT / "recipes" / f"tiny-random-{family}.yaml"
    recipe = load_recipe(recipe_path)
    calib = tmp_path / "calib.txt"
    calib.write_text(recipe.prompts[0] + "\n")  # one calibration prompt keeps CI short
    prof, cfg = tmp_path / "prof", tmp_path / "cfg.yaml"

    code, out, err = cli(capsys, "profile", recipe_path, "--prompts", calib, "--out", prof, "--device", "cpu",
                         "--json")
    assert code == 0, err
    p = Profile.load(prof)
    assert p.geometry.thw == (3, 24, 24) and p.has_values, p.geometry
    assert p.geometry.text_position == get_adapter(recipe.adapter).text_position
    assert p.num_blocks == 27 + (1 if p.geometry.text_tokens else 0)  # 27 video blocks (+ one text block of 64)
    for b, layer in p.keys():
        rows = p.mass(b, layer).float().sum(-1)  # a query block's row sums to its tokens (padded text rows too)
        torch.testing.assert_close(rows, torch.full_like(rows, 64.0), rtol=2e-3, atol=0.1)
    if family == "wan22":
        assert p.model["experts_by_bucket"] == {0: [0], 1: [1]}

    code, out, err = cli(capsys, "search", prof, "--budget", "0.3", "--out", cfg, "--trials", "8", "--workers", "1",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["density"] <= 0.305

    code, out, err = cli(capsys, "validate", cfg, "--json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True

    gif = tmp_path / "cmp.gif"
    code, out, err = cli(capsys, "generate", recipe_path, "-c", cfg, "-p", recipe.holdout_prompts[0],
                         "-o", gif, "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["mode"] == "sparse" and gif.stat().st_size > 0

    # apply on the pipeline itself: sparse steps run; after exit the model is the one it was, bit for bit
    pipe = load_pipeline(recipe.model_id, recipe.adapter, recipe.dtype, "cpu")
    family_ = get_adapter(recipe.adapter)  # the token count --parallel checks is the one the model runs
    assert video_tokens(pipe, family_, recipe.frames, recipe.height, recipe.width) == 3 * 24 * 24
    prompt = recipe.holdout_prompts[0]
    before = _latents(pipe, recipe, prompt)
    with apply(pipe, load_config(cfg), model_id=recipe.model_id) as rt:
        sparse = _latents(pipe, recipe, prompt)
    assert rt.sparse_calls > 0 and rt.steps_sparse and torch.isfinite(sparse).all()
    assert not torch.equal(sparse, before)
    after = _latents(pipe, recipe, prompt)
    assert torch.equal(after, before)

    if family in ("hunyuan-video", "mochi"):  # padded text: an all-dense config gives the dense output
        dense_cfg = tmp_path / "dense.yaml"
        code, _, err = cli(capsys, "search", prof, "--budget", "1.0", "--recall", "1.0", "--out", dense_cfg,
                           "--trials", "4", "--workers", "1")
        assert code == 0, err
        code, out, err = cli(capsys, "validate", dense_cfg, "--json")
        assert code == 0 and json.loads(out)["density"] == pytest.approx(1.0), err
        with apply(pipe, load_config(dense_cfg)) as rt:
            all_dense = _latents(pipe, recipe, prompt)
        assert rt.sparse_calls > 0
        torch.testing.assert_close(all_dense, before, rtol=1e-4, atol=1e-4)


def test_family_specs_build_the_real_architectures_at_tiny_size():
    assert set(FAMILIES) >= {"wan", "wan-14b", "wan22", "hunyuan_video", "cogvideox-2b", "cogvideox-5b", "ltx",
                             "mochi"}
    pipe = build_family_pipeline("cogvideox-2b")
    assert not pipe.transformer.config.use_rotary_positional_embeddings
    assert build_family_pipeline("cogvideox-5b").transformer.config.use_rotary_positional_embeddings
    two = build_family_pipeline("wan22")
    assert two.transformer_2 is not None and two.config.boundary_ratio == 0.875
    # real sizes are the published configs (not built here: they take tens of GB)
    assert family_transformer_config("wan", "real")["num_layers"] == 30
    real = family_transformer_config("hunyuan_video", "real")
    assert (real["num_layers"], real["num_single_layers"], real["num_attention_heads"]) == (20, 40, 24)
    # text encoders have the width the transformer reads
    hy = build_family_pipeline("hunyuan_video")
    assert hy.text_encoder.config.hidden_size == hy.transformer.config.text_embed_dim
    assert hy.text_encoder_2.config.hidden_size == hy.transformer.config.pooled_projection_dim


@pytest.mark.parametrize(("model", "adapter", "video", "message"), [
    ("tiny-random-ltx", "ltx", (17, 760, 768), "video.height 760: this model needs a multiple of 32 (VAE 32 x "
                                               "patch 1)"),
    ("tiny-random-ltx", "ltx", (16, 768, 768), "video.frames 16: this model needs frames - 1 to be a multiple of 8"),
    ("tiny-random-mochi", "mochi", (14, 384, 384), "video.frames 14: this model needs frames - 1 to be a multiple "
                                                   "of 6"),
    ("tiny-random-mochi", "mochi", (13, 384, 392), "video.width 392: this model needs a multiple of 16"),
])
def test_video_sizes_are_checked_against_each_familys_vae_names(model, adapter, video, message):
    """LTX-Video and Mochi name their VAE factors differently from Wan (``vae_*_compression_ratio``,
    ``vae_*_scale_factor``): the size check and the token count read them all."""
    from compactsearch.adapters.registry import check_video_size
    from compactsearch.errors import InputError

    pipe = load_pipeline(model, adapter, "float32", "cpu")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_video_size(pipe, get_adapter(adapter), *video)
