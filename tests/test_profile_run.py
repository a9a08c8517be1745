"""`compactsearch profile` end to end on a tiny random Wan pipeline: CLI, errors, kill + resume, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from compactsearch.cli import main
from compactsearch.profile import Profile

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red fox runs through fresh snow", "waves crash on a rocky shore at sunset",
           "a chef flips a pancake in a busy kitchen", "a drone flies over a neon city at night"]


def _recipe(tmp_path: Path, **over) -> Path:
    d = {
        "name": "tiny",
        "model": {"id": "tiny-random-wan", "adapter": "wan", "dtype": "float32"},
        "video": {"height": 128, "width": 128, "frames": 9},
        "sampling": {"steps": 3, "guidance": 5.0, "seed": 7, "max_sequence_length": 32},
        "prompts": PROMPTS,
        "tiling": {"tile": [2, 4, 8], "block_size": 64},
        "profile": {"buckets": [[0, 1], [1, 3]], "per_prompt": True, "samples": {"heads": 1, "layers": [1]}},
    }
    d.update(over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'kernels'}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _tensors(path: Path) -> dict:
    p = Profile.load(path, verify=True)
    out = {}
    for b, l in p.keys():
        out[f"mass{b}{l}"] = p.mass(b, l)
        out[f"pp{b}{l}"] = p.prompt_mass(b, l)
    return out


def _same(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def reference_profile(tmp_path_factory) -> Path:
    """One uninterrupted single-process run (one thread, like the subprocess runs)."""
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "ref_profile"
    subprocess.run([sys.executable, "-m", "compactsearch", "profile", str(_recipe(tmp)), "--out", str(out),
                    "--device", "cpu"], check=True, env=_env(), cwd=tmp, capture_output=True)
    return out


def test_end_to_end_profile_is_readable(tmp_path, capsys):
    out = tmp_path / "prof"
    code, stdout, err = _cli(capsys, "profile", _recipe(tmp_path), "--out", out, "--device", "cpu", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["prompts"] == 4 and summary["computed"] == 4 and summary["resumed"] == 0
    prof = Profile.load(out, verify=True)
    assert (prof.num_layers, prof.num_heads, prof.buckets, prof.num_steps) == (2, 2, [(0, 1), (1, 3)], 3)
    assert prof.geometry.thw == (3, 8, 8) and prof.tile == (2, 4, 8) and prof.block_size == 64
    layout = prof.layout()
    for b, l in prof.keys():
        m = prof.mass(b, l)
        assert m.shape == (2, 3, 3)
        torch.testing.assert_close(m.sum(-1), layout.block_lengths().float().expand(2, -1), atol=0.05, rtol=0)
        pm = prof.prompt_mass(b, l)
        assert pm.shape == (4, 2, 3, 3)
        torch.testing.assert_close(pm.mean(0), m, atol=0.02, rtol=0)
    assert prof.prompts == PROMPTS and prof.seeds == [7, 8, 9, 10]
    stats = prof.stats
    assert len(stats) == 2 * 2 * 2 * 5  # buckets x layers x heads x (mean + 4 prompts)
    assert set(stats["label"]) <= {"local", "cross", "time-variant", "global"}
    s = prof.samples(1)
    assert s["q"].shape == (1, 1, 192, 16) and s["heads"].tolist() == [0]
    assert prof.samples(0) is None
    assert not (tmp_path / "prof.work").exists()


def test_killed_run_resumes_without_recomputing(tmp_path, capsys, reference_profile):
    recipe = _recipe(tmp_path)
    out = tmp_path / "prof"
    work = tmp_path / "prof.work"
    proc = subprocess.Popen([sys.executable, "-m", "compactsearch", "profile", str(recipe), "--out", str(out),
                             "--device", "cpu"], env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (work / "prompt_00001.safetensors").exists():
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in work.glob("prompt_*.safetensors"))
    assert 2 <= len(done) < 4, done  # killed mid-run with some prompts finished
    assert not out.exists()
    mtimes = {p: (work / p).stat().st_mtime_ns for p in done}
    code, stdout, err = _cli(capsys, "profile", recipe, "--out", out, "--device", "cpu", "--resume", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["resumed"] == len(done) and summary["computed"] == 4 - len(done)
    assert all(p in mtimes for p in done)
    _same(out, reference_profile)


def test_resume_refuses_a_work_dir_of_another_recipe(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    work = tmp_path / "prof.work"
    work.mkdir()
    (work / "work.yaml").write_text("fingerprint: 0123\n")
    code, _, err = _cli(capsys, "profile", recipe, "--out", tmp_path / "prof", "--device", "cpu", "--resume")
    assert code == 2 and err.startswith("error: ") and "was made by another recipe" in err
    assert len(err.strip().splitlines()) == 1


def test_torchrun_two_processes_match_one(tmp_path, reference_profile):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun"))
    out = tmp_path / "dist"
    res = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "compactsearch", "profile",
                          str(_recipe(tmp_path)), "--out", str(out), "--device", "cpu"], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    _same(out, reference_profile)
    assert Profile.load(out).prompts == PROMPTS


@pytest.mark.parametrize("over, match", [
    ({"model": {"id": "tiny-random-wan", "adapter": "sora"}}, "model.adapter: unknown adapter 'sora'"),
    ({"model": {"id": "tiny-random-wan", "adapter": "ltx"}}, "is a 'wan' model; set model.adapter: wan"),
    ({"model": {"id": "no-org/NoSuchModel-Diffusers", "adapter": "wan"}}, "not found.*hf download no-org/NoSuch"),
    ({"model": {"id": "./no/such/dir", "adapter": "wan"}}, "no such directory"),
    ({"model": {"id": "tiny-random-wan22", "adapter": "wan"}, "sampling": {"steps": 4, "guidance": 4.0},
      "profile": {"buckets": [[0, 3], [3, 4]]}}, r"buckets\[0\] \[0, 3\) mixes .* switch at step 2"),
])
def test_clear_one_line_errors(tmp_path, capsys, over, match):
    import re

    code, _, err = _cli(capsys, "profile", _recipe(tmp_path, **over), "--out", tmp_path / "p", "--device", "cpu")
    assert code == 2
    lines = [x for x in err.strip().splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and re.search(match, lines[0]), err
    assert "InputError" not in err  # no traceback of ours (diffusers' own logging may print its warnings)


def test_prompts_option_replaces_the_calibration_set(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("a kite over a beach\n")
    out = tmp_path / "p"
    code, stdout, err = _cli(capsys, "profile", _recipe(tmp_path, profile={"buckets": [[0, 3]], "steps": [0]}),
                             "--out", out, "--device", "cpu", "--prompts", tmp_path / "mine.txt", "--json",
                             "--no-per-prompt")
    assert code == 0, err
    prof = Profile.load(out)
    assert prof.prompts == ["a kite over a beach"] and not prof.per_prompt and prof.buckets == [(0, 3)]
