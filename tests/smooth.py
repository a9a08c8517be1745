"""Smooth, real-like block attention for the search's acceptance tests and benchmarks (no planted pattern).

Where `planted` plants a pattern of the language and checks that the search finds it, these heads come from
shapes the language can only approximate, as published analyses of video DiT attention describe them:

- ``gauss``: a 3D Gaussian kernel of the distance between block centres (per-axis widths drawn per head);
- ``stripe``: a temporal stripe: the same place in every frame (narrow in space, wide in time);
- ``frame``: a same-frame global head: the whole frame, narrow in time;
- ``sink``: a Gaussian head whose rows also give 10-30% of their mass to 1-4 sink key blocks.

Every weight is multiplied by log-normal noise; rows are normalised to the query block's token count, as a
profile's are. Block centres are the mean (t, h, w) token coordinates of each block's video tokens, in tokens.
`smooth_profile` stacks heads of a kind cycle into a `Profile`, optionally with per-prompt tensors (fresh noise
per prompt around the same kernel and the same sinks).
"""

from __future__ import annotations

import math

import torch

from compactsearch.geometry import VideoGeometry
from compactsearch.profile.store import Profile
from compactsearch.tiling import TileLayout

__all__ = ["SMOOTH_KINDS", "smooth_mass", "smooth_profile", "WAN13_480P"]

SMOOTH_KINDS = ("gauss", "stripe", "frame", "sink")
WAN13_480P = VideoGeometry(21, 30, 52)  # Wan 2.1 1.3B at 480p: 21 x 30 x 52 latent tokens


def smooth_mass(layout: TileLayout, kind: str, gen: torch.Generator, noise: float = 0.5,
                sinks: tuple | None = None) -> tuple[torch.Tensor, dict]:
    """``[NB, NB]`` float32 block mass of one head of ``kind`` and what was drawn (widths, sinks, sink share).

    Args:
        sinks: ``(blocks, share)`` to reuse (per-prompt draws of one head); drawn when None.
    """
    g = layout.geometry
    c, video = layout.block_centres()
    nb = layout.num_blocks

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand(1, generator=gen))

    if kind in ("gauss", "sink"):
        sigma = (u(1.0, 4.0), u(2.0, 0.25 * g.height), u(2.0, 0.25 * g.width))
    elif kind == "stripe":
        sigma = (u(0.6, 1.0) * g.frames, u(1.0, 3.0), u(1.0, 3.0))
    elif kind == "frame":
        sigma = (u(0.5, 1.5), u(0.6, 1.0) * g.height, u(0.6, 1.0) * g.width)
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {SMOOTH_KINDS}")
    d2 = sum(((c[:, None, a] - c[None, :, a]) / sigma[a]) ** 2 for a in range(3))
    w = torch.exp(-0.5 * d2) + 1e-4  # a little mass everywhere, as softmax leaves
    w = w * torch.exp(noise * torch.randn(nb, nb, generator=gen, dtype=torch.float64))
    w = w * layout.block_lengths().double()[None, :]  # a key block's share grows with its tokens
    w[:, ~video] = w[:, video].mean()  # text keys: a modest constant share
    info = {"sigma": sigma}
    if kind == "sink":
        if sinks is None:
            k = int(torch.randint(1, 5, (1,), generator=gen))
            blocks = torch.randperm(int(video.sum()), generator=gen)[:k]
            sinks = (video.nonzero().flatten()[blocks], u(0.1, 0.3))
        blocks, share = sinks
        w[:, blocks] = 0.0
        split = torch.rand(len(blocks), generator=gen, dtype=torch.float64) + 0.5
        split = split / split.sum()
        rest = w / w.sum(1, keepdim=True)
        w = rest * (1 - share)
        w[:, blocks] = share * split[None, :] * torch.exp(0.2 * torch.randn(nb, len(blocks), generator=gen,
                                                                            dtype=torch.float64))
        info["sinks"] = sinks
    tokens = layout.block_lengths().double()[:, None]
    return (w / w.sum(1, keepdim=True) * tokens).float(), info


def smooth_profile(geometry: VideoGeometry = WAN13_480P, tile=(4, 8, 4), block_size: int = 128, layers: int = 2,
                   heads: int = 8, kinds=SMOOTH_KINDS, prompts: int = 0, seed: int = 0) -> tuple[Profile, dict]:
    """A one-bucket profile whose head ``(l, h)`` is of kind ``kinds[(l * heads + h) % len(kinds)]``.

    Returns:
        (profile, info): ``info[(layer, head)]`` is ``(kind, what smooth_mass drew)``.
    """
    layout = TileLayout(geometry, tile, block_size)
    gen = torch.Generator().manual_seed(seed)
    mass, per_prompt, info = {}, {}, {}
    for l in range(layers):
        hs, hs_pp = [], []
        for h in range(heads):
            kind = kinds[(l * heads + h) % len(kinds)]
            state = gen.get_state()
            m, drawn = smooth_mass(layout, kind, gen)
            info[(l, h)] = (kind, drawn)
            if prompts:
                pp = []
                for _ in range(prompts):  # same kernel and sinks, fresh noise
                    g2 = torch.Generator()
                    g2.set_state(state)
                    m0, _ = smooth_mass(layout, kind, g2, sinks=drawn.get("sinks"))
                    noise = torch.exp(0.3 * torch.randn(m0.shape, generator=gen))
                    m1 = m0 * noise
                    pp.append(m1 / m1.sum(1, keepdim=True) * layout.block_lengths().float()[:, None])
                pp = torch.stack(pp)
                hs_pp.append(pp)
                m = pp.mean(0)
            hs.append(m)
        mass[(0, l)] = torch.stack(hs)
        if prompts:
            per_prompt[(0, l)] = torch.stack(hs_pp, 1)
    prof = Profile.from_block_mass(
        mass, geometry=geometry, tile=tile, block_size=block_size, buckets=[(0, 10)],
        per_prompt=per_prompt or None, prompts=[f"smooth prompt {i}" for i in range(prompts)] or None,
        model={"id": "smooth", "adapter": "wan", "heads": heads, "head_dim": 64}, recipe={},
    )
    return prof, info


def _check() -> None:  # a quick look: python tests/smooth.py
    prof, info = smooth_profile()
    m = prof.mass(0, 0)
    print(prof.geometry.describe(), prof.layout().describe(), tuple(m.shape), math.isclose(float(m[0].sum()),
          float(prof.layout().block_lengths().sum()), rel_tol=1e-3))


if __name__ == "__main__":
    _check()
