"""What the reliability tests share: a world of good and bad inputs, and how a handled failure looks.

`build_world` writes a good config, profile and recipe and bad variants of each (tests/test_reliability.py and
tests/test_reliability_storage.py build it once per module); `run` runs the CLI in this process; `assert_handled`
checks a failure is one ``error:`` line with the expected exit code and no traceback; `leftovers` lists temporary
or partial files a failed command must not leave.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from planted import planted_profile
from safetensors.torch import load_file, save_file

from compactsearch.cli import main
from compactsearch.geometry import VideoGeometry
from compactsearch.search import SearchSettings, run_search
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



def build_world(d: Path) -> dict:
    """A good config, profile and recipe in ``d``, and bad variants of each (by name)."""
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
