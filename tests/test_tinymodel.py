"""The tiny model: procedural data and prompts, text stack, pipeline, weights loader, training smoke test."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from compactsearch.adapters import load_pipeline
from compactsearch.errors import InputError
from compactsearch.tinymodel import MODEL_ID
from compactsearch.tinymodel.data import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    PANS,
    SHAPES,
    TEXTURES,
    VOCABULARY,
    calibration_prompts,
    holdout_prompts,
    make_batch,
    render,
    sample_specs,
    spec_from_prompt,
)
from compactsearch.tinymodel.model import TINY_WAN_CONFIG, build_pipeline, build_transformer, load_tiny_pipeline
from compactsearch.tinymodel.text import PAD, UNK, TextEncoderConfig, TinyTextEncoder, WordTokenizer
from compactsearch.tinymodel.train import TrainSettings, main, train

SMALL = dict(TINY_WAN_CONFIG, num_layers=1, num_attention_heads=2)


# ------------------------------------------------------------------------------------------------ data
def test_specs_and_videos_are_deterministic_in_the_seed():
    a, b, c = sample_specs(16, 7), sample_specs(16, 7), sample_specs(16, 8)
    assert a == b and a != c
    va, pa = make_batch(4, 3)
    vb, pb = make_batch(4, 3)
    assert torch.equal(va, vb) and pa == pb
    assert va.shape == (4, 3, 8, 32, 32) and va.min() >= -1 and va.max() <= 1


def test_every_word_and_value_occurs_and_prompts_stay_in_the_vocabulary():
    specs = sample_specs(600, 0)
    for attr, values in (("shape", SHAPES), ("colour", COLOURS), ("motion", MOTIONS), ("texture", TEXTURES),
                         ("background", BACKGROUNDS), ("pan", PANS), ("size", ("small", "big"))):
        assert {getattr(s, attr) for s in specs} == set(values), attr
    words = {w for s in specs for w in WordTokenizer.words(s.prompt())}
    assert words <= set(VOCABULARY)
    assert all(s.pan == "none" or s.texture in ("striped", "checkered") for s in specs)  # pans only where visible
    for p in calibration_prompts() + holdout_prompts():
        assert WordTokenizer().unknown_words(p) == []
        assert spec_from_prompt(p).prompt() == p
    assert not set(calibration_prompts()) & set(holdout_prompts())


def _centroids(alpha: torch.Tensor) -> torch.Tensor:
    """``[F, H, W]`` coverage -> ``[F, 2]`` (x, y) centroid in pixels."""
    F, H, W = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    total = alpha.sum((1, 2))
    return torch.stack([(alpha * xs).sum((1, 2)) / total, (alpha * ys).sum((1, 2)) / total], 1)


def _pan_shift(video: torch.Tensor, alpha: torch.Tensor) -> int:
    """Integer x shift (px per frame) that best maps frame 0's background onto frame 1's, on shape-free rows."""
    free = (alpha[0] + alpha[1]).sum(1) == 0  # rows the shape touches in neither frame
    a, b = video[:, 0][:, free], video[:, 1][:, free]
    errs = {s: float((torch.roll(a, s, dims=-1) - b)[..., 3:-3].abs().mean()) for s in range(-3, 4)}
    return min(errs, key=errs.get)


def test_videos_show_what_their_prompts_say():
    specs = sample_specs(120, 1)
    videos, alpha = render(specs, return_alpha=True)
    for s, v, a in zip(specs, videos, alpha):
        inside = a > 0.99
        assert inside.flatten(1).any(1).all(), s  # the shape is visible in every frame
        colour = (v.permute(1, 2, 3, 0)[inside].mean(0) + 1) / 2
        assert torch.allclose(colour, torch.tensor(COLOURS[s.colour]), atol=0.02), (s.prompt(), colour)
        if s.texture == "plain":
            bg = (v.permute(1, 2, 3, 0)[a == 0].mean(0) + 1) / 2
            assert torch.allclose(bg, torch.tensor(BACKGROUNDS[s.background]), atol=0.02), s.prompt()
        c = _centroids(a)
        dx, dy = float(c[-1, 0] - c[0, 0]), float(c[-1, 1] - c[0, 1])
        if s.motion == "moves left":
            assert dx < -10, (s.prompt(), dx)
        elif s.motion == "moves right":
            assert dx > 10, (s.prompt(), dx)
        elif s.motion == "moves up":
            assert dy < -10, (s.prompt(), dy)
        elif s.motion == "moves down":
            assert dy > 10, (s.prompt(), dy)
        elif s.motion == "stays still":
            assert abs(dx) < 0.01 and abs(dy) < 0.01, s.prompt()
        else:  # bounces: up and down (the vertical motion changes direction), no sideways motion
            dys = c[1:, 1] - c[:-1, 1]
            assert abs(dx) < 0.25 and float(c[:, 1].max() - c[:, 1].min()) > 6, s.prompt()
            assert (dys > 0.5).any() and (dys < -0.5).any(), s.prompt()
        if s.pan != "none":
            shift = _pan_shift(v, a)
            assert shift == 0 or (shift > 0) == (s.pan == "left"), (s.prompt(), shift)
            assert shift != 0 or s.pan_speed * 32 < 1.5, (s.prompt(), shift)


def test_pans_move_the_background_and_nothing_else_does():
    s = spec_from_prompt("a small red circle stays still over a striped gray background, the camera pans left")
    v, a = render([s], return_alpha=True)
    assert _pan_shift(v[0], a[0]) > 0
    right = spec_from_prompt("a small red circle stays still over a striped gray background, the camera pans right")
    v, a = render([right], return_alpha=True)
    assert _pan_shift(v[0], a[0]) < 0
    still = spec_from_prompt("a small red circle stays still over a striped gray background")
    v, a = render([still], return_alpha=True)
    assert torch.equal(v[0, :, 0], v[0, :, -1])


def test_spec_from_prompt_rejects_prompts_outside_the_vocabulary():
    with pytest.raises(ValueError, match="exactly one shape"):
        spec_from_prompt("a red fox runs through fresh snow")


# ------------------------------------------------------------------------------------------------ text
def test_tokenizer_and_encoder():
    tok = WordTokenizer(max_length=8)
    ids, mask = tok(["A red circle, moves LEFT!", "a purple zebra", ""])
    assert ids.shape == (3, 8) and mask.dtype == torch.bool
    assert ids[0, :5].tolist() == [tok.ids[w] for w in ("a", "red", "circle", "moves", "left")]
    assert ids[1, 2] == UNK and ids[1, 3:].eq(PAD).all() and not mask[2].any()
    torch.manual_seed(0)
    enc = TinyTextEncoder(TextEncoderConfig(dim=32, layers=1, heads=2, max_length=8)).eval()
    out = enc(ids, mask)
    assert out.shape == (3, 8, 32) and torch.isfinite(out).all()
    assert out[~mask].abs().max() == 0 and out[0, :5].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ model
def test_default_config_fits_the_budgets():
    cfg = TINY_WAN_CONFIG
    assert cfg["num_attention_heads"] * cfg["attention_head_dim"] == 256 and cfg["attention_head_dim"] in (64, 128)
    model = build_transformer()
    params = sum(p.numel() for p in model.parameters())
    text = sum(p.numel() for p in TinyTextEncoder(TextEncoderConfig(dim=cfg["text_dim"])).parameters())
    assert (params + text) * 2 <= 20e6  # bfloat16 weights <= 20 MB
    pt, ph, pw = cfg["patch_size"]
    assert (8 // pt, 32 // ph, 32 // pw) == (8, 16, 16)  # token grid 8 x 16 x 16


def test_pipeline_outputs_and_seeds():
    pipe = build_pipeline(build_transformer(SMALL))
    kw = dict(height=16, width=16, num_frames=2, num_inference_steps=2)
    a = pipe("a big red circle moves right over a plain black background", generator=torch.Generator().manual_seed(1),
             **kw).frames
    b = pipe("a big red circle moves right over a plain black background", generator=torch.Generator().manual_seed(1),
             **kw).frames
    assert a.shape == (1, 2, 3, 16, 16) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    lat = pipe("a cat", generator=torch.Generator().manual_seed(1), output_type="latent", **kw).frames
    assert lat.shape == (1, 3, 2, 16, 16)
    arr = pipe(["a", "b"], generator=torch.Generator().manual_seed(1), output_type="np", guidance_scale=1.0, **kw)
    assert arr.frames.shape == (2, 2, 16, 16, 3)
    seen = []

    def stop(p, i, t, kwargs):
        seen.append(i)
        p._interrupt = True
        return kwargs

    pipe("a", generator=torch.Generator().manual_seed(1), callback_on_step_end=stop, **kw)
    assert seen == [0]
    with pytest.raises(InputError, match="multiples of the patch size"):
        pipe("a", height=15, width=16, num_frames=2, num_inference_steps=1)


def test_missing_weights_name_the_training_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTSEARCH_TINY_WEIGHTS", str(tmp_path / "none.safetensors"))
    with pytest.raises(InputError, match="python -m compactsearch.tinymodel.train --device cuda --minutes 15"):
        load_pipeline(MODEL_ID, "wan", "float32", "cpu")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot be read"):
        load_tiny_pipeline(bad)


# ------------------------------------------------------------------------------------------------ training
def test_training_smoke(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["--device", "cpu", "--out", str(out), "--max-steps", "3", "--batch", "2", "--layers", "1", "--heads", "1",
            "--frames", "4", "--height", "16", "--width", "16", "--log-every", "1", "--warmup-steps", "1",
            "--sample-steps", "2", "--lr", "1e-3"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    log = json.loads((out / "train_log.json").read_text())
    losses = [x[1] for x in log["losses"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert log["weights"]["bytes"] == (out / "tiny-wan.safetensors").stat().st_size <= 20e6
    assert (out / "samples.png").stat().st_size > 0
    # the raw weights moved away from the seeded initialisation
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    init = build_transformer(TrainSettings(out=out, layers=1, heads=1).transformer_config(), seed=0).state_dict()
    moved = [k for k, v in ckpt["modules"]["transformer"].items() if not torch.equal(v, init[k])]
    assert len(moved) > 10
    # the shipped file loads through the registry and generates at the trained size
    monkeypatch.setenv("COMPACTSEARCH_TINY_WEIGHTS", str(out / "tiny-wan.safetensors"))
    with safe_open(str(out / "tiny-wan.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["video"]) == {"frames": 4, "height": 16, "width": 16}
    pipe = load_pipeline(MODEL_ID, "wan", "float32", "cpu")
    video = pipe("a small red circle moves left over a plain black background", height=16, width=16, num_frames=4,
                 num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 4, 3, 16, 16) and torch.isfinite(video).all()
    # resume continues from the checkpoint
    r = train(TrainSettings(out=out, device="cpu", max_steps=4, batch=2, layers=1, heads=1, frames=4, height=16,
                            width=16, log_every=1, warmup_steps=1, sample_steps=0, resume=True))
    assert r.steps == 4 and [x[0] for x in r.losses] == [1, 2, 3, 4]


def test_training_rejects_bad_settings(tmp_path, capsys):
    assert main(["--device", "cpu", "--out", str(tmp_path), "--height", "15", "--max-steps", "1"]) == 2
    assert "even" in capsys.readouterr().err
