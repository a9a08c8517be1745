"""`build_report`: read a profile (and optionally a config), collect what the page needs, write the report.

The numbers come from one pass over the profile's tensors (`compactsearch.report.collect`), the page from
`compactsearch.report.sections`, the HTML from `compactsearch.report.html`; this module checks the inputs,
assembles the page and writes ``report.html`` and ``figures/`` (a failed write leaves no partial ``--out`` that it
created).

A config bucket is matched to the profile bucket whose step range overlaps it most, with the config's schedule
laid on the profile's step count (a searched config's buckets are the profile's, clipped to the dense warm-up,
and carry the profile's bucket numbers); the page names buckets by the profile's numbers only.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compactsearch._io import atomic_dir, atomic_write_text
from compactsearch.config import Config, load_config
from compactsearch.errors import InputError
from compactsearch.profile.store import Profile
from compactsearch.report.collect import Progress, collect
from compactsearch.report.html import render_page
from compactsearch.report.maps import middle_tile
from compactsearch.report.sections import Page
from compactsearch.report.select import parse_head, select
from compactsearch.search import SearchSettings

__all__ = ["ReportResult", "build_report", "check_config_matches", "match_buckets"]


@dataclass(frozen=True)
class ReportResult:
    """What `build_report` wrote and the numbers it printed."""

    html: Path
    figures: tuple[Path, ...]
    seconds: float
    summary: dict
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"html": str(self.html), "figures": [str(p) for p in self.figures], "seconds": round(self.seconds, 2),
                "summary": self.summary, "notes": list(self.notes)}


def check_config_matches(profile: Profile, config: Config, config_path: Path | str) -> None:
    """Raise `InputError` when the config was made for another geometry, tiling or model size."""
    pairs = [
        ("geometry", profile.geometry.describe(), config.geometry.describe()),
        ("tile", list(profile.tile), list(config.tile)),
        ("block size", profile.block_size, config.block_size),
        ("layers", profile.num_layers, config.num_layers),
        ("heads", profile.num_heads, config.num_heads),
    ]
    for what, p, c in pairs:
        if p != c:
            raise InputError(f"config {config_path} is for another {what} ({c}) than the profile {profile.root} "
                             f"({p}); give a config searched on this profile")


def match_buckets(profile_buckets: Sequence[tuple[int, int]], config: Config, config_path: Path | str) -> list[int]:
    """For each config bucket, the profile bucket whose steps overlap it most."""
    out = []
    plan = config.plan(profile_buckets[-1][1])
    for i, (lo, hi) in enumerate(plan.ranges):
        overlaps = [max(0, min(hi, e) - max(lo, a)) for a, e in profile_buckets]
        best = int(np.argmax(overlaps))
        if overlaps[best] == 0:
            raise InputError(f"config {config_path}: buckets[{i}] steps {[lo, hi]} overlap no profile bucket "
                             f"({[list(x) for x in profile_buckets]}); give a config searched on this profile")
        out.append(best)
    return out


def build_report(
    profile: Profile | Path | str,
    out: Path | str,
    config: Config | Path | str | None = None,
    heads: Sequence[str] = (),
    progress: Progress | None = None,
    workers: int | None = None,
) -> ReportResult:
    """Write ``out/report.html`` (self-contained) and ``out/figures/*.png``.

    Args:
        profile: a `Profile` or its directory.
        out: the output directory (created; ``report.html`` and ``figures/`` inside are replaced).
        config: a `Config` or its YAML path, searched on this profile.
        heads: ``"L.H"`` strings: draw these heads' recall-versus-cost fronts.
        progress: ``progress(stage, done, total)``.
        workers: processes reading the profile in parallel (default: CPU cores; 1: in this process).

    Raises:
        InputError: a missing or corrupt profile or config, a config for another geometry, a bad ``--head``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a directory for the report")
    if not isinstance(profile, Profile):
        profile = Profile.load(Path(profile))
    config_path = None
    if config is not None and not isinstance(config, Config):
        config_path = Path(config)
        config = load_config(config_path)
    if config is not None:
        check_config_matches(profile, config, config_path or "(given)")
        cfg_map = match_buckets(profile.buckets, config, config_path or "(given)")
    else:
        cfg_map = []
    L, H = profile.num_layers, profile.num_heads
    head_list = list(dict.fromkeys(parse_head(h, L, H) for h in heads))
    layout = profile.layout()
    nt, nh, nw = layout.grid_thw
    query = middle_tile(layout)
    n_dist = max(query[0], nt - 1 - query[0]) + 1
    sel = select(profile.num_buckets, L, H, n_dist)
    settings = _search_settings(config)
    floor = settings.recall if config is not None else None

    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    data = collect(profile, config, cfg_map, sel, head_list, settings, progress, workers)

    page = Page(profile, config, config_path, cfg_map, sel, data, settings, floor, query)
    sections = page.sections(head_list, progress)
    notes = page.notes
    meta = page.meta()
    html = render_page("compactsearch report: " + str(profile.model.get("id") or profile.root or "profile"), meta,
                       notes, sections)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    figs = page.figures
    html_path = out / "report.html"
    try:
        with atomic_dir(out / "figures") as tmp:
            for f in figs:
                (tmp / f.filename).write_bytes(f.png)
        atomic_write_text(html_path, html)
    except BaseException:
        if created:  # a failed write (a full disk) leaves no partial --out that this run created
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ReportResult(html_path, tuple(out / "figures" / f.filename for f in figs), time.perf_counter() - t0,
                        page.summary, tuple(notes))


def _search_settings(config: Config | None) -> SearchSettings:
    """The search settings a config records (its ``search:`` block), for recomputing fronts; the defaults without
    a config, or when a hand-written block does not read."""
    try:
        return SearchSettings.from_dict(dict(config.search) if config is not None else {})
    except InputError:
        return SearchSettings(budget=1.0)
