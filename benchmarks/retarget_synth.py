"""Retargeting by search on a synthesised target profile: does the source profile hold what a target needs?

`synthesize_profile(source, geometry)` builds the block mass and value factors that the source's heads would
have on another grid of the same model, so a config can be *searched* there instead of mapping each pattern by a
fixed rule (`compactsearch.retarget`). Measured against profiles made natively at the targets, in four variants
(each searched at the tokens-rule config's whole-run density, scored on the real target profile):

    python benchmarks/retarget_synth.py --source-profile P8 --targets P12 P16 P40 --work DIR

prints, per target: the tokens rule, search on the synthesised profile, search on the real target mass with
synthesised values, on synthesised mass with the real target values, and the native search (recall and the
estimated relative output error 1 - fidelity). docs/search.md, "Retargeting", has the table and what it says.

The synthesis model:

- **Mass depends on the token offset, and on where the query sits.** A target query block stands for the source
  query block at the same fraction of the grid, moved by as little as the source grid needs to hold the key at
  the same offset in tokens; its mass towards a target key block is the source mass per key token at that
  offset (RoPE-relative heads attend by offset). Block centroids in tokens give positions and offsets; nearest
  source blocks stand for them.
- **Beyond the source grid** (a longer or larger target reaches offsets the source never had), mass per token
  continues the source's own decay geometrically: with ``m1`` the mass per token at the offset clamped to the
  source grid and ``m2`` one source tile further back towards the query, ``m1 (m1 / m2)^k`` for ``k`` tiles
  beyond (capped at ``m1``: no growth). A stripe through all frames (``m1 ~ m2``) stays a stripe, a local head
  decays as fast as it did.
- **Text** keeps its mass per token; text queries map by fraction like video ones.
- **Value factors** (`compactsearch.profile.values.gram_factor`: rows are key blocks' mean values) take the row of
  the source block at the same fraction of the grid.
- Rows are scaled to sum to their query block's token count, as a measured profile's do.

What it cannot know: anything tied to absolute positions that the source grid did not have, and value statistics
that change with the grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/retarget.py

from retarget import config_scores  # noqa: E402

from compactsearch.config import summarize  # noqa: E402
from compactsearch.errors import InputError  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.profile.store import Profile  # noqa: E402
from compactsearch.retarget import retarget  # noqa: E402
from compactsearch.search import SearchSettings, run_search  # noqa: E402
from compactsearch.tile_choice import default_tiling  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402

__all__ = ["synthesize_profile"]


def _nearest(points: torch.Tensor, centres: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``centres`` ``[M, 3]`` to every point ``[..., 3]`` (axes divided by ``scale``)."""
    flat = points.reshape(-1, 3) / scale
    out = torch.empty(flat.shape[0], dtype=torch.int64)
    c = centres / scale
    for s in range(0, flat.shape[0], 65536):  # bounded memory on large grids
        out[s : s + 65536] = torch.cdist(flat[s : s + 65536], c).argmin(1)
    return out.reshape(points.shape[:-1])


def _index_maps(src: TileLayout, dst: TileLayout) -> dict[str, torch.Tensor]:
    """Source blocks standing for every target query block, key block (at the query's token offset, clamped to
    the source grid), the key one source tile further back, and the tiles beyond the grid ``[NBt, NBt]``."""
    cs, s_video = src.block_centres()  # text-only blocks: centre 0, video False
    ct, t_video = dst.block_centres()
    s_dims = torch.tensor(src.geometry.thw, dtype=torch.float64)
    t_dims = torch.tensor(dst.geometry.thw, dtype=torch.float64)
    step = torch.tensor(src.tile_thw, dtype=torch.float64)
    s_vidx = torch.nonzero(s_video).flatten()
    s_text = torch.nonzero(~s_video).flatten()
    nbt = dst.num_blocks
    # queries (and value rows): the source block at the same fraction of the grid
    frac = (ct + 0.5) * s_dims / t_dims - 0.5
    at_frac = s_vidx[_nearest(frac, cs[s_vidx], step)]
    t_text = torch.nonzero(~t_video).flatten()
    if t_text.numel():
        if not s_text.numel():
            raise InputError("the target grid has text tokens, the source profile has none")
        at_frac[t_text] = s_text[torch.arange(t_text.numel()).clamp(max=s_text.numel() - 1)]
    # keys: the target offset in tokens from a source query block that has it (the fraction-mapped position,
    # moved by as little as the source grid needs to hold query and key), clamped into the source grid
    lo, hi = cs[s_vidx].min(0).values, cs[s_vidx].max(0).values
    off = ct[None, :, :] - ct[:, None, :]  # [NBt, NBt, 3]
    qpos = cs[at_frac][:, None, :].expand_as(off)
    shifted = torch.minimum(torch.maximum(torch.minimum(torch.maximum(qpos, lo - off), hi - off), lo), hi)
    q_pair = s_vidx[_nearest(shifted, cs[s_vidx], step)]
    want = cs[q_pair] + off
    clamped = torch.minimum(torch.maximum(want, lo), hi)
    excess = want - clamped
    beyond = (excess.abs() / step).sum(-1)
    back = clamped - torch.sign(excess) * torch.minimum(step, (hi - lo).clamp_min(0.0))
    back = torch.minimum(torch.maximum(back, lo), hi)
    k_src = s_vidx[_nearest(clamped, cs[s_vidx], step)]
    k_back = s_vidx[_nearest(back, cs[s_vidx], step)]
    # pairs with text on either side: absolute mapping, no extrapolation
    text_pair = ~(t_video[:, None] & t_video[None, :])
    k_abs = at_frac[None, :].expand(nbt, nbt)
    q_pair = torch.where(text_pair, at_frac[:, None].expand(nbt, nbt), q_pair)
    k_src = torch.where(text_pair, k_abs, k_src)
    k_back = torch.where(text_pair, k_abs, k_back)
    beyond = torch.where(text_pair | (beyond < 1e-9), torch.zeros_like(beyond), beyond)
    return {"q": q_pair, "k": k_src, "k_back": k_back, "beyond": beyond, "value": at_frac}


def _synth_mass(mass: torch.Tensor, maps: dict, src_len: torch.Tensor, dst_len: torch.Tensor) -> torch.Tensor:
    """``[H, NBt, NBt]`` block mass from the source's ``[H, NBs, NBs]`` (see the module docstring)."""
    per_token = mass.double() / src_len[None, None, :]
    m1 = per_token[:, maps["q"], maps["k"]]  # [H, NBt, NBt]
    m2 = per_token[:, maps["q"], maps["k_back"]]
    ratio = torch.where(m2 > 0, m1 / m2.clamp_min(1e-300), torch.ones_like(m1)).clamp(max=1.0)
    m = m1 * ratio.pow(maps["beyond"][None])
    m = m * dst_len[None, None, :]
    total = m.sum(-1, keepdim=True)
    m = torch.where(total > 0, m * (dst_len[None, :, None] / total.clamp_min(1e-300)), m)
    return m.float()


def synthesize_profile(source: Profile, geometry: VideoGeometry,
                       tiling: tuple[tuple[int, int, int], int] | None = None) -> Profile:
    """The source profile's heads at ``geometry`` (same model), tiled by ``tiling`` (default `default_tiling`).

    Mean mass and value factors are synthesised (module docstring); per-prompt tensors and samples are not
    carried (held-out scoring needs a measured profile). The provenance (``recipe["synthesized_from"]``) names the
    source grid.
    """
    if (geometry.text_tokens > 0) != (source.geometry.text_tokens > 0) or (
            geometry.text_tokens and geometry.text_position != source.geometry.text_position):
        raise InputError(f"the target grid's text ({geometry.describe()}) must sit where the source's does "
                         f"({source.geometry.describe()})")
    head_dim = int(source.model.get("head_dim") or 0) or None
    tile, block = tiling if tiling is not None else default_tiling(geometry, head_dim)
    src, dst = source.layout(), TileLayout(geometry, tuple(tile), block)
    maps = _index_maps(src, dst)
    src_len, dst_len = src.block_lengths().double(), dst.block_lengths().double()
    mass, factors = {}, {}
    for b, layer in source.keys():
        mass[(b, layer)] = _synth_mass(source.mass(b, layer), maps, src_len, dst_len)
        u = source.value_factor(b, layer)
        if u is not None:
            factors[(b, layer)] = u[:, maps["value"]]
    recipe = {**source.recipe, "synthesized_from": {"geometry": source.geometry.to_dict(),
                                                      "tile": list(source.tile), "block_size": source.block_size}}
    return Profile.from_block_mass(
        mass, geometry=geometry, tile=tuple(tile), block_size=block, buckets=list(source.buckets),
        num_steps=source.num_steps, model=dict(source.model), recipe=recipe,
        value_factor=factors if len(factors) == len(mass) else None)


def _mixed(mass_from: Profile, values_from: Profile, like: Profile) -> Profile:
    """``like``'s grid with one profile's mass and another's value factors."""
    return Profile.from_block_mass(
        {k: mass_from.mass(*k) for k in like.keys()}, geometry=like.geometry, tile=tuple(like.tile),
        block_size=like.block_size, buckets=list(like.buckets), num_steps=like.num_steps, model=dict(like.model),
        value_factor={k: values_from.value_factor(*k) for k in like.keys()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-profile", type=Path, required=True)
    ap.add_argument("--targets", type=Path, nargs="+", required=True, help="profiles made natively at the targets")
    ap.add_argument("--budget", type=float, default=0.3, help="the source config's whole-run budget")
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    src = Profile.load(args.source_profile)
    if not src.has_values:
        raise SystemExit("the source profile has no value statistics")
    source = run_search(src, SearchSettings(budget=args.budget), args.work / "source.yaml", workers=1,
                        fresh=True).config
    print("| target | config | whole-run density | recall | estimated output error (1 - fidelity) |")
    print("| --- | --- | --- | --- | --- |")
    for path in args.targets:
        tgt = Profile.load(path)
        t0 = time.perf_counter()
        syn = synthesize_profile(src, tgt.geometry, (tuple(tgt.tile), tgt.block_size))
        t_syn = time.perf_counter() - t0
        rule = retarget(source, tgt.geometry.thw, tgt.num_steps, "tokens",
                        tiling=(tuple(tgt.tile), tgt.block_size))
        density = summarize(rule)["density"]
        variants = [("tokens rule", None), ("search, synthesised profile", syn),
                    ("search, target mass + synthesised values", _mixed(tgt, syn, tgt)),
                    ("search, synthesised mass + target values", _mixed(syn, tgt, tgt)),
                    ("search, target profile (native)", tgt)]
        for i, (label, prof) in enumerate(variants):
            cfg = rule if prof is None else run_search(prof, SearchSettings(budget=density),
                                                       args.work / f"{path.name}-{i}.yaml", workers=1,
                                                       fresh=True).config
            sc = config_scores(cfg, tgt)
            print(f"| {path.name} | {label} | {summarize(cfg)['density']:.4f} | {sc['recall']:.4f} | "
                  f"{1 - sc['fidelity']:.5f} |", flush=True)
        print(f"(synthesis {t_syn:.2f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
