"""`compactsearch report PROFILE [--config C] --out DIR`: matplotlib figures in one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from compactsearch.cli._common import JsonOpt, console, print_json
from compactsearch.cli._progress import progress_display


def report(
    profile: Annotated[Path, typer.Argument(help="A profile directory (from `compactsearch profile`).",
                                            show_default=False)],
    out: Annotated[Path, typer.Option(help="Output directory: report.html and figures/*.png are written there.",
                                      show_default=False)],
    config: Annotated[Path | None, typer.Option(help="A config searched on this profile: outline its windows, "
                                                     "show its density and recall.", show_default=False)] = None,
    head: Annotated[list[str] | None, typer.Option(help="LAYER.HEAD: also draw this head's recall-versus-cost "
                                                        "Pareto front (repeatable).", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(help="Processes reading the profile in parallel [default: CPU "
                                                     "cores].", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Draw a profile (and a config) as one self-contained HTML report with PNG figures.

    \b
    Examples:
        compactsearch report out/wan-profile --out out/wan-report
        compactsearch report out/wan-profile --config wan-0.3.yaml --out out/wan-report
        compactsearch report out/wan-profile --config wan-0.3.yaml --head 20.7 --head 3.0 --out out/wan-report
    """
    from compactsearch._io import check_output
    from compactsearch.report import build_report  # imports matplotlib: only when this command runs

    check_output(out, "--out", "dir")

    with progress_display("report", TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result = build_report(profile, out, config=config, heads=head or (), progress=progress, workers=workers)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {result.html} and {len(result.figures)} figures in {result.seconds:.1f} s")
    if json_out:
        print_json(result.to_json())
