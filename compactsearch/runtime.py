"""Run a pipeline with a config's block-sparse attention: `apply(pipe, config)` installs it and restores on exit.

    with compactsearch.apply(pipe, "wan-0.3.yaml"):
        video = pipe(prompt, num_inference_steps=50, ...).frames

Inside the block the family's adapter processors sit on every self-attention module (in ``"sparse"`` mode, the
seam of `compactsearch.adapters.base`), and two forward pre-hooks on each transformer run the step schedule:

- before the adapter's step counter: a timestep larger than the previous one starts a new pipeline call (the
  counter restarts at step 0), so several calls inside one ``with`` block each follow the schedule;
- after it: steps in the dense warm-up, and steps no bucket covers, run dense, exactly as the original
  processor computes them (the adapter's ``"dense"`` mode); other steps run the bucket's layer mask
  (`Config.layer_mask`, built once per (bucket, layer) and kept on the device).

A sparse call permutes q, k, v ``[B, H, N, D]`` to tile order (`compact_attn.permute.to_tile_order`), runs
`compact_attn.block_sparse_attention` (the Triton kernel on CUDA, the PyTorch reference on CPU; head dims
other than 64 and 128, which the kernel does not take, run the reference) and writes the output back in model
order into ``[B, N, H, D]`` memory (`to_model_order`: the processor's reshape is then a view).
Text keys a model pads and masks (HunyuanVideo, Mochi) are cut off per batch item: the sparse attention runs on
the valid prefix (text stays dense, so the layout only loses padded text tokens) and the padded query rows
attend densely to the valid keys, as the original does.

Checks, each a one-line `InputError`: the adapter family of the pipeline, the number of self-attention layers,
heads and head dim (at entry); the text tokens (at the first forward of a call). A call at another token grid
or step count than the config's runs the config retargeted to it (`compactsearch.retarget.retarget`, built once
per grid; the dense warm-up and buckets are fractions of the run, `compactsearch.schedule`), with one line on
stderr saying so; ``apply(..., retarget=False)`` refuses such calls instead. On exit, also after an exception,
the original processors come back and the hooks go: the model computes bit for bit what it computed before.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import compact_attn
from compact_attn import permute
from compact_attn import reference as _reference
from compact_attn.mask import BlockSparseMask
from compactsearch.adapters import AttentionCall, AttentionContext, get_adapter, install
from compactsearch.adapters.base import Installation, forward_arguments
from compactsearch.adapters.parallel import check_parallel
from compactsearch.config import Config, load_config
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.retarget import retarget as _retarget
from compactsearch.schedule import StepPlan
from compactsearch.tiling import TileLayout

__all__ = ["apply", "SparseRuntime", "AttentionTimer", "timed_dense", "check_pipeline", "KERNEL_HEAD_DIMS"]

KERNEL_HEAD_DIMS = compact_attn.HEAD_DIMS


# ------------------------------------------------------------------------------------------------- timing
class AttentionTimer:
    """Wall time of every self-attention call (the processor's attention, permutations included), by step.

    On CUDA each call is bracketed by CUDA events (no synchronisation inside the loop); on CPU by
    ``time.perf_counter``. `summary` reads them out.
    """

    def __init__(self) -> None:
        self.records: list[tuple[tuple[int, int], str, object, object]] = []  # ((call, step), mode, start, end)
        self._call, self._last_step = 0, -1

    def clear(self) -> None:
        self.records = []
        self._call, self._last_step = 0, -1

    def _key(self, step: int) -> tuple[int, int]:
        if step < self._last_step:  # the step counter went back: a new pipeline call
            self._call += 1
        self._last_step = step
        return (self._call, step)

    def wrap(self, inst: Installation) -> None:
        """Time every attention call of an installation's processors (through its context, until restored)."""
        inst.ctx.timer = self

    @contextlib.contextmanager
    def timing(self, ctx: AttentionContext, q: torch.Tensor) -> Iterator[None]:
        """Bracket one attention call (the processors call this through ``ctx.timer``)."""
        cuda = q.is_cuda
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start = time.perf_counter()
        yield
        if cuda:
            end.record()
        else:
            end = time.perf_counter()
        self.records.append((self._key(ctx.step), ctx.mode, start, end))

    def summary(self) -> dict:
        """Seconds per denoising step: the median over every (pipeline call, step) recorded, so the first steps'
        one-off costs (Triton compiling the kernel for a new shape, cuDNN picking an algorithm) do not count.

        Returns:
            ``{"calls", "steps", "seconds_total", "seconds_per_step", "by_mode": {mode: seconds per step}}``:
            ``calls`` attention calls, ``steps`` distinct (pipeline call, step) pairs, ``seconds_total`` the sum.
        """
        if any(not isinstance(s, float) for _, _, s, _ in self.records):
            torch.cuda.synchronize()
        per_step: dict[tuple[int, int], float] = {}
        by_mode: dict[str, dict[tuple[int, int], float]] = {}
        for step, mode, s, e in self.records:
            sec = (e - s) if isinstance(s, float) else s.elapsed_time(e) / 1000.0
            per_step[step] = per_step.get(step, 0.0) + sec
            by_mode.setdefault(mode, {})
            by_mode[mode][step] = by_mode[mode].get(step, 0.0) + sec
        return {
            "calls": len(self.records),
            "steps": len(per_step),
            "seconds_total": sum(per_step.values()),
            "seconds_per_step": statistics.median(per_step.values()) if per_step else 0.0,
            "by_mode": {m: statistics.median(d.values()) for m, d in sorted(by_mode.items())},
        }


@contextlib.contextmanager
def timed_dense(pipe, adapter: str, timer: AttentionTimer) -> Iterator[Installation]:
    """Time the model's own dense attention: the adapter in ``"dense"`` mode (bit-exact) with ``timer`` attached."""
    fam = get_adapter(adapter)
    ctx = AttentionContext(mode="dense")
    inst = install(pipe, fam, ctx)
    with _installed_for_block(inst, _add_reset_hooks(fam.transformers(pipe), ctx), timer):
        yield inst


@contextlib.contextmanager
def _installed_for_block(inst: Installation, hooks: list, timer: AttentionTimer | None) -> Iterator[None]:
    """Keep an installation (and its extra hooks) for a ``with`` block, timed when ``timer`` is given; restore it
    after, also after an exception: the model computes bit for bit what it computed before."""
    try:
        if timer is not None:
            timer.wrap(inst)
        yield
    finally:
        for h in hooks:
            h.remove()
        inst.restore()


def _max_timestep(timestep) -> float:
    return float(timestep.detach().float().flatten().max()) if torch.is_tensor(timestep) else float(timestep)


def _add_reset_hooks(transformers, ctx: AttentionContext) -> list:
    """Pre-hooks that run before the adapter's: a larger timestep than the last one starts a new pipeline call."""
    hooks = []
    for tr in transformers:
        def reset(module, args, kwargs):
            t = forward_arguments(module, args, kwargs).get("timestep")
            if t is not None and ctx.timestep is not None and _max_timestep(t) > ctx.timestep:
                ctx.reset()

        hooks.append(tr.register_forward_pre_hook(reset, with_kwargs=True, prepend=True))
    return hooks


# ------------------------------------------------------------------------------------------------- checks
def _module_heads(module) -> tuple[int | None, int | None]:
    heads = getattr(module, "heads", None)
    to_q = getattr(module, "to_q", None)
    dim = None
    if heads and to_q is not None and hasattr(to_q, "out_features"):
        dim = to_q.out_features // heads
    return heads, dim


def check_pipeline(pipe, config: Config, model_id: str | None = None) -> list[torch.nn.Module]:
    """The checks made on entry to `apply`; returns the pipeline's transformers.

    Raises:
        InputError: the config is for another model id (when ``model_id`` is given), adapter family, depth,
            number of heads or head dim; or a context parallelism it cannot run under (ring attention, a family
            not checked under Ulysses: `compactsearch.adapters.parallel.check_parallel`).
    """
    if model_id is not None and model_id != config.model_id:
        raise InputError(f"the config is for model {config.model_id!r}, not {model_id!r}: search a config for "
                         "this model (or pass the config made for it)")
    adapter = get_adapter(config.adapter)
    transformers = adapter.transformers(pipe)
    for tr in transformers:
        mods = adapter.attention_modules(tr)
        if len(mods) != config.num_layers:
            raise InputError(f"the config is for {config.num_layers} self-attention layers, the pipeline's "
                             f"{type(tr).__name__} has {len(mods)}: use a config searched on this model")
        heads, dim = _module_heads(mods[0])
        if heads is not None and heads != config.num_heads:
            raise InputError(f"the config is for {config.num_heads} heads, the pipeline's model has {heads}: use a "
                             "config searched on this model")
        if dim is not None and dim != config.head_dim:
            raise InputError(f"the config is for head dim {config.head_dim}, the pipeline's model has {dim}: use a "
                             "config searched on this model")
        check_parallel(tr, adapter.name, config.num_heads)
    return transformers


# ------------------------------------------------------------------------------------------------ runtime
@dataclass
class SparseRuntime:
    """The state `apply` yields: the config, its masks and counters of what ran.

    Attributes:
        config: the config running now (the one given, or it retargeted to the call's grid).
        source: the config given to `apply`.
        retarget: run calls at another grid or step count retargeted (else refuse them).
        backend: ``"auto"`` (Triton on CUDA, reference on CPU), ``"triton"`` or ``"reference"``.
        ctx: the adapter context shared by the processors.
        sparse_calls: attention calls that ran block-sparse (all pipeline calls of the block).
        steps_dense, steps_sparse: step indices that ran dense / sparse in the last pipeline call.
    """

    config: Config
    backend: str = "auto"
    retarget: bool = True
    source: Config | None = None
    plan: StepPlan | None = None
    notes: list = field(default_factory=list)
    _retargeted: dict = field(default_factory=dict)
    ctx: AttentionContext = field(default_factory=lambda: AttentionContext(mode="sparse"))
    sparse_calls: int = 0
    steps_dense: set = field(default_factory=set)
    steps_sparse: set = field(default_factory=set)
    _layouts: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)
    _perms: dict = field(default_factory=dict)
    bucket: int | None = None
    num_steps_of_call: int | None = None

    # -------------------------------------------------------------------------------------------- pieces
    def layout(self, text_tokens: int | None = None) -> TileLayout:
        """The config's layout; with ``text_tokens``, the same grid with fewer (valid) text tokens."""
        g = self.config.geometry
        n = g.text_tokens if text_tokens is None else text_tokens
        if n not in self._layouts:
            geo = VideoGeometry(g.frames, g.height, g.width, n, g.text_position if n else "none")
            self._layouts[n] = TileLayout(geo, self.config.tile, self.config.block_size)
        return self._layouts[n]

    def mask(self, bucket: int, layer: int, device: torch.device, text_tokens: int | None = None,
             heads: tuple[int, int] | None = None) -> BlockSparseMask:
        """The layer mask of a bucket (cached per bucket, layer, text length, head range and device); ``heads``
        ``(start, stop)``: only those heads' (a Ulysses rank's)."""
        key = (bucket, layer, text_tokens, heads, str(device))
        if key not in self._masks:
            m = self.config.layer_mask(bucket, layer, self.layout(text_tokens), heads)
            self._masks[key] = m.to(device)
        return self._masks[key]

    def _perm(self, layout: TileLayout, device: torch.device) -> torch.Tensor:
        key = (layout.geometry.text_tokens, str(device))
        if key not in self._perms:
            self._perms[key] = layout.perm.to(device)
        return self._perms[key]

    @property
    def _permute_backend(self) -> str:
        return "reference" if self.backend == "reference" else "auto"

    def _kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask) -> torch.Tensor:
        if q.shape[-1] in KERNEL_HEAD_DIMS:
            return compact_attn.block_sparse_attention(q, k, v, mask, backend=self.backend)
        if self.backend == "triton":
            raise InputError(f"the Triton kernel takes head dim 64 or 128, this model has {q.shape[-1]}: use "
                             "backend='auto' (the reference runs instead)")
        return _reference.block_sparse_attention(q, k, v, mask)

    def _sparse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bucket: int, layer: int,
                text_tokens: int | None, out: torch.Tensor | None = None,
                heads: tuple[int, int] | None = None) -> torch.Tensor:
        layout = self.layout(text_tokens)
        perm = self._perm(layout, q.device)
        mask = self.mask(bucket, layer, q.device, text_tokens, heads)
        qt, kt, vt = permute.to_tile_order(q, k, v, perm, backend=self._permute_backend)
        return permute.to_model_order(self._kernel(qt, kt, vt, mask), perm, backend=self._permute_backend, out=out)

    # --------------------------------------------------------------------------------------- the seam
    def attend(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``ctx.attend``: sparse attention of one call, ``[B, H, N, D]`` in model order."""
        g = self.config.geometry
        if call.geometry != g:
            raise InputError(f"the config is for a {g.describe()} sequence, the pipeline call has "
                             f"{call.geometry.describe()}: call the pipeline at the config's resolution, frames "
                             "and text length (or search a config for this one)")
        if self.bucket is None:
            raise RuntimeError("sparse attention outside a sparse step: the schedule hook did not run")
        self.sparse_calls += 1
        N = q.shape[2]
        if call.key_valid is None or all(n >= N for n in call.key_valid):
            return self._sparse(q, k, v, self.bucket, call.layer, None, heads=call.heads)
        if g.text_position != "back":
            raise InputError(f"masked text keys are supported when text sits at the back, not {g.text_position!r}")
        B, H, _, D = q.shape
        out = q.new_empty(B, N, H, D).transpose(1, 2)  # [B, N, H, D] memory: the processor's reshape is a view
        for b, n in enumerate(call.key_valid):
            n = min(int(n), N)
            valid_text = n - g.video_tokens
            if valid_text < 0:
                raise InputError(f"a batch item has {n} valid keys, fewer than the {g.video_tokens} video tokens")
            sl = slice(b, b + 1)
            self._sparse(q[sl, :, :n], k[sl, :, :n], v[sl, :, :n], self.bucket, call.layer, valid_text,
                         out=out[sl, :, :n])
            if n < N:  # padded text queries attend densely to the valid keys, as the original model computes them
                out[sl, :, n:] = torch.nn.functional.scaled_dot_product_attention(
                    q[sl, :, n:], k[sl, :, :n], v[sl, :, :n])
        return out

    def _use_grid(self, thw: tuple[int, int, int]) -> None:
        """Make ``config`` the source config retargeted to the grid ``thw`` (built once per grid)."""
        src = self.source or self.config
        if thw == self.config.geometry.thw:
            return
        g = src.geometry
        if not self.retarget and thw != g.thw:
            t, h, w = thw
            raise InputError(f"the config is for a {g.frames}x{g.height}x{g.width} token grid, the pipeline call "
                             f"has {t}x{h}x{w}: call the pipeline at the config's resolution and frames (or allow "
                             "retargeting)")
        if thw not in self._retargeted:
            self._retargeted[thw] = src if thw == g.thw else _retarget(src, thw)
        self.config = self._retargeted[thw]
        self._layouts.clear()
        self._masks.clear()
        self._perms.clear()

    def on_step(self, step: int, video_thw: tuple[int, int, int], num_steps: int | None) -> str:
        """Called after the adapter's step counter: check the call, pick dense or the bucket; returns the mode."""
        if step == 0:
            self.steps_dense, self.steps_sparse = set(), set()
            self._use_grid(tuple(video_thw))
            cfg, src = self.config, self.source or self.config
            n = num_steps or cfg.num_steps
            if n != cfg.num_steps and not self.retarget:
                raise InputError(f"the config is for {cfg.num_steps} denoising steps, the pipeline call runs "
                                 f"{n}: pass num_inference_steps={cfg.num_steps} (or allow retargeting)")
            self.plan = cfg.plan(n)
            key = (cfg.geometry.thw, n)
            if key not in self.notes and key != (src.geometry.thw, src.num_steps):
                self.notes.append(key)
                said = []
                if cfg is not src:
                    g = src.geometry
                    said.append(f"config for a {g.frames}x{g.height}x{g.width} token grid retargeted to "
                                f"{'x'.join(map(str, key[0]))} (tile {list(cfg.tile)}, block {cfg.block_size})")
                if n != cfg.num_steps:
                    said.append(f"{cfg.num_steps}-step schedule laid on {n} steps ({self.plan.warmup} dense warm-up, "
                                f"buckets at steps {', '.join(f'{a}-{b - 1}' for a, b in self.plan.ranges if b > a)})")
                print("compactsearch: " + "; ".join(said), file=sys.stderr)
        plan = self.plan or self.config.plan()
        if step >= plan.n:
            raise InputError(f"the schedule was laid on {plan.n} denoising steps, the pipeline call ran step "
                             f"{step + 1}: pass num_inference_steps={plan.n}")
        self.bucket = plan.bucket_of(step)
        if self.bucket is None:
            self.steps_dense.add(step)
            return "dense"
        self.steps_sparse.add(step)
        return "sparse"


def _scheduler_steps(pipe) -> int | None:
    sched = getattr(pipe, "scheduler", None)
    ts = getattr(sched, "timesteps", None)
    return len(ts) if ts is not None and hasattr(ts, "__len__") else None


@contextlib.contextmanager
def apply(pipe, config: Config | str | Path, *, model_id: str | None = None, backend: str = "auto",
          timer: AttentionTimer | None = None, retarget: bool = True) -> Iterator[SparseRuntime]:
    """Run ``pipe`` with ``config``'s block-sparse attention inside the ``with`` block; restore it on exit.

    Args:
        pipe: a diffusers pipeline of the config's family (or its transformer).
        config: a `Config` or the path of a config YAML.
        model_id: when given (the recipe's ``model.id``), it must equal the config's ``model.id``.
        backend: ``"auto"`` (Triton on CUDA, the PyTorch reference on CPU), ``"triton"`` or ``"reference"``.
        timer: an `AttentionTimer` to record every attention call's time (dense and sparse steps).
        retarget: calls at another token grid or step count run the config retargeted to them (one line on
            stderr); False refuses them.

    Yields:
        The `SparseRuntime` (masks, counters) for inspection.

    Raises:
        InputError: a config that does not fit the pipeline (see the module docstring), one line each.
    """
    if backend not in ("auto", "triton", "reference"):
        raise InputError(f"backend must be auto, triton or reference, got {backend!r}")
    cfg = config if isinstance(config, Config) else load_config(Path(config))
    transformers = check_pipeline(pipe, cfg, model_id)
    adapter = get_adapter(cfg.adapter)
    rt = SparseRuntime(cfg, backend, retarget=retarget, source=cfg)
    ctx = rt.ctx
    ctx.attend = rt.attend
    reset_hooks = _add_reset_hooks(transformers, ctx)
    inst = install(pipe, adapter, ctx)
    sched_of = pipe if not isinstance(pipe, torch.nn.Module) else None

    def schedule(module, args, kwargs):
        ctx.mode = rt.on_step(ctx.step, ctx.video_thw, _scheduler_steps(sched_of) if ctx.step == 0 else None)

    hooks = reset_hooks + [tr.register_forward_pre_hook(schedule, with_kwargs=True) for tr in transformers]
    try:
        with _installed_for_block(inst, hooks, timer):
            yield rt
    finally:
        rt._masks.clear()
