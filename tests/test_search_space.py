"""The search space: parameters <-> canonical patterns."""

from __future__ import annotations

import random

import pytest
import torch

from compactsearch.geometry import VideoGeometry
from compactsearch.masks import pattern_block_mask
from compactsearch.patterns import FrameGroup, Pattern, Window, pattern_from_yaml
from compactsearch.search.space import SearchSpace, canonical
from compactsearch.tiling import TileLayout


def test_decode_random_params_gives_valid_canonical_patterns():
    grid = (5, 3, 4)
    space = SearchSpace(grid, 3)
    dists = space.distributions()
    rng = random.Random(0)
    for _ in range(300):
        params = {k: rng.randint(d.low, d.high) for k, d in dists.items()}
        p = space.decode(params)
        assert p.check_grid(grid) is None
        assert canonical(p, grid) == p
        enc = space.encode(p)
        assert enc is not None and space.decode(enc) == p


def test_canonical_keeps_the_block_mask():
    layout = TileLayout(VideoGeometry(6, 24, 32), (2, 8, 8), 128)
    nt, nh, nw = layout.grid_thw
    cases = [
        Pattern((FrameGroup(0, 1, (Window(2, 2), Window(1, 1))), FrameGroup(2, 2, (Window(2, 2),)))),
        Pattern((FrameGroup(0, nt - 1, (Window(nh, nw),)),)),
        Pattern((FrameGroup(0, 0, (Window(1, nw), Window(nh, 1))),)),
    ]
    for p in cases:
        c = canonical(p, layout.grid_thw)
        assert torch.equal(pattern_block_mask(p, layout), pattern_block_mask(c, layout))
    assert canonical(cases[0], layout.grid_thw).groups == (FrameGroup(0, 2, (Window(2, 2),)),)
    assert canonical(cases[1], layout.grid_thw).is_dense


def test_encode_handles_gaps_and_rejects_what_the_space_cannot_hold():
    space = SearchSpace((6, 4, 4), 3)
    far = Pattern((FrameGroup(0, 0, (Window(2, 2),)), FrameGroup(3, 5, (Window(1, 4),))))
    assert space.decode(space.encode(far)) == far
    four = Pattern(tuple(FrameGroup(i, i, (Window(4 - i, 1 + i),)) for i in range(4)))
    assert space.encode(four) is None
    assert space.encode(Pattern((FrameGroup(1, 2, (Window(1, 1),)),))) is None  # skips distance 0
    assert space.decode(space.encode(Pattern.dense())).is_dense


def test_group_cap_and_yaml_roundtrip():
    assert SearchSpace((1, 3, 3), 3).groups == 1
    assert "cut1" not in SearchSpace((1, 3, 3), 3).distributions()
    p = Pattern((FrameGroup(0, 0, (Window(1, 4), Window(3, 1))), FrameGroup(2, 4, (Window(1, 1),))))
    assert pattern_from_yaml(p.to_yaml()) == p
    assert pattern_from_yaml("dense").is_dense
    with pytest.raises(ValueError):
        canonical(Pattern(()), (2, 2, 2))
