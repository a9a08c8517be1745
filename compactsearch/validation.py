"""`validate`: prove a config is well-formed, builds, and computes what it claims.

Checks (each a `Check(name, ok, detail)`):
- ``schema``: the YAML loaded under the strict schema (v2, or v1 converted; a failure there is bad input, exit 2,
  not a check);
- ``masks``: every (bucket, layer) mask builds and has the config's heads and the geometry's block count;
- ``declared_density``: per-head densities written in the config match the built masks (within 0.005);
- ``budget``: when the config records a search budget, the whole run's density (dense steps at 1, at the
  config's step count) <= budget + 0.005;
- ``tiling_waste``: token pairs computed / token pairs the patterns allow - 1 is at most ``max_waste``, or, on a
  grid whose shape forces more (`compactsearch.tile_choice.panel_waste` of the config's tiling: the waste of
  typical local, cross and time-decaying patterns on it), at most that + `WASTE_MARGIN`;
- ``numerics``: the block-sparse reference attention equals dense attention restricted to the same mask on
  random q/k/v at the config's geometry, on a sample of heads and query blocks per layer (fp32, max abs
  error <= 1e-4);
- ``kernel`` (optional): the bundled Triton kernel against the reference (see `compactsearch.kernel.check`);
  a kernel that cannot run on the config (a head dim it does not take, out of memory) fails this check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from compact_attn import reference
from compact_attn.mask import BlockSparseMask
from compactsearch.config import FORMAT, Config, run_density
from compactsearch.masks import block_mask_from_tile_mask, tile_mask
from compactsearch.tile_choice import panel_waste
from compactsearch.tiling import TileLayout

__all__ = ["Check", "ValidationReport", "validate_config", "row_token_mask"]

NUMERIC_ATOL = 1e-4
#: Tiling waste a config may have beyond its grid's reference-panel waste (`tiling_waste`).
WASTE_MARGIN = 0.05


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ValidationReport:
    ok: bool
    density: float  # whole run, dense steps at 1
    density_sparse_steps: float
    tiling_waste: float
    checks: tuple[Check, ...]
    bucket_density: tuple[float, ...]
    layer_density: tuple[tuple[float, ...], ...]  # [bucket][layer]
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "density": round(self.density, 6),
            "density_sparse_steps": round(self.density_sparse_steps, 6),
            "est_attention_speedup": round(1.0 / self.density, 3),
            "tiling_waste": round(self.tiling_waste, 6),
            "bucket_density": [round(x, 6) for x in self.bucket_density],
            "layer_density": [[round(x, 6) for x in row] for row in self.layer_density],
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            **self.extra,
        }


def _sub_mask(mask: BlockSparseMask, heads: list[int]) -> BlockSparseMask:
    return BlockSparseMask(mask.kv_num_blocks[heads], mask.kv_indices[heads], mask.block_q, mask.block_k,
                           mask.seq_len)


def row_token_mask(dense_blocks: torch.Tensor, rows: torch.Tensor, block_q: int, block_k: int, n: int
                   ) -> torch.Tensor:
    """``[h, len(rows), n]`` bool: which keys the query ``rows`` attend under a dense block mask ``[h, NQB, NKB]``
    (the token mask a masked dense reference runs with)."""
    k_blk = torch.arange(n, device=dense_blocks.device) // block_k
    return dense_blocks[:, rows // block_q][:, :, k_blk]


def _numeric_error(mask: BlockSparseMask, heads: list[int], q_blocks: torch.Tensor,
                   qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """Max |block-sparse reference - masked dense| on the sampled heads and query blocks, fp32.

    ``qkv`` are random ``[1, len(heads), N, D]`` tensors (drawn once per validation, reused per layer).
    """
    sub = _sub_mask(mask, heads)
    N = mask.seq_len
    q, k, v = qkv
    out = reference.block_sparse_attention(q, k, v, sub, q_blocks=q_blocks)
    dense_blocks = sub.to_dense()  # [h, NQB, NKB]
    err = 0.0
    for qb in q_blocks.tolist():
        rows = torch.arange(qb * mask.block_q, min((qb + 1) * mask.block_q, N))
        # dense attention over all N keys with the mask applied element-wise, for these rows only
        allowed = row_token_mask(dense_blocks, rows, mask.block_q, mask.block_k, N)
        ref = reference.masked_dense_attention(q[:, :, rows], k, v, allowed)
        err = max(err, float((out[0][:, rows] - ref[0]).abs().max()))
    return err


def validate_config(
    config: Config,
    *,
    sample_heads: int = 2,
    sample_blocks: int = 4,
    max_waste: float = 0.10,
    numerics: bool = True,
    seed: int = 0,
    kernel_check: Callable[[Config, BlockSparseMask, int, int], Check] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Run every check on a loaded config.

    Args:
        sample_heads / sample_blocks: heads and query blocks per layer for the numerical check.
        max_waste: the tiling-waste limit (raised to the grid's reference-panel waste + `WASTE_MARGIN` where
            that is higher).
        numerics: run the reference-vs-dense numerical check.
        kernel_check: optional ``f(config, mask, bucket, layer) -> Check`` run on every layer's mask.
        progress: called once per (bucket, layer) with a short label.
    """
    layout: TileLayout = config.layout()
    nb = layout.num_blocks
    gen = torch.Generator().manual_seed(seed)
    read = config.source_format + (" (converted on read)" if config.source_format != FORMAT else "")
    checks: list[Check] = [Check("schema", True, f"format {read}, {config.geometry.describe()}")]
    bucket_density, layer_density = [], []
    mask_problems, density_problems, kernel_checks = [], [], []
    computed_pairs = allowed_pairs = 0.0
    waste_cache: dict = {}
    max_err = 0.0
    n_sample = min(sample_heads, config.num_heads)
    qkv = tuple(torch.randn(1, n_sample, layout.seq_len, config.head_dim, generator=gen) for _ in range(3))
    for bi, bucket in enumerate(config.buckets):
        row = []
        for li, lc in enumerate(bucket.layers):
            mask = config.layer_mask(bi, li, layout)
            if mask.num_heads != config.num_heads or mask.num_q_blocks != nb:
                mask_problems.append(f"buckets[{bi}].layers[{li}]: {mask!r}")
            head_d = mask.head_density()
            row.append(float(head_d.mean()))
            for hc in lc.heads:
                if hc.density is not None and abs(hc.density - float(head_d[hc.head])) > 0.005:
                    density_problems.append(
                        f"buckets[{bi}].layers[{li}].heads[{hc.head}]: declared {hc.density:.4f}, "
                        f"built {float(head_d[hc.head]):.4f}"
                    )
                if hc.pattern not in waste_cache:
                    tm = tile_mask(hc.pattern, layout)
                    bm = block_mask_from_tile_mask(tm, layout)
                    waste = layout.tiling_waste(tm, bm)
                    computed = float(bm.sum()) * layout.block_size**2
                    waste_cache[hc.pattern] = (computed, computed / (1.0 + waste))
                c, a = waste_cache[hc.pattern]
                computed_pairs += c
                allowed_pairs += a
            if numerics:
                heads = torch.randperm(config.num_heads, generator=gen)[:n_sample]
                qbs = torch.randperm(nb, generator=gen)[: min(sample_blocks, nb)]
                max_err = max(max_err, _numeric_error(mask, sorted(heads.tolist()), qbs, qkv))
            if kernel_check is not None:
                try:
                    kernel_checks.append(kernel_check(config, mask, bi, li))
                except (ValueError, RuntimeError, MemoryError) as e:  # a check that cannot run fails; no traceback
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    kernel_checks.append(Check("kernel", False, f"bucket {bi} layer {li}: the kernel could not run: "
                                                                f"{msg}"))
            if progress is not None:
                progress(f"bucket {bi} layer {li}")
        layer_density.append(tuple(row))
        bucket_density.append(sum(row) / len(row))
    run = run_density(bucket_density, config.plan())
    density, density_sparse = run["density"], run["density_sparse_steps"]
    waste = computed_pairs / allowed_pairs - 1.0 if allowed_pairs else 0.0

    checks.append(Check("masks", not mask_problems,
                        mask_problems[0] if mask_problems else
                        f"{sum(len(b.layers) for b in config.buckets)} layer masks, {nb} blocks of "
                        f"{layout.block_size}, {layout.describe()}"))
    checks.append(Check("declared_density", not density_problems,
                        density_problems[0] if density_problems else "declared per-head densities match"))
    budget = config.search.get("budget") if config.search else None
    if budget is not None:
        checks.append(Check("budget", density <= float(budget) + 0.005,
                            f"whole-run density {density:.4f} vs budget {float(budget):.4f} (+0.005 allowed; "
                            f"{config.num_steps} steps, {config.plan().dense_steps} dense)"))
    forced = panel_waste(layout)
    limit = max(max_waste, forced + WASTE_MARGIN)
    why = (f"limit {limit:.1%}: this grid's reference-panel waste {forced:.1%} + {WASTE_MARGIN:.0%}"
           if limit > max_waste else f"limit {max_waste:.0%}")
    checks.append(Check("tiling_waste", waste <= limit, f"{waste:.2%} ({why})"))
    if numerics:
        checks.append(Check("numerics", max_err <= NUMERIC_ATOL,
                            f"max |block-sparse - masked dense| = {max_err:.2e} (fp32, limit {NUMERIC_ATOL:.0e}; "
                            f"{sample_heads} heads x {sample_blocks} query blocks per layer)"))
    if kernel_checks:
        failed = [c for c in kernel_checks if not c.ok]
        worst = failed[0] if failed else kernel_checks[-1]
        checks.append(Check("kernel", not failed, worst.detail))
    return ValidationReport(
        ok=all(c.ok for c in checks),
        density=density,
        density_sparse_steps=density_sparse,
        tiling_waste=waste,
        checks=tuple(checks),
        bucket_density=tuple(bucket_density),
        layer_density=tuple(layer_density),
        extra={"kernel_results": [c.detail for c in kernel_checks]} if kernel_checks else {},
    )
