"""`inspect` and `validate` on a config with sinks and the search's oracle numbers."""

from __future__ import annotations

import json
from dataclasses import replace

from compactsearch.views import window_picture
from tests.test_cli_core import run
from tests.test_config_profile import _with_sinks


def test_inspect_shows_sinks_and_efficiency(tmp_path, capsys):
    cfg = _with_sinks()
    path = tmp_path / "c.yaml"
    cfg.save(path)
    code, out, err = run(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["rows"]
    h1 = next(r for r in rows if r["layer"] == 0 and r["head"] == 1)
    assert h1["oracle_recall"] == 0.95 and h1["efficiency"] == 0.94737
    h0 = next(r for r in rows if r["layer"] == 0 and r["head"] == 0)
    assert "sinks:0.0.1,3.1.0" in h0["pattern"] and h0["efficiency"] is None
    assert "0.947" in err  # the table's efficiency column
    code, out, err = run(["inspect", str(path), "--layer", "0", "--head", "1"], capsys)
    flat = " ".join(err.split())  # the console wraps long lines
    assert code == 0 and "pattern efficiency 0.947" in flat and "oracle recall 0.950" in flat
    code, out, err = run(["inspect", str(path), "--layer", "0", "--head", "0"], capsys)
    assert code == 0 and "'S': sink key tiles" in " ".join(err.split())


def test_window_picture_marks_sinks_before_and_after_the_query_frame():
    cfg = _with_sinks()  # tile grid 4 x 4 x 2; the middle query tile is (2, 2, 1)
    pic = window_picture(cfg, 0, 0, 0).splitlines()
    frame0 = pic.index("  dt=2 (tile frame 0):")  # drawn only for its sink
    assert pic[frame0 + 1] == "    .S"  # sink (0, 0, 1)
    frame3 = pic.index("  dt=1 (tile frame 3):")
    assert pic[frame3 + 2][4] == "S"  # sink (3, 1, 0)


def test_validate_runs_the_kernel_on_sink_masks(tmp_path, capsys):
    cfg = replace(_with_sinks(), head_dim=64)  # the kernel's head dims: 64, 128
    path = tmp_path / "c.yaml"
    cfg.save(path)
    code, out, err = run(["validate", str(path), "--json", "--kernel", "interpret"], capsys)
    assert code == 0, err
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["numerics"]["ok"] and checks["masks"]["ok"]
    assert checks["kernel"]["ok"], checks["kernel"]
