"""Whole generations at real transformer size, one family per invocation: profile cost, step speed-up, memory.

    python benchmarks/e2e.py --family wan-1.3b --out bench-e2e            # on one GPU (H200: 1-8 min a family)
    python benchmarks/e2e.py --family ltx --size tiny --device cpu --out /tmp/e  # the same code path, tiny, CPU

Per family: build the real architecture with random weights (`compactsearch.adapters.pipelines`: small random
text encoders of the right width, no VAE), save it with ``save_pretrained``, write a recipe whose ``model.id``
is that directory, and then, through the recipe path as a user runs it:

1. ``profile`` (in this process, `run_profile`): its timing table, the time per prompt after the first, and
   the start-up (load + the first prompt's extra: Triton compiling, cuDNN planning);
2. ``search --budget B`` (a subprocess, B = 0.3 by default) and ``validate --kernel none`` for the density of
   the sparse steps;
3. the pipeline loaded again: a dense generation of the last calibration prompt (the prompt the profile timed),
   per-step times and the model's own attention time per step (`AttentionTimer`), so the attention share ``f``;
   then the same generation with the config (`compactsearch.apply`): per-step times of the sparse steps;
4. the Amdahl limit ``1 / ((1 - f) + f * d)`` at the sparse steps' density ``d``, the measured sparse-step
   speed-up (median dense step / median sparse step, each without its first step), and their ratio;
5. padded text (HunyuanVideo, Mochi): one transformer forward of a real step (its inputs recorded during the
   dense generation) dense and with an all-dense config (``dense_warmup: 0``): relative error, which must be
   bf16-sized;
6. with ``--cost-model``: the kernel cost model measured at this geometry (`benchmarks/cost_model.py`), a
   second search with it, and how many heads' patterns it changed.

Writes ``<out>/<family>.json`` and ``<out>/<family>.md`` (a row of the BENCHMARKS.md table; ``--header``
prints the header) atomically, and prints the row. Peak GPU memory is per phase. The saved model is deleted
at the end unless ``--keep-model``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

from compactsearch._io import atomic_write_text  # noqa: E402
from compactsearch.adapters import get_adapter, load_pipeline  # noqa: E402
from compactsearch.adapters.pipelines import FAMILIES, build_family_pipeline  # noqa: E402
from compactsearch.config import HeadConfig, LayerConfig, load_config  # noqa: E402
from compactsearch.patterns import Pattern  # noqa: E402
from compactsearch.profile.recipe import load_recipe, read_prompts  # noqa: E402
from compactsearch.profile.run import expert_switch_step, run_profile  # noqa: E402
from compactsearch.runtime import AttentionTimer, apply, timed_dense  # noqa: E402
from compactsearch.video import pipeline_kwargs  # noqa: E402

# Real-size setups (the models' published resolutions) and their tiny twins (the recipes/tiny-random-* grids).
HUNYUAN_EXTRA = {"prompt_template": {"template": "{}", "crop_start": 0}}  # the real template is for Llama's vocab
SETUPS = {
    "wan-1.3b": dict(family="wan", video=(480, 832, 81), guidance=5.0, text=512, tiny=(384, 384, 9)),
    "wan-14b": dict(family="wan-14b", video=(720, 1280, 81), guidance=1.0, text=512, tiny=(384, 384, 9)),
    "wan22-a14b": dict(family="wan22", video=(720, 1280, 81), guidance=1.0, text=512, tiny=(384, 384, 9)),
    "hunyuan": dict(family="hunyuan_video", video=(720, 1280, 129), guidance=6.0, text=256, tiny=(384, 384, 9),
                    extra=HUNYUAN_EXTRA),
    "cogvideox-5b": dict(family="cogvideox-5b", video=(480, 720, 49), guidance=6.0, text=226, tiny=(384, 384, 9)),
    "cogvideox-2b": dict(family="cogvideox-2b", video=(480, 720, 49), guidance=6.0, text=226, tiny=(384, 384, 9)),
    "ltx": dict(family="ltx", video=(512, 704, 161), guidance=3.0, text=128, tiny=(768, 768, 17)),
    "mochi": dict(family="mochi", video=(480, 848, 163), guidance=4.5, text=256, tiny=(384, 384, 13)),
}
TINY_TEXT = 64  # text tokens of the tiny pipelines (their configs are built for it)
PADDED = ("hunyuan", "mochi")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _run(cmd: list[str]) -> tuple[float, str]:
    """Run a compactsearch command in a fresh process; (wall seconds, stdout). Exits with its code on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "kernels"),
                                                        os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "compactsearch", *cmd], env=env, capture_output=True, text=True)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(res.returncode)
    return time.perf_counter() - t, res.stdout


def timed_latents(pipe, kwargs: dict, device: str) -> tuple[torch.Tensor, dict]:
    """One pipeline call with ``kwargs`` for latents, timed per step: ``(latents, {"seconds", "steps": [seconds
    per step]})``."""
    marks = []

    def on_step(p, i, t, kw):
        _sync(device)
        marks.append(time.perf_counter())
        return kw

    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = pipe(**kwargs, output_type="latent", callback_on_step_end=on_step).frames
    _sync(device)
    total = time.perf_counter() - t0
    steps = [b - a for a, b in zip([t0, *marks[:-1]], marks)]
    return latents, {"seconds": total, "steps": steps}


def _generate(pipe, recipe, prompt: str, seed: int, device: str) -> dict:
    """One generation (latents) of a recipe's prompt, timed per step (`timed_latents`)."""
    return timed_latents(pipe, pipeline_kwargs(recipe, prompt, seed), device)[1]


def median_after_first(xs: list[float]) -> float:
    return statistics.median(xs[1:]) if len(xs) > 1 else xs[0]


def _all_dense_config(cfg_path: Path, out: Path) -> Path:
    """The searched config with every head dense and no dense warm-up (step 0 already runs the kernel)."""
    cfg = load_config(cfg_path)
    buckets = tuple(dataclasses.replace(
        b, run=(0.0 if i == 0 else b.run[0], b.run[1]),
        layers=tuple(LayerConfig(lc.layer, tuple(HeadConfig(h.head, Pattern.dense()) for h in lc.heads))
                     for lc in b.layers)) for i, b in enumerate(cfg.buckets))
    dataclasses.replace(cfg, warmup=0.0, buckets=buckets, summary={}, search={}).save(out)
    return out


def _padded_check(pipe, adapter: str, dense_cfg: Path, inputs: dict) -> dict:
    """One transformer forward on recorded inputs, dense vs the all-dense config through the runtime.

    The bf16 error scale is the difference between two of PyTorch's own attention backends on the same forward
    (memory-efficient and cuDNN, where they run): the sparse path passes when its relative error is at most
    twice that (or 5e-3)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    transformer = get_adapter(adapter).transformers(pipe)[0]

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    with torch.no_grad():
        ref = transformer(**inputs)[0].float()
        alts = {}
        for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    alts[name] = rel(transformer(**inputs)[0].float(), ref)
            except RuntimeError:  # this backend does not take these inputs (a mask, the dtype)
                continue
        with apply(transformer, load_config(dense_cfg)) as rt:
            out = transformer(**inputs)[0].float()
    err = rel(out, ref)
    scale = max(alts.values(), default=0.0)
    return {"relative_error": err, "max_abs_error": float((out - ref).abs().max()), "sparse_calls": rt.sparse_calls,
            "backend_relative_error": alts, "ok": bool(rt.sparse_calls > 0 and err <= max(2 * scale, 5e-3))}


def _pattern_changes(a: Path, b: Path) -> dict:
    """How many (bucket, layer, head) patterns differ between two configs of one model, and their warm-ups."""
    ca, cb = load_config(a), load_config(b)
    pa, pb = ({(bi, lc.layer, h.head): h.pattern for bi, bk in enumerate(c.buckets) for lc in bk.layers
               for h in lc.heads} for c in (ca, cb))
    keys = set(pa) | set(pb)
    return {"heads": len(keys), "changed": sum(pa.get(k) != pb.get(k) for k in keys),
            "dense_warmup": [ca.warmup, cb.warmup]}


def _versions() -> dict:
    import diffusers

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "triton": tv, "diffusers": diffusers.__version__, "device": gpu}


def write_recipe(path: Path, name: str, setup: dict, size: str, model_dir: Path, steps: int, prompts: list[str],
                 video: tuple[int, int, int], every: int = 1, switch: int | None = None) -> Path:
    """The benchmark's recipe: one bucket over every step (two, split at ``switch``, for a two-expert pipeline)."""
    fam = FAMILIES[setup["family"]]
    h, w, f = video
    recipe = {
        "name": name,
        "model": {"id": str(model_dir), "adapter": fam.adapter, "dtype": "bfloat16" if size == "real" else "float32"},
        "video": {"height": h, "width": w, "frames": f},
        "sampling": {"steps": steps, "guidance": setup["guidance"], "seed": 0,
                     "max_sequence_length": setup["text"] if size == "real" else TINY_TEXT},
        "prompts": prompts,
        "profile": {"buckets": [[0, switch], [switch, steps]] if switch and 0 < switch < steps else [[0, steps]],
                    "steps": "all" if every == 1 else {"every": every},
                    "samples": {"heads": 1, "layers": [0]}},
    }
    if setup.get("extra"):
        recipe["sampling"]["extra"] = setup["extra"]
    if size == "tiny":
        recipe["tiling"] = {"tile": [1, 8, 8], "block_size": 64}
    atomic_write_text(path, yaml.safe_dump(recipe, sort_keys=False))
    return path


def run(args) -> dict:
    setup = SETUPS[args.family]
    device = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) / args.family if args.work else out / f"{args.family}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model_dir = Path(args.model_dir) if args.model_dir else work / "model"
    video = setup["video"] if args.size == "real" else setup["tiny"]
    video = (args.height or video[0], args.width or video[1], args.frames or video[2])
    dtype = torch.bfloat16 if args.size == "real" else torch.float32
    row: dict = {"family": args.family, "size": args.size, "video": list(video), "steps": args.steps,
                 "guidance": setup["guidance"], "budget": args.budget, "date": datetime.now(timezone.utc).isoformat(
                     timespec="seconds"), **_versions()}

    # 1. build, save, write the recipe
    t = time.perf_counter()
    overrides = {"num_layers": args.layers} if args.layers else None
    with _default_dtype(dtype), torch.device(device):
        pipe = build_family_pipeline(setup["family"], args.size, dtype, overrides=overrides)
    row["build_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    pipe.save_pretrained(str(model_dir))
    row["save_s"] = round(time.perf_counter() - t, 2)
    row["params_b"] = round(sum(p.numel() for p in pipe.transformer.parameters()) / 1e9, 3)
    switch = expert_switch_step(pipe, args.steps)  # Wan 2.2 A14B: the buckets must not straddle the experts
    row["expert_switch_step"] = switch
    del pipe
    _free()
    prompts = read_prompts(ROOT / "recipes" / "prompts" / "calibration.txt")[: args.prompts]
    recipe_path = write_recipe(work / "recipe.yaml", args.family, setup, args.size, model_dir, args.steps, prompts,
                               video, args.profile_every, switch)
    recipe = load_recipe(recipe_path)

    # 2. profile
    _peak_reset(device)
    prof = work / "profile"
    res = run_profile(recipe, prof, device=device, one_pass=args.one_pass)
    row["profile"] = res.timings
    row["profile_peak_gb"] = _peak_gb(device)
    _free()
    from compactsearch.profile.store import Profile

    p = Profile.load(prof)
    g = p.geometry
    row["geometry"] = g.describe()
    row["tokens"] = g.seq_len
    row["tile"], row["block"] = list(p.tile), p.block_size
    # the mass is right where every query block's row sums to its token count (one pass: from the kernel's lse)
    lengths = p.layout().block_lengths().float()
    row["mass_row_sum_max_rel_err"] = max(
        float(((p.mass(b, layer).float().sum(-1) - lengths) / lengths).abs().max()) for b, layer in p.keys())

    # 3. search, validate
    cfg = work / "config.yaml"
    workers = str(args.workers or os.cpu_count() or 1)
    row["search_s"], so = _run(["search", str(prof), "--budget", str(args.budget), "--trials", str(args.trials),
                                "--workers", workers, "--out", str(cfg), "--json"])
    row["search_summary"] = json.loads(so).get("summary", {})
    _, vo = _run(["validate", str(cfg), "--kernel", "none", "--no-numerics", "--json"])
    val = json.loads(vo)
    row["density"] = val["density"]
    if args.cost_model:  # a failure here is recorded, not fatal: the rest of the row still gets measured
        from benchmarks.cost_model import measure_cost_model, write_cost_model

        try:
            cm_path = work / "cost_model.yaml"
            heads, head_dim = p.model["heads"], p.model["head_dim"]
            cm = measure_cost_model(g.seq_len, heads, head_dim, p.block_size, device=device, dtype=dtype)
            row["cost_model"] = cm
            write_cost_model(cm_path, cm)
            cfg_cm = work / "config-cost-model.yaml"
            row["search_cost_model_s"], _ = _run(["search", str(prof), "--budget", str(args.budget), "--trials",
                                                  str(args.trials), "--workers", workers, "--out", str(cfg_cm),
                                                  "--cost-model", str(cm_path)])
            row["cost_model_changes"] = _pattern_changes(cfg, cfg_cm)
            shutil.copy(cfg_cm, out / f"{args.family}.config-cost-model.yaml")
        except (SystemExit, RuntimeError, ValueError) as e:
            row["cost_model_error"] = f"{type(e).__name__}: {e}"
        _free()
    shutil.copy(cfg, out / f"{args.family}.config.yaml")

    # 4. dense and sparse generations of the prompt the profile timed (its last)
    t = time.perf_counter()
    pipe = load_pipeline(str(model_dir), recipe.adapter, recipe.dtype, device)
    row["load_s"] = round(time.perf_counter() - t, 2)
    prompt_i = len(prompts) - 1
    seed = recipe.seed_of(prompt_i)
    recorded: dict = {}
    transformer = get_adapter(recipe.adapter).transformers(pipe)[0]

    def record(module, a, kw):
        if not recorded:
            recorded.update({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kw.items()})

    hook = transformer.register_forward_pre_hook(record, with_kwargs=True) if args.family in PADDED else None
    _peak_reset(device)
    timer = AttentionTimer()
    with timed_dense(pipe, recipe.adapter, timer):
        dense = _generate(pipe, recipe, prompts[prompt_i], seed, device)
    if hook is not None:
        hook.remove()
    row["dense_peak_gb"] = _peak_gb(device)
    att = timer.summary()
    row["dense_generation_s"] = round(dense["seconds"], 3)
    row["dense_step_s"] = round(median_after_first(dense["steps"]), 4)
    row["attention_step_s"] = round(att["seconds_per_step"], 4)
    f = min(1.0, att["seconds_per_step"] / row["dense_step_s"]) if row["dense_step_s"] else 0.0
    row["attention_share"] = round(f, 4)

    _peak_reset(device)
    stimer = AttentionTimer()
    with apply(pipe, load_config(cfg), model_id=str(model_dir), timer=stimer) as rt:
        sparse = _generate(pipe, recipe, prompts[prompt_i], seed, device)
    row["sparse_peak_gb"] = _peak_gb(device)
    sparse_steps = [sparse["steps"][s] for s in sorted(rt.steps_sparse)]
    row["sparse_steps"] = len(sparse_steps)
    row["sparse_generation_s"] = round(sparse["seconds"], 3)
    if sparse_steps:
        row["sparse_step_s"] = round(median_after_first(sparse_steps), 4)
        d = row["density"]
        row["amdahl_limit"] = round(1.0 / ((1.0 - f) + f * d), 4)
        row["step_speedup"] = round(row["dense_step_s"] / row["sparse_step_s"], 4)
        row["of_limit"] = round(row["step_speedup"] / row["amdahl_limit"], 4)
        row["sparse_attention_by_mode_s"] = stimer.summary()["by_mode"]
    prof_t = row["profile"]
    row["profile_per_prompt_s"] = prof_t["per_prompt"]
    row["profile_over_dense"] = round(prof_t["per_prompt"] / dense["seconds"], 4) if dense["seconds"] else None
    row["startup_s"] = prof_t["startup"]

    # 5. padded text: all-dense config == dense
    if args.family in PADDED and recorded:
        row["padded_text_check"] = _padded_check(pipe, recipe.adapter, _all_dense_config(cfg, work / "dense.yaml"),
                                                 recorded)
    del pipe
    _free()
    if not args.keep_model:
        shutil.rmtree(model_dir, ignore_errors=True)
    return row


HEADER = ("| family | size | tokens | steps | density (sparse steps) | attention share | dense step s | sparse step s "
          "| speed-up | Amdahl limit | of limit | profile s / prompt | dense generation s | profile / dense "
          "| start-up s | peak GB (profile / dense / sparse) | padded-text rel. err |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| --- | ---: |")


def markdown_row(r: dict) -> str:
    def g(key, fmt="{:.3f}"):
        v = r.get(key)
        return "-" if v is None else fmt.format(v)

    pad = r.get("padded_text_check")
    peaks = " / ".join("-" if r.get(k) is None else f"{r[k]:.1f}" for k in
                       ("profile_peak_gb", "dense_peak_gb", "sparse_peak_gb"))
    return (f"| {r['family']} | {r['size']} | {r.get('tokens', '-')} | {r['steps']} | {g('density')} | "
            f"{g('attention_share')} | {g('dense_step_s')} | {g('sparse_step_s')} | {g('step_speedup', '{:.2f}x')} | "
            f"{g('amdahl_limit', '{:.2f}x')} | {g('of_limit')} | {g('profile_per_prompt_s', '{:.2f}')} | "
            f"{g('dense_generation_s', '{:.2f}')} | {g('profile_over_dense', '{:.2f}x')} | "
            f"{g('startup_s', '{:.1f}')} | {peaks} | {'-' if not pad else format(pad['relative_error'], '.2e')} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(SETUPS), help="one family per invocation")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-e2e"))
    ap.add_argument("--work", help="folder for the model, recipe, profile and configs (kept; large at real size) "
                    "[default: <out>/<family>.work]")
    ap.add_argument("--model-dir", help="where to save the model [default: <work>/model]")
    ap.add_argument("--keep-model", action="store_true")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of every generation")
    ap.add_argument("--prompts", type=int, default=2, help="calibration prompts (the first one carries start-up)")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--layers", type=int, help="override the transformer depth (a quicker, partial model)")
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--one-pass", choices=("auto", "on", "fused", "off"), default="auto")
    ap.add_argument("--profile-every", type=int, default=1,
                    help="profile every N-th step (and the last; the shipped recipes use 2) [default: every step]")
    ap.add_argument("--cost-model", action="store_true", help="also measure the kernel cost model and search with it")
    ap.add_argument("--header", action="store_true", help="print the markdown table header and exit")
    args = ap.parse_args(argv)
    if args.header:
        print(HEADER)
        return 0
    if args.family is None:
        ap.error("--family is required")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here (use --size tiny --device cpu)")
    if args.prompts < 1 or args.steps < 2 or args.profile_every < 1:
        ap.error("--prompts must be >= 1, --steps >= 2 and --profile-every >= 1")
    row = run(args)
    out = Path(args.out)
    atomic_write_text(out / f"{args.family}.json", json.dumps(row, indent=1, default=str) + "\n")
    md = markdown_row(row)
    atomic_write_text(out / f"{args.family}.md", md + "\n")
    print(json.dumps({k: row.get(k) for k in ("family", "density", "attention_share", "step_speedup", "amdahl_limit",
                                              "of_limit", "profile_over_dense", "startup_s",
                                              "mass_row_sum_max_rel_err", "padded_text_check")}))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
