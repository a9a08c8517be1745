"""`compactsearch generate RECIPE --prompt P --out FILE [--config C]`: one video, dense or sparse, as GIF or MP4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compactsearch.cli import _common as common

__all__ = ["generate"]


def generate(
    *,
    recipe: common.RecipeArg = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text prompt.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Video file to write: .gif or .mp4 (needs "
                                      "imageio-ffmpeg).", show_default=False)],
    json_out: common.JsonOpt = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A config YAML: generate with its "
                                                "block-sparse attention [default: dense].")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Write dense | sparse side by side (needs "
                                          "--config).")] = False,
    seed: Annotated[int | None, typer.Option(help="Generator seed [default: the recipe's sampling.seed].",
                                             show_default=False)] = None,
    device: common.DeviceOpt = None,
    backend: Annotated[str, typer.Option(help="Sparse kernel: auto (Triton on CUDA, reference on CPU), triton or "
                                         "reference.")] = "auto",
    fps: Annotated[int, typer.Option(min=1, help="Frames per second of the file.")] = 8,
    steps: common.StepsOpt = None,  # the recipe's sizes, changed for this run
    frames: common.FramesOpt = None,
    height: common.HeightOpt = None,
    width: common.WidthOpt = None,
    parallel: common.ParallelOpt = None,
) -> None:
    """Generate one video with a recipe's model, dense or with a config's sparse attention.

    Pipelines without a VAE (tiny-random-wan) give a preview of their first three latent channels.

    \b
    Examples:
        compactsearch generate -p "a big red circle moves right over a striped navy background" -o red.gif
        compactsearch generate -c tiny-0.3.yaml -p "a small white square bounces over a plain black background" \
-o sq.mp4
        compactsearch generate recipes/tiny.yaml -c tiny-0.3.yaml --compare -p "a big green triangle bounces over \
a checkered gray background" -o compare.gif
        torchrun --nproc-per-node 2 -m compactsearch generate RECIPE -c CONFIG --parallel ulysses:2 -p "..." -o a.mp4
    """
    import time

    from compactsearch._io import check_output
    from compactsearch.config import load_config
    from compactsearch.distributed import check_recipe, default_device, parallel_run
    from compactsearch.errors import InputError
    from compactsearch.runtime import apply
    from compactsearch.video import generate_video, side_by_side, write_video

    common.rank_speaks(parallel)
    recipe, r = common.sized_recipe(recipe, steps, frames, height, width)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise InputError(f"--out {out}: write a .gif or an .mp4 file")
    check_output(out, "--out", "file")
    if compare and config is None:
        raise InputError("--compare needs --config (the sparse side)")
    cfg = load_config(common.existing_file(config, "config")) if config is not None else None
    seed = r.seed if seed is None else seed
    t0 = time.perf_counter()
    check_recipe(r, parallel)
    with parallel_run(parallel, device) as par:
        device = par.device if par is not None else default_device(device)
        with _status("loading the model"):
            pipe = common.load_recipe_pipeline(r, device, par)
        with _status("generating"):
            if cfg is None:
                video = generate_video(pipe, r, prompt, seed)
            else:
                with apply(pipe, cfg, model_id=r.model_id, backend=backend):
                    video = generate_video(pipe, r, prompt, seed)
                if compare:
                    video = side_by_side(generate_video(pipe, r, prompt, seed), video)
    if common.state.silent:  # a --parallel rank other than 0: rank 0 writes the same video
        return
    write_video(out, video, fps=fps)
    seconds = time.perf_counter() - t0
    mode = "dense" if cfg is None else ("dense | sparse" if compare else "sparse")
    F, _, H, W = video.shape
    if json_out:
        common.print_json({"out": str(out), "prompt": prompt, "seed": seed, "mode": mode,
                           "config": str(config) if config else None, "frames": F, "height": H, "width": W,
                           "parallel": parallel, "seconds": round(seconds, 2)})
    else:
        on = f", {parallel}" if parallel else ""
        common.console.print(f"wrote {out} ({mode}{on}, {F} frames of {H}x{W}, seed {seed}) in {seconds:.1f} s")


def _status(text: str):
    """A spinner on a terminal (none on a quiet console), nothing elsewhere."""
    import contextlib

    if common.console.is_terminal and not common.console.quiet:
        return common.console.status(text, spinner="dots")
    return contextlib.nullcontext()
