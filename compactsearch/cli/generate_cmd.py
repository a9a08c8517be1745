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
    """
    import time

    import torch

    from compactsearch._io import check_output
    from compactsearch.adapters import load_pipeline
    from compactsearch.config import load_config
    from compactsearch.errors import InputError
    from compactsearch.runtime import apply
    from compactsearch.video import generate_video, side_by_side, write_video

    recipe, r = common.sized_recipe(recipe, steps, frames, height, width)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise InputError(f"--out {out}: write a .gif or an .mp4 file")
    check_output(out, "--out", "file")
    if compare and config is None:
        raise InputError("--compare needs --config (the sparse side)")
    cfg = load_config(common.existing_file(config, "config")) if config is not None else None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seed = r.seed if seed is None else seed
    t0 = time.perf_counter()
    with common.console.status("loading the model", spinner="dots") if common.console.is_terminal else _null():
        pipe = load_pipeline(r.model_id, r.adapter, r.dtype, device, r.offload, base_dir=Path(r.base_dir),
                             video=(r.frames, r.height, r.width))
    with common.console.status("generating", spinner="dots") if common.console.is_terminal else _null():
        if cfg is None:
            video = generate_video(pipe, r, prompt, seed)
        else:
            with apply(pipe, cfg, model_id=r.model_id, backend=backend):
                video = generate_video(pipe, r, prompt, seed)
            if compare:
                video = side_by_side(generate_video(pipe, r, prompt, seed), video)
    write_video(out, video, fps=fps)
    seconds = time.perf_counter() - t0
    mode = "dense" if cfg is None else ("dense | sparse" if compare else "sparse")
    F, _, H, W = video.shape
    if json_out:
        common.print_json({"out": str(out), "prompt": prompt, "seed": seed, "mode": mode,
                           "config": str(config) if config else None, "frames": F, "height": H, "width": W,
                           "seconds": round(seconds, 2)})
    else:
        common.console.print(f"wrote {out} ({mode}, {F} frames of {H}x{W}, seed {seed}) in {seconds:.1f} s")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
