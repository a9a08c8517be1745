"""What `compactsearch inspect` shows of a config: one row per head, and readable ASCII pictures of a head."""

from __future__ import annotations

from compactsearch.config import Config
from compactsearch.masks import tile_mask

__all__ = ["head_rows", "head_picture", "window_picture"]


def window_picture(config: Config, bucket: int, layer: int, head: int) -> str:
    """For a query tile in the middle of the video: one tile-grid map per temporal distance.

    ``Q`` is the query tile, ``#`` a key tile attended at that distance, ``.`` a skipped one, ``S`` a sink key
    tile (kept by every query tile); frames before the query's are drawn too when the pattern has sinks there.
    """
    layout = config.layout()
    pattern = config.buckets[bucket].layers[layer].heads[head].pattern
    nt, nh, nw = layout.grid_thw
    qt, qh, qw = nt // 2, nh // 2, nw // 2
    tm = tile_mask(pattern, layout)
    seq_of_tile = {int(t): i for i, t in enumerate(layout.order.tolist())}
    qid = qt * nh * nw + qh * nw + qw
    row = tm[seq_of_tile[qid]]
    sinks = set(pattern.sinks)
    lines = [f"query tile (t={qt}, h={qh}, w={qw}) of a {nt}x{nh}x{nw} tile grid; key tiles by frame distance:"]
    if sinks:
        lines[0] += f" ('S': sink key tiles {', '.join(str(list(s)) for s in pattern.sinks)})"
    frames = sorted({s[0] for s in sinks if s[0] < qt}) + list(range(qt, nt))
    for t in frames:
        lines.append(f"  dt={abs(t - qt)} (tile frame {t}):")
        for h in range(nh):
            chars = []
            for w in range(nw):
                tid = t * nh * nw + h * nw + w
                if tid == qid:
                    chars.append("Q")
                elif (t, h, w) in sinks:
                    chars.append("S")
                else:
                    chars.append("#" if bool(row[seq_of_tile[tid]]) else ".")
            lines.append("    " + "".join(chars))
    return "\n".join(lines)


def head_picture(config: Config, bucket: int, layer: int, head: int, max_size: int = 64) -> str:
    """The head's pattern, its windows around a middle query tile, and its block mask (downsampled)."""
    hc = config.buckets[bucket].layers[layer].heads[head]
    mask = config.layer_mask(bucket, layer)
    d = float(mask.head_density()[head])
    recall = "" if hc.recall is None else f", recall {hc.recall:.3f}"
    if hc.oracle_recall is not None:
        recall += f", oracle recall {hc.oracle_recall:.3f}"
    if hc.efficiency is not None:
        recall += f", pattern efficiency {hc.efficiency:.3f}"
    text = [f"bucket {config.buckets[bucket].id} layer {layer} head {head}: {hc.pattern.describe()} "
            f"(density {d:.3f}{recall})", ""]
    text.append(window_picture(config, bucket, layer, head))
    text.append("")
    text.append(f"block mask ({mask.num_q_blocks}x{mask.num_kv_blocks} blocks; '#' computed, query blocks down, "
                f"key blocks across; downsampled to at most {max_size}):")
    text.append(mask.ascii(head, max_size=max_size))
    return "\n".join(text)


def head_rows(config: Config, bucket: int | None = None, layer: int | None = None) -> list[dict]:
    """One row per (bucket, layer, head): pattern text, built block density, recall, oracle recall and pattern
    efficiency when the search recorded them (None otherwise)."""
    layout = config.layout()
    rows = []
    for bi, b in enumerate(config.buckets):
        if bucket is not None and b.id != bucket:
            continue
        for li, lc in enumerate(b.layers):
            if layer is not None and li != layer:
                continue
            mask = config.layer_mask(bi, li, layout)
            dens = mask.head_density()
            for hc in lc.heads:
                rows.append({"bucket": b.id, "steps": list(config.bucket_steps(bi)), "layer": li, "head": hc.head,
                             "pattern": hc.pattern.describe(), "density": float(dens[hc.head]),
                             "recall": hc.recall, "oracle_recall": hc.oracle_recall,
                             "efficiency": hc.efficiency})
    return rows
