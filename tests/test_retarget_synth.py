"""The synthesised target profile of benchmarks/retarget_synth.py: identity at the source grid, and the two
extrapolation cases its docstring names (a stripe through all frames stays one, a local head keeps decaying)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.retarget_synth import synthesize_profile  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.profile.store import Profile  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402

TILE, BLOCK = (4, 4, 8), 128


def _profile(frames: int, widths: list[float]) -> Profile:
    """Heads whose mass per key token is ``exp(-|dt| / width)`` in frames (inf: a stripe through all frames)."""
    g = VideoGeometry(frames, 16, 16)
    lay = TileLayout(g, TILE, BLOCK)
    cent, length = lay.block_centres()[0], lay.block_lengths().double()
    dt = (cent[:, None, 0] - cent[None, :, 0]).abs()
    heads = []
    for w in widths:
        m = torch.exp(-dt / w) * length[None, :]
        heads.append(m * (length[:, None] / m.sum(-1, keepdim=True)))
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(len(widths), lay.num_blocks, 4, generator=gen)
    return Profile.from_block_mass({(0, 0): torch.stack(heads).float()}, geometry=g, tile=TILE, block_size=BLOCK,
                                   num_steps=2, value_factor={(0, 0): u})


def test_same_grid_is_the_identity():
    src = _profile(8, [2.0, float("inf")])
    same = synthesize_profile(src, src.geometry, (TILE, BLOCK))
    torch.testing.assert_close(same.mass(0, 0), src.mass(0, 0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same.value_factor(0, 0), src.value_factor(0, 0))


def test_longer_grid_extends_stripes_and_decay():
    src = _profile(8, [4.0, float("inf")])  # two tile-frames
    syn = synthesize_profile(src, VideoGeometry(16, 16, 16), (TILE, BLOCK))  # four
    want = _profile(16, [4.0, float("inf")])
    got, ref = syn.mass(0, 0), want.mass(0, 0)
    lengths = TileLayout(VideoGeometry(16, 16, 16), TILE, BLOCK).block_lengths().float()
    torch.testing.assert_close(got.sum(-1), lengths.expand(2, -1), rtol=1e-4, atol=1e-3)  # rows sum to tokens
    # the stripe and the decaying head are reproduced at offsets the source never had (up to 12 frames)
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02)
