"""FP8 attention error against fp32, next to bf16's own (the semantics of `compact_attn.fp8`; CPU or GPU).

    python benchmarks/fp8_error.py                                # random N(0,1), densities 1.0 and 0.3
    python benchmarks/fp8_error.py --samples demo-out/profile     # plus the captured q/k/v of a profile

Per case: relative output error ``|o - o_fp32| / |o_fp32|`` (Frobenius, all rows) of the bf16 loop (bf16 inputs,
P rounded to bf16) and of the 8-bit loops (the same bf16 inputs quantised as `compact_attn.fp8` says: all e4m3;
int8 Q/K with e4m3 P/V; int8 Q/K with bf16 P/V), and each one's ratio to bf16 (issue #17's bound: <= 3x).
The fp32 reference is `compact_attn.reference.block_sparse_attention` on the unrounded inputs. Captured samples
(``samples/l*.safetensors``: one head of each sampled layer, tile order) use the profile's block size.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "kernels"), str(ROOT)]

from compact_attn import reference  # noqa: E402
from compact_attn.fp8 import attention_blocks  # noqa: E402
from compact_attn.mask import BlockSparseMask  # noqa: E402


def random_mask(heads: int, n: int, block: int, density: float, seed: int) -> BlockSparseMask:
    """Each query block keeps its own key block and a random share of the others (``density`` of all)."""
    nb = math.ceil(n / block)
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(heads, nb, nb, generator=gen) < density
    dense |= torch.eye(nb, dtype=torch.bool)[None]
    return BlockSparseMask.from_dense(dense, block, block, n)


def errors(q, k, v, mask: BlockSparseMask) -> dict:
    ref = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask).float()
    qb, kb, vb = (x.to(torch.bfloat16) for x in (q, k, v))
    out = {}
    for precision in ("bf16", *EIGHT_BIT):
        o = attention_blocks(qb, kb, vb, mask, precision).to(torch.bfloat16).float()  # the kernel writes bf16
        if torch.isnan(o).any():
            raise SystemExit(f"{precision}: NaN in the output")
        out[precision] = float((o - ref).norm() / ref.norm())
    return out


EIGHT_BIT = ("fp8", "int8-fp8", "int8-bf16")


def _row(label: str, n: int, d: int, block: int, density: float, e: dict) -> str:
    cells = " | ".join(f"{e[p]:.2e} ({e[p] / e['bf16']:.1f}x)" for p in EIGHT_BIT)
    return f"| {label} | {n} | {d} | {block} | {density:.2f} | {e['bf16']:.2e} | {cells} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--samples", type=Path, help="a profile directory with samples/ (captured q/k/v)")
    args = ap.parse_args()
    print("| inputs | N | D | block | density | bf16 | e4m3 Q/K/P/V | int8 Q/K, e4m3 P/V | int8 Q/K, bf16 P/V |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    gen = torch.Generator().manual_seed(0)
    for d in (64, 128):
        q, k, v = (torch.randn(1, 2, args.tokens, d, generator=gen) for _ in range(3))
        for density in (1.0, 0.3):
            mask = random_mask(2, args.tokens, 128, density, seed=d)
            e = errors(q, k, v, mask)
            print(_row("N(0,1)", args.tokens, d, 128, float(mask.head_density().mean()), e), flush=True)
    if args.samples is not None:
        import yaml

        block = int(yaml.safe_load((args.samples / "profile.yaml").read_text())["tiling"]["block_size"])
        for path in sorted((args.samples / "samples").glob("l*.safetensors")):
            with safe_open(str(path), "pt") as f:
                q, k, v = (f.get_tensor(name) for name in ("q", "k", "v"))
            n = q.shape[2]
            for density in (1.0, 0.3):
                mask = random_mask(q.shape[1], n, block, density, seed=1)
                e = errors(q, k, v, mask)
                print(_row(f"{path.stem} captured", n, q.shape[-1], block, float(mask.head_density().mean()), e),
                      flush=True)


if __name__ == "__main__":
    main()
