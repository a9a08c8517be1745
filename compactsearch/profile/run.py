"""The profiling loop: run a recipe's pipeline on its calibration prompts and write a `Profile`.

Per prompt ``i`` (seed ``sampling.seed + i``, a fresh CPU generator, so the work is deterministic) the
pipeline runs with the adapter in ``"capture"`` mode until the last profiled step (it is interrupted there;
the output is never decoded). The prompt's block mass per (bucket, layer) — the mean over the bucket's
profiled steps — goes to ``<out>.work/prompt_<i>.safetensors``, written atomically. ``resume=True`` skips
prompts whose file exists (and was made by the same recipe and prompts: ``<out>.work/work.yaml`` holds their
fingerprint). The profile is then the mean over the prompt files, saved with `Profile.save` (atomic), and the
work directory is removed; a run that fails removes it too unless it holds finished prompts (kept for
``--resume``). The result is the same whether a run was resumed or not, since the profile is
always built from the files.

Several processes (``torchrun --nproc-per-node N -m compactsearch profile RECIPE``): rank ``r`` takes prompts
``r, r+N, ...`` (on ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU with the gloo backend), all ranks
meet at a barrier, and rank 0 merges the files into one profile, identical to a one-process run.

Work files hold float16 mass (a block's mass is at most its token count, 128), as the profile itself does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from compactsearch._io import atomic_write_text, atomic_write_with, dump_yaml, read_yaml
from compactsearch.adapters import AttentionContext, get_adapter, install, load_pipeline
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.profile.capture import BlockMassCapture, PromptCapture
from compactsearch.profile.recipe import Recipe
from compactsearch.profile.store import Profile
from compactsearch.profile.timing import SectionTimer, breakdown
from compactsearch.profile.values import merge_factors

__all__ = ["ProfileRun", "run_profile", "work_dir_for", "merge_work_dir"]


@dataclass(frozen=True)
class ProfileRun:
    """What `run_profile` did. ``out`` is None on ranks other than 0."""

    out: Path | None
    prompts: int
    computed: list[int]
    skipped: list[int]
    seconds: float
    rank: int = 0
    world_size: int = 1
    timings: dict | None = None


def work_dir_for(out: Path) -> Path:
    """``<out>.work`` beside the output directory."""
    out = Path(out)
    return out.parent / f"{out.name}.work"


def _fingerprint(recipe: Recipe) -> str:
    d = recipe.to_dict()
    d.pop("source", None)
    d["prompts"] = list(recipe.prompts)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _prompt_file(work: Path, i: int) -> Path:
    return work / f"prompt_{i:05d}.safetensors"


# ------------------------------------------------------------------------------------------------ distributed
def _dist_setup() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_error(world: int, rank: int, failed: bool) -> bool:
    """True when any rank failed (so all ranks stop together instead of hanging at a barrier)."""
    if world <= 1:
        return failed
    import torch.distributed as dist

    t = torch.tensor([1 if failed else 0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return bool(t.item())


def _resolve_device(device: str | None, world: int, local_rank: int) -> str:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available here; use --device cpu")
        if world > 1 and device == "cuda":
            return f"cuda:{local_rank}"
    elif device != "cpu":
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return device


# ------------------------------------------------------------------------------------------------ work files
def _prepare_work_dir(work: Path, recipe: Recipe, resume: bool) -> None:
    fp = _fingerprint(recipe)
    manifest = work / "work.yaml"
    if work.exists() and resume and manifest.exists():
        old = read_yaml(manifest, "work manifest")
        if old.get("fingerprint") != fp:
            raise InputError(f"{work} was made by another recipe or prompt list; delete it or run without --resume")
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_text(manifest, dump_yaml({"fingerprint": fp, "recipe": recipe.source, "prompts": len(recipe.prompts)}))


def _drop_empty_work_dir(work: Path) -> None:
    """After a failed run: remove the work directory unless it holds finished prompts (kept for --resume)."""
    if work.is_dir() and not any(work.glob("prompt_*.safetensors")):
        shutil.rmtree(work, ignore_errors=True)


def _save_prompt(path: Path, i: int, recipe: Recipe, cap: PromptCapture, sink: BlockMassCapture) -> None:
    tensors = {f"mass.b{b}.l{l}": m.to(torch.float16).contiguous() for (b, l), m in cap.mass.items()}
    tensors.update({f"vfac.b{b}.l{l}": f.contiguous() for (b, l), f in cap.value_factor.items()})
    for layer, s in cap.samples.items():
        for name, t in s.items():
            tensors[f"sample.l{layer}.{name}"] = t.contiguous()
    layout = sink.layout
    meta = {
        "fingerprint": _fingerprint(recipe),
        "prompt_index": str(i),
        "seed": str(recipe.seed_of(i)),
        "geometry": json.dumps(layout.geometry.to_dict()),
        "tile": json.dumps(list(layout.tile_thw)),
        "block_size": str(layout.block_size),
        "heads": str(sink.num_heads),
        "head_dim": str(sink.head_dim),
        "calls": json.dumps({f"{b},{l}": n for (b, l), n in cap.calls.items()}),
        "experts": json.dumps({str(b): e for b, e in cap.experts.items()}),
    }
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _read_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for damaged files
        raise InputError(f"{path} is damaged ({e}); delete it and run again with --resume") from e


def _done(path: Path, fp: str) -> bool:
    if not path.exists():
        return False
    try:
        return _read_meta(path).get("fingerprint") == fp
    except InputError:
        return False


def merge_work_dir(work: Path, recipe: Recipe, out: Path, model_meta: dict | None = None) -> Profile:
    """Average the prompt files of ``work`` into a profile saved at ``out``."""
    files = [_prompt_file(work, i) for i in range(len(recipe.prompts))]
    missing = [i for i, f in enumerate(files) if not f.exists()]
    if missing:
        raise InputError(f"{work} lacks prompt {missing[0]} (of {len(files)}); run again with --resume")
    metas = [_read_meta(f) for f in files]
    first = metas[0]
    for i, m in enumerate(metas):
        for key in ("geometry", "tile", "block_size", "heads"):
            if m.get(key) != first.get(key):
                raise InputError(f"prompt {i} was profiled with a different {key} than prompt 0; delete {work}")
    g = json.loads(first["geometry"])
    geometry = VideoGeometry(g["frames"], g["height"], g["width"], g["text_tokens"], g["text_position"])
    tile = tuple(json.loads(first["tile"]))
    block_size = int(first["block_size"])
    handles = [safe_open(str(f), "pt") for f in files]
    try:
        keys = sorted({k for k in handles[0].keys() if k.startswith("mass.")})
        mass, per_prompt = {}, {}
        for key in keys:
            b, l = (int(x[1:]) for x in key.split(".")[1:])
            stack = torch.stack([h.get_tensor(key).float() for h in handles])  # [P, H, NQB, NKB]
            mass[(b, l)] = stack.mean(0)
            if recipe.per_prompt:
                per_prompt[(b, l)] = stack
        fac_keys = sorted({k for k in handles[0].keys() if k.startswith("vfac.")})
        value_factor = {}
        if fac_keys and all(set(fac_keys) <= set(h.keys()) for h in handles):  # older prompt files lack them
            for key in fac_keys:
                b, l = (int(x[1:]) for x in key.split(".")[1:])
                value_factor[(b, l)] = merge_factors([h.get_tensor(key) for h in handles])
        samples = {}
        for h in handles:
            names = [k for k in h.keys() if k.startswith("sample.")]
            if names:
                for k in names:
                    _, layer, name = k.split(".", 2)
                    samples.setdefault(int(layer[1:]), {})[name] = h.get_tensor(k)
                break
    finally:
        del handles
    experts = {}
    for m in metas:
        for b, e in json.loads(m.get("experts", "{}")).items():
            experts.setdefault(int(b), set()).update(e)
    model = {"id": recipe.model_id, "adapter": recipe.adapter, "dtype": recipe.dtype,
             "heads": int(first["heads"]), "head_dim": int(first.get("head_dim", 0)),
             "experts_by_bucket": {b: sorted(e) for b, e in sorted(experts.items())}}
    model.update(model_meta or {})
    prof = Profile.from_block_mass(
        mass, geometry=geometry, tile=tile, block_size=block_size, buckets=[list(b) for b in recipe.buckets],
        num_steps=recipe.steps, per_prompt=per_prompt or None, prompts=list(recipe.prompts),
        seeds=[recipe.seed_of(i) for i in range(len(recipe.prompts))], model=model, recipe=recipe.to_dict(),
        samples=samples or None, value_factor=value_factor or None,
    )
    prof.save(out)
    return prof


# ------------------------------------------------------------------------------------------------ the loop
def expert_switch_step(pipe, num_steps: int) -> int | None:
    """First step a two-expert pipeline (Wan 2.2 A14B) runs ``transformer_2``, from its scheduler; else None."""
    ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
    if getattr(pipe, "transformer_2", None) is None or ratio is None:
        return None
    pipe.scheduler.set_timesteps(num_steps)
    boundary = ratio * pipe.scheduler.config.num_train_timesteps
    below = [i for i, t in enumerate(pipe.scheduler.timesteps.tolist()) if t < boundary]
    return below[0] if below else None


def _check_switch(recipe: Recipe, switch: int | None) -> None:
    for bi, (lo, hi) in enumerate(recipe.buckets):
        if switch is not None and lo < switch < hi:
            raise InputError(f"profile.buckets[{bi}] [{lo}, {hi}) mixes the pipeline's two experts (they switch at "
                             f"step {switch}): split the buckets at step {switch}")


def _check_experts(recipe: Recipe, ctx: AttentionContext) -> None:
    """Buckets must not mix the experts of a two-expert pipeline (Wan 2.2 A14B)."""
    for bi, (lo, hi) in enumerate(recipe.buckets):
        seen = {ctx.experts_by_step[s] for s in range(lo, hi) if s in ctx.experts_by_step}
        if len(seen) > 1:
            switch = next(s for s in range(lo + 1, hi) if ctx.experts_by_step.get(s) != ctx.experts_by_step.get(lo))
            raise InputError(f"profile.buckets[{bi}] [{lo}, {hi}) mixes the pipeline's two experts (they switch at "
                             f"step {switch}): split the buckets at step {switch}")


def run_profile(
    recipe: Recipe,
    out: Path,
    *,
    device: str | None = None,
    resume: bool = False,
    progress=None,
    one_pass: str = "auto",
) -> ProfileRun:
    """Profile ``recipe``'s prompts into the profile directory ``out``.

    Args:
        recipe: the validated recipe (`load_recipe`); its prompts are the calibration set.
        out: profile directory to write (replaced atomically).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available (``cuda:LOCAL_RANK`` under torchrun).
        resume: keep finished prompt files of an earlier run of the same recipe and prompts.
        progress: optional object with ``start(n_prompts, n_steps)``, ``prompt(i, prompt, skipped)`` and
            ``step(i)`` callbacks (the CLI's Rich progress), called on rank 0 only.
        one_pass: ``"auto"``, ``"on"``, ``"fused"`` or ``"off"``: captured calls' attention through the kernel
            with the logsumexp and the block mass in one pass (`BlockMassCapture`; auto: on CUDA at head dim
            64/128; fused: the mass from the forward itself).

    The result's ``timings`` (`compactsearch.profile.timing.breakdown`) say where this rank's time went.
    """
    t0 = time.perf_counter()
    out = Path(out)
    rank, world, local_rank = _dist_setup()
    device = _resolve_device(device, world, local_rank)
    adapter = get_adapter(recipe.adapter)
    work = work_dir_for(out)
    fp = _fingerprint(recipe)
    failed = None
    if rank == 0:
        try:
            _prepare_work_dir(work, recipe, resume)
        except InputError as e:
            failed = e
    if _broadcast_error(world, rank, failed is not None):
        if failed is not None:
            raise failed
        raise InputError("rank 0 could not prepare the work directory")
    mine = list(range(rank, len(recipe.prompts), world))
    todo = [i for i in mine if not (resume and _done(_prompt_file(work, i), fp))]
    skipped = [i for i in mine if i not in todo]
    last_step = max(recipe.profiled_steps)
    show = progress if rank == 0 else None
    if show is not None:
        show.start(len(mine), last_step + 1)
    for i in skipped:
        if show is not None:
            show.prompt(i, recipe.prompts[i], True)
    timer = SectionTimer()
    try:
        if todo:
            _run_prompts(recipe, adapter, todo, work, device, last_step, show, timer, one_pass)
        failed = None
    except Exception as e:  # stop every rank together, then re-raise here
        failed = e
    if _broadcast_error(world, rank, failed is not None):
        if rank == 0:
            _drop_empty_work_dir(work)
        if failed is not None:
            raise failed
        raise InputError("another rank failed; see its error above, then run again with --resume")
    _barrier(world)
    result_out = None
    if rank == 0:
        with timer.section("writes"):
            merge_work_dir(work, recipe, out)
            shutil.rmtree(work, ignore_errors=True)
        result_out = out
    _barrier(world)
    seconds = time.perf_counter() - t0
    return ProfileRun(result_out, len(recipe.prompts), todo, skipped, seconds, rank, world,
                      breakdown(timer, seconds))


def _run_prompts(recipe: Recipe, adapter, todo: list[int], work: Path, device: str, last_step: int, show,
                 timer: SectionTimer | None = None, one_pass: str = "auto") -> None:
    timer = timer or SectionTimer()
    with timer.section("load"):
        pipe = load_pipeline(recipe.model_id, recipe.adapter, recipe.dtype, device, recipe.offload,
                             base_dir=Path(recipe.base_dir))
    _check_switch(recipe, expert_switch_step(pipe, recipe.steps))
    from compactsearch.adapters.registry import check_video_size  # the recipe's sizes against VAE and patches

    check_video_size(pipe, adapter, recipe.frames, recipe.height, recipe.width)
    sink = BlockMassCapture(recipe.bucket_of_step(), branch=recipe.branch, tile=recipe.tile,
                            block_size=recipe.block_size, sample_layers=recipe.sample_layers,
                            sample_heads=recipe.sample_heads, one_pass=one_pass, timer=timer)
    cuda = str(device).startswith("cuda")
    ctx = AttentionContext(mode="capture", sink=sink, batch_branches=adapter.batch_branches(recipe.guidance > 1.0))
    inst = install(pipe, adapter, ctx)
    try:
        for i in todo:
            if show is not None:
                show.prompt(i, recipe.prompts[i], False)

            def on_step_end(p, step, t, kwargs, i=i):
                if show is not None:
                    show.step(step)
                if step >= last_step:
                    p._interrupt = True  # nothing left to profile: skip the remaining steps
                return kwargs

            ctx.reset()
            sink.start_prompt(keep_samples=(i == 0 and recipe.sample_heads > 0))
            generator = torch.Generator("cpu").manual_seed(recipe.seed_of(i))
            t_prompt = time.perf_counter()
            try:
                pipe(**recipe.call_kwargs(recipe.prompts[i], generator, output_type="latent",
                                          callback_on_step_end=on_step_end))
            except torch.cuda.OutOfMemoryError as e:
                raise InputError(
                    f"CUDA out of memory on prompt {i}: set model.offload: model (or sequential) in the recipe, "
                    "or lower video.frames/height/width; profile.samples: false also saves memory"
                ) from e
            except TypeError as e:
                raise InputError(f"the {type(pipe).__name__} call rejected an argument ({e}); "
                                 "check sampling.extra in the recipe") from e
            if cuda:
                torch.cuda.synchronize()
            timer.prompt_seconds.append(time.perf_counter() - t_prompt)
            _check_experts(recipe, ctx)
            with timer.section("value factors"):  # the Gram factors (an eigh per head) and the copy to CPU
                cap = sink.prompt_result()
            expected = {(b, l) for b in range(len(recipe.buckets)) for l in range(inst.num_layers)}
            if set(cap.mass) != expected:
                b, l = sorted(expected - set(cap.mass))[0]
                why = (" (branch uncond needs classifier-free guidance: sampling.guidance > 1 and, for "
                       "hunyuan_video, a negative_prompt)" if recipe.branch == "uncond" else "")
                raise InputError(f"prompt {i}: nothing was captured for bucket {b}, layer {l}{why}")
            with timer.section("writes"):
                _save_prompt(_prompt_file(work, i), i, recipe, cap, sink)
    finally:
        inst.restore()
