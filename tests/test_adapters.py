"""Adapters: one shared conformance test over the registry, step tracking, and captured block mass vs brute force."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_transformers import TINY_WAN_CONFIG, tiny_transformer

from compactsearch.adapters import ADAPTERS, AttentionContext, get_adapter, install, installed
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.profile.capture import BlockMassCapture, masked_block_mass
from compactsearch.tiling import TileLayout


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_conformance_pass_through_capture_and_restore(name):
    adapter = get_adapter(name)
    model, inputs = tiny_transformer(adapter.name, 0)
    modules = adapter.attention_modules(model)
    originals = [m.processor for m in modules]
    with torch.no_grad():
        ref = model(**inputs)[0]
        calls = []
        ctx = AttentionContext(mode="dense")
        with installed(model, adapter, ctx) as inst:
            assert inst.num_layers == len(modules)
            assert all(isinstance(m.processor, adapter.processor_class) for m in modules)
            dense = model(**inputs)[0]
            ctx.mode, ctx.sink = "capture", lambda call, q, k, v: calls.append((call, q.shape, k.shape, v.shape))
            ctx.reset()
            captured = model(**inputs)[0]
    assert torch.equal(dense, ref)  # bit-exact pass-through
    assert torch.equal(captured, ref)  # capture computes the same dense output
    assert [m.processor for m in modules] == originals
    assert all(a is b for a, b in zip((m.processor for m in modules), originals, strict=True))
    assert [c.layer for c, *_ in calls] == list(range(len(modules)))
    for call, qs, ks, vs in calls:
        assert qs == ks == vs and qs[2] == call.geometry.seq_len
        assert call.step == 0 and call.geometry.text_position == (
            adapter.text_position if call.geometry.text_tokens else "none")
    if adapter.text_position != "none":
        assert calls[0][0].geometry.text_tokens > 0


def test_only_self_attention_is_swapped():
    adapter = get_adapter("hunyuan_video")
    model, _ = tiny_transformer(adapter.name, 0)
    refiner = [m for n, m in model.named_modules() if "token_refiner" in n and hasattr(m, "processor")]
    before = [m.processor for m in refiner]
    with installed(model, adapter):
        assert [m.processor for m in refiner] == before
    wan = get_adapter("wan")
    model, _ = tiny_transformer(wan.name, 0)
    cross = [b.attn2.processor for b in model.blocks]
    with installed(model, wan):
        assert [b.attn2.processor for b in model.blocks] == cross


def test_unknown_adapter_names_the_known_ones():
    with pytest.raises(InputError, match="unknown adapter 'sora'.*cogvideox.*wan"):
        get_adapter("sora")


def test_sparse_mode_calls_attend_and_matches_dense():
    adapter = get_adapter("wan")
    model, inputs = tiny_transformer(adapter.name, 0)

    def attend(call, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    with torch.no_grad():
        ref = model(**inputs)[0]
        with installed(model, adapter, AttentionContext(mode="sparse", attend=attend)):
            out = model(**inputs)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_step_counter_counts_cfg_forwards_once_and_tracks_experts():
    from compactsearch.adapters.pipelines import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(experts=2)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    ctx = AttentionContext(mode="capture", sink=lambda call, q, k, v: seen.append((call.step, call.branch,
                                                                                     call.expert, call.layer)))
    with installed(pipe, get_adapter("wan"), ctx) as inst:
        assert inst.num_layers == 2 and inst.num_experts == 2
        pipe(prompt="a dog surfing", height=64, width=64, num_frames=5, num_inference_steps=4, guidance_scale=4.0,
             max_sequence_length=16, output_type="latent", generator=torch.Generator().manual_seed(0))
    steps = sorted({s for s, *_ in seen})
    assert steps == [0, 1, 2, 3]
    for s in steps:
        assert sorted({(b, lay) for st, b, _, lay in seen if st == s}) == [
            ("cond", 0), ("cond", 1), ("uncond", 0), ("uncond", 1)]
    experts = [ctx.experts_by_step[s] for s in steps]
    assert experts == sorted(experts) and set(experts) == {0, 1}  # high-noise expert first, then low-noise


def _brute_force_mass(q: torch.Tensor, k: torch.Tensor, layout: TileLayout, key_valid: int | None = None):
    """Full softmax in float64 in model order, summed per (query block, key block) via each token's block."""
    q, k = q.double(), k.double()
    s = torch.einsum("hqd,hkd->hqk", q, k) / math.sqrt(q.shape[-1])
    if key_valid is not None:
        s[..., key_valid:] = float("-inf")
    p = torch.softmax(s, -1)
    blk = layout.block_of_token()
    nb = layout.num_blocks
    onehot = torch.nn.functional.one_hot(blk, nb).double()  # [N, NB]
    return torch.einsum("qa,hqk,kb->hab", onehot, p, onehot)


@pytest.mark.parametrize("head_dim", [12, 64])
def test_captured_block_mass_equals_brute_force_on_tiny_wan(monkeypatch, head_dim):
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers import transformer_wan


    torch.manual_seed(0)
    model = WanTransformer3DModel(**dict(TINY_WAN_CONFIG, attention_head_dim=head_dim)).eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=g),
              "encoder_hidden_states": torch.randn(1, 12, 16, generator=g), "timestep": torch.tensor([700]),
              "return_dict": False}
    # Record q/k of the ORIGINAL model's self-attention from diffusers' own dispatch call (independent of ours).
    recorded = []
    original_dispatch = transformer_wan.dispatch_attention_fn

    def recorder(query, key, value, **kw):
        if query.shape[1] == key.shape[1]:  # self-attention: video queries and video keys
            recorded.append((query[0].transpose(0, 1).clone(), key[0].transpose(0, 1).clone()))
        return original_dispatch(query, key, value, **kw)

    monkeypatch.setattr(transformer_wan, "dispatch_attention_fn", recorder)
    with torch.no_grad():
        model(**inputs)
    monkeypatch.undo()
    geometry = VideoGeometry(3, 8, 8)
    sink = BlockMassCapture({0: 0}, tile=(2, 4, 8), block_size=64)
    with torch.no_grad(), installed(model, get_adapter("wan"), AttentionContext(mode="capture", sink=sink)):
        sink.start_prompt()
        model(**inputs)
    assert sink.layout.geometry == geometry
    mass = sink.prompt_result().mass
    assert len(recorded) == len(mass) == 2
    for layer, (q, k) in enumerate(recorded):
        ref = _brute_force_mass(q, k, sink.layout)
        got = mass[(0, layer)]
        assert got.shape == (2, 3, 3)
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.sum(-1), sink.layout.block_lengths().float().expand(2, -1))


def test_masked_block_mass_matches_brute_force_with_padded_text():
    geometry = VideoGeometry(2, 8, 12, text_tokens=100, text_position="back")
    layout = TileLayout(geometry, (1, 8, 8), 64)
    torch.manual_seed(3)
    q, k = torch.randn(1, 2, geometry.seq_len, 16), torch.randn(1, 2, geometry.seq_len, 16)
    key_valid = geometry.video_tokens + 40  # 60 padded text tokens; the last block is all padding
    got = masked_block_mass(layout.to_tile_order(q), layout.to_tile_order(k), 64, key_valid)
    ref = _brute_force_mass(q[0], k[0], layout, key_valid)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert got[:, :, -1].abs().max() == 0  # the all-padding key block gets nothing


def test_capture_rejects_a_changed_geometry():
    adapter = get_adapter("wan")
    model, inputs = tiny_transformer(adapter.name, 0)
    sink = BlockMassCapture({0: 0}, block_size=64, geometry=VideoGeometry(3, 8, 4))
    with torch.no_grad(), installed(model, adapter, AttentionContext(mode="capture", sink=sink)):
        with pytest.raises(InputError, match="every prompt must give the same sequence"):
            model(**inputs)


def test_install_rejects_a_model_of_another_family():
    model, _ = tiny_transformer("ltx", 0)
    with pytest.raises(InputError, match="adapter 'wan' found no transformer"):
        install(model, get_adapter("wan"))
