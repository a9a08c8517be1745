"""`generate` / `evaluate` with ``--parallel ulysses:N`` under torchrun: two gloo processes on the CPU
(``python -m torch.distributed.run``) give what one process gives, rank 0 alone writes and prints; and the
one-line refusals (no torchrun, ring, a bad spec, another family, offloading, a world size or device that does
not fit, a token or head count the degree does not divide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from compactsearch.adapters import get_adapter
from compactsearch.adapters.pipelines import tiny_wan_pipeline
from compactsearch.adapters.registry import video_tokens
from compactsearch.cli import main
from compactsearch.distributed import enable_ulysses
from compactsearch.errors import InputError
from tests.conftest import single_process_env
from tests.test_ulysses import OWN_FRAME, TWO_FRAMES, VIDEO, make_config

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-random-wan.yaml"
PROMPTS = ["a red fox runs through fresh snow", "a blue bird on a branch"]


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def torchrun(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = single_process_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "compactsearch", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def frames(gif: Path) -> np.ndarray:
    with Image.open(gif) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def test_generate_and_evaluate_under_torchrun_give_the_one_process_results(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    make_config([OWN_FRAME, TWO_FRAMES]).save(cfg)  # the two heads run different patterns
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    code, out, err = cli(capsys, "generate", RECIPE, "-c", cfg, "-p", PROMPTS[0], "-o", tmp_path / "one.gif",
                         "--device", "cpu")
    assert code == 0, err
    code, out, err = cli(capsys, "evaluate", RECIPE, "-c", cfg, "--prompts", prompts, "--device", "cpu", "--json")
    assert code == 0, err
    one = json.loads(out)

    run = torchrun("generate", RECIPE, "-c", cfg, "-p", PROMPTS[0], "-o", "par.gif", "--parallel", "ulysses:2",
                   "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)  # one JSON object: rank 1 printed nothing
    assert got["parallel"] == "ulysses:2" and got["mode"] == "sparse"
    assert run.stderr.count("wrote par.gif") == 0  # --json: the result is on stdout, once
    a, b = frames(tmp_path / "one.gif").astype(int), frames(tmp_path / "par.gif").astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # equal to fp32 rounding (0 measured)

    run = torchrun("evaluate", RECIPE, "-c", cfg, "--prompts", prompts, "--parallel", "ulysses:2", "--videos",
                   "vids", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    par = json.loads(run.stdout)
    assert par["parallel"] == "ulysses:2" and run.stderr.count("2 prompts, dense attention") == 1
    for p, o in zip(par["configs"][0]["per_prompt"], one["configs"][0]["per_prompt"], strict=True):
        assert p["prompt"] == o["prompt"] and p["psnr"] == pytest.approx(o["psnr"], abs=0.01)
        assert p["ssim"] == pytest.approx(o["ssim"], abs=1e-4)
    assert par["configs"][0]["density"] == one["configs"][0]["density"]
    assert sorted(p.name for p in (tmp_path / "vids").iterdir()) == ["0_dense_vs_cfg.gif", "1_dense_vs_cfg.gif"]


def test_a_bad_input_is_one_line_from_rank_0_under_torchrun(tmp_path):
    run = torchrun("generate", RECIPE, "-p", "x", "-o", "a.gif", "--parallel", "ulysses:4", cwd=tmp_path)
    assert run.returncode != 0
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: --parallel ulysses:4 under torchrun with 2 processes: start torchrun with "
                     "--nproc-per-node 4 (or give --parallel ulysses:2)"]
    assert not (tmp_path / "a.gif").exists()


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--parallel", "ulysses:2"], {}, "--parallel ulysses:2 runs under torchrun, one process per GPU: torchrun "
                                      "--nproc-per-node 2 -m compactsearch"),
    (["--parallel", "ring:2"], {}, "ring attention is not supported"),
    (["--parallel", "ulysses"], {}, "write ulysses:N with N >= 2"),
    (["--parallel", "ulysses:1"], {}, "write ulysses:N with N >= 2"),
    (["--parallel", "ulysses:2"], {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3"},
     "under torchrun with 3 processes: start torchrun with --nproc-per-node 2"),
    (["--parallel", "ulysses:2", "--device", "cuda:1"], {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
     "--device cuda:1 with --parallel: each process uses cuda:LOCAL_RANK"),
])
def test_parallel_refusals_are_one_line(args, env, message, tmp_path, capsys, monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg, prompts = tmp_path / "x.yaml", tmp_path / "p.txt"
    make_config([OWN_FRAME] * 2).save(cfg)
    prompts.write_text("x\n")
    for command in (["generate", RECIPE, "-p", "x", "-o", tmp_path / "a.gif"],
                    ["evaluate", RECIPE, "-c", cfg, "--prompts", prompts]):
        code, out, err = cli(capsys, *command, *args)
        assert code == 2 and message in err and err.count("\n") == 1 and out == "", err


def test_other_families_and_offloading_are_refused_before_anything_runs(tmp_path, capsys):
    code, _, err = cli(capsys, "generate", ROOT / "recipes" / "tiny-random-mochi.yaml", "-p", "x", "-o",
                       tmp_path / "a.gif", "--parallel", "ulysses:2")
    assert code == 2 and "supported for the wan adapter only, not 'mochi'" in err
    recipe = tmp_path / "offload.yaml"
    recipe.write_text(RECIPE.read_text().replace("  dtype: float32", "  dtype: float32\n  offload: model"))
    code, _, err = cli(capsys, "generate", recipe, "-p", "x", "-o", tmp_path / "a.gif", "--parallel", "ulysses:2")
    assert code == 2 and "--parallel with model.offload: model: set model.offload: none" in err


def test_a_rank_other_than_0_prints_no_input_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    code, out, err = cli(capsys, "generate", RECIPE, "-p", "x", "-o", tmp_path / "a.gif", "--parallel", "ulysses:2")
    assert code == 2 and out == "" and err == ""


def test_enable_ulysses_refuses_token_and_head_counts_the_degree_does_not_divide():
    pipe = tiny_wan_pipeline()
    assert video_tokens(pipe, get_adapter("wan"), *VIDEO) == 3 * 8 * 8
    with pytest.raises(InputError, match="9x128x128 gives 192 video tokens, not divisible by 5"):
        enable_ulysses(pipe, "wan", 5, VIDEO)
    with pytest.raises(InputError, match="the model has 2 heads, not divisible by 4"):
        enable_ulysses(pipe, "wan", 4, VIDEO)
    with pytest.raises(InputError, match="supported for the wan adapter only, not 'cogvideox'"):
        enable_ulysses(pipe, "cogvideox", 2, VIDEO)
    assert pipe.transformer._parallel_config is None  # nothing was enabled


def test_both_wan22_experts_run_under_ulysses(tmp_path, capsys):
    recipe = ROOT / "recipes" / "tiny-random-wan22.yaml"
    code, _, err = cli(capsys, "generate", recipe, "-p", PROMPTS[0], "-o", tmp_path / "one.gif", "--device", "cpu")
    assert code == 0, err
    run = torchrun("generate", recipe, "-p", PROMPTS[0], "-o", "par.gif", "--parallel", "ulysses:2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    a, b = frames(tmp_path / "one.gif").astype(int), frames(tmp_path / "par.gif").astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
