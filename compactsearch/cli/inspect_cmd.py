"""`compactsearch inspect CONFIG`: per-head table and a picture of one head."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from compactsearch.cli._common import ConfigArg, JsonOpt, console, print_json
from compactsearch.config import load_config, summarize
from compactsearch.errors import InputError
from compactsearch.views import head_picture, head_rows


def inspect(
    config: ConfigArg,
    layer: Annotated[int | None, typer.Option(help="Only this layer; with --head, draw that head.")] = None,
    head: Annotated[int | None, typer.Option(help="Draw this head's windows and block mask (needs --layer).")] = None,
    bucket: Annotated[int | None, typer.Option(help="Only this step bucket (its number, as the profile numbers it).")
                      ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a config: pattern, density and recall per layer and head, and a picture of one head.

    Examples:
        compactsearch inspect config.yaml
        compactsearch inspect config.yaml --layer 3
        compactsearch inspect config.yaml --layer 3 --head 7
    """
    cfg = load_config(config)
    if head is not None and layer is None:
        raise InputError("--head needs --layer: say which layer's head to draw")
    if bucket is not None and cfg.bucket_index(bucket) is None:
        raise InputError(f"--bucket {bucket} is not in the config: its buckets are "
                         f"{', '.join(str(b.id) for b in cfg.buckets)}")
    if layer is not None and not 0 <= layer < cfg.num_layers:
        raise InputError(f"--layer {layer} is out of range: the config has layers 0..{cfg.num_layers - 1}")
    if head is not None and not 0 <= head < cfg.num_heads:
        raise InputError(f"--head {head} is out of range: the config has heads 0..{cfg.num_heads - 1}")
    layout = cfg.layout()
    kind = cfg.provenance.get("kind", "unknown")
    run = summarize(cfg)
    console.print(
        f"[bold]{cfg.model_id}[/] ({cfg.adapter}), {cfg.geometry.describe()}, {cfg.num_layers} layers x "
        f"{cfg.num_heads} heads; {layout.describe()}; {cfg.num_steps} steps, {cfg.dense_warmup} dense warm-up; "
        f"kind: {kind}; read {cfg.source_format}"
    )
    console.print(f"density {run['density']:.4f} over the whole run (ideal attention speed-up "
                  f"{run['est_attention_speedup']:.2f}x), {run['density_sparse_steps']:.4f} over the sparse steps")
    rows = head_rows(cfg, bucket=bucket, layer=layer)
    table = Table(title_justify="left")
    oracle = any(r["oracle_recall"] is not None or r["efficiency"] is not None for r in rows)  # a searched config
    for col in ("bucket", "steps", "layer", "head", "pattern", "density", "recall") + (
            ("oracle", "efficiency") if oracle else ()):
        table.add_column(col, overflow="fold")

    def num(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    for r in rows:
        cells = [str(r["bucket"]), f"{r['steps'][0]}-{r['steps'][1]}", str(r["layer"]), str(r["head"]),
                 r["pattern"], f"{r['density']:.3f}", num(r["recall"])]
        table.add_row(*cells, *((num(r["oracle_recall"]), num(r["efficiency"])) if oracle else ()))
    if "pattern_efficiency" in cfg.summary:
        console.print(f"pattern efficiency {cfg.summary['pattern_efficiency']:.4f}: mean recall / mean recall of "
                      "the top blocks by mass at each head's density (oracle)")
    if head is None:
        console.print(table)
    if head is not None:
        bi = 0 if bucket is None else cfg.bucket_index(bucket)
        console.print(head_picture(cfg, bi, layer, head))
    if json_out:
        print_json({"rows": rows, "summary": cfg.summary, "run": run, "provenance": cfg.provenance})
