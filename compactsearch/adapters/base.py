"""Shared plumbing of the diffusers adapters: the attention context, the processor base, install and restore.

One adapter per model family (``wan``, ``hunyuan_video``, ``cogvideox``, ``ltx``, ``mochi``). Each ships a
processor class copied from diffusers 0.42.1 up to the point where q and k have RoPE applied; from there the
processor hands ``(q, k, v)`` as ``[B, H, N, D]`` views (model token order, text included) and an
`AttentionCall` to `SelfAttentionProcessor._attend`, which switches on the shared context's mode:

- ``"dense"``: call exactly what the original processor calls, on the same tensors (bit-exact pass-through);
- ``"capture"``: the same dense output, then ``ctx.sink(call, q, k, v)`` records what it needs (block mass); a
  sink with a ``capture_attention(call, q, k, v, dense, from_bhnd)`` method computes the output itself instead
  (the profile's one-pass capture: `compactsearch.profile.capture.BlockMassCapture.capture_attention`);
- ``"sparse"``: ``ctx.attend(call, q, k, v) -> o`` ``[B, H, N, D]`` in model order; the runtime fills
  ``attend`` (permute to tile order with `TileLayout.to_tile_order`, run the block-sparse kernel, permute
  back), so adding it touches no processor.

The denoising step comes from a forward pre-hook on each transformer: the step counter advances when the
timestep changes, so classifier-free guidance's second forward of a step (Wan, HunyuanVideo) counts once and
is told apart as branch ``"uncond"``; batched guidance (CogVideoX, LTX, Mochi) puts ``[uncond, cond]`` in one
batch, which `AttentionContext.batch_branches` names. The hook also derives the video token grid from
``hidden_states`` and the patch sizes. Call `AttentionContext.reset` before every pipeline call.

Limits: processors cover the text-to-video self-attention of each family (Wan I2V's extra image keys live
in cross-attention, untouched); the key-padding masks of HunyuanVideo and Mochi are assumed right-padded
(valid text first), as their tokenizers produce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from compactsearch.adapters.parallel import Ulysses, ulysses_of
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry

__all__ = [
    "MODES",
    "AttentionCall",
    "AttentionContext",
    "SelfAttentionProcessor",
    "Adapter",
    "Installation",
    "install",
    "installed",
    "forward_arguments",
    "guidance_kwargs",
    "project_heads",
]

MODES = ("dense", "capture", "sparse")
SEQUENTIAL_BRANCHES = ("cond", "uncond")  # forward order within one step when guidance runs two forwards


@dataclass(frozen=True)
class AttentionCall:
    """What one self-attention call tells the capture sink or the sparse kernel.

    Attributes:
        layer: global self-attention layer index (HunyuanVideo: dual blocks first, then single blocks).
        geometry: the call's sequence: video grid plus text tokens and where they sit in model order.
        key_valid: per batch item, how many leading model-order tokens are valid keys (text padding after
            them is masked out by the model), or None when every key is valid.
        step: denoising step index (0-based) of this forward.
        branch: ``"cond"`` / ``"uncond"`` for guidance run as separate forwards; ``"batch"`` when the batch
            holds both (see `AttentionContext.batch_branches`).
        batch_branches: the branch of every batch item (``("cond",)`` without guidance).
        expert: which transformer of the pipeline runs (Wan 2.2 A14B: 0 high noise, 1 low noise).
        heads: ``(start, stop)``, the model's heads q, k, v hold under Ulysses sequence parallelism (this rank's
            share, `compactsearch.adapters.parallel`); None: all of them.
    """

    layer: int
    geometry: VideoGeometry
    key_valid: tuple[int, ...] | None
    step: int
    branch: str
    batch_branches: tuple[str, ...]
    expert: int = 0
    heads: tuple[int, int] | None = None


@dataclass
class AttentionContext:
    """State shared by all processors of one pipeline; the pre-hooks update it on every transformer forward.

    Attributes:
        mode: ``"dense"``, ``"capture"`` or ``"sparse"``.
        sink: capture callback ``sink(call, q, k, v)`` with q, k, v ``[B, H, N, D]`` in model order.
        attend: sparse attention ``attend(call, q, k, v) -> o`` ``[B, H, N, D]`` in model order.
        batch_branches: branch of each batch item when guidance is batched (``("uncond", "cond")``); None means
            every item of a forward belongs to that forward's branch.
        step, timestep, forward_in_step, branch, expert, video_thw: set by the pre-hooks.
        experts_by_step: ``step -> expert`` seen so far in this pipeline call.
        forward_memo: what the processors of one transformer forward share (emptied by every forward).
        timer: when set, every attention call of the processors runs inside ``timer.timing(ctx, q)`` (a
            context manager; `compactsearch.runtime.AttentionTimer`).
    """

    mode: str = "dense"
    sink: Callable | None = None
    attend: Callable | None = None
    batch_branches: tuple[str, ...] | None = None
    step: int = -1
    timestep: float | None = None
    forward_in_step: int = 0
    branch: str = "cond"
    expert: int = 0
    video_thw: tuple[int, int, int] | None = None
    experts_by_step: dict = field(default_factory=dict)
    forward_memo: dict = field(default_factory=dict)
    timer: object | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"attention mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def reset(self) -> None:
        """Forget the step counter; call before every pipeline call."""
        self.step, self.timestep, self.forward_in_step = -1, None, 0
        self.branch, self.expert, self.video_thw = "cond", 0, None
        self.experts_by_step = {}
        self.forward_memo = {}

    def on_forward(self, timestep: torch.Tensor | float, expert: int, video_thw: tuple[int, int, int]) -> None:
        """Advance the step counter (a new timestep value is a new step) and record the call's grid."""
        t = float(timestep.detach().float().flatten().max()) if torch.is_tensor(timestep) else float(timestep)
        self.forward_memo = {}
        if self.timestep is None or t != self.timestep:
            self.step += 1
            self.timestep = t
            self.forward_in_step = 0
        else:
            self.forward_in_step += 1
        i = self.forward_in_step
        self.branch = SEQUENTIAL_BRANCHES[i] if i < len(SEQUENTIAL_BRANCHES) else f"extra{i}"
        self.expert = expert
        self.video_thw = tuple(int(x) for x in video_thw)
        self.experts_by_step[self.step] = expert


class SelfAttentionProcessor:
    """Base of every family's processor: holds the layer index and the context, and the mode switch.

    Subclasses define ``__call__`` with the exact signature of the diffusers processor they copy (diffusers
    passes only the keyword arguments that signature names) and end in `_attend`. ``_parallel_config`` is what
    diffusers' ``enable_parallelism`` sets (`install` copies it from the processor replaced); under Ulysses the
    sparse mode does the all-to-all itself (`compactsearch.adapters.parallel`) in families with ``ulysses = True``.
    """

    _attention_backend = None
    _parallel_config = None
    ulysses = False  # checked under Ulysses sequence parallelism (compactsearch.adapters.parallel)

    def __init__(self, layer: int, ctx: AttentionContext):
        self.layer = layer
        self.ctx = ctx

    def _dispatch(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask) -> torch.Tensor:
        """Dense attention exactly as diffusers' own processors compute it (``dispatch_attention_fn`` on
        ``[B, S, H, D]``, with the backend and parallel config diffusers set on the processor)."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        return dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                     backend=self._attention_backend, parallel_config=self._parallel_config)

    def _call(self, q: torch.Tensor, text_tokens: int, text_position: str,
              key_valid: tuple[int, ...] | None) -> AttentionCall:
        ctx = self.ctx
        if ctx.video_thw is None:
            raise RuntimeError("the adapter's transformer pre-hook did not run: install with compactsearch.adapters")
        t, h, w = ctx.video_thw
        B = q.shape[0]
        if ctx.batch_branches is not None and len(ctx.batch_branches) == B:
            branch, branches = "batch", tuple(ctx.batch_branches)
        else:
            branch, branches = ctx.branch, (ctx.branch,) * B
        n = q.shape[2]
        if n != t * h * w + text_tokens:
            raise RuntimeError(f"layer {self.layer}: sequence of {n} tokens does not match the grid {t}x{h}x{w} "
                               f"plus {text_tokens} text tokens")
        geometry = VideoGeometry(t, h, w, text_tokens, text_position if text_tokens else "none")
        return AttentionCall(self.layer, geometry, key_valid, ctx.step, branch, branches, ctx.expert)

    def _key_valid(self, attention_mask: torch.Tensor, batch: int, offset: int = 0) -> tuple[int, ...]:
        """Per batch item, ``offset`` + the keys ``attention_mask`` keeps (``[B or 1, ..., keys]``, nonzero =
        kept). Read to the host once per transformer forward, where every layer gets the same mask: a read per
        layer would synchronise the GPU at every layer and leave it idle while the host queues the layer's next
        kernels."""
        key = ("key_valid", attention_mask.data_ptr(), attention_mask._version, tuple(attention_mask.shape), batch,
               offset)
        got = self.ctx.forward_memo.get(key)
        if got is None:
            valid = attention_mask.reshape(attention_mask.shape[0], -1).sum(-1).expand(batch)
            got = tuple(offset + int(x) for x in valid.tolist())
            self.ctx.forward_memo[key] = got
        return got

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        dense: Callable[[], torch.Tensor],
        from_bhnd: Callable[[torch.Tensor], torch.Tensor],
        *,
        text_tokens: int = 0,
        text_position: str = "none",
        key_valid: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """The mode switch.

        Args:
            q, k, v: ``[B, H, N, D]`` post-RoPE views in model token order (text included).
            dense: computes the output exactly as the original processor does (its native layout).
            from_bhnd: turns a ``[B, H, N, D]`` attention output into what ``dense`` returns.
            text_tokens, text_position: the text segment of the sequence.
            key_valid: per batch item, the number of leading valid keys (None: all valid).
        """
        if self.ctx.timer is None:
            return self._switch(q, k, v, dense, from_bhnd, text_tokens, text_position, key_valid)
        with self.ctx.timer.timing(self.ctx, q):
            return self._switch(q, k, v, dense, from_bhnd, text_tokens, text_position, key_valid)

    def _switch(self, q, k, v, dense, from_bhnd, text_tokens, text_position, key_valid) -> torch.Tensor:
        mode = self.ctx.mode
        if mode == "dense":  # under context parallelism: diffusers' own all-to-all inside dispatch_attention_fn
            return dense()
        ulysses = ulysses_of(self._parallel_config)
        if ulysses is not None:
            return self._switch_ulysses(ulysses, q, k, v, from_bhnd, text_tokens, text_position, key_valid)
        call = self._call(q, text_tokens, text_position, key_valid)
        if mode == "capture":
            run = getattr(self.ctx.sink, "capture_attention", None)
            if run is not None:  # the sink computes the output itself (one-pass block mass, timing)
                return run(call, q, k, v, dense, from_bhnd)
            out = dense()
            if self.ctx.sink is not None:
                self.ctx.sink(call, q, k, v)
            return out
        if self.ctx.attend is None:
            raise InputError("attention mode 'sparse' needs an attend function (compactsearch.apply sets it)")
        return from_bhnd(self.ctx.attend(call, q, k, v))

    def _switch_ulysses(self, ulysses: Ulysses, q, k, v, from_bhnd, text_tokens, text_position,
                        key_valid) -> torch.Tensor:
        """Sparse mode on this rank's sequence slice: all-to-all to the whole sequence of this rank's heads, the
        sparse attention with those heads' masks, all-to-all back."""
        mode = self.ctx.mode
        if not self.ulysses:
            raise InputError(f"{type(self).__name__} does not run under sequence parallelism (Ulysses): run this "
                             "model without enable_parallelism")
        if mode == "capture":
            raise InputError("profiling (capture mode) under context parallelism is not supported: profile without "
                             "enable_parallelism")
        if key_valid is not None:
            raise InputError("masked text keys under sequence parallelism (Ulysses) are not supported: run this model "
                             "without enable_parallelism")
        if self.ctx.attend is None:
            raise InputError("attention mode 'sparse' needs an attend function (compactsearch.apply sets it)")
        heads = ulysses.heads(q.shape[1])
        q, k, v = (ulysses.to_heads(x) for x in (q, k, v))
        call = dataclasses.replace(self._call(q, text_tokens, text_position, key_valid), heads=heads)
        return from_bhnd(ulysses.to_sequence(self.ctx.attend(call, q, k, v)))


def guidance_kwargs(guidance: float, negative_prompt: str | None) -> dict:
    """The pipeline-call keywords that set guidance in most families: ``guidance_scale`` (and the negative
    prompt when there is one)."""
    out = {"guidance_scale": guidance}
    if negative_prompt is not None:
        out["negative_prompt"] = negative_prompt
    return out


@dataclass(frozen=True)
class Adapter:
    """One diffusers model family.

    Attributes:
        name: registry key (``"wan"``).
        description: one line for listings.
        transformer_class: name of the diffusers transformer class it handles.
        processor_class: the family's `SelfAttentionProcessor` subclass.
        attention_modules: ``transformer -> [module]`` self-attention modules in global layer order.
        video_grid: ``(transformer, forward_args) -> (T', H', W')`` from the forward's bound arguments.
        cfg: ``"sequential"`` (cond then uncond forwards) or ``"batched"`` (``[uncond, cond]`` in one batch).
        text_position: where text sits in the self-attention sequence (``"none"``, ``"front"``, ``"back"``).
        pipeline_kwargs: ``(guidance, negative_prompt) -> dict`` of the pipeline-call keywords that set
            guidance for this family (default `guidance_kwargs`).
    """

    name: str
    description: str
    transformer_class: str
    processor_class: type
    attention_modules: Callable[[torch.nn.Module], list[torch.nn.Module]]
    video_grid: Callable[[torch.nn.Module, dict], tuple[int, int, int]]
    cfg: str
    text_position: str
    pipeline_kwargs: Callable[[float, str | None], dict] = guidance_kwargs

    def transformers(self, model) -> list[torch.nn.Module]:
        """The transformers of a pipeline (``transformer`` and Wan 2.2's ``transformer_2``) or the model itself."""
        if isinstance(model, torch.nn.Module) and type(model).__name__ == self.transformer_class:
            return [model]
        found = [m for m in (getattr(model, "transformer", None), getattr(model, "transformer_2", None))
                 if m is not None]
        if not found:
            raise InputError(f"adapter '{self.name}' found no transformer on {type(model).__name__}")
        for m in found:
            if type(m).__name__ != self.transformer_class:
                raise InputError(f"adapter '{self.name}' expects a {self.transformer_class}, the pipeline has a "
                                 f"{type(m).__name__}: set model.adapter to the family of this model")
        return found

    def batch_branches(self, guidance_on: bool) -> tuple[str, ...] | None:
        """Branch of each batch item for this family's pipelines."""
        if self.cfg == "batched" and guidance_on:
            return ("uncond", "cond")
        return None


def forward_arguments(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """The arguments of a ``module.forward`` call by name (what a forward pre-hook with kwargs receives)."""
    sig = inspect.signature(module.forward)
    try:
        bound = sig.bind_partial(*args, **kwargs)
    except TypeError:
        return dict(kwargs)
    return dict(bound.arguments)


def _set_processor(module: torch.nn.Module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:  # Mochi's attention has no set_processor
        module.processor = processor


@dataclass
class Installation:
    """Handle of an installed adapter: the processors, the originals and the hooks, and `restore`."""

    adapter: Adapter
    ctx: AttentionContext
    modules: list[torch.nn.Module]
    originals: list
    processors: list[SelfAttentionProcessor]
    hooks: list
    num_experts: int = 1
    active: bool = True

    @property
    def num_layers(self) -> int:
        """Self-attention layers per transformer (experts share layer indices)."""
        return len(self.modules) // self.num_experts

    def restore(self) -> None:
        """Put the original processors back and remove the hooks (idempotent). A parallel config diffusers set
        on the processors meanwhile (``enable_parallelism`` inside the block) goes to the originals too."""
        if not self.active:
            return
        for module, orig, proc in zip(self.modules, self.originals, self.processors, strict=True):
            if proc._parallel_config is not None and hasattr(orig, "_parallel_config"):
                orig._parallel_config = proc._parallel_config
            _set_processor(module, orig)
        for h in self.hooks:
            h.remove()
        self.active = False


def install(model, adapter: Adapter, ctx: AttentionContext | None = None) -> Installation:
    """Install the family's processor on every self-attention module and the step pre-hooks.

    Args:
        model: a diffusers pipeline (every transformer of it is hooked; Wan 2.2 A14B has two, whose layers
            share indices: a step runs one expert, so (step bucket, layer) names the expert's layer) or one
            transformer.
        adapter: the family.
        ctx: shared context (a new one in ``"dense"`` mode when None).
    """
    ctx = ctx or AttentionContext()
    transformers = adapter.transformers(model)
    modules, originals, processors, hooks = [], [], [], []
    for expert, tr in enumerate(transformers):
        mods = adapter.attention_modules(tr)
        if expert and len(mods) != len(modules):
            raise InputError(f"the experts of this pipeline differ in depth ({len(modules)} vs {len(mods)} layers)")

        def pre_hook(module, args, kwargs, expert=expert):
            bound = forward_arguments(module, args, kwargs)
            timestep = bound.get("timestep")
            if timestep is None:
                raise RuntimeError(f"{type(module).__name__} was called without a timestep")
            ctx.on_forward(timestep, expert, adapter.video_grid(module, bound))

        hooks.append(tr.register_forward_pre_hook(pre_hook, with_kwargs=True))
        for layer, mod in enumerate(mods):
            proc = adapter.processor_class(layer, ctx)
            proc._parallel_config = getattr(mod.processor, "_parallel_config", None)  # enable_parallelism's
            originals.append(mod.processor)
            modules.append(mod)
            processors.append(proc)
            _set_processor(mod, proc)
    return Installation(adapter, ctx, modules, originals, processors, hooks, num_experts=len(transformers))


@contextlib.contextmanager
def installed(model, adapter: Adapter, ctx: AttentionContext | None = None) -> Iterator[Installation]:
    """Context manager form of `install`: restores the original processors on exit."""
    inst = install(model, adapter, ctx)
    try:
        yield inst
    finally:
        inst.restore()


def project_heads(attn, x: torch.Tensor, added: bool = False):
    """``(q, k, v)`` ``[B, S, H, D]``: ``x`` through the module's projections (``to_q``, ``to_k``, ``to_v``; with
    ``added`` the text stream's ``add_q_proj``, ... of joint attention), split into heads, with q and k through
    the matching norms where the module has them, as diffusers' processors compute them."""
    names = ("add_q_proj", "add_k_proj", "add_v_proj") if added else ("to_q", "to_k", "to_v")
    q, k, v = (getattr(attn, name)(x).unflatten(2, (attn.heads, -1)) for name in names)
    norm_q, norm_k = (getattr(attn, name, None) for name in (
        ("norm_added_q", "norm_added_k") if added else ("norm_q", "norm_k")))
    return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v
