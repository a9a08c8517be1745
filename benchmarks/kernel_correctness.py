"""GPU correctness of every block-sparse forward path on odd shapes, against an fp32 reference.

The CPU tests run the Triton-language kernel in the interpreter; Gluon kernels (`compact_attn.attention_ws`)
have no interpreter, so this script is where their output is checked, on the GPU, over the cases that break
kernels: sequence lengths that do not divide the block size (odd frames, heights like 45), text tokens in front
and at the back, query blocks with no key block, batch 2, head dims 64 and 128, bf16 and fp16, the logsumexp,
a mask with some dense heads (SDPA split), and layer masks of the pattern language with **sink key tiles** (whole
key-block columns every query block computes; density ``"sinks"`` in `CASES`). Outputs are poisoned with NaN
before each run. Every case also runs the forward that yields the block mass (`attention_with_block_mass`, the
fused profile capture): its output by the same rule, its mass within 5e-3 (relative) of the reference's.

Pass rule (as the CPU tests): relative Frobenius error against fp32 <= 2x PyTorch's own error in the same low
precision (+1e-5), no NaN anywhere, and the logsumexp within 2e-2 of the fp32 one. Exit code 1 on any failure.

    PYTHONPATH=kernels:. python benchmarks/kernel_correctness.py [--variants m128n128w4s2+ws ...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels"),
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")]

from compact_attn import BlockSparseMask, attention_with_block_mass, reference  # noqa: E402
from compact_attn._config import AttnConfig, attention_config  # noqa: E402
from compact_attn.attention import block_sparse_attention_triton  # noqa: E402

# (name, B, H, frames x height x width (+ text), text position, head dim, dtype, density, empty row, dense heads)
CASES = [
    ("13x45x79 text front bf16 d128", 1, 2, (13, 45, 79), 226, "front", 128, torch.bfloat16, 0.35, True, ()),
    ("5x45x79 text back fp16 d128", 1, 3, (5, 45, 79), 77, "back", 128, torch.float16, 0.5, False, ()),
    ("3x30x52 batch 2 bf16 d64", 2, 2, (3, 30, 52), 0, "none", 64, torch.bfloat16, 0.4, True, ()),
    ("7x16x32 exact blocks bf16 d128", 1, 2, (7, 16, 32), 0, "none", 128, torch.bfloat16, 0.25, False, ()),
    ("5x45x79 split dense heads bf16 d128", 1, 4, (5, 45, 79), 0, "none", 128, torch.bfloat16, 0.3, False, (1, 3)),
    ("one block bf16 d128", 1, 2, (1, 10, 10), 0, "none", 128, torch.bfloat16, 1.0, False, ()),
    ("sinks 21x30x52 (Wan 480p) bf16 d128", 1, 4, (21, 30, 52), 0, "none", 128, torch.bfloat16, "sinks", False, ()),
    ("sinks 13x45x79 text front bf16 d128", 1, 4, (13, 45, 79), 226, "front", 128, torch.bfloat16, "sinks", False,
     ()),
    ("sinks 5x45x79 text back fp16 d64", 2, 4, (5, 45, 79), 77, "back", 64, torch.float16, "sinks", False, (3,)),
]


def sink_mask(H: int, thw: tuple[int, int, int], text_tokens: int, text: str, dense_heads) -> BlockSparseMask:
    """A layer mask from the pattern language, every head with sink key tiles (the default tile, 128-token
    blocks): sinks only, a local window plus sinks, a cross plus sinks, a frame-grouped head plus four sinks."""
    from compactsearch.geometry import VideoGeometry
    from compactsearch.masks import build_layer_mask
    from compactsearch.patterns import FrameGroup, Pattern, Window
    from compactsearch.tile_choice import _best_tile
    from compactsearch.tiling import TileLayout

    geometry = VideoGeometry(*thw, text_tokens=text_tokens, text_position=text)
    layout = TileLayout(geometry, _best_tile(geometry, 128)[0], 128)  # the cases' kernel blocks: 128 tokens
    nt, nh, nw = layout.grid_thw
    corners = [(nt - 1, nh - 1, nw - 1), (0, 0, 0), (nt // 2, nh // 2, nw // 2), (0, nh - 1, nw // 3)]
    kinds = [
        Pattern.local(0, 1, 1).with_sinks(corners[:2]),
        Pattern.local(min(1, nt - 1), min(3, nh), min(3, nw)).with_sinks(corners[2:3]),
        Pattern((FrameGroup(0, nt - 1, (Window(1, nw), Window(nh, 1))),)).with_sinks(corners[:1]),
        Pattern((FrameGroup(0, 0, (Window(nh, nw),)), FrameGroup(2, nt - 1, (Window(1, 2),)))).with_sinks(corners),
    ]
    patterns = [Pattern.dense() if h in dense_heads else kinds[h % len(kinds)] for h in range(H)]
    return build_layer_mask(patterns, layout)


def make_mask(H: int, N: int, text_tokens: int, text: str, density: float, empty_row: bool, dense_heads,
              g: torch.Generator) -> BlockSparseMask:
    """Random 128 x 128 block mask: diagonal kept, text blocks dense both ways, optional empty query block and
    fully dense heads."""
    nb = math.ceil(N / 128)
    dense = torch.rand(H, nb, nb, generator=g) < density
    dense[:, torch.arange(nb), torch.arange(nb)] = True
    tb = math.ceil(text_tokens / 128)
    if text == "front" and tb:
        dense[:, :tb, :] = True
        dense[:, :, :tb] = True
    elif text == "back" and tb:
        dense[:, (N - text_tokens) // 128:, :] = True
        dense[:, :, (N - text_tokens) // 128:] = True
    if empty_row:
        dense[0, nb // 2] = False
    for h in dense_heads:
        dense[h] = True
    return BlockSparseMask.from_dense(dense, 128, 128, N)


def lowp_error(q, k, v, mask: BlockSparseMask, ref: torch.Tensor) -> float:
    """Relative error of PyTorch attention computed in the inputs' dtype (the yardstick)."""
    tm = mask.token_mask().to(q.device)
    errs_num = errs_den = 0.0
    for h in range(q.shape[1]):
        s = torch.matmul(q[:, h], k[:, h].transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        s = s.masked_fill(~tm[h][None], float("-inf"))
        o = torch.matmul(torch.softmax(s, -1).nan_to_num(0.0), v[:, h]).float()
        errs_num += float((o - ref[:, h]).pow(2).sum())
        errs_den += float(ref[:, h].pow(2).sum())
    return math.sqrt(errs_num / max(errs_den, 1e-30))


def check(config: AttnConfig, case, seed: int = 0) -> dict:
    name, B, H, (f, hh, ww), text_tokens, text, D, dtype, density, empty_row, dense_heads = case
    N = f * hh * ww + text_tokens
    g = torch.Generator().manual_seed(seed)
    if density == "sinks":
        mask = sink_mask(H, (f, hh, ww), text_tokens, text, dense_heads).to("cuda")
    else:
        mask = make_mask(H, N, text_tokens, text, density, empty_row, dense_heads, g).to("cuda")
    q, k, v = (torch.randn(B, H, N, D, generator=g).to("cuda", dtype) for _ in range(3))
    ref, ref_lse = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask, return_lse=True)
    err_t = lowp_error(q, k, v, mask, ref)
    out = torch.full_like(q, float("nan"))
    o, lse = block_sparse_attention_triton(q, k, v, mask, return_lse=True, out=out, config=config)
    out2 = torch.full_like(q, float("nan"))  # the path without lse (dense heads on SDPA where configured)
    o2 = block_sparse_attention_triton(q, k, v, mask, out=out2, config=config)
    torch.cuda.synchronize()
    err_k = float((o.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    err_k2 = float((o2.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    fin = torch.isfinite(ref_lse)
    lse_err = float((lse[fin] - ref_lse[fin]).abs().max()) if fin.any() else 0.0
    lse_inf_ok = bool(torch.isneginf(lse[~fin]).all())
    nan = bool(torch.isnan(o).any() or torch.isnan(o2).any())
    # the forward that also yields the block mass (profiling's fused capture): output, and mass against the
    # reference's with the same lse on the listed blocks
    o3, lse3, mass = attention_with_block_mass(q, k, v, mask)
    err_k3 = float((o3.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    ref_mass = reference.block_mass(q.float(), k.float(), mask.block_q, mask.block_k, lse=lse3)
    ref_mass = torch.where(mask.to_dense()[None], ref_mass, 0.0)  # query blocks with no key block: lse -inf
    mass_err = float((mass - ref_mass).norm() / ref_mass.norm().clamp_min(1e-30))
    nan = nan or bool(torch.isnan(o3).any() or torch.isnan(mass).any())
    ok = (not nan and err_k <= 2 * err_t + 1e-5 and err_k2 <= 2 * err_t + 1e-5 and lse_err <= 2e-2 and lse_inf_ok
          and err_k3 <= 2 * err_t + 1e-5 and mass_err <= 5e-3)
    return dict(case=name, N=N, kernel=config.describe(), err=err_k, err_no_lse=err_k2, err_torch=err_t,
                lse_err=lse_err, err_fused=err_k3, mass_err=mass_err, nan=nan, ok=ok)


def main() -> None:
    from benchmarks.kernel import parse_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", type=parse_config, default=[],
                    help="configs to check besides the default, e.g. m128n128w4s2+ws")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_correctness.py needs a CUDA GPU")
    failures = 0
    for case in CASES:
        D, dtype = case[6], case[7]
        configs = [attention_config(torch.device("cuda"), D, dtype)] + list(args.variants)
        for cfg in configs:
            for seed in range(args.seeds):
                r = check(cfg, case, seed)
                failures += not r["ok"]
                print(f"{r['case']:>38} N={r['N']:>6} {r['kernel']:>26} seed {seed}: err {r['err']:.2e} "
                      f"(no lse {r['err_no_lse']:.2e}, fused {r['err_fused']:.2e}, mass {r['mass_err']:.1e}) "
                      f"torch {r['err_torch']:.2e} lse {r['lse_err']:.1e} "
                      f"{'ok' if r['ok'] else 'FAIL'}", flush=True)
    print(f"{failures} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
