"""The report: matplotlib figures of a profile (and a config) in one self-contained HTML page.

``compactsearch report PROFILE [--config C] --out DIR`` writes ``DIR/report.html`` (figures embedded as base64
PNG, inline CSS, no script) and ``DIR/figures/*.png``. Modules:

    build      `build_report`: checks, the page assembled and written (`ReportResult`)
    collect    one pass over the profile's tensors (a process pool): the numbers the page needs
    sections   the page's sections, figures and tables
    texts      the paragraphs of prose that explain them
    maps       attention of the middle query tile per key tile and temporal distance; window outlines
    select     what the small multiples draw for large profiles (the subsampling rules)
    figures    the matplotlib figures (object API, Agg, no pyplot)
    html       the self-contained page
"""

from __future__ import annotations

from compactsearch.report.build import ReportResult, build_report, check_config_matches, match_buckets
from compactsearch.report.maps import NeighbourhoodMaps, TileShares, middle_tile, neighbourhood_maps, window_rects
from compactsearch.report.select import Selection, parse_head, select

__all__ = [
    "build_report",
    "ReportResult",
    "check_config_matches",
    "match_buckets",
    "neighbourhood_maps",
    "NeighbourhoodMaps",
    "TileShares",
    "middle_tile",
    "window_rects",
    "select",
    "Selection",
    "parse_head",
]
