"""Bad input and faults on all 7 commands: one line, exit 2 (or 1 for a failed check), no traceback, nothing
corrupt or temporary left, no process above 2 GB; the search keeps its work; progress shows in logs.

Cases run in this process through `compactsearch.cli.main`, except the memory-limit cases (a typo asking for
terabytes): those run in one child process under an address-space limit (a safety net should a bound fail),
whose peak memory is measured. Read-only and full file systems are small tmpfs mounts (root only; the one
documented skip elsewhere).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from planted import planted_profile
from safetensors.torch import load_file, save_file

from compactsearch.cli import main
from compactsearch.cli._failures import EXIT_INTERNAL, describe
from compactsearch.cli._progress import LineProgress
from compactsearch.geometry import VideoGeometry
from compactsearch.search import SearchSettings, default_storage, run_search
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-random-wan.yaml"
GEO, TILE, BS = VideoGeometry(9, 20, 28), (2, 8, 8), 64
GB2 = 2 * 1024**3
PROGRESS = re.compile(r"^\w+: .* \| \d+(h\d\d)?m\d\ds$")  # LineProgress lines (logs of a run, not the error)
BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
""")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "kernels"), str(ROOT / "tests")])}


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not PROGRESS.match(line)]


def assert_handled(code: int, err: str, expect: str, want: int = 2, name=None) -> None:
    lines = error_lines(err)
    assert code == want, (name, code, err[-2000:])
    assert "Traceback" not in err, (name, err[-2000:])
    assert 1 <= len(lines) <= 4 and lines[-1].startswith("error: "), (name, err[-2000:])
    assert expect in lines[-1], (name, expect, lines[-1])


def leftovers(root: Path) -> list[str]:
    """Temporary or partial files a failed command must not leave: temp names, work and lock files, probes."""
    pats = (".tmp", ".work", ".lock", ".compactsearch-probe", ".old-")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if any(s in p.name for s in pats))


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A good config, profile and recipe, and bad variants of each."""
    d = tmp_path_factory.mktemp("rel")
    w = {"dir": d}
    cfg = small_config()
    w["config"] = d / "config.yaml"
    cfg.save(w["config"])
    good = cfg.to_dict()

    def config_variant(name, change):
        data = json.loads(json.dumps(good))
        change(data)
        p = d / f"cfg-{name}.yaml"
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        w[f"cfg-{name}"] = p

    config_variant("head-dim", lambda c: c["geometry"].update(head_dim=10**9))
    config_variant("frames", lambda c: c["geometry"].update(frames=10**9))
    config_variant("text", lambda c: c["geometry"].update(text_tokens=10**9))
    config_variant("big-grid", lambda c: c["geometry"].update(frames=4000, height=4000, width=4000))
    config_variant("adapter", lambda c: c["model"].update(adapter="nosuch"))
    laughs = d / "cfg-laughs.yaml"
    laughs.write_text(w["config"].read_text() + "summary:\n" + textwrap.indent(BILLION_LAUGHS, "  "))
    w["cfg-laughs"] = laughs
    big = d / "cfg-huge-file.yaml"
    with open(big, "wb") as f:
        f.truncate(300 * 10**6)  # sparse: 300 MB on paper, nothing on disk
    w["cfg-huge-file"] = big

    prof, _ = planted_profile(GEO, TILE, BS, [["local", "cross"]], prompts=2, seed=1)
    w["profile"] = prof.save(d / "profile")
    w["searched"] = d / "searched.yaml"
    run_search(w["profile"], SearchSettings(budget=0.5, trials=8), w["searched"])

    def profile_variant(name, change_meta=None, change_mass=None):
        p = d / f"prof-{name}"
        shutil.copytree(w["profile"], p)
        if change_meta:
            meta = yaml.safe_load((p / "profile.yaml").read_text())
            change_meta(meta)
            (p / "profile.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        if change_mass:
            f = p / "mass" / "b0_l0.safetensors"
            t = load_file(str(f))
            change_mass(t["mass"])
            save_file({k: v.contiguous() for k, v in t.items()}, str(f))
        w[f"prof-{name}"] = p

    profile_variant("frames", lambda m: m["geometry"].update(frames=10**9))
    profile_variant("steps", lambda m: m.update(steps=-4))
    profile_variant("heads", lambda m: m.update(heads="two"))
    profile_variant("block", lambda m: m["tiling"].update(block_size=100))
    profile_variant("negative", change_mass=lambda t: t.__setitem__((0, 1, 1), -3.0))
    profile_variant("inf", change_mass=lambda t: t.__setitem__((1, 0, 2), float("inf")))
    p = d / "prof-laughs"
    shutil.copytree(w["profile"], p)
    (p / "profile.yaml").write_text((p / "profile.yaml").read_text() + BILLION_LAUGHS)
    w["prof-laughs"] = p

    base = yaml.safe_load(RECIPE.read_text())
    base["holdout_prompts"] = ["a cat sleeps on a sofa"]

    def recipe_variant(name, change):
        data = json.loads(json.dumps(base))
        change(data)
        path = d / f"recipe-{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        w[f"recipe-{name}"] = path

    recipe_variant("good", lambda r: None)
    recipe_variant("height", lambda r: r["video"].update(height=100))
    recipe_variant("frames", lambda r: r["video"].update(frames=10**9))
    recipe_variant("pixels", lambda r: r["video"].update(frames=16000, height=16000, width=16000))
    recipe_variant("model", lambda r: r["model"].update(id="nosuch-org/nosuch-model"))
    recipe_variant("extra", lambda r: r["sampling"].update(extra={"no_such_argument": 1}))
    recipe_variant("frames-vae", lambda r: r["video"].update(frames=10))
    laughs = d / "recipe-laughs.yaml"
    laughs.write_text(w["recipe-good"].read_text().replace("sampling:\n", "sampling:\n  extra:\n"
                                                           + textwrap.indent(BILLION_LAUGHS, "    "), 1))
    w["recipe-laughs"] = laughs
    w["file"] = d / "plain-file"
    w["file"].write_text("x")
    w["dir-out"] = d / "a-directory"
    w["dir-out"].mkdir()
    return w


# ------------------------------------------------------------------------------------------------ the cases
def cases(w, t: Path):
    """(name, argv, expected exit code, text the error line holds)."""
    c, p, r = w["config"], w["profile"], w["recipe-good"]
    long = "n" * 250
    return [
        # validate
        ("validate adapter", ["validate", w["cfg-adapter"]], 2, "model.adapter: unknown adapter 'nosuch'"),
        ("validate laughs", ["validate", w["cfg-laughs"]], 2, "anchors and aliases"),
        ("validate huge file", ["validate", w["cfg-huge-file"]], 2, "300 MB"),
        ("validate is dir", ["validate", w["dir-out"]], 2, "is a directory"),
        ("validate --profile frames", ["validate", c, "--profile", w["prof-frames"]], 2, "geometry.frames"),
        ("validate --profile missing", ["validate", c, "--profile", t / "nope"], 2, "does not exist"),
        ("validate --kernel bogus", ["validate", c, "--kernel", "bogus"], 2, "--kernel must be one of"),
        # inspect
        ("inspect adapter", ["inspect", w["cfg-adapter"]], 2, "unknown adapter"),
        ("inspect laughs", ["inspect", w["cfg-laughs"], "--json"], 2, "anchors and aliases"),
        ("inspect big grid", ["inspect", w["cfg-big-grid"]], 2, "above the memory limit"),
        # search
        ("search steps<0", ["search", w["prof-steps"], "--budget", "0.5", "--out", t / "s1.yaml"], 2,
         "steps: must be >= 1, got -4"),
        ("search heads type", ["search", w["prof-heads"], "--budget", "0.5", "--out", t / "s2.yaml"], 2,
         "heads: expected an integer"),
        ("search block size", ["search", w["prof-block"], "--budget", "0.5", "--out", t / "s3.yaml"], 2,
         "tiling.block_size: must be one of"),
        ("search negative mass", ["search", w["prof-negative"], "--budget", "0.5", "--workers", "1", "--out",
                                  t / "s4.yaml"], 2, "contains NaN, inf or negative values"),
        ("search inf mass", ["search", w["prof-inf"], "--budget", "0.5", "--workers", "1", "--out", t / "s5.yaml"],
         2, "contains NaN, inf or negative values"),
        ("search laughs", ["search", w["prof-laughs"], "--budget", "0.5", "--out", t / "s6.yaml"], 2,
         "anchors and aliases"),
        ("search out is dir", ["search", p, "--budget", "0.5", "--out", w["dir-out"]], 2, "is a directory"),
        ("search out under file", ["search", p, "--budget", "0.5", "--out", w["file"] / "c.yaml"], 2,
         "is a file, not a directory"),
        ("search out name too long", ["search", p, "--budget", "0.5", "--out", t / f"{long}.yaml"], 2, "too long"),
        ("search resume+fresh", ["search", p, "--budget", "0.5", "--resume", "--fresh", "--out", t / "s7.yaml"],
         2, "give one of them"),
        ("search fresh+storage", ["search", p, "--budget", "0.5", "--fresh", "--storage", f"sqlite:///{t}/x.db",
                                  "--out", t / "s8.yaml"], 2, "--fresh deletes the default SQLite"),
        ("search bad storage", ["search", p, "--budget", "0.5", "--storage", "nosuchdb://x", "--out",
                                t / "s9.yaml"], 2, "cannot open Optuna storage"),
        ("search storage under file", ["search", p, "--budget", "0.5", "--storage",
                                       f"sqlite:///{w['file']}/x.db", "--out", t / "s10.yaml"], 2, "Optuna storage"),
        # profile
        ("profile height", ["profile", w["recipe-height"], "--out", t / "p1", "--device", "cpu"], 2,
         "video.height 100: this model needs a multiple of 16"),
        ("profile frames vae", ["profile", w["recipe-frames-vae"], "--out", t / "p2", "--device", "cpu"], 2,
         "video.frames 10: this model needs frames - 1 to be a multiple of 4"),
        ("profile model id", ["profile", w["recipe-model"], "--out", t / "p3", "--device", "cpu"], 2,
         "weights for nosuch-org/nosuch-model not found"),
        ("profile extra", ["profile", w["recipe-extra"], "--out", t / "p4", "--device", "cpu"], 2,
         "rejected an argument"),
        ("profile laughs", ["profile", w["recipe-laughs"], "--out", t / "p5"], 2, "anchors and aliases"),
        ("profile out is file", ["profile", r, "--out", w["file"]], 2, "is a file; give a directory"),
        ("profile out under file", ["profile", r, "--out", w["file"] / "p"], 2, "is a file, not a directory"),
        ("profile out too long", ["profile", r, "--out", t / long], 2, "too long"),
        ("profile prompts dir", ["profile", r, "--prompts", w["dir-out"], "--out", t / "p6"], 2, "is a directory"),
        # generate
        ("generate out no suffix", ["generate", r, "-p", "x", "--out", w["dir-out"], "--device", "cpu"], 2,
         "write a .gif or an .mp4"),
        ("generate out dir.gif", ["generate", r, "-p", "x", "--out", _dir_gif(t), "--device", "cpu"], 2,
         "is a directory"),
        ("generate out under file", ["generate", r, "-p", "x", "--out", w["file"] / "v.gif"], 2,
         "is a file, not a directory"),
        ("generate out too long", ["generate", r, "-p", "x", "--out", t / f"{long}.gif"], 2, "too long"),
        ("generate height", ["generate", w["recipe-height"], "-p", "x", "--out", t / "g.gif", "--device", "cpu"],
         2, "video.height 100"),
        ("generate config adapter", ["generate", r, "-p", "x", "-c", w["cfg-adapter"], "--out", t / "g.gif"], 2,
         "unknown adapter"),
        # evaluate
        ("evaluate videos is file", ["evaluate", r, "-c", c, "--videos", w["file"]], 2, "is a file; give a "
                                                                                         "directory"),
        ("evaluate height", ["evaluate", w["recipe-height"], "-c", c, "--device", "cpu"], 2, "video.height 100"),
        ("evaluate config laughs", ["evaluate", r, "-c", w["cfg-laughs"]], 2, "anchors and aliases"),
        ("evaluate baselines negative", ["evaluate", r, "-c", w["searched"], "--baselines", w["prof-negative"]], 2,
         "contains NaN, inf or negative values"),
        # report
        ("report negative mass", ["report", w["prof-negative"], "--out", t / "r1", "--workers", "1"], 2,
         "contains NaN, inf or negative values"),
        ("report steps<0", ["report", w["prof-steps"], "--out", t / "r2"], 2, "steps: must be >= 1"),
        ("report out is file", ["report", p, "--out", w["file"]], 2, "is a file; give a directory"),
        ("report out under file", ["report", p, "--out", w["file"] / "r"], 2, "is a file, not a directory"),
        ("report out too long", ["report", p, "--out", t / long], 2, "too long"),
        ("report config laughs", ["report", p, "--config", w["cfg-laughs"], "--out", t / "r3"], 2,
         "anchors and aliases"),
    ]


def _dir_gif(t: Path) -> Path:
    d = t / "video.gif"
    d.mkdir(exist_ok=True)
    return d


def test_bad_input_and_faults_on_every_command(world, tmp_path, capsys):
    seen = set()
    for name, argv, want, expect in cases(world, tmp_path):
        before = sorted(str(x) for x in tmp_path.rglob("*"))
        code, out, err = run(argv, capsys)
        assert_handled(code, err, expect, want, name)
        assert leftovers(tmp_path) == [] and leftovers(world["dir"]) == [], name
        assert sorted(str(x) for x in tmp_path.rglob("*")) == before, f"{name} left files behind"
        seen.add(argv[0])
    assert seen == {"validate", "inspect", "search", "profile", "generate", "evaluate", "report"}
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < GB2


def test_validate_kernel_that_cannot_run_is_a_failed_check(world, capsys):
    """Head dim 16 is well-formed but the kernel takes 64 or 128: exit 1 (a check failed) with the JSON report."""
    code, out, err = run(["validate", world["config"], "--kernel", "interpret", "--json"], capsys)
    assert code == 1 and "Traceback" not in err
    report = json.loads(out)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["kernel"] and "head dim 16" in failed[0]["detail"]


_DRIVER = """
import contextlib, io, json, resource, sys
from compactsearch.cli import main
res = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    res.append([code, err.getvalue()])
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"results": res, "peak_kb": hwm}))
"""


def test_memory_bounds_in_a_limited_process(world, tmp_path):
    """Typos that asked for terabytes are refused before anything is allocated; the process stays < 2 GB."""
    w, t = world, tmp_path
    memory_cases = [
        (["validate", w["cfg-head-dim"]], "geometry.head_dim: 1000000000 is above the limit"),
        (["validate", w["cfg-frames"]], "geometry.frames: 1000000000 is above the limit"),
        (["validate", w["cfg-text"]], "geometry.text_tokens: 1000000000 is above the limit"),
        (["validate", w["cfg-big-grid"]], "above the memory limit"),
        (["inspect", w["cfg-frames"], "--json"], "geometry.frames"),
        (["inspect", w["cfg-laughs"], "--json"], "anchors and aliases"),
        (["search", w["prof-frames"], "--budget", "0.5", "--out", t / "m.yaml"], "geometry.frames: 1000000000"),
        (["report", w["prof-frames"], "--out", t / "rep"], "geometry.frames"),
        (["profile", w["recipe-frames"], "--out", t / "prof"], "video.frames: 1000000000 is above the limit"),
        (["profile", w["recipe-pixels"], "--out", t / "prof"], "above the memory limit"),
        (["profile", w["recipe-laughs"], "--out", t / "prof"], "anchors and aliases"),
        (["generate", w["recipe-frames"], "-p", "x", "-o", t / "v.gif"], "video.frames"),
        (["evaluate", w["recipe-good"], "-c", w["cfg-head-dim"]], "geometry.head_dim"),
    ]
    argvs = [[str(a) for a in argv] for argv, _ in memory_cases]

    def limit():  # 6 GB of address space: a bound that failed would hit this instead of the machine
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, 6 * 1024**3))

    r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs)], env=ENV, capture_output=True, text=True,
                       timeout=300, preexec_fn=limit)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout.strip().splitlines()[-1])
    for (argv, expect), (code, err) in zip(memory_cases, data["results"], strict=True):
        assert_handled(code, err, expect, name=argv[:2])
    assert data["peak_kb"] * 1024 < GB2, data["peak_kb"]
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ the mapping
def test_failure_mapping_and_internal_errors(world, capsys, monkeypatch):
    assert describe(OSError(28, "No space left on device", "/x/y"))[1] == 2
    assert "no space left" in describe(OSError(28, "No space left on device", "/x/y"))[0]
    assert "read-only" in describe(OSError(30, "Read-only file system", "/x"))[0]
    msg, code = describe(KeyError("boom"))
    assert code == EXIT_INTERNAL and "--debug" in msg
    # an unexpected exception in a command: one line, a distinct exit code, the traceback only with --debug
    import compactsearch.cli.inspect_cmd as inspect_cmd

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(inspect_cmd, "load_config", broken)
    code, out, err = run(["inspect", world["config"]], capsys)
    assert code == EXIT_INTERNAL and err.strip().count("\n") == 0 and "internal error: ZeroDivisionError" in err
    assert "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "inspect", str(world["config"])])


# ------------------------------------------------------------------------------------------------ read-only, full
@pytest.fixture
def mounts(tmp_path):
    """A read-only tmpfs and a 1 MB tmpfs (root only: the one skip of this suite)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
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


def test_read_only_and_full_disks(world, mounts, tmp_path, capsys):
    ro, full, small, tiny = mounts
    w = world
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
