"""`compactsearch.apply` under diffusers' Ulysses context parallelism: the all-to-all layouts, head-subset masks,
the refusals, and two gloo processes on the CPU against one process.

Diffusers 0.42.1's ``enable_parallelism`` does not run on a machine without an accelerator as shipped
(``rank % torch.accelerator.device_count()``, a division by zero there); `compactsearch.distributed.enable_ulysses`
reads the count as 1 for that call, so the device mesh is a CPU mesh and the collectives gloo's. ``--parallel``
runs through ``torchrun`` (``python -m torch.distributed.run``) with 2 CPU processes.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compactsearch.adapters import AttentionContext, get_adapter, install
from compactsearch.adapters.parallel import (
    Ulysses,
    check_parallel,
    pack_for_heads,
    pack_for_sequence,
    ulysses_of,
    unpack_heads,
    unpack_sequence,
)
from compactsearch.adapters.pipelines import tiny_wan_pipeline
from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig
from compactsearch.distributed import enable_ulysses
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.runtime import apply

WAN_KW = dict(prompt="a red fox runs", height=128, width=128, num_frames=9, num_inference_steps=4,
              output_type="latent", guidance_scale=5.0, max_sequence_length=32)
VIDEO = (9, 128, 128)  # frames, height, width of WAN_KW: 3x8x8 = 192 tokens
OWN_FRAME = Pattern.local(0, 1, 1)
TWO_FRAMES = Pattern((FrameGroup(0, 1, (Window(1, 1),)),))


def make_config(patterns: list[Pattern], warmup: int = 1, steps: int = 4) -> Config:
    """tiny-random-wan (3x8x8 tokens, 2 layers, 2 heads x 16): head ``h`` runs ``patterns[h]``."""
    layers = tuple(LayerConfig(li, tuple(HeadConfig(h, patterns[h]) for h in range(2))) for li in range(2))
    return Config(model_id="tiny-random-wan", adapter="wan", geometry=VideoGeometry(3, 8, 8), num_layers=2,
                  num_heads=2, head_dim=16, tile=(1, 8, 8), block_size=64, num_steps=steps, warmup=warmup / steps,
                  buckets=(Bucket.of_steps((warmup, steps), steps, layers),), provenance={"kind": "example"})


def run(pipe) -> torch.Tensor:
    return pipe(**WAN_KW, generator=torch.Generator().manual_seed(0)).frames


def _simulated_all_to_all(sent: list[torch.Tensor]) -> list[torch.Tensor]:
    """What every rank receives when rank ``s`` sends ``sent[s]`` (chunk ``p`` of dim 0 to rank ``p``)."""
    return [torch.stack([s[r] for s in sent]) for r in range(len(sent))]


@pytest.mark.parametrize("P", [1, 2, 3])
def test_all_to_all_layouts_gather_sequence_for_a_head_share_and_back(P):
    B, H, N, D = 2, 6, 12 * P, 5
    x = torch.randn(B, H, N, D)
    S, Hl = N // P, H // P
    got = _simulated_all_to_all([pack_for_heads(x[:, :, r * S:(r + 1) * S], P) for r in range(P)])
    for r in range(P):
        assert torch.equal(unpack_heads(got[r]), x[:, r * Hl:(r + 1) * Hl])
    o = torch.randn(B, H, N, D)  # an attention output, each rank holding its heads over the whole sequence
    back = _simulated_all_to_all([pack_for_sequence(o[:, r * Hl:(r + 1) * Hl], P) for r in range(P)])
    for r in range(P):
        y = unpack_sequence(back[r])
        assert torch.equal(y, o[:, :, r * S:(r + 1) * S])
        assert y.transpose(1, 2).is_contiguous()  # [B, S/P, H, D] memory: the processor's reshape is a view


def test_ulysses_rank_heads_and_a_one_rank_group():
    u = Ulysses(2, 1, lambda t: t)
    assert u.heads(8) == (4, 8)
    with pytest.raises(InputError, match="not divisible by ulysses_degree 2"):
        u.heads(3)
    one = Ulysses(1, 0, lambda t: t)
    x = torch.randn(1, 4, 10, 3)
    assert torch.equal(one.to_heads(x), x) and torch.equal(one.to_sequence(x), x)
    assert ulysses_of(None) is None


def test_head_subset_masks_are_the_full_masks_heads():
    cfg = make_config([OWN_FRAME, TWO_FRAMES])
    full = cfg.layer_mask(0, 1).to_dense()
    for heads in ((0, 1), (1, 2), (0, 2)):
        assert torch.equal(cfg.layer_mask(0, 1, heads=heads).to_dense(), full[heads[0]:heads[1]])
    with pytest.raises(ValueError, match="outside the layer's 2 heads"):
        cfg.layer_mask(0, 0, heads=(1, 3))


def test_one_rank_group_through_the_processor_matches_the_plain_sparse_path(monkeypatch):
    """The processor's Ulysses branch with a 1-rank group (identity all-to-all): same output as without."""
    import compactsearch.adapters.base as base

    pipe = tiny_wan_pipeline()
    cfg = make_config([OWN_FRAME, TWO_FRAMES])
    with apply(pipe, cfg):
        plain = run(pipe)
    monkeypatch.setattr(base, "ulysses_of", lambda pc: Ulysses(1, 0, lambda t: t))
    with apply(pipe, cfg) as rt:
        assert torch.equal(run(pipe), plain)
        assert {k[3] for k in rt._masks} <= {(0, 2)} and rt.sparse_calls == 2 * 2 * 3


def test_ring_anything_and_other_families_are_refused_with_one_line():
    from diffusers import ContextParallelConfig, ParallelConfig

    pipe = tiny_wan_pipeline()
    tr = pipe.transformer
    cases = [
        (ContextParallelConfig(ring_degree=2), "ring attention .ring_degree 2. is not supported.*ulysses_degree=N"),
        (ContextParallelConfig(ulysses_degree=2, ulysses_anything=True), "ulysses_anything is not supported"),
        (ContextParallelConfig(ulysses_degree=4), "2 heads, not divisible by ulysses_degree 4"),
    ]
    for cp, message in cases:
        tr._parallel_config = ParallelConfig(context_parallel_config=cp)
        try:
            with pytest.raises(InputError, match=message) as err, apply(pipe, make_config([OWN_FRAME] * 2)):
                pass
            assert "\n" not in str(err.value)
        finally:
            tr._parallel_config = None
    assert [b.attn1.processor for b in tr.blocks][0].__class__.__name__ == "WanAttnProcessor"
    tr._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    try:
        check_parallel(tr, "wan", 2)
        with pytest.raises(InputError, match="supported for the wan adapter only, not 'cogvideox'"):
            check_parallel(tr, "cogvideox", 2)
    finally:
        tr._parallel_config = None
    with pytest.raises(InputError, match="ring attention"):
        ulysses_of(ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2)))


def test_a_parallel_config_set_inside_the_block_reaches_the_original_processors():
    from diffusers import ContextParallelConfig, ParallelConfig

    pipe = tiny_wan_pipeline()
    pc = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    with apply(pipe, make_config([OWN_FRAME] * 2)):
        for b in pipe.transformer.blocks:  # what enable_parallelism does to the processors it finds
            b.attn1.processor._parallel_config = pc
    assert all(b.attn1.processor._parallel_config is pc for b in pipe.transformer.blocks)


# --------------------------------------------------------------------------------- two gloo processes
def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        pipe = tiny_wan_pipeline()
        enable_ulysses(pipe, "wan", world, VIDEO)
        result = {"dense": run(pipe)}
        with apply(pipe, make_config([OWN_FRAME, TWO_FRAMES])) as rt:  # applied after enable_parallelism
            result["sparse"] = run(pipe)
            result["steps"] = (sorted(rt.steps_dense), sorted(rt.steps_sparse), rt.sparse_calls)
            result["mask_heads"] = sorted({k[3] for k in rt._masks})
        result["restored"] = run(pipe)
        inst = install(pipe, get_adapter("wan"), AttentionContext(mode="capture"))
        try:
            run(pipe)
        except InputError as e:
            result["capture"] = str(e)
        finally:
            inst.restore()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ulysses_2_on_gloo_matches_one_process(tmp_path):
    pipe = tiny_wan_pipeline()
    dense = run(pipe)
    with apply(pipe, make_config([OWN_FRAME, TWO_FRAMES])):
        sparse = run(pipe)
    with apply(pipe, make_config([TWO_FRAMES, OWN_FRAME])):
        swapped = run(pipe)
    assert (sparse - swapped).abs().max() > 1e-3  # the heads' masks differ: a rank using the wrong one would show

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["dense"], dense, atol=1e-5, rtol=1e-5)
        assert torch.allclose(got["sparse"], sparse, atol=1e-5, rtol=1e-5)
        assert torch.equal(got["restored"], got["dense"])
        assert got["steps"] == ([0], [1, 2, 3], 2 * 2 * 3)  # layers x (cond, uncond) x sparse steps
        assert got["mask_heads"] == [(rank, rank + 1)]  # each rank built only its own head's masks
        assert got["capture"].startswith("profiling (capture mode) under context parallelism is not supported")
