"""Reliability of what is written: read-only and full disks leave nothing partial, the search keeps its work (its
database, its lock, claims of dead workers taken over), progress shows in logs.

Read-only and full file systems are small tmpfs mounts: as root, or else in a user namespace (`unshare -rm`) the
test reruns itself in; only where neither is possible is it skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted import planted_profile
from reliability_world import BS, ENV, GEO, PROGRESS, RECIPE, TILE, assert_handled, build_world, leftovers, run

from compactsearch.cli._progress import LineProgress
from compactsearch.search import default_storage


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("rel"))


# ------------------------------------------------------------------------------------------------ read-only, full
def _user_namespaces() -> bool:
    """Whether ``unshare`` can make this user root of a new user and mount namespace (tmpfs mounts need no
    privilege there)."""
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def mounts(tmp_path):
    """A read-only tmpfs and small tmpfs mounts (as root: the test reruns itself in a user namespace otherwise)."""
    ro, full, small, tiny = tmp_path / "ro", tmp_path / "full", tmp_path / "small", tmp_path / "tiny"
    for m in (ro, full, small, tiny):
        m.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(tiny)], check=True)
    try:
        with open(full / "filler", "wb") as f:  # fill it up
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        yield ro, full, small, tiny
    finally:
        for m in (ro, full, small, tiny):
            busy = subprocess.run(["umount", str(m)], capture_output=True, text=True)
            if busy.returncode:  # still in use: detach it anyway (nothing may stay mounted), then fail
                subprocess.run(["umount", "-l", str(m)], check=False)
                pytest.fail(f"{m} was still in use after the commands (a file left open?): {busy.stderr}")


def test_read_only_and_full_disks(request, tmp_path, capsys):
    if os.geteuid() != 0:  # mounts need root: run this test again as root of a user namespace
        if not _user_namespaces():
            pytest.skip("mounting a tmpfs needs root or unprivileged user namespaces (unshare -rm)")
        res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest", "-q",
                              "-p", "no:cacheprovider", request.node.nodeid], capture_output=True, text=True,
                             timeout=1200, cwd=request.config.rootpath)
        assert res.returncode == 0 and " passed" in res.stdout, res.stdout[-4000:] + res.stderr[-2000:]
        return
    ro, full, small, tiny = request.getfixturevalue("mounts")
    w = request.getfixturevalue("world")
    c, p, r = w["config"], w["profile"], w["recipe-good"]
    big_profile, _ = planted_profile(GEO, TILE, BS, [["local", "cross", "global", "decay"]] * 6, seed=2)
    bp = big_profile.save(tmp_path / "bigprof")  # its report and per-layer files outgrow 300 KB
    fault_cases = [
        (["search", p, "--budget", "0.5", "--out", ro / "c.yaml"], "read-only"),
        (["search", p, "--budget", "0.5", "--out", full / "c.yaml"], "bytes free"),
        (["search", p, "--budget", "0.5", "--storage", f"sqlite:///{ro}/s.db", "--out", tmp_path / "c.yaml"],
         "Optuna storage"),
        (["profile", r, "--out", ro / "p", "--device", "cpu"], "read-only"),
        (["profile", r, "--out", full / "p", "--device", "cpu"], "bytes free"),
        (["generate", r, "-p", "x", "--out", ro / "v.gif", "--device", "cpu"], "read-only"),
        (["generate", r, "-p", "x", "--out", full / "v.gif", "--device", "cpu"], "bytes free"),
        (["evaluate", r, "-c", c, "--videos", ro / "v"], "read-only"),
        (["report", p, "--out", ro / "rep"], "read-only"),
        (["report", p, "--out", full / "rep"], "bytes free"),
        (["report", bp, "--out", small / "rep", "--workers", "1"], "no space left"),  # runs out mid-way
        (["search", bp, "--budget", "0.5", "--workers", "1", "--keep-trials", "--out", small / "c.yaml"],
         "database or disk is full"),  # the Optuna database outgrows the disk mid-way
    ]
    for argv, expect in fault_cases:
        code, out, err = run(argv, capsys)
        assert_handled(code, err, expect, name=argv[:4])
        for m in (ro, full, small, tmp_path):
            assert leftovers(m) == [], (argv, leftovers(m))
    assert sorted(x.name for x in small.iterdir()) == []  # nothing partial on the small disk
    # a profile that runs out of space mid-way keeps its finished prompts (and nothing partial); with room
    # again, --resume finishes it
    code, out, err = run(["profile", RECIPE, "--out", tiny / "p", "--device", "cpu", "--json"], capsys)
    assert_handled(code, err, "no space left", name="profile on a full disk")
    work = tiny / "p.work"
    kept = sorted(x.name for x in work.glob("prompt_*.safetensors"))
    assert kept and not (tiny / "p").exists()
    assert [x.name for x in tiny.rglob("*") if ".tmp" in x.name] == []
    subprocess.run(["mount", "-o", "remount,size=2m", str(tiny)], check=True)
    code, out, err = run(["profile", RECIPE, "--out", tiny / "p", "--device", "cpu", "--resume", "--json"], capsys)
    assert code == 0 and json.loads(out)["resumed"] == len(kept), err
    assert leftovers(tiny) == []
    # --json results to stdout on a full disk: one line, exit 2
    with open(full / "out.json", "w") as f:  # (an empty file fits: inodes are left)
        res = subprocess.run([sys.executable, "-m", "compactsearch", "validate", str(c), "--json", "--no-numerics"],
                             stdout=f, stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert errors == ["error: stdout: no space left on the device; free some space or write elsewhere"], res.stderr


# ------------------------------------------------------------------------------------------------ search keeps work
def test_search_never_deletes_a_database_it_did_not_create(world, tmp_path, capsys):
    p, out = world["profile"], tmp_path / "c.yaml"
    db = default_storage(out)
    code, _, err = run(["search", p, "--budget", "0.5", "--workers", "1", "--out", out], capsys)
    assert code == 0 and db.exists(), err
    before = db.read_bytes()
    code, _, err = run(["search", p, "--budget", "0.6", "--workers", "1", "--out", out], capsys)
    assert_handled(code, err, "add --resume to continue it, or --fresh to delete it")
    assert db.read_bytes() == before  # untouched
    # a second search on the same output while one runs: the lock refuses it
    lock = db.with_name(db.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 4242 on elsewhere")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code, _, err = run(["search", p, "--budget", "0.6", "--resume", "--out", out], capsys)
        assert_handled(code, err, "another search (pid 4242 on elsewhere) is running")
        code, _, err = run(["search", p, "--budget", "0.6", "--fresh", "--out", out], capsys)
        assert_handled(code, err, "another search")
        assert db.read_bytes() == before
    finally:
        os.close(fd)
        lock.unlink()
    code, out_json, err = run(["search", p, "--budget", "0.6", "--resume", "--json", "--out", out], capsys)
    assert code == 0 and json.loads(out_json)["heads_reused"] == 2, err
    code, out_json, err = run(["search", p, "--budget", "0.6", "--fresh", "--json", "--workers", "1", "--out", out],
                              capsys)
    assert code == 0 and json.loads(out_json)["heads_searched"] == 2, err
    assert leftovers(tmp_path) == []
    # a failing run removes the database it created (nothing stored), and only that one
    out2 = tmp_path / "neg.yaml"
    code, _, err = run(["search", world["prof-negative"], "--budget", "0.5", "--workers", "1", "--out", out2], capsys)
    assert code == 2 and not default_storage(out2).exists() and leftovers(tmp_path) == []
    # no claim study is left in the database once a search is done
    con = sqlite3.connect(str(db))
    assert con.execute("SELECT count(*) FROM studies WHERE study_name LIKE '%:claim:%'").fetchone()[0] == 0
    con.close()


def _claims(db: Path) -> list[tuple[str, str]]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT s.study_name, a.value_json FROM studies s JOIN study_user_attributes a ON "
                               "a.study_id = s.study_id WHERE s.study_name LIKE '%:claim:%' AND a.key = 'owner'"
                               ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _results(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM study_user_attributes WHERE key = 'result'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_a_dead_workers_claim_is_taken_over(tmp_path):
    """Worker A (on 'another machine') dies holding a unit; worker B takes the claim over once A's heartbeat is
    stale and finishes every head, well within 2 minutes; no claim study is left."""
    layers, heads = 4, 6
    prof, _ = planted_profile(GEO, TILE, BS, [["local", "cross", "global", "decay", "far", "local"]] * layers,
                              seed=7)
    pdir = prof.save(tmp_path / "profile")
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    env = {**ENV, "COMPACTSEARCH_CLAIM_TIMEOUT_S": "8"}
    cmd = [sys.executable, "-m", "compactsearch", "search", str(pdir), "--budget", "0.5", "--workers", "1",
           "--storage", url]
    a = subprocess.Popen(cmd + ["--out", str(tmp_path / "a.yaml")], env={**env, "COMPACTSEARCH_WORKER_ID": "far:1"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (_results(db) >= heads and _claims(db)) and a.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        a.send_signal(signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            a.kill()
    held = _claims(db)
    stored = _results(db)
    assert held and all(json.loads(v) == "far:1" for _, v in held), held  # A died holding a unit
    assert stored < layers * heads
    t0 = time.time()
    b = subprocess.run(cmd + ["--out", str(tmp_path / "b.yaml"), "--json"], env=env, capture_output=True, text=True,
                       timeout=120)
    took = time.time() - t0
    assert b.returncode == 0, b.stderr[-2000:]
    res = json.loads(b.stdout)
    assert res["heads_searched"] == layers * heads - stored and took < 120
    assert _claims(db) == [] and _results(db) == layers * heads


# ------------------------------------------------------------------------------------------------ progress in logs
def test_progress_as_plain_lines_outside_a_terminal(world, tmp_path, capsys):
    code, _, err = run(["search", world["profile"], "--budget", "0.5", "--workers", "1", "--out",
                        tmp_path / "c.yaml"], capsys)
    assert code == 0
    lines = [line for line in err.splitlines() if PROGRESS.match(line)]
    assert lines and lines[-1].startswith("search: 2/2 (100%) heads"), err
    assert all(line.startswith("search: ") for line in lines)


def test_line_progress_reports_every_tenth_and_on_a_timer():
    import io

    s = io.StringIO()
    with LineProgress("job", every_s=0.3, stream=s) as p:
        task = p.add_task("items", total=100)
        for _ in range(100):
            p.advance(task)
        before = s.getvalue().count("\n")
        time.sleep(0.8)  # nothing reports: the timer still writes lines
    lines = s.getvalue().splitlines()
    assert before == 11 and lines[10].startswith("job: 100/100 (100%) items")  # 1 item, then every 10%
    assert len(lines) >= 12 and all(PROGRESS.match(line) for line in lines)
