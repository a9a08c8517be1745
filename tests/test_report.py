"""`compactsearch report`: maps against the pattern masks, subsampling, the page, the CLI and its errors."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from planted import planted_mass, planted_profile

from compactsearch.cli import main
from compactsearch.config import load_config
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.masks import tile_mask
from compactsearch.patterns import FrameGroup, Pattern, Window
from compactsearch.profile.store import Profile
from compactsearch.report import (
    TileShares,
    build_report,
    middle_tile,
    neighbourhood_maps,
    parse_head,
    select,
    window_rects,
)
from compactsearch.report.build import match_buckets
from compactsearch.report.maps import downsample
from compactsearch.search import SearchSettings, run_search
from compactsearch.tiling import TileLayout

ROOT = Path(__file__).resolve().parents[1]
# 9x20x28 tokens + 40 text at the back; tile 2x8x8 leaves partial tiles on every axis (blocks straddle them).
GEO, TILE, BS = VideoGeometry(9, 20, 28, 40, "back"), (2, 8, 8), 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A planted profile (2 buckets, 2 layers x 3 heads) and a config searched on it."""
    root = tmp_path_factory.mktemp("report")
    prof, planted = planted_profile(GEO, TILE, BS, [["local", "cross", "decay"], ["far", "global", "local"]],
                                    buckets=2, seed=3)
    prof.save(root / "profile")
    cfg = root / "config.yaml"
    run_search(root / "profile", SearchSettings(budget=0.6, recall=0.9, trials=8), cfg, workers=1)
    return root / "profile", cfg, planted


class _Page(HTMLParser):
    """Collects every URL-bearing attribute and the images of a page."""

    def __init__(self):
        super().__init__()
        self.urls, self.images, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.scripts += tag == "script"
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "img":
            self.images.append(a["src"])


def check_self_contained(html: str) -> _Page:
    """No script, no external resource; every image a decodable PNG data URI. Returns the parsed page."""
    page = _Page()
    page.feed(html)
    assert page.scripts == 0
    for url in page.urls:
        assert url.startswith(("data:", "#")), f"external reference {url[:60]!r}"
    assert page.images
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "@import" not in html and "url(" not in html
    return page


# ------------------------------------------------------------------------------------------------- maps
def test_tile_shares_cover_every_token():
    layout = TileLayout(GEO, TILE, BS)
    s = TileShares.of(layout)
    total = s.shares.sum(0) + s.text
    assert torch.allclose(total, torch.ones_like(total))
    # text share of each block = its text tokens / its real tokens
    lengths = layout.block_lengths().double()
    text_tokens = (torch.arange(layout.num_blocks) * BS + lengths).clamp(min=GEO.video_tokens) - GEO.video_tokens
    text_tokens = torch.minimum(text_tokens, lengths)
    assert torch.allclose(s.text, text_tokens / lengths)
    assert 0 < float(s.text[layout.num_video_blocks - 1]) < 1  # the mixed video/text block


@pytest.mark.parametrize("query", [None, (0, 0, 0), (4, 2, 3)])
def test_window_rects_are_the_tile_mask(query):
    """The outlined windows cover exactly the key tiles the pattern's tile mask allows, border shifts included."""
    layout = TileLayout(GEO, TILE, BS)
    nt, nh, nw = layout.grid_thw
    pattern = Pattern((FrameGroup(0, 1, (Window(2, 3), Window(3, 1))), FrameGroup(3, 4, (Window(1, 4),))))
    qt, qh, qw = query or middle_tile(layout)
    rank = torch.empty_like(layout.order)
    rank[layout.order] = torch.arange(layout.num_tiles)
    row = tile_mask(pattern, layout)[rank[(qt * nh + qh) * nw + qw]][rank].view(nt, nh, nw)  # raster key tiles
    for d in range(nt):
        drawn = torch.zeros(nh, nw, dtype=torch.bool)
        rects = window_rects(pattern, layout.grid_thw, (qt, qh, qw), d)
        for r0, c0, hh, ww in rects or []:
            drawn[r0:r0 + hh, c0:c0 + ww] = True
        for t in {qt - d, qt + d}:
            if 0 <= t < nt:
                assert torch.equal(row[t], drawn), (d, t)
        assert (rects is None) == (d == 2 or d > 4)


def test_maps_put_the_planted_recall_inside_the_windows():
    """One tile per block (no straddling): the maps' mass inside the outlines is the tile row's kept mass."""
    geo = VideoGeometry(5, 16, 24)
    layout = TileLayout(geo, (1, 8, 8), 64)
    pattern = Pattern((FrameGroup(0, 0, (Window(1, 3),)), FrameGroup(1, 2, (Window(2, 1),))))
    g = torch.Generator().manual_seed(0)
    mass = torch.stack([planted_mass(layout, pattern, 0.9, generator=g), planted_mass(layout, Pattern.dense(), 1.0,
                                                                                      generator=g)])
    nm = neighbourhood_maps(mass, layout)
    assert nm.maps.shape == (2, 3, 2, 3) and nm.query == middle_tile(layout)
    assert torch.allclose(nm.maps.sum((1, 2, 3)) + nm.text, torch.ones(2, dtype=torch.float64))
    inside = 0.0
    for d in range(nm.distances):
        for r0, c0, hh, ww in window_rects(pattern, layout.grid_thw, nm.query, d) or []:
            inside += float(nm.maps[0, d, r0:r0 + hh, c0:c0 + ww].sum())
    assert inside == pytest.approx(0.9, abs=1e-5)  # planted_mass keeps 0.9 of every partly covered row


def test_downsample_sums_cells():
    m = torch.arange(2 * 5 * 7, dtype=torch.float64).view(2, 5, 7)
    out, f = downsample(m, 3)
    assert f == (2, 3) and out.shape == (2, 3, 3)
    assert torch.allclose(out.sum((1, 2)), m.sum((1, 2)))
    assert downsample(m, 8)[1] == (1, 1)


# ----------------------------------------------------------------------------------------------- selection
def test_selection_of_a_wan14b_sized_profile():
    sel = select(3, 40, 40, 11)
    layers = sorted({l for l, _ in sel.panels})
    assert layers == [0, 13, 20, 26, 39] and sel.middle_layer == 20
    assert [h for l, h in sel.panels if l == 20] == list(range(40))
    assert [h for l, h in sel.panels if l == 0] == [0, 13, 26, 39]
    assert sel.distances == (0, 1, 2, 4, 5, 7, 8, 10)
    assert sel.buckets == (0, 1, 2) and sel.subsampled
    assert any("56 of 1600" in n for n in sel.notes())
    small = select(2, 2, 3, 3)
    assert not small.subsampled and small.notes() == [] and len(small.panels) == 6
    assert select(5, 2, 2, 2).buckets == (0, 2, 4)


def test_parse_head():
    assert parse_head("3.7", 4, 8) == (3, 7)
    for bad, msg in [("3", "give LAYER.HEAD"), ("a.b", "give LAYER.HEAD"), ("4.0", "layer 4 is out of range"),
                     ("0.8", "head 8 is out of range")]:
        with pytest.raises(Exception, match=msg):
            parse_head(bad, 4, 8)


# ------------------------------------------------------------------------------------------------- report
def test_report_with_config_and_head(searched, tmp_path):
    prof_dir, cfg_path, _ = searched
    cfg = load_config(cfg_path)
    res = build_report(prof_dir, tmp_path / "rep", config=cfg_path, heads=["1.0", "0.2"])
    html = res.html.read_text()
    page = check_self_contained(html)
    assert len(page.images) == len(res.figures)
    for f in res.figures:
        assert f.read_bytes().startswith(PNG_MAGIC) and f.parent == tmp_path / "rep" / "figures"
    names = {f.name for f in res.figures}
    assert {"01-summary-layers.png", "02-labels.png", "03-label-counts.png", "07-text-mass.png",
            "08-tiling-waste.png", "06-front-L1.H0.png", "06-front-L0.H2.png"} <= names
    assert sum(n.startswith("04-heatmaps-b") for n in names) == len(cfg.buckets)
    assert sum(n.startswith("05-maps-") for n in names) == 2 * 2  # 2 buckets x 2 layers
    # the recomputed recall and density are the search's exact numbers
    mine, rec = res.summary["config"], cfg.summary
    for k in ("density", "density_sparse_steps", "recall_mean", "recall_min", "est_attention_speedup"):
        assert mine[k] == pytest.approx(rec[k], abs=2e-5), k
    assert mine["heads_below_floor"] == rec["heads_below_floor"]
    for text in ("Recall against cost, per requested head", "L1.H0", "greedy", "best cube", "chosen (config)",
                 "Attention on text tokens", "40 text tokens sit at the back", "Tiling waste"):
        assert text in html, text
    assert "subsample" not in html  # nothing was left out at this size
    assert res.notes == ()


def test_workers_give_the_same_report(searched, tmp_path):
    prof_dir, cfg_path, _ = searched
    one = build_report(prof_dir, tmp_path / "one", config=cfg_path, heads=["0.1"], workers=1)
    two = build_report(prof_dir, tmp_path / "two", config=cfg_path, heads=["0.1"], workers=2)
    assert one.summary == two.summary
    assert [f.name for f in one.figures] == [f.name for f in two.figures]
    strip = re.compile(r'src="data:[^"]*"|/one/|/two/|\b(one|two)\b')
    assert strip.sub("", one.html.read_text()) == strip.sub("", two.html.read_text())


def test_report_without_config_and_recomputed_stats(searched, tmp_path):
    prof_dir, _, _ = searched
    prof = Profile.load(prof_dir)
    expected = prof.stats[prof.stats["prompt"] == -1]["label"].tolist()
    prof.stats = prof.stats.iloc[:0]  # as a profile built without its statistics table
    res = build_report(prof, tmp_path / "rep")
    html = res.html.read_text()
    check_self_contained(html)
    assert "labels were recomputed from the block mass" in html
    assert "Give --config" in html and not any(f.name.startswith("04-") for f in res.figures)
    counts = res.summary["label_counts"]
    assert sum(counts["b0"].values()) + sum(counts["b1"].values()) == len(expected)
    assert sum(c[label] for c in counts.values() for label in c if label == "local") == expected.count("local")


def test_config_running_every_step_dense(searched, tmp_path):
    prof_dir, cfg_path, _ = searched
    cfg = load_config(cfg_path)
    dense = dataclasses.replace(cfg, buckets=(), warmup=1.0, summary={})
    dense.save(tmp_path / "dense.yaml")
    res = build_report(prof_dir, tmp_path / "rep", config=tmp_path / "dense.yaml", heads=["0.0"], workers=1)
    assert res.summary["config"]["density"] == 1.0 and res.summary["config"]["est_attention_speedup"] == 1.0
    html = res.html.read_text()
    assert "every step runs dense" in html and "the config runs this bucket dense" in html
    assert sum(f.name.startswith("06-front") for f in res.figures) == 1


def test_large_profile_says_it_is_subsampled(tmp_path):
    geo = VideoGeometry(5, 16, 16)
    kinds = ["local", "cross", "global", "decay", "far", "local", "cross", "global"]
    prof, _ = planted_profile(geo, (1, 8, 8), 64, [kinds] * 7, seed=1)  # 56 heads: more than the 48 drawn whole
    res = build_report(prof, tmp_path / "rep")
    html = res.html.read_text()
    assert "the maps show a subsample" in html and "of 56 (layer, head) pairs" in html
    assert res.notes and "subsample" in res.notes[0]
    assert "every head of the middle layer 3" in html


def test_small_profile_draws_every_head(tmp_path):
    geo = VideoGeometry(5, 16, 16)
    prof, _ = planted_profile(geo, (1, 8, 8), 64, [["local", "cross", "global", "decay"]] * 3, seed=2)
    res = build_report(prof, tmp_path / "rep")
    assert "the maps show a subsample" not in res.html.read_text() and not res.notes


def test_report_cli_json(searched, tmp_path, capsys):
    prof_dir, cfg_path, _ = searched
    out = tmp_path / "cli-rep"
    code, stdout, err = run(["report", prof_dir, "--config", cfg_path, "--out", out, "--head", "0.1", "--json"],
                            capsys)
    assert code == 0, err
    data = json.loads(stdout)
    assert data["html"] == str(out / "report.html") and (out / "report.html").exists()
    assert len(data["figures"]) == len(list((out / "figures").glob("*.png")))
    assert "wrote" in err
    # a second run replaces the figures folder (no stale PNG)
    (out / "figures" / "stale.png").write_bytes(PNG_MAGIC)
    code, _, err = run(["report", prof_dir, "--out", out], capsys)
    assert code == 0, err
    assert not (out / "figures" / "stale.png").exists()


@pytest.fixture(scope="module")
def other_config(tmp_path_factory):
    """A config searched on a profile of another geometry."""
    root = tmp_path_factory.mktemp("other")
    prof, _ = planted_profile(VideoGeometry(5, 16, 16), (1, 8, 8), 64, [["local", "cross"]] * 2, seed=2)
    prof.save(root / "p")
    run_search(root / "p", SearchSettings(budget=0.8, trials=4), root / "other.yaml", workers=1)
    return root / "other.yaml"


def _bad_cases(searched, other_config, tmp_path):
    prof_dir, cfg_path, _ = searched
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    return [
        (["report", tmp_path / "missing", "--out", tmp_path / "o"], "does not exist"),
        (["report", prof_dir, "--config", tmp_path / "none.yaml", "--out", tmp_path / "o"], "does not exist"),
        (["report", prof_dir, "--config", other_config, "--out", tmp_path / "o"], "for another geometry"),
        (["report", prof_dir, "--config", cfg_path, "--head", "7.0", "--out", tmp_path / "o"],
         "layer 7 is out of range"),
        (["report", prof_dir, "--head", "x", "--out", tmp_path / "o"], "give LAYER.HEAD"),
        (["report", prof_dir, "--out", a_file], "is a file"),
        (["report", prof_dir, "--out", tmp_path / "o", "--workers", "0"], "--workers must be >= 1"),
        (["report", prof_dir], "--out"),
    ]


def test_bad_input_is_one_line_and_exit_2(searched, other_config, tmp_path, capsys):
    for argv, msg in _bad_cases(searched, other_config, tmp_path):
        code, _, err = run(argv, capsys)
        assert code == 2, (argv, err)
        assert msg in err, (argv, err)
        if msg != "--out":  # click's usage error is a short usage block, ours are one line
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_config_at_another_step_count_maps_onto_the_profile_buckets(searched, tmp_path):
    prof_dir, cfg_path, _ = searched
    cfg = load_config(cfg_path)  # searched on the profile's 20 steps, buckets numbered as the profile's
    other = dataclasses.replace(cfg, num_steps=50)  # the same fractions of the run, laid on 50 steps
    other.save(tmp_path / "fifty.yaml")
    a = build_report(prof_dir, tmp_path / "a", config=cfg_path, workers=1)
    b = build_report(prof_dir, tmp_path / "b", config=tmp_path / "fifty.yaml", workers=1)
    assert a.summary["config"]["recall_mean"] == b.summary["config"]["recall_mean"]
    html = b.html.read_text()
    for bucket in cfg.buckets:  # one numbering: the profile's
        assert f"bucket {bucket.id} (" in html
    assert "config bucket" not in html and "profile bucket" not in html


def test_config_outside_the_profiled_steps_is_refused(searched, tmp_path, capsys):
    _, cfg_path, _ = searched
    cfg = load_config(cfg_path)
    early = dataclasses.replace(cfg, warmup=0.0, buckets=(dataclasses.replace(cfg.buckets[0], run=(0.0, 0.5)),))
    # a profile that measured steps 10-19 only: steps 0-9 of the config's 20 have nothing to be drawn against
    with pytest.raises(InputError, match="overlap no profile bucket"):
        match_buckets([(10, 20)], early, "early.yaml")


# ----------------------------------------------------------------------------------- the tiny model's profile
def test_tiny_random_wan_end_to_end(tmp_path, capsys):
    """`compactsearch profile` on the tiny random Wan recipe, then search, then the report in <= 60 s."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox runs through fresh snow\n")
    prof = tmp_path / "tiny"
    code, _, err = run(["profile", ROOT / "recipes" / "tiny-random-wan.yaml", "--device", "cpu", "--out", prof,
                        "--prompts", prompts], capsys)
    assert code == 0, err
    cfg = tmp_path / "tiny.yaml"
    code, _, err = run(["search", prof, "--budget", "0.9", "--trials", "8", "--workers", "1", "--out", cfg], capsys)
    assert code == 0, err
    t = time.perf_counter()
    code, stdout, err = run(["report", prof, "--config", cfg, "--head", "1.1", "--out", tmp_path / "rep", "--json"],
                            capsys)
    seconds = time.perf_counter() - t
    assert code == 0, err
    assert seconds <= 60
    html = (tmp_path / "rep" / "report.html").read_text()
    check_self_contained(html)
    assert re.search(r"tiny-random-wan", html) and json.loads(stdout)["summary"]["heads"] == 2


def test_output_error_heatmap_when_the_profile_has_value_statistics(tmp_path):
    geo = VideoGeometry(5, 16, 16)
    base, _ = planted_profile(geo, (1, 8, 8), 64, [["local", "global"], ["cross", "decay"]], seed=3)
    nb = base.layout().num_blocks
    factor = torch.randn(2, nb, 4, generator=torch.Generator().manual_seed(4))
    prof = Profile.from_block_mass({k: base.mass(*k) for k in base.keys()}, geometry=geo, tile=base.tile,
                                   block_size=64, buckets=base.buckets, value_factor={k: factor for k in base.keys()})
    res = run_search(prof, SearchSettings(budget=0.5, trials=8), tmp_path / "cfg.yaml")
    rep = build_report(prof, tmp_path / "rep", config=res.config, heads=["1.0"], workers=1)
    assert (tmp_path / "rep" / "figures" / "04-output-error.png").stat().st_size > 0
    html = rep.html.read_text()
    assert "output fidelity, mean over heads" in html and "Estimated relative output error" in html
    assert rep.summary["config"]["fidelity_mean"] == pytest.approx(res.summary["fidelity_mean"], abs=1e-4)
    # the requested head's front gets a second row: the same patterns scored on fidelity, and a table column
    assert "a second row scores the same patterns on output fidelity" in html
    assert "<th>worst block recall</th><th>fidelity</th><th>density</th>" in html.replace("\n", "")
    # without value statistics: no fidelity figure, one row of fronts
    plain = build_report(base, tmp_path / "rep2", config=res.config, heads=["1.0"], workers=1)
    assert not (tmp_path / "rep2" / "figures" / "04-output-error.png").exists()
    assert "fidelity_mean" not in plain.summary["config"]
    assert "<th>fidelity</th>" not in plain.html.read_text()

    def png_height(path):
        return int.from_bytes(path.read_bytes()[20:24], "big")

    two_rows = png_height(tmp_path / "rep" / "figures" / "06-front-L1.H0.png")
    one_row = png_height(tmp_path / "rep2" / "figures" / "06-front-L1.H0.png")
    assert two_rows == pytest.approx(2 * one_row, rel=0.05)
