"""`compactsearch evaluate RECIPE --config C`: dense vs sparse PSNR / SSIM (/ LPIPS) and attention time per step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from compactsearch.cli import _common as common

__all__ = ["evaluate"]


def evaluate(
    *,
    recipe: common.RecipeArg = None,
    config: Annotated[list[Path], typer.Option("--config", "-c", help="A config YAML; repeat to compare several.",
                                               show_default=False)],
    prompts: Annotated[Path | None, typer.Option(help="Prompt file, one per line [default: the recipe's "
                                                 "holdout_prompts].", show_default=False)] = None,
    max_prompts: Annotated[int | None, typer.Option(min=1, help="Use only the first N prompts.",
                                                    show_default=False)] = None,
    baselines: Annotated[Path | None, typer.Option(help="The profile the (first) config was searched on: also "
                                                   "evaluate the best single cube and the paper's greedy search "
                                                   "at the same density.", show_default=False)] = None,
    videos: Annotated[Path | None, typer.Option(help="Directory for dense | sparse side-by-side GIFs, one per "
                                                "prompt and config.", show_default=False)] = None,
    device: common.DeviceOpt = None,
    backend: Annotated[str, typer.Option(help="Sparse kernel: auto, triton or reference.")] = "auto",
    json_out: common.JsonOpt = False,
    steps: common.StepsOpt = None,  # the recipe's sizes, changed for this run
    frames: common.FramesOpt = None,
    height: common.HeightOpt = None,
    width: common.WidthOpt = None,
    parallel: common.ParallelOpt = None,
) -> None:
    """Generate held-out prompts dense and sparse with the same seeds and compare them.

    Reports PSNR and SSIM against dense (LPIPS when the lpips package is installed), and attention time per
    denoising step (dense run vs the sparse steps). Table on stderr; --json prints the numbers on stdout.

    \b
    Examples:
        compactsearch evaluate recipes/tiny.yaml --config tiny-0.3.yaml
        compactsearch evaluate recipes/tiny.yaml -c tiny-0.3.yaml --baselines profiles/tiny --videos out/
        compactsearch evaluate recipes/wan2.1-t2v-1.3b-480p.yaml -c wan-0.3.yaml --prompts my.txt --json
        torchrun --nproc-per-node 2 -m compactsearch evaluate RECIPE -c CONFIG --parallel ulysses:2
    """

    from compactsearch._io import check_output
    from compactsearch.cli._progress import progress_display
    from compactsearch.config import load_config
    from compactsearch.distributed import check_recipe, default_device, parallel_run
    from compactsearch.errors import InputError
    from compactsearch.profile import Profile
    from compactsearch.profile.recipe import read_prompts
    from compactsearch.quality import evaluate as run_evaluate
    from compactsearch.search.baselines import baseline_configs

    common.rank_speaks(parallel)
    recipe, r = common.sized_recipe(recipe, steps, frames, height, width)
    check_recipe(r, parallel)
    if prompts is not None:
        plist = read_prompts(prompts, "--prompts file")
    elif r.holdout_prompts:
        plist = list(r.holdout_prompts)
    else:
        raise InputError(f"recipe {recipe} has no holdout_prompts: add them to the recipe or pass --prompts FILE")
    plist = plist[:max_prompts] if max_prompts else plist
    if videos is not None:
        check_output(videos, "--videos", "dir")
    configs = {}
    for path in config:
        name = path.stem
        while name in configs:
            name += "'"
        configs[name] = load_config(common.existing_file(path, "config"))
    if baselines is not None:
        if not baselines.exists():
            raise InputError(f"--baselines {baselines} does not exist; give the profile directory")
        configs.update(baseline_configs(Profile.load(baselines), next(iter(configs.values()))))
    total = len(plist) * (1 + len(configs))
    with parallel_run(parallel, device) as par:
        device = par.device if par is not None else default_device(device)
        if par is not None and not par.main:  # every rank generates; rank 0 writes the videos
            videos = None
        pipe = common.load_recipe_pipeline(r, device, par)
        with progress_display("evaluate", TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("", total=total)
            report = run_evaluate(r, configs, plist, device=device, backend=backend, video_dir=videos, pipe=pipe,
                                  progress=lambda label: bar.update(task, advance=1, description=label))
    data = {**report.to_json(), "parallel": parallel}
    on = f", {parallel}: rank 0's times" if parallel else ""
    table = Table(title=f"{recipe}: {len(plist)} prompts, dense attention "
                        f"{data['dense_attention_ms_per_step']:.2f} ms/step ({device}{on})", title_justify="left")
    for col in ("config", "density", "PSNR dB", "SSIM", "LPIPS", "attn ms/step", "speed-up"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for c in data["configs"]:
        table.add_row(c["name"], f"{c['density']:.4f}", f"{c['psnr']:.2f}", f"{c['ssim']:.4f}",
                      "-" if c["lpips"] is None else f"{c['lpips']:.4f}", f"{c['attention_ms_per_step']:.2f}",
                      "-" if c["attention_speedup"] is None else f"{c['attention_speedup']:.2f}x")
    common.console.print(table)
    if device == "cpu":
        common.console.print("attention times on a CPU come from the PyTorch reference, not the Triton kernel")
    if report.videos:
        common.console.print(f"wrote {len(report.videos)} side-by-side GIFs to {videos}")
    if json_out:
        common.print_json(data)
