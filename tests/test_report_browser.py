"""The report opens in headless Chromium without errors, and a screenshot is taken.

Chromium is required: CI installs it (`.ci/run`). Where it is missing the test fails with a message saying to
install it, unless ``COMPACTSEARCH_NO_BROWSER=1`` is set explicitly; then only the static checks run (the page
is self-contained: no script, no external resource, every image a PNG data URI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from planted import planted_profile
from test_report import check_self_contained

from compactsearch.geometry import VideoGeometry
from compactsearch.report import build_report
from compactsearch.search import SearchSettings, run_search

INSTALL = ("Chromium is needed for the report's browser test: install it (Debian/Ubuntu: apt-get install chromium) "
           "or set COMPACTSEARCH_NO_BROWSER=1 to run only the static checks")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(browser: str, page: Path, png: Path, profile_dir: Path) -> list[str]:
    """Open ``page`` headless, write a 1400x2000 screenshot to ``png``; return Chromium's console log lines."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile_dir}", "--enable-logging=stderr", "--v=0", f"--screenshot={png}",
           "--window-size=1400,2000", page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log = (res.stdout + res.stderr).splitlines()
    assert res.returncode == 0, "\n".join(log[-20:])
    # Console messages (console.*, uncaught exceptions) are logged as "...:CONSOLE..." lines.
    return [line for line in log if "CONSOLE" in line or "Uncaught" in line]


def test_report_opens_in_chromium(tmp_path):
    geo = VideoGeometry(9, 24, 40, 32, "back")
    prof, _ = planted_profile(geo, (2, 8, 8), 128, [["local", "cross", "decay", "far"], ["global", "local",
                                                                                         "cross", "decay"]],
                              buckets=2, seed=5)
    prof.save(tmp_path / "profile")
    run_search(tmp_path / "profile", SearchSettings(budget=0.6, trials=8), tmp_path / "c.yaml", workers=1)
    res = build_report(tmp_path / "profile", tmp_path / "rep", config=tmp_path / "c.yaml", heads=["1.2"])
    check_self_contained(res.html.read_text())

    browser = chromium()
    if browser is None:
        if os.environ.get("COMPACTSEARCH_NO_BROWSER") == "1":
            return  # explicitly opted out: the static checks above are all that ran
        pytest.fail(INSTALL)
    png = tmp_path / "shot.png"
    console = screenshot(browser, res.html, png, tmp_path / "chromium-profile")
    assert console == [], console
    assert png.exists() and png.stat().st_size > 50_000  # a blank 1400x2000 page is ~10 KB
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The console check is not vacuous: a page with a script error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body>x<script>undefinedFunction();</script></body></html>")
    console = screenshot(browser, bad, tmp_path / "bad.png", tmp_path / "chromium-profile-2")
    assert any("Uncaught" in line for line in console), console
