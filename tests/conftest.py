"""Shared fixtures: small configs on odd geometries."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in interpreter mode on CPU

import pytest  # noqa: E402

from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.patterns import FrameGroup, Pattern, Window  # noqa: E402


def small_config(geometry: VideoGeometry | None = None, tile=(2, 4, 8), block_size: int = 64, layers: int = 2,
                 heads: int = 3) -> Config:
    """A small config (8x16x16 tokens + 60 text at the back) with local, cross, frame-grouped and dense heads."""
    geometry = geometry or VideoGeometry(8, 16, 16, 60, "back")
    kinds = [
        Pattern.local(1, 1, 1),
        Pattern((FrameGroup(0, 2, (Window(1, 2), Window(3, 1))),)),
        Pattern((FrameGroup(0, 0, (Window(2, 2),)), FrameGroup(2, 2, (Window(1, 1),)))),
        Pattern.dense(),
    ]
    layer_cfgs = tuple(
        LayerConfig(li, tuple(HeadConfig(h, kinds[(h + li) % len(kinds)]) for h in range(heads)))
        for li in range(layers)
    )
    return Config(model_id="test/tiny", adapter="wan", geometry=geometry, num_layers=layers, num_heads=heads,
                  head_dim=16, tile=tile, block_size=block_size, num_steps=10, warmup=0.2,
                  buckets=(Bucket((0.2, 0.6), layer_cfgs, 0), Bucket((0.6, 1.0), layer_cfgs, 1)),
                  provenance={"kind": "example"})


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    small_config().save(path)
    return path


def single_process_env(**extra: str) -> dict:
    """This process's environment without torchrun's RANK / WORLD_SIZE variables (a child process starts its own
    run), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    return {**env, **extra}
