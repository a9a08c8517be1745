"""Sink candidates of one head: key tiles that take much of the head's mass from query tiles far from them.

A sink (a vertical stripe of the attention map) is a key tile every query attends to. The search keeps up to
`compactsearch.patterns.MAX_SINKS` of them per head, always a prefix of this module's ranking: the key tiles by
**column mass outside a local neighbourhood** -- the mass a key tile receives from query tiles farther than one
temporal tile or outside a window of about a third of the frame on each axis around it. A local head's columns
get their mass from their neighbours, so this stays small for them; a sink's column gets it from everywhere.

With per-prompt masses the score of a key tile is its *smallest* share over the prompts (a sink that only one
prompt has is not a sink of the model): the ranking prefers tiles that are sinks in every prompt.

Only key tiles whose mean share is at least `MIN_SHARE_RATIO` times a uniform column's (``1 / key tiles``) are
candidates: a stripe, not the noise of a local or uniform head (whose columns get less than a uniform share from
outside their neighbourhood). Heads without such a tile get no candidates, and their search costs what it did
without sinks.
"""

from __future__ import annotations

import torch

from compactsearch.patterns import MAX_SINKS
from compactsearch.search.scoring import HeadTables, LayoutTables

__all__ = ["sink_candidates", "outside_column_mass", "MIN_SHARE_RATIO"]

MIN_SHARE_RATIO = 2.0


def _near(lt: LayoutTables) -> torch.Tensor:
    """``[nq, nk]`` bool (raster ids both sides): key tile inside the query tile's local neighbourhood."""
    cached = getattr(lt, "_sink_near", None)
    if cached is not None:
        return cached
    nt, nh, nw = lt.grid
    coords = lt.layout.tile_coords
    h, w = max(1, nh // 3), max(1, nw // 3)
    ar_t, ar_h, ar_w = torch.arange(nt), torch.arange(nh), torch.arange(nw)
    in_t = (coords[:, 0, None] - ar_t[None, :]).abs() <= 1  # [nq, nt]
    sh, sw = lt._sh[h - 1][:, None], lt._sw[w - 1][:, None]
    in_h = (ar_h[None, :] >= sh) & (ar_h[None, :] < sh + h)  # [nq, nh]
    in_w = (ar_w[None, :] >= sw) & (ar_w[None, :] < sw + w)  # [nq, nw]
    near = (in_t[:, :, None, None] & in_h[:, None, :, None] & in_w[:, None, None, :]).reshape(lt.n_tiles, -1)
    lt._sink_near = near
    return near


def outside_column_mass(lt: LayoutTables, tile_mass: torch.Tensor) -> torch.Tensor:
    """``[nk]`` per key tile (raster id) the share of all mass it receives from outside its neighbourhood.

    Args:
        tile_mass: ``[nq, nk]`` (query tile, key tile) mass (`HeadTables.mt`, or `LayoutTables.tile_matrix`).
    """
    total = float(tile_mass.sum())
    outside = torch.where(_near(lt), 0.0, tile_mass).sum(0)
    return outside / max(total, 1e-300)


def sink_candidates(ht: HeadTables, count: int = MAX_SINKS,
                    prompt_mass: torch.Tensor | None = None) -> tuple[tuple[int, int, int], ...]:
    """Up to ``count`` key tiles ``(t, h, w)``, best first (see the module docstring).

    Args:
        ht: the head's fast tables (mean mass over the calibration prompts).
        prompt_mass: ``[P, NQB, NKB]`` per-prompt block mass of this head, when the profile kept it.
    """
    lt = ht.lt
    mean = outside_column_mass(lt, ht.mt)
    score = mean
    if prompt_mass is not None and prompt_mass.shape[0] > 1:
        nvq = lt.nvq
        per = torch.stack([outside_column_mass(lt, lt.tile_matrix(m[:nvq, :nvq].double())) for m in prompt_mass])
        score = per.min(0).values
    # a stripe on the mean mass; ranked by the score (the worst prompt's share when per-prompt mass is given)
    score = torch.where(mean >= MIN_SHARE_RATIO / lt.n_tiles, score, -1.0)
    order = torch.argsort(score, descending=True, stable=True)[:count]
    _, nh, nw = lt.grid
    return tuple((int(i) // (nh * nw), (int(i) // nw) % nh, int(i) % nw) for i in order if float(score[i]) >= 0)
