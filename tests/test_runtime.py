"""`compactsearch.apply`: schedule, masks, kernels, checks, and bit-exact restore, on tiny real diffusers models."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_transformers import tiny_transformer

import compactsearch
from compactsearch.adapters import adapter_names
from compactsearch.adapters.pipelines import tiny_wan_pipeline
from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.retarget import retarget
from compactsearch.runtime import AttentionTimer, apply, timed_dense
from compactsearch.tinymodel.model import TINY_WAN_CONFIG, build_pipeline, build_transformer

# tiny-random-wan at 128 x 128 px, 9 frames: latent 3 x 16 x 16 -> 3 x 8 x 8 tokens, 2 layers, 2 heads x 16
WAN_KW = dict(prompt="a red fox runs", height=128, width=128, num_frames=9, num_inference_steps=4,
              output_type="latent", guidance_scale=5.0, max_sequence_length=32)


def make_config(geometry: VideoGeometry, layers: int, heads: int, head_dim: int, patterns: list[Pattern],
                steps: int = 4, warmup: int = 1, tile=(1, 8, 8), model_id: str = "tiny-random-wan") -> Config:
    """One bucket ``[warmup, steps)``; head ``h`` of every layer runs ``patterns[h % len(patterns)]``."""
    layer_cfgs = tuple(LayerConfig(li, tuple(HeadConfig(h, patterns[h % len(patterns)]) for h in range(heads)))
                       for li in range(layers))
    return Config(model_id=model_id, adapter="wan", geometry=geometry, num_layers=layers, num_heads=heads,
                  head_dim=head_dim, tile=tile, block_size=64, num_steps=steps, warmup=warmup / steps,
                  buckets=(Bucket.of_steps((warmup, steps), steps, layer_cfgs),), provenance={"kind": "example"})


WAN_GEOMETRY = VideoGeometry(3, 8, 8)
OWN_FRAME = Pattern.local(0, 1, 1)  # each query tile (a whole frame here) sees only its own frame


@pytest.fixture(scope="module")
def wan():
    return tiny_wan_pipeline()


def run(pipe, **kw):
    args = dict(WAN_KW, **kw)
    return pipe(**args, generator=torch.Generator().manual_seed(0)).frames


def test_outputs_are_bitwise_equal_after_apply_exits(wan):
    before = run(wan)
    originals = [b.attn1.processor for b in wan.transformer.blocks]
    cfg = make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME])
    with compactsearch.apply(wan, cfg) as rt:
        sparse = run(wan)
        again = run(wan)  # a second call in the same block follows the schedule again
        assert rt.steps_dense == {0} and rt.steps_sparse == {1, 2, 3}
    assert torch.equal(sparse, again)
    assert (sparse - before).abs().max() > 1e-3
    assert torch.equal(run(wan), before)
    assert [b.attn1.processor for b in wan.transformer.blocks] == originals
    assert not wan.transformer._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"), compactsearch.apply(wan, cfg):
        run(wan)
        raise RuntimeError("boom")
    assert torch.equal(run(wan), before)


def test_all_dense_config_matches_dense_and_warmup_steps_are_exact(wan):
    before = run(wan)
    dense_cfg = make_config(WAN_GEOMETRY, 2, 2, 16, [Pattern.dense()], warmup=0)
    with apply(wan, dense_cfg) as rt:
        out = run(wan)
        assert rt.steps_sparse == {0, 1, 2, 3} and rt.sparse_calls == 2 * 2 * 4  # layers x (cond, uncond) x steps
    assert torch.allclose(out, before, atol=1e-5, rtol=1e-4)
    # a config whose bucket starts after the last step runs every step through the original dense path
    late = make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME], steps=4, warmup=4)
    late = Config(**{**late.__dict__, "buckets": ()})
    with apply(wan, late) as rt:
        assert torch.equal(run(wan), before)
        assert rt.sparse_calls == 0 and rt.steps_dense == {0, 1, 2, 3}


def test_sparse_heads_change_only_what_their_pattern_cuts(wan):
    before = run(wan)
    two_frames = Pattern((FrameGroup(0, 1, (Window(1, 1),)),))
    with apply(wan, make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME])):
        a = run(wan)
    with apply(wan, make_config(WAN_GEOMETRY, 2, 2, 16, [two_frames])):
        b = run(wan)
    assert (a - before).abs().max() > (b - before).abs().max() > 0  # more attention kept: closer to dense


def test_mismatched_configs_are_refused_with_one_line(wan):
    cfg = make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME])
    cases = [
        (dict(height=64), "token grid, the pipeline call has 3x4x8"),
        (dict(num_frames=5), "3x8x8 token grid, the pipeline call has 2x8x8"),
        (dict(num_inference_steps=5), "for 4 denoising steps, the pipeline call runs 5"),
    ]
    for kw, msg in cases:
        with pytest.raises(InputError, match=msg) as e, apply(wan, cfg, retarget=False):
            run(wan, **kw)
        assert "\n" not in str(e.value)
    entry = [
        (make_config(WAN_GEOMETRY, 3, 2, 16, [OWN_FRAME]), "3 self-attention layers"),
        (make_config(WAN_GEOMETRY, 2, 4, 16, [OWN_FRAME]), "for 4 heads, the pipeline's model has 2"),
        (make_config(WAN_GEOMETRY, 2, 2, 64, [OWN_FRAME]), "head dim 64, the pipeline's model has 16"),
        (Config(**{**cfg.__dict__, "adapter": "cogvideox"}), "expects a CogVideoXTransformer3DModel"),
    ]
    for bad, msg in entry:
        with pytest.raises(InputError, match=msg), apply(wan, bad):
            pass
    with pytest.raises(InputError, match="is for model 'tiny-random-wan', not 'other/model'"), \
            apply(wan, cfg, model_id="other/model"):
        pass
    assert not wan.transformer._forward_pre_hooks  # refused on entry: nothing left behind


def test_other_grids_and_step_counts_run_the_config_retargeted(wan, capsys):
    cfg = make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME])  # 4 steps, 1 dense warm-up step: warm-up 0.25 of the run
    capsys.readouterr()
    with apply(wan, cfg) as rt:
        out = run(wan, num_frames=5, num_inference_steps=8)
        assert rt.config.geometry.thw == (2, 8, 8) and rt.plan.n == 8
        assert rt.steps_dense == {0, 1} and rt.steps_sparse == set(range(2, 8))
        assert torch.equal(run(wan, num_frames=5, num_inference_steps=8), out)  # retargeted once, then reused
        base = run(wan)  # back at the config's own grid and steps: the config itself
        assert rt.config is cfg and rt.steps_dense == {0}
    notes = re.findall(r"compactsearch: .*", capsys.readouterr().err)  # diffusers' progress bars share stderr
    assert len(notes) == 1 and "retargeted to 2x8x8" in notes[0] and "4-step schedule laid on 8 steps" in notes[0]
    with apply(wan, retarget(cfg, (2, 8, 8), 8)):  # the same as applying the retargeted config
        assert torch.equal(run(wan, num_frames=5, num_inference_steps=8), out)
    with apply(wan, cfg):
        assert torch.equal(run(wan), base)
    assert not re.findall(r"compactsearch: .*", capsys.readouterr().err)


def test_config_path_and_timer(wan, tmp_path):
    path = tmp_path / "c.yaml"
    make_config(WAN_GEOMETRY, 2, 2, 16, [OWN_FRAME]).save(path)
    timer = AttentionTimer()
    with apply(wan, path, timer=timer):
        run(wan)
    s = timer.summary()
    assert s["calls"] == 2 * 2 * 4 and s["steps"] == 4
    assert set(s["by_mode"]) == {"dense", "sparse"} and s["by_mode"]["sparse"] > 0
    # per step: the median over steps, so a one-off slow step (a kernel compiling) does not count
    t0 = 0.0
    timer.records = [((0, i), "sparse", t0, t0 + (5.0 if i == 0 else 0.01)) for i in range(5)]
    s = timer.summary()
    assert s["by_mode"]["sparse"] == pytest.approx(0.01) and s["seconds_total"] == pytest.approx(5.04)


def test_tiny_video_pipeline_through_the_triton_kernel():
    """Head dim 64: the compact_attn entry point; Triton (interpreter on CPU) agrees with the reference."""
    cfg = dict(TINY_WAN_CONFIG, num_layers=1, num_attention_heads=2)
    pipe = build_pipeline(build_transformer(cfg, seed=3))
    kw = dict(prompt="a big red circle moves right over a plain black background", height=16, width=32, num_frames=2,
              num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    geometry = VideoGeometry(2, 8, 16)  # 2 frames x (16 / 2) x (32 / 2) tokens = 4 blocks of 64
    conf = make_config(geometry, 1, 2, 64, [Pattern((FrameGroup(0, 0, (Window(1, 1),)),)), Pattern.dense()],
                       steps=2, warmup=0, model_id="compactsearch/tiny-wan")
    before = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    outs = {}
    for backend in ("reference", "triton"):
        with apply(pipe, conf, backend=backend) as rt:
            outs[backend] = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
            assert rt.sparse_calls == 2
    assert torch.allclose(outs["triton"], outs["reference"], atol=1e-4)
    assert (outs["reference"] - before).abs().max() > 1e-4
    assert torch.equal(pipe(**kw, generator=torch.Generator().manual_seed(0)).frames, before)


def _hunyuan_config(patterns: list[Pattern]) -> Config:
    geometry = VideoGeometry(2, 8, 8, 12, "back")  # the tiny HunyuanVideo: 2 x 8 x 8 video + 12 text (3 padded)
    layers = tuple(LayerConfig(li, tuple(HeadConfig(h, patterns[h]) for h in range(2))) for li in range(2))
    return Config(model_id="tiny", adapter="hunyuan_video", geometry=geometry, num_layers=2, num_heads=2,
                  head_dim=10, tile=(1, 8, 8), block_size=64, num_steps=1, warmup=0.0,
                  buckets=(Bucket((0.0, 1.0), layers),))


def test_padded_text_keys_stay_masked():
    """HunyuanVideo pads text keys: sparse attention runs on the valid prefix; all-dense matches the model."""
    model, inputs = tiny_transformer("hunyuan_video", 0)
    with torch.no_grad():
        before = model(**inputs)[0]
        with apply(model, _hunyuan_config([Pattern.dense(), Pattern.dense()])) as rt:
            dense = model(**inputs)[0]
            assert rt.sparse_calls == 2
        with apply(model, _hunyuan_config([OWN_FRAME, Pattern.dense()])):
            sparse = model(**inputs)[0]
        after = model(**inputs)[0]
    assert torch.allclose(dense, before, atol=1e-5)
    assert (sparse - before).abs().max() > 1e-4
    assert torch.equal(after, before)


@pytest.mark.parametrize("name", adapter_names())
def test_dense_timer_sees_every_attention_call(name):
    """The Amdahl limit comes from the timed dense attention: every family's every self-attention call counts."""
    model, inputs = tiny_transformer(name, 0)
    timer = AttentionTimer()
    with torch.no_grad(), timed_dense(model, name, timer) as inst:
        model(**inputs)
        calls = len(inst.processors)
    s = timer.summary()
    assert calls > 0 and s["calls"] == calls and s["by_mode"]["dense"] > 0
