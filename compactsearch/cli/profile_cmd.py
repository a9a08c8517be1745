"""`compactsearch profile RECIPE`: run a recipe's model on calibration prompts and write a block-mass profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from compactsearch._io import check_output
from compactsearch.cli._common import DeviceOpt, JsonOpt, RecipeArg, console, print_json
from compactsearch.cli._progress import progress_display

__all__ = ["profile"]


class _RichProgress:
    """Rich bars on stderr: prompts done, and the denoising steps of the current prompt."""

    def __init__(self, progress: Progress):
        self.p = progress
        self.prompts = None
        self.steps = None
        self.n_steps = 0

    def start(self, n_prompts: int, n_steps: int) -> None:
        self.n_steps = n_steps
        self.prompts = self.p.add_task("prompts", total=n_prompts)
        self.steps = self.p.add_task("steps", total=n_steps)
        self._first = True

    def prompt(self, i: int, text: str, skipped: bool) -> None:
        if not self._first:
            self.p.advance(self.prompts)
        self._first = False
        short = text if len(text) <= 48 else text[:45] + "..."
        self.p.update(self.prompts, description=f"prompt {i} {'(done, skipped)' if skipped else ''} {short}")
        self.p.reset(self.steps, total=self.n_steps)

    def step(self, step: int) -> None:
        self.p.update(self.steps, completed=min(step + 1, self.n_steps))

    def finish(self) -> None:
        if self.prompts is not None and not self._first:
            self.p.advance(self.prompts)


def profile(
    recipe: RecipeArg = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Profile directory to write "
                                             "[default: profiles/<recipe name>].")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompt file (one per line) replacing the "
                                                 "recipe's calibration prompts.")] = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the prompts an interrupted run finished.")] = False,
    per_prompt: Annotated[bool | None, typer.Option("--per-prompt/--no-per-prompt", help="Keep per-prompt "
                                                    "tensors (search --holdout needs them) [default: recipe's].",
                                                    show_default=False)] = None,
    one_pass: Annotated[str, typer.Option("--one-pass", help="auto, on, fused or off: run the captured "
                                          "attention through the kernel with its logsumexp and take the block "
                                          "mass in one pass; fused: the forward itself yields the block mass "
                                          "(auto: fused on CUDA at head dim 128, on at 64).")] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Profile block attention mass of a video DiT on calibration prompts.

    Writes a profile directory (profile.yaml, mass/*.safetensors, stats.parquet). Finished prompts are kept in
    OUT.work/ so a killed run continues with --resume. Several GPUs:
    torchrun --nproc-per-node N -m compactsearch profile RECIPE.

    Examples:

      compactsearch profile recipes/wan2.1-t2v-1.3b-480p.yaml --out profiles/wan13b

      compactsearch profile recipes/wan2.1-t2v-1.3b-480p.yaml --out profiles/wan13b --resume

      compactsearch profile recipes/tiny-random-wan.yaml --device cpu --json
    """
    from dataclasses import replace

    from compactsearch.errors import InputError
    from compactsearch.profile.capture import ONE_PASS
    from compactsearch.profile.recipe import default_recipe_path, load_recipe, read_prompts
    from compactsearch.profile.run import run_profile

    if one_pass not in ONE_PASS:
        raise InputError(f"--one-pass must be one of {', '.join(ONE_PASS)}, got {one_pass!r}")

    recipe = recipe or default_recipe_path()
    r = load_recipe(recipe)
    if prompts is not None:
        r = r.with_prompts(read_prompts(prompts, "--prompts file"))
    if per_prompt is not None:
        r = replace(r, per_prompt=per_prompt)
    out = out or Path("profiles") / r.name
    check_output(out, "--out", "dir")
    with progress_display("profile", TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), transient=True) as bars:
        hooks = _RichProgress(bars)
        result = run_profile(r, out, device=device, resume=resume, progress=hooks, one_pass=one_pass)
        hooks.finish()
    if result.out is None:  # a torchrun rank other than 0
        return
    summary = {
        "profile": str(result.out),
        "prompts": result.prompts,
        "computed": len(result.computed),
        "resumed": len(result.skipped),
        "world_size": result.world_size,
        "seconds": round(result.seconds, 2),
        "timings": result.timings,
    }
    if result.timings is not None:
        _print_timings(result.timings)
    if json_out:
        print_json(summary)
    else:
        console.print(f"profile written to {result.out}: {result.prompts} prompts "
                      f"({len(result.computed)} computed here, {len(result.skipped)} resumed) "
                      f"in {result.seconds:.1f}s")


def _print_timings(t: dict) -> None:
    """The timing table on stderr: where the run's time went."""
    from rich.table import Table

    table = Table(title="where the profile's time went", title_justify="left",
                  caption=f"total {t['total']:.1f}s; {t['prompts']} prompt(s) computed, {t['per_prompt']:.2f}s per "
                          f"prompt after the first; start-up (load + the first prompt's extra) {t['startup']:.1f}s",
                  caption_justify="left")
    table.add_column("section")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for row in t["rows"]:
        table.add_row(row["section"], f"{row['seconds']:.2f}", f"{100 * row['share']:.1f}%")
    console.print(table)
