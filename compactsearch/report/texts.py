"""What the report's page says in prose: the paragraphs that explain its sections (`compactsearch.report.sections`
draws the figures and tables they introduce)."""

from __future__ import annotations

__all__ = ["LABELS", "EFFICIENCY", "WASTE", "ABOUT_MADE", "ABOUT_SUBSAMPLING"]

LABELS = (
    "Each head is labelled from its block mass by the documented rule (compactsearch.profile.stats): local "
    "when a local window over about 30% of the tokens holds at least 60% of its mass, cross when a one-tile "
    "row band plus a one-tile column band holds at least 60% (15 points more than local and 1.5x what a "
    "uniform head would put there), time-variant when the mass per frame distance is far from flat, "
    "global otherwise."
)
EFFICIENCY = (
    "For every head, the recall its chosen pattern keeps divided by the recall of the best unstructured "
    "block set of the same size: the head's top blocks by mass (the oracle; any static block mask of that "
    "density keeps at most this much). 1 means the pattern language costs this head nothing; low values "
    "mark heads whose attention the windows, frame groups and sinks do not fit."
)
WASTE = (
    "Tiling waste = token pairs the kernel computes (whole blocks) / token pairs the pattern allows token by "
    "token - 1: the cost of blocks that straddle tiles and of the ragged sequence end. The reference panel is "
    "the one `default_tiling` scores layouts with (a ~30% local window, a cross, a time-decaying window)."
)
ABOUT_MADE = (
    "Made by `compactsearch report` from the profile's block mass (mean over calibration prompts, tile order). Maps "
    "spread each kernel block's mass over the tiles it covers by token share. Figures are also saved as PNG files "
    "in figures/ next to this page."
)
ABOUT_SUBSAMPLING = (
    "Subsampling rules: every step bucket up to 3 (else first, middle, last); 4 layers spread evenly with 4 heads "
    "each plus every head of the middle layer; up to 8 temporal distances (0, 1, then spread to the largest); maps "
    "of at most 32 x 32 cells."
)
