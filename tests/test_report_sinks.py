"""`compactsearch report` with sinks and the oracle: sink squares on the maps, the pattern-efficiency panel."""

from __future__ import annotations

import pytest
from planted import planted_profile
from test_report import BS, GEO, PNG_MAGIC, TILE, check_self_contained

from compactsearch.config import load_config
from compactsearch.patterns import Pattern
from compactsearch.report import build_report
from compactsearch.report.maps import sink_cells
from compactsearch.search import SearchSettings, run_search


def test_sink_cells_by_distance():
    p = Pattern.local(0, 1, 1).with_sinks([(0, 1, 2), (4, 0, 0), (2, 2, 2)])
    q = (2, 1, 1)
    assert sink_cells(p, q, 0) == [(2, 2)]
    assert sorted(sink_cells(p, q, 2)) == [(0, 0), (1, 2)]  # both directions
    assert sink_cells(p, q, 1) == [] and sink_cells(Pattern.dense(), q, 0) == []


def test_report_draws_sinks_and_the_efficiency_panel(tmp_path):
    prof, _ = planted_profile(GEO, TILE, BS, [["sink", "local-sink", "mixed-sink", "local"]], seed=4)
    prof.save(tmp_path / "profile")
    cfg_path = tmp_path / "config.yaml"
    run_search(tmp_path / "profile", SearchSettings(budget=0.5, trials=8, objective="recall"), cfg_path)
    cfg = load_config(cfg_path)
    assert any(hc.pattern.sinks for hc in cfg.buckets[0].layers[0].heads)
    res = build_report(tmp_path / "profile", tmp_path / "rep", config=cfg_path)
    html = res.html.read_text()
    check_self_contained(html)
    names = {f.name for f in res.figures}
    assert {"04b-efficiency.png", "04c-efficiency-heads.png"} <= names
    assert (tmp_path / "rep" / "figures" / "04b-efficiency.png").read_bytes().startswith(PNG_MAGIC)
    for text in ("Pattern efficiency", "the ten least efficient heads", "oracle recall", "cyan squares marked S"):
        assert text in html, text
    mine, rec = res.summary["config"], cfg.summary
    assert mine["pattern_efficiency"] == pytest.approx(rec["pattern_efficiency"], abs=1e-4)
    assert mine["oracle_recall_mean"] == pytest.approx(rec["oracle_recall_mean"], abs=1e-4)
