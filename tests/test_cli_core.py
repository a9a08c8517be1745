"""`compactsearch validate` and `inspect` from the command line: results, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from compactsearch.cli import main
from compactsearch.config import summarize
from tests.conftest import small_config


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_help_lists_only_working_commands(capsys):
    code, out, err = run(["--help"], capsys)
    assert code == 0
    for cmd in ("validate", "inspect"):
        assert cmd in out


def test_validate_passes_with_json(config_file, capsys):
    code, out, err = run(["validate", str(config_file), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert {"ok", "density", "tiling_waste", "checks"} <= set(report)
    names = {c["name"] for c in report["checks"]}
    assert {"schema", "masks", "tiling_waste", "numerics"} <= names
    assert 0 < report["density"] < 1


def test_validate_fails_a_check_with_exit_1(tmp_path, capsys):
    d = small_config().to_dict()
    d["buckets"][0]["layers"][0]["heads"][0]["density"] = 0.99  # declared density disagrees with the mask
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    code, out, err = run(["validate", str(path), "--json"], capsys)
    assert code == 1
    report = json.loads(out)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["declared_density"]


def test_validate_budget_check(tmp_path, capsys):
    d = small_config().to_dict()
    d["search"] = {"budget": 0.05}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    code, out, _ = run(["validate", str(path), "--json", "--no-numerics"], capsys)
    assert code == 1 and any(c["name"] == "budget" and not c["ok"] for c in json.loads(out)["checks"])
    # the budget is on the whole run: a budget above the sparse steps' density but below the whole run's fails
    s = summarize(small_config())
    assert s["density_sparse_steps"] + 0.02 < s["density"]
    for budget, code_expected in ((s["density_sparse_steps"] + 0.01, 1), (s["density"], 0)):
        d["search"] = {"budget": round(budget, 4)}
        path.write_text(yaml.safe_dump(d))
        code, out, err = run(["validate", str(path), "--json", "--no-numerics"], capsys)
        report = json.loads(out)
        assert code == code_expected and report["density"] == pytest.approx(s["density"], abs=1e-5), err
        assert report["density_sparse_steps"] == pytest.approx(s["density_sparse_steps"], abs=1e-5)
        assert "read compactsearch/v2" in err and "over the whole run" in err


def _bad_inputs(tmp_path):
    good = small_config().to_dict()
    text = yaml.safe_dump(good, sort_keys=False)
    cases = {}

    def write(name, content):
        p = tmp_path / f"{name}.yaml"
        p.write_text(content)
        cases[name] = p

    cases["missing"] = tmp_path / "nope.yaml"
    write("empty", "")
    write("not-yaml", "format: [compactsearch/v1\n  - : :\n")
    write("truncated", text[: len(text) // 3])
    d = small_config().to_dict()
    d["buckets"][0]["layers"][0]["heads"][0]["window"] = [1, 1]
    write("unknown-key", yaml.safe_dump(d))
    d = small_config().to_dict()
    d["geometry"]["height"] = "nine"
    write("wrong-type", yaml.safe_dump(d))
    d = small_config().to_dict()
    d["format"] = "compactsearch/v0"
    write("wrong-version", yaml.safe_dump(d))
    d = small_config().to_dict()
    d["buckets"][1]["layers"][0]["heads"][1]["groups"][0]["windows"][0] = [1, 50]
    write("window-too-large", yaml.safe_dump(d))
    d = small_config().to_dict()
    d["geometry"]["heads"] = 5
    write("head-count", yaml.safe_dump(d))
    d = small_config().to_dict()
    d["geometry"]["layers"] = 1
    write("layer-count", yaml.safe_dump(d))
    return cases


EXPECT = {
    "missing": "does not exist",
    "empty": "is empty",
    "not-yaml": "not valid YAML",
    "truncated": "buckets[0]",
    "unknown-key": "heads[0].window: unknown key",
    "wrong-type": "geometry.height: expected an integer",
    "wrong-version": "format: expected one of compactsearch/v1, compactsearch/v2",
    "window-too-large": "buckets[1].layers[0].heads[1].groups[0].windows[0]: window [1, 50] is larger",
    "head-count": "geometry.heads is 5",
    "layer-count": "geometry.layers is 1",
}


@pytest.mark.parametrize("command", ["validate", "inspect"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, command):
    for name, path in _bad_inputs(tmp_path).items():
        code, out, err = run([command, str(path)], capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert EXPECT[name] in lines[0], (name, lines[0])
        assert "Traceback" not in err and out == ""


def test_usage_errors_exit_2(config_file, capsys):
    assert run(["validate"], capsys)[0] == 2
    assert run(["inspect", str(config_file), "--head", "1"], capsys)[0] == 2
    assert run(["inspect", str(config_file), "--layer", "9"], capsys)[0] == 2
    for argv in (["validate"], ["inspect", str(config_file), "--layer", "abc"], ["bogus"]):
        code, out, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], err


def test_inspect_table_and_picture(config_file, capsys):
    code, out, err = run(["inspect", str(config_file)], capsys)
    assert code == 0
    assert "dt0-1:1x1" in err and "dense" in err and "kind: example" in err
    code, out, err = run(["inspect", str(config_file), "--layer", "1", "--head", "0"], capsys)
    assert code == 0
    assert "query tile" in err and "Q" in err and "block mask" in err
    code, out, err = run(["inspect", str(config_file), "--layer", "0", "--json"], capsys)
    rows = json.loads(out)["rows"]
    assert len(rows) == 2 * 3 and {r["layer"] for r in rows} == {0}


def test_console_script_runs_as_module(config_file):
    r = subprocess.run([sys.executable, "-m", "compactsearch", "validate", str(config_file), "--no-numerics"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "compactsearch", "validate", "missing.yaml"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0


def test_example_configs_validate():
    from pathlib import Path

    from compactsearch.config import load_config
    from compactsearch.validation import validate_config

    # The smallest reference example end to end; all four are checked for schema and waste.
    examples = sorted(Path("recipes/examples").glob("*.yaml"))
    assert len(examples) == 4
    for path in examples:
        cfg = load_config(path)
        assert cfg.provenance["kind"] == "example"
        kinds = {h.pattern.describe().split(":")[0] for lc in cfg.buckets[0].layers for h in lc.heads}
        assert "dense" in kinds and len(kinds) >= 3
    report = validate_config(load_config("recipes/examples/wan2.1-t2v-1.3b-480p.yaml"), sample_heads=1,
                             sample_blocks=1)
    assert report.ok, report.checks


def _config_d64(tmp_path):
    """The small config at head dim 64 (the kernels take 64 or 128)."""
    from dataclasses import replace

    path = tmp_path / "c64.yaml"
    replace(small_config(), head_dim=64).save(path)
    return path


def test_validate_kernel_interpret_runs_the_triton_kernel_on_cpu(tmp_path, capsys):
    code, out, err = run(["validate", str(_config_d64(tmp_path)), "--json", "--kernel", "interpret",
                          "--sample-heads", "1", "--sample-blocks", "2", "--no-numerics"], capsys)
    assert code == 0, err
    report = json.loads(out)
    kernel = [c for c in report["checks"] if c["name"] == "kernel"]
    assert len(kernel) == 1 and kernel[0]["ok"]
    assert "random q/k/v" in kernel[0]["detail"] and "max err" in kernel[0]["detail"]
    assert len(report["kernel_results"]) == 4  # 2 buckets x 2 layers, each checked


def test_validate_kernel_check_fails_on_a_wrong_kernel(tmp_path, capsys, monkeypatch):
    """The check can fail: a kernel that returns the right shape but wrong values gives exit 1."""
    import compact_attn.attention as attention

    real = attention.block_sparse_attention_triton

    def off_by_some(q, k, v, mask, *args, out=None, **kwargs):
        o = real(q, k, v, mask, *args, out=out, **kwargs)
        o.add_(0.05)
        return o

    monkeypatch.setattr(attention, "block_sparse_attention_triton", off_by_some)
    code, out, err = run(["validate", str(_config_d64(tmp_path)), "--json", "--kernel", "interpret",
                          "--sample-heads", "1", "--sample-blocks", "1", "--no-numerics"], capsys)
    assert code == 1
    failed = [c for c in json.loads(out)["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["kernel"]


@pytest.mark.parametrize("kernel,message", [
    ("triton", "--kernel triton needs a CUDA GPU; on a CPU use --kernel interpret"),
    ("cudnn", "--kernel must be one of none, interpret, triton, got 'cudnn'"),
])
def test_validate_kernel_errors(config_file, capsys, kernel, message):
    code, out, err = run(["validate", str(config_file), "--kernel", kernel], capsys)
    assert code == 2 and message in err and err.strip().count("\n") == 0
