"""Profiling cost: the one-pass capture (attention through the kernel with its logsumexp, block mass from it)
gives the two-pass capture's block mass and the model's output, also with padded text keys; the timing table."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_transformers import tiny_transformer

from compactsearch.adapters import AttentionContext, get_adapter, installed
from compactsearch.cli import main
from compactsearch.profile.capture import BlockMassCapture
from compactsearch.profile.timing import SECTIONS, SectionTimer


def _capture(name: str, one_pass: str, overrides: dict | None = None, head_dim: int | None = None):
    adapter = get_adapter(name)
    model, inputs = tiny_transformer(adapter.name, 0)
    if head_dim is not None:  # the same family at a head dim the Triton kernel takes (its reference on the CPU)
        cfg = dict(model.config)
        cfg.update(attention_head_dim=head_dim, **(overrides or {}))
        torch.manual_seed(0)
        model = type(model).from_config(cfg).eval()
    timer = SectionTimer()
    sink = BlockMassCapture({0: 0}, block_size=64, tile=(1, 8, 8), one_pass=one_pass, timer=timer)
    ctx = AttentionContext(mode="capture", sink=sink, batch_branches=adapter.batch_branches(True))
    with torch.no_grad(), installed(model, adapter, ctx):
        sink.start_prompt()
        out = model(**inputs)[0]
    return out, sink.prompt_result(), timer


@pytest.mark.parametrize("mode", ["on", "fused"])
@pytest.mark.parametrize("name,head_dim", [("wan", 64), ("hunyuan_video", None), ("mochi", None)])
def test_one_pass_capture_equals_two_passes(name, head_dim, mode):
    """One pass and fused (the block mass from the forward: `compact_attn.attention_with_block_mass`; padded text
    keeps the one-pass path) record what two passes record."""
    out2, cap2, _ = _capture(name, "off", head_dim=head_dim)
    out1, cap1, timer = _capture(name, mode, head_dim=head_dim)
    torch.testing.assert_close(out1, out2, rtol=1e-4, atol=1e-4)  # the kernel's output is the model's
    assert set(cap1.mass) == set(cap2.mass) and cap1.mass
    for key in cap2.mass:
        torch.testing.assert_close(cap1.mass[key], cap2.mass[key], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cap1.value_factor[key], cap2.value_factor[key], rtol=1e-4, atol=1e-4)
    assert cap1.calls == cap2.calls
    t = timer.totals()
    assert t["attention"] > 0 and t["block mass"] > 0 and t["value statistics"] > 0


def test_one_pass_off_keeps_the_model_output_bit_exact():
    adapter = get_adapter("wan")
    model, inputs = tiny_transformer(adapter.name, 0)
    with torch.no_grad():
        ref = model(**inputs)[0]
    out, _, _ = _capture("wan", "off")
    assert torch.equal(out, ref)


def test_profile_prints_the_timing_table(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "recipes/tiny-random-wan.yaml", "--out", str(tmp_path / "p"), "--device", "cpu", "--json",
              "--one-pass", "on"])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    t = json.loads(out)["timings"]
    assert [r["section"] for r in t["rows"]] == list(SECTIONS)
    assert t["prompts"] == 3 and t["per_prompt"] > 0 and t["startup"] >= t["rows"][0]["seconds"] > 0
    assert sum(r["seconds"] for r in t["rows"]) == pytest.approx(t["total"], rel=0.02, abs=0.05)
    assert "where the profile's time went" in err and "block mass" in err
    with pytest.raises(SystemExit) as e:
        main(["profile", "recipes/tiny-random-wan.yaml", "--out", str(tmp_path / "q"), "--one-pass", "maybe"])
    assert e.value.code == 2 and "error: --one-pass must be one of auto, on, fused, off" in capsys.readouterr().err
