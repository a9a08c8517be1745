"""compactsearch: offline search of block-sparse attention configs for video diffusion transformers.

Public API (stable names; modules are private):
    VideoGeometry, TileLayout, default_tile_shape   token grid and tile order
    Pattern, FrameGroup, Window, build_layer_mask   the pattern language and pattern -> BlockSparseMask
    Config, load_config                             config format compactsearch/v2 (v1 read)
    Profile                                         block-mass profiles
    apply                                           run a pipeline with a config (context manager)
"""

from __future__ import annotations

__version__ = "0.1.0"

from compactsearch.config import Config, load_config  # noqa: E402
from compactsearch.errors import CheckFailed, CompactSearchError, InputError  # noqa: E402
from compactsearch.geometry import VideoGeometry  # noqa: E402
from compactsearch.masks import build_layer_mask  # noqa: E402
from compactsearch.patterns import FrameGroup, Pattern, Window  # noqa: E402
from compactsearch.profile import Profile  # noqa: E402
from compactsearch.tile_choice import default_tile_shape  # noqa: E402
from compactsearch.tiling import TileLayout  # noqa: E402

__all__ = [
    "__version__",
    "VideoGeometry",
    "TileLayout",
    "default_tile_shape",
    "Pattern",
    "FrameGroup",
    "Window",
    "build_layer_mask",
    "Config",
    "load_config",
    "Profile",
    "apply",
    "CompactSearchError",
    "InputError",
    "CheckFailed",
]


def __getattr__(name: str):
    # `apply` pulls in diffusers (through the adapters); import it on first use so the CLI starts fast.
    if name == "apply":
        from compactsearch.runtime import apply

        return apply
    raise AttributeError(f"module 'compactsearch' has no attribute {name!r}")
