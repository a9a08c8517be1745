"""The Triton kernel (interpreter) on layer masks with sink key tiles, on odd shapes, against the fp32 reference.

A sink makes whole key-block columns dense for every video query block: long key lists that jump from the local
neighbourhood to far blocks, the shape the pattern language did not produce before sinks.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.masks import build_layer_mask, sink_blocks  # noqa: E402
from compactsearch.patterns import FrameGroup, Pattern, Window  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402
from tests.test_kernels import _check_attention  # noqa: E402

# (geometry, tile, block, head dim, dtype): heights like 45 (partial tiles), text in front and at the back
CASES = [
    (VideoGeometry(3, 9, 13, 20, "front"), (2, 4, 8), 64, 64, torch.bfloat16),
    (VideoGeometry(5, 6, 10, 17, "back"), (2, 4, 8), 64, 128, torch.float16),
    (VideoGeometry(3, 45, 7), (2, 8, 4), 64, 64, torch.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=["3x9x13+text-front", "5x6x10+text-back", "3x45x7"])
def test_attention_with_sink_masks(case):
    geometry, tile, block, D, dtype = case
    layout = TileLayout(geometry, tile, block)
    nt, nh, nw = layout.grid_thw
    last = (nt - 1, nh - 1, nw - 1)
    patterns = [
        Pattern.local(0, 1, 1).with_sinks([last, (0, 0, 0)]),  # sinks only
        Pattern.local(min(1, nt - 1), min(2, nh), min(2, nw)).with_sinks([(nt // 2, nh // 2, 0)]),  # local + sink
        Pattern((FrameGroup(0, 0, (Window(nh, 1), Window(1, nw))),)).with_sinks([last]),  # cross + sink
    ]
    mask = build_layer_mask(patterns, layout)
    dense = mask.to_dense()
    for h, p in enumerate(patterns):  # the sink columns are computed by every video query block
        cols = sink_blocks(p, layout)
        assert cols.numel() and bool(dense[h][: layout.num_video_blocks][:, cols].all())
    g = torch.Generator().manual_seed(sum(geometry.thw))
    q, k, v = (torch.randn(1, len(patterns), layout.seq_len, D, generator=g).to(dtype) for _ in range(3))
    _check_attention(q, k, v, mask)
