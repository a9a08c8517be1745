"""GPU benchmark of one sparse attention call as the runtime makes it, piece by piece, against the model's dense call.

Not a test: needs a CUDA GPU. Where a whole generation's sparse steps fall short of the Amdahl limit, the
difference is what the runtime adds around the kernel: the gathers of q, k, v into tile order, the gather of the
output back to model order, and the copy the processor makes to lay ``[B, H, N, D]`` out as ``[B, N, H * D]``.
This times each piece on one layer's call, at the families' real sizes, with the kernel benchmark's masks::

    PYTHONPATH=kernels:. python3 benchmarks/attention_call.py --density 0.3

Inputs are what a diffusers processor hands over: ``[B, H, N, D]`` views of ``[B, N, H, D]`` projections.
Rows (median ms of ``--reps`` after a warm-up, CUDA events):
  dense          the model's own call: SDPA (PyTorch's default backend order) on the views, then
                 ``transpose(1, 2).reshape(B, N, H * D)``
  gathers        q, k, v into tile order (``index_select`` on the token dim)
  kernel         the block-sparse kernel on tile-ordered, contiguous q, k, v
  scatter+copy   the output back to model order, then the processor's reshape (a copy)
  call           gathers + kernel + scatter + copy: the runtime's call
  call, fused    the same with the output scattered straight into a ``[B, N, H, D]`` buffer (reshape is a view)
  permute        `compact_attn.permute`'s two kernels, gather and scatter (the runtime's call since 2026-12-02)
  call, permute  the runtime's call with them
The ``limit`` column is dense ms x density: a call at the ideal speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import torch
import torch.nn.functional as F

if "compactsearch" not in sys.modules:  # the pure modules only (no optuna, diffusers on the GPU image)
    _pkg = types.ModuleType("compactsearch")
    _pkg.__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compactsearch")]
    sys.modules["compactsearch"] = _pkg
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel import build_masks  # noqa: E402

from compact_attn import block_sparse_attention, permute  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.kernel.bench import median_ms  # noqa: E402
from compactsearch.tiling import TileLayout, default_tile_shape  # noqa: E402

# name: (geometry, batch per forward, heads, head dim): the e2e setups (CFG batched where the pipeline batches it)
SETUPS = {
    "wan1.3b-480p": (VideoGeometry(21, 30, 52), 1, 12, 128),
    "cogvideox-5b": (VideoGeometry(13, 30, 45, 226, "front"), 2, 48, 64),
    "ltx": (VideoGeometry(21, 16, 22), 2, 32, 64),
    "mochi-85f": (VideoGeometry(15, 30, 53, 256, "back"), 2, 24, 128),
}


def run(name: str, density: float, reps: int) -> dict:
    geom, B, H, D = SETUPS[name]
    N = geom.seq_len
    layout = TileLayout(geom, default_tile_shape(geom, 128), 128)
    (_, mask), *_ = build_masks(name, geom, H, [density], "cuda")
    perm, inv = layout.perm.cuda(), layout.inv_perm.cuda()
    proj = [torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    q, k, v = (x.transpose(1, 2) for x in proj)  # what a processor hands over

    def dense():
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, H * D)

    def gathers():
        return [x.index_select(2, perm) for x in (q, k, v)]

    qt, kt, vt = gathers()
    o = block_sparse_attention(qt, kt, vt, mask)

    def kernel():
        return block_sparse_attention(qt, kt, vt, mask)

    def scatter_copy(o=o):
        return o.index_select(2, inv).transpose(1, 2).reshape(B, N, H * D)

    def call():
        return scatter_copy(block_sparse_attention(*gathers(), mask))

    def call_fused():
        out = torch.empty(B, N, H, D, device="cuda", dtype=torch.bfloat16)
        out.transpose(1, 2).index_copy_(2, perm, block_sparse_attention(*gathers(), mask))
        return out.reshape(B, N, H * D)

    def permutes():
        return permute.to_model_order(qt, perm), permute.to_tile_order(q, k, v, perm)

    def call_permute():
        o = block_sparse_attention(*permute.to_tile_order(q, k, v, perm), mask)
        return permute.to_model_order(o, perm).transpose(1, 2).reshape(B, N, H * D)

    torch.testing.assert_close(call_fused(), call(), atol=0, rtol=0)
    torch.testing.assert_close(call_permute(), call(), atol=0, rtol=0)
    row = {"setup": name, "tokens": N, "B x H x D": f"{B}x{H}x{D}", "density": round(mask.density(), 3)}
    for label, fn in (("dense", dense), ("gathers", gathers), ("kernel", kernel), ("scatter+copy", scatter_copy),
                      ("call", call), ("call, fused", call_fused), ("permute", permutes),
                      ("call, permute", call_permute)):
        row[label] = median_ms(fn, reps)
    row["limit"] = row["dense"] * row["density"]
    return row


def block_sizes(name: str, density: float, reps: int) -> dict:
    """The kernel alone on masks of 128- and of 64-token blocks at one target density (each with its own
    default tile shape): the speed `compactsearch.tiling.default_tiling` weighs against tiling waste."""
    from kernel import choose_patterns

    from compactsearch.patterns import build_layer_mask

    geom, B, H, D = SETUPS[name]
    N = geom.seq_len
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    row = {"setup": name}
    for block in (128, 64):
        layout = TileLayout(geom, default_tile_shape(geom, block), block)
        pats = choose_patterns(f"{name}-b{block}", layout, [density])[density]
        mask = build_layer_mask([pats[h % 3] for h in range(H)], layout).to("cuda")
        row[f"density_{block}"] = round(mask.density(), 3)
        row[f"ms_{block}"] = median_ms(lambda m=mask: block_sparse_attention(q, k, v, m), reps)
    # time per computed token pair, 64-token blocks over 128-token blocks
    row["pair_time_64_over_128"] = (row["ms_64"] / row["density_64"]) / (row["ms_128"] / row["density_128"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--density", type=float, default=0.3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--block-sizes", action="store_true", help="the kernel alone at 128- and 64-token blocks")
    args = ap.parse_args()
    if args.block_sizes:
        for name in args.setups:
            print(block_sizes(name, args.density, args.reps), flush=True)
        return
    cols = ["setup", "tokens", "B x H x D", "density", "dense", "limit", "gathers", "kernel", "scatter+copy", "call",
            "call, fused", "permute", "call, permute"]
    print("| " + " | ".join(cols) + " | call / limit | permute call / limit |")
    print("|" + " --- |" * (len(cols) + 2))
    for name in args.setups:
        r = run(name, args.density, args.reps)
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + f" | {r['call'] / r['limit']:.2f} | {r['call, permute'] / r['limit']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
