"""Write the hand-designed example configs in this folder (run: python recipes/examples/generate.py).

These are EXAMPLES, not search results: each head gets one of a few hand-picked archetypes (local window,
cross, frame-grouped local, time-decaying, dense) by a fixed rule, so the files show the format and the
pattern language on the four reference geometries. `provenance.kind: example` marks them.
"""

from __future__ import annotations

from pathlib import Path

from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig
from compactsearch.geometry import VideoGeometry
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.tile_choice import default_tiling
from compactsearch.tiling import TileLayout

HERE = Path(__file__).resolve().parent

EXAMPLES = {
    "wan2.1-t2v-1.3b-480p": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan", VideoGeometry(21, 30, 52), 30, 12, 128),
    "wan2.1-t2v-14b-720p": ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan", VideoGeometry(21, 45, 80), 40, 40, 128),
    "hunyuanvideo-720p": ("hunyuanvideo-community/HunyuanVideo", "hunyuan_video",
                          VideoGeometry(33, 45, 80, 256, "back"), 60, 24, 128),
    "cogvideox-5b": ("THUDM/CogVideoX-5b", "cogvideox", VideoGeometry(13, 30, 45, 226, "front"), 42, 48, 64),
}


def _frac(n: int, f: float) -> int:
    return max(1, min(n, round(n * f)))


def archetypes(grid: tuple[int, int, int]) -> dict[str, Pattern]:
    nt, nh, nw = grid
    last = nt - 1
    return {
        "local": Pattern.local(min(1, last), _frac(nh, 0.5), _frac(nw, 0.5)),
        "wide-local": Pattern.local(min(2, last), _frac(nh, 0.6), _frac(nw, 0.6)),
        "cross": Pattern((FrameGroup(0, last, (Window(_frac(nh, 0.25), nw), Window(nh, _frac(nw, 0.2)))),)),
        "frame-grouped": Pattern((
            FrameGroup(0, min(1, last), (Window(_frac(nh, 0.6), _frac(nw, 0.6)),)),
            *((FrameGroup(2, last, (Window(_frac(nh, 0.3), _frac(nw, 0.3)),)),) if last >= 2 else ()),
        )),
        "time-decaying": Pattern((
            FrameGroup(0, 0, (Window(nh, nw),)),
            *((FrameGroup(1, min(2, last), (Window(_frac(nh, 0.5), _frac(nw, 0.5)),)),) if last >= 1 else ()),
        )),
        "dense": Pattern.dense(),
    }


# Fixed rule: the first layer is dense (it mixes everything), then heads cycle through archetypes.
CYCLE = ("local", "frame-grouped", "local", "cross", "wide-local", "time-decaying", "local", "frame-grouped")


def make(name: str) -> Config:
    model_id, adapter, geometry, layers, heads, head_dim = EXAMPLES[name]
    tile, block_size = default_tiling(geometry)
    layout = TileLayout(geometry, tile, block_size)
    kinds = archetypes(layout.grid_thw)
    layer_cfgs = []
    for li in range(layers):
        hcs = []
        for h in range(heads):
            kind = "dense" if li == 0 else CYCLE[(h + li) % len(CYCLE)]
            hcs.append(HeadConfig(h, kinds[kind]))
        layer_cfgs.append(LayerConfig(li, tuple(hcs)))
    return Config(
        model_id=model_id, adapter=adapter, geometry=geometry, num_layers=layers, num_heads=heads,
        head_dim=head_dim, tile=tile, block_size=block_size, num_steps=50, warmup=0.3,
        buckets=(Bucket((0.3, 1.0), tuple(layer_cfgs)),),
        provenance={"kind": "example", "note": "hand-designed example, NOT searched: shows the format only"},
    )


def main() -> None:
    for name in EXAMPLES:
        make(name).save(HERE / f"{name}.yaml")
        print("wrote", HERE / f"{name}.yaml")


if __name__ == "__main__":
    main()
