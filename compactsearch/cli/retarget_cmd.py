"""`compactsearch retarget CONFIG (--grid T,H,W | --video F,H,W | --profile DIR) [--steps S] --out NEW`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from compactsearch.cli._common import ConfigArg, JsonOpt, console, existing_file, print_json

__all__ = ["retarget"]


def _triple(text: str, option: str) -> tuple[int, int, int]:
    from compactsearch.errors import InputError

    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(f"{option} takes three integers like 21,45,80, got {text!r}")
    if min(values) < 1:
        raise InputError(f"{option} sizes must be positive, got {text!r}")
    return values


def retarget(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The retargeted config YAML to write.",
                                      show_default=False)],
    grid: Annotated[str | None, typer.Option(help="Target token grid T,H,W (latent frames, rows, columns).",
                                             show_default=False)] = None,
    video: Annotated[str | None, typer.Option(help="Target video size FRAMES,HEIGHT,WIDTH in pixels (through the "
                                              "model's VAE and patch factors).", show_default=False)] = None,
    profile: Annotated[Path | None, typer.Option(help="Take the target grid and step count from a profile of the "
                                                 "same model.", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(help="Target step count [default: the config's, or the profile's].",
                                              show_default=False)] = None,
    rule: Annotated[str, typer.Option(help="How windows and frame distances map: tokens (same extent in tokens) or "
                                      "fraction (same share of the grid).")] = "tokens",
    json_out: JsonOpt = False,
) -> None:
    """Map a config to another token grid and/or step count of the same model, re-choosing the tiling.

    \b
    Examples:
        compactsearch retarget wan-480p.yaml --video 81,720,1280 --out wan-720p.yaml
        compactsearch retarget tiny-0.3.yaml --grid 12,16,16 --out tiny-12f.yaml
        compactsearch retarget wan-0.3.yaml --steps 30 --out wan-0.3-30steps.yaml
    """
    from compactsearch._io import check_output
    from compactsearch.config import load_config
    from compactsearch.errors import InputError
    from compactsearch.retarget import retarget as run_retarget
    from compactsearch.retarget import token_grid

    given = [x for x in (grid, video, profile) if x is not None]
    if len(given) > 1:
        raise InputError("give one of --grid, --video or --profile")
    if not given and steps is None:
        raise InputError("say what to retarget to: --grid T,H,W, --video FRAMES,HEIGHT,WIDTH, --profile DIR or "
                         "--steps S")
    check_output(out, "--out", "file")
    cfg = load_config(existing_file(config, "config"))
    thw, text, tiling = None, None, None
    if grid is not None:
        thw = _triple(grid, "--grid")
    elif video is not None:
        pixels = _triple(video, "--video")
        thw = token_grid(cfg, *pixels)
    elif profile is not None:
        from compactsearch.profile import Profile

        prof = Profile.load(profile)
        pid = (prof.model or {}).get("id")
        if (pid and pid != cfg.model_id) or prof.num_layers != cfg.num_layers or prof.num_heads != cfg.num_heads:
            raise InputError(f"profile {profile} is of another model ({pid or 'unknown'}, {prof.num_layers} layers x "
                             f"{prof.num_heads} heads) than the config ({cfg.model_id}, {cfg.num_layers} x "
                             f"{cfg.num_heads}): retargeting maps a config within one model")
        thw, text = prof.geometry.thw, prof.geometry.text_tokens
        tiling = (tuple(prof.tile), prof.block_size)  # the profile's tiling: the result can be scored on it
        steps = steps or prof.num_steps
    new = run_retarget(cfg, thw, steps, rule, text_tokens=text, tiling=tiling)
    if video is not None:  # the pixel size, so that a later --video checks the factors against it
        new = replace(new, provenance={**new.provenance, "video": dict(zip(("frames", "height", "width"), pixels))})
    new.save(out)
    s = new.summary
    console.print(f"{config}: {cfg.geometry.describe()}, tile {list(cfg.tile)}/{cfg.block_size}, {cfg.num_steps} "
                  f"steps -> {new.geometry.describe()}, tile {list(new.tile)}/{new.block_size}, {new.num_steps} steps "
                  f"(rule {rule})")
    console.print(f"density {s['density']:.4f} over the whole run (ideal attention speed-up "
                  f"{s['est_attention_speedup']:.2f}x), {s['density_sparse_steps']:.4f} over the sparse steps; "
                  f"{s['dense_steps']} dense warm-up steps of {s['steps']}")
    budget = (cfg.search or {}).get("budget")
    if budget is not None and s["density"] > float(budget) + 0.005:
        console.print(f"[yellow]the whole-run density exceeds the source's budget {float(budget):g}: validate will "
                      "fail its budget check; search a profile of this grid for a config within it[/]")
    console.print(f"wrote {out}")
    if json_out:
        print_json({"config": str(out), "summary": s, "provenance": new.provenance})
