"""`compactsearch validate CONFIG`: schema, masks, density, tiling waste, numerics; CI-friendly exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from compactsearch.cli._common import ConfigArg, JsonOpt, console, print_json
from compactsearch.cli._progress import progress_display
from compactsearch.config import load_config
from compactsearch.errors import CheckFailed, InputError
from compactsearch.kernel.check import make_kernel_check
from compactsearch.profile import Profile
from compactsearch.validation import validate_config


def validate(
    config: ConfigArg,
    json_out: JsonOpt = False,
    sample_heads: Annotated[int, typer.Option(min=1, help="Heads per layer in the numerical check.")] = 2,
    sample_blocks: Annotated[int, typer.Option(min=1, help="Query blocks per head in the numerical check.")] = 4,
    max_waste: Annotated[float, typer.Option(min=0.0, help="Largest tiling waste accepted.")] = 0.10,
    no_numerics: Annotated[bool, typer.Option("--no-numerics", help="Skip the numerical check.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random q/k/v.")] = 0,
    kernel: Annotated[str, typer.Option(
        help="Also run the bundled Triton kernel: auto (triton on a GPU, else none), triton, interpret "
             "(CPU interpreter on sampled query blocks) or none.")] = "auto",
    profile: Annotated[Path | None, typer.Option(
        help="A profile directory whose captured q/k/v feed the kernel check instead of random tensors.")] = None,
) -> None:
    """Check a config: schema, every mask, density, tiling waste, and block-sparse numerics.

    Exit code 0 when every check passes, 1 when a check fails (one line names them), 2 on bad input.

    Examples:
        compactsearch validate recipes/examples/wan2.1-t2v-14b-720p.yaml
        compactsearch validate my-config.yaml --json > validation.json
        compactsearch validate my-config.yaml --kernel interpret   # Triton interpreter, CPU
        compactsearch validate my-config.yaml --profile out/profile  # kernel on captured q/k/v (GPU)
    """
    cfg = load_config(config)
    if kernel == "auto":
        import torch

        kernel = "triton" if torch.cuda.is_available() else "none"
    samples = None
    if profile is not None:
        prof = Profile.load(profile)
        if prof.geometry != cfg.geometry or prof.tile != cfg.tile or prof.block_size != cfg.block_size:
            raise InputError(f"profile {profile} is for {prof.geometry.describe()} with tile {list(prof.tile)}/"
                             f"{prof.block_size}, but the config is for {cfg.geometry.describe()} with tile "
                             f"{list(cfg.tile)}/{cfg.block_size}")
        samples = prof.samples
    kernel_check = make_kernel_check(kernel, sample_heads=sample_heads, sample_blocks=sample_blocks, seed=seed,
                                     samples=samples)
    n = sum(len(b.layers) for b in cfg.buckets)
    with progress_display("validate", TextColumn("validating"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("", total=n)
        report = validate_config(cfg, sample_heads=sample_heads, sample_blocks=sample_blocks, max_waste=max_waste,
                                 numerics=not no_numerics, seed=seed, kernel_check=kernel_check,
                                 progress=lambda label: bar.update(task, advance=1, description=label))
    table = Table(title=f"{config} — {cfg.model_id} ({cfg.adapter})", title_justify="left")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, "[green]pass[/]" if c.ok else "[red]FAIL[/]", c.detail)
    console.print(table)
    for line in report.extra.get("kernel_results", []):
        console.print(f"  kernel {line}")
    plan = cfg.plan()
    console.print(
        f"read {cfg.source_format}; density {report.density:.4f} over the whole run ({plan.n} steps, "
        f"{plan.dense_steps} dense; ideal attention speed-up {1 / report.density:.2f}x), "
        f"{report.density_sparse_steps:.4f} over the sparse steps; tiling waste {report.tiling_waste:.2%}; buckets "
        + ", ".join(f"{b.id} steps {list(r)}: {d:.4f}" for b, r, d in zip(cfg.buckets, plan.ranges,
                                                                          report.bucket_density))
    )
    if json_out:
        print_json(report.to_json())
    if not report.ok:  # exit 1 through the CLI's one failure map (cli/_failures.py)
        failed = [c.name for c in report.checks if not c.ok]
        raise CheckFailed(f"{config}: {len(failed)} of {len(report.checks)} checks failed ({', '.join(failed)}); "
                          "see the table above")
    console.print("[green]all checks passed[/]")
