"""Shared CLI pieces: the stderr console, option aliases, and the JSON printer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["console", "state", "print_json", "ConfigArg", "JsonOpt", "RecipeArg", "DeviceOpt", "ParallelOpt",
           "rank_speaks", "load_recipe_pipeline", "existing_file",
           "StepsOpt", "FramesOpt", "HeightOpt", "WidthOpt", "override_recipe", "sized_recipe"]

# Progress, tables and logs go to stderr; results (--json) to stdout.
console = Console(stderr=True, highlight=False)


class _State:
    debug: bool = False
    silent: bool = False  # a --parallel rank other than 0: prints nothing (rank 0 speaks for the run)


state = _State()

ConfigArg = Annotated[Path, typer.Argument(help="A config YAML (compactsearch/v2; v1 is converted on read).",
                                           show_default=False)]
StepsOpt = Annotated[int | None, typer.Option(help="Denoising steps [default: the recipe's]; a config runs at any "
                                              "step count.", show_default=False)]
FramesOpt = Annotated[int | None, typer.Option(help="Video frames [default: the recipe's]; a config is retargeted "
                                               "to the new token grid in memory.", show_default=False)]
HeightOpt = Annotated[int | None, typer.Option(help="Video height in pixels [default: the recipe's].",
                                               show_default=False)]
WidthOpt = Annotated[int | None, typer.Option(help="Video width in pixels [default: the recipe's].",
                                              show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON object with the results on stdout.")]
RecipeArg = Annotated[Path | None, typer.Argument(help="A recipe YAML (see recipes/) [default: the bundled tiny "
                                                  "model's, recipes/tiny.yaml].", show_default=False)]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N [default: cuda if available].",
                                               show_default=False)]
ParallelOpt = Annotated[str | None, typer.Option(
    "--parallel", help="ulysses:N: this is one of N processes started by torchrun (torchrun --nproc-per-node N -m "
    "compactsearch ...), the transformer runs under Ulysses sequence parallelism, rank 0 writes and prints "
    "[default: one process].", show_default=False)]


def load_recipe_pipeline(recipe, device: str, parallel=None):
    """The recipe's pipeline on ``device``; in a ``--parallel`` run (``parallel``, a
    `compactsearch.distributed.ParallelRun`) under Ulysses sequence parallelism."""
    from compactsearch.adapters import load_pipeline
    from compactsearch.distributed import enable_ulysses

    video = (recipe.frames, recipe.height, recipe.width)
    pipe = load_pipeline(recipe.model_id, recipe.adapter, recipe.dtype, device, recipe.offload,
                         base_dir=Path(recipe.base_dir), video=video)
    if parallel is not None:
        enable_ulysses(pipe, recipe.adapter, parallel.degree, video)
    return pipe


def rank_speaks(parallel: str | None) -> None:
    """Under ``--parallel``, ranks other than 0 print nothing from here on (no results, progress or input
    errors: every rank gets the same input and result; rank 0 speaks for the run)."""
    from compactsearch.distributed import torchrun_rank

    state.silent = console.quiet = parallel is not None and torchrun_rank() not in (None, 0)


def print_json(obj) -> None:
    if state.silent:
        return
    try:
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
    except OSError as e:  # name the file for the error line (a full disk under `> out.json`)
        raise OSError(e.errno, e.strerror, "stdout") from e


def existing_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise an InputError saying it is missing."""
    from compactsearch.errors import InputError

    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; give the file")
    return path


def sized_recipe(recipe: Path | None, steps: int | None, frames: int | None, height: int | None, width: int | None):
    """``(path, recipe)``: the recipe given (or the bundled tiny model's), loaded, with the command line's sizes."""
    from compactsearch.profile.recipe import default_recipe_path, load_recipe

    path = recipe or default_recipe_path()
    return path, override_recipe(load_recipe(path), steps, frames, height, width)


def override_recipe(recipe, steps: int | None, frames: int | None, height: int | None, width: int | None):
    """The recipe with the sampling steps and video size given on the command line."""
    from dataclasses import replace

    from compactsearch.errors import InputError

    changes = {k: v for k, v in (("steps", steps), ("frames", frames), ("height", height), ("width", width))
               if v is not None}
    for k, v in changes.items():
        if v < 1:
            raise InputError(f"--{k} must be a positive integer, got {v}")
    return replace(recipe, **changes)
