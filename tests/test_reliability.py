"""Bad input and faults on all 7 commands: one line, exit 2 (or 1 for a failed check), no traceback, nothing
corrupt or temporary left, no process above 2 GB. (Full and read-only disks, the search's storage and progress in
logs: tests/test_reliability_storage.py.)

Cases run in this process through `compactsearch.cli.main`, except the memory-limit cases (a typo asking for
terabytes): those run in one child process under an address-space limit (a safety net should a bound fail),
whose peak memory is measured. Read-only and full file systems are small tmpfs mounts (root only; the one
documented skip elsewhere).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_world import ENV, GB2, assert_handled, build_world, leftovers, run

from compactsearch.cli import main
from compactsearch.cli._failures import EXIT_INTERNAL, describe


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("rel"))


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
