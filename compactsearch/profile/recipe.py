"""Recipes: one YAML per model setup, loaded strictly with path-precise errors.

Layout (every key not marked optional is required)::

    name: wan2.1-t2v-1.3b-480p                    # optional, for listings
    model:
      id: Wan-AI/Wan2.1-T2V-1.3B-Diffusers        # Hub id, local save_pretrained dir, or a registered
                                                  # builder such as tiny-random-wan
      adapter: wan                                # wan | hunyuan_video | cogvideox | ltx | mochi
      dtype: bfloat16                             # optional: bfloat16 (default) | float16 | float32
      offload: none                               # optional: none (default) | model | sequential
    video: {height: 480, width: 832, frames: 81}  # pixels and frames, as the pipeline takes them
    sampling:
      steps: 50                                   # denoising steps
      guidance: 5.0                               # guidance scale (per family: see docs/profile.md)
      seed: 0                                     # optional (0): prompt i runs with seed + i
      negative_prompt: "..."                      # optional
      max_sequence_length: 512                    # optional: text tokens (fixes the text segment)
      extra: {}                                   # optional: more keyword arguments for the pipeline call
    prompts: prompts/calibration.txt              # a file (relative to the recipe) or an inline list
    holdout_prompts: prompts/holdout.txt          # optional: kept out of the profile, for evaluation
    tiling: {tile: [2, 8, 8], block_size: 128}    # optional; default: compactsearch.tile_choice.default_tiling
    profile:                                      # optional
      buckets: [[0, 10], [10, 50]]                # half-open step ranges; default one bucket [0, steps)
      steps: all                                  # all | a list of steps | {every: N} (plus the last step)
      branch: cond                                # cond | uncond
      per_prompt: false                           # keep per-prompt tensors (search --holdout needs them)
      dense_warmup: 0                             # written into the profile for the search
      samples: {heads: 1, layers: [0, 20, 39]}    # q/k/v kept for validate; false to keep none

Every error names the file and the path inside it, e.g. ``recipe r.yaml: profile.buckets[1]: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactsearch._io import read_text, read_yaml
from compactsearch._schema import boolean as _bool
from compactsearch._schema import choice as _choice
from compactsearch._schema import fail as _fail
from compactsearch._schema import integer as _int
from compactsearch._schema import lst as _list
from compactsearch._schema import mapping as _schema_mapping
from compactsearch._schema import number as _number
from compactsearch._schema import string as _str
from compactsearch._schema import tname as _tname
from compactsearch.errors import InputError
from compactsearch.limits import check_caps, check_video_shape
from compactsearch.tiling import tiling_from_yaml

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "read_prompts", "default_recipe_path"]


def _mapping(x, path: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    return _schema_mapping(x, path, required, optional, top="recipe")

_OFFLOAD = ("none", "model", "sequential")


def default_recipe_path() -> Path:
    """The bundled tiny model's recipe (``recipes/tiny.yaml``, shipped in the package as
    ``compactsearch/tinymodel/recipe.yaml``): what `profile`, `generate` and `evaluate` use without a RECIPE."""
    return Path(__file__).resolve().parent.parent / "tinymodel" / "recipe.yaml"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe (see the module docstring for the YAML)."""

    name: str
    model_id: str
    adapter: str
    dtype: str
    offload: str
    height: int
    width: int
    frames: int
    steps: int
    guidance: float
    seed: int
    negative_prompt: str | None
    max_sequence_length: int | None
    extra: dict
    prompts: tuple[str, ...]
    holdout_prompts: tuple[str, ...]
    tile: tuple[int, int, int] | None
    block_size: int | None
    buckets: tuple[tuple[int, int], ...]
    profiled_steps: tuple[int, ...]
    branch: str
    per_prompt: bool
    dense_warmup: int
    sample_heads: int
    sample_layers: tuple[int, ...] | None
    source: str = ""
    base_dir: str = "."

    def bucket_of_step(self) -> dict[int, int]:
        """``step -> bucket`` for every profiled step."""
        out = {}
        for s in self.profiled_steps:
            for b, (lo, hi) in enumerate(self.buckets):
                if lo <= s < hi:
                    out[s] = b
        return out

    def seed_of(self, prompt_index: int) -> int:
        return self.seed + prompt_index

    def call_kwargs(self, prompt: str, generator, **call) -> dict:
        """The keyword arguments of one pipeline call of this recipe: size, steps, ``generator``, then ``call``
        (e.g. ``output_type``), the family's guidance keywords, the text length and ``sampling.extra`` (last, so
        it can override any of them). The one place a recipe becomes a pipeline call (profile, generate,
        evaluate)."""
        from compactsearch.adapters import get_adapter

        kw = dict(prompt=prompt, height=self.height, width=self.width, num_frames=self.frames,
                  num_inference_steps=self.steps, generator=generator, **call)
        kw.update(get_adapter(self.adapter).pipeline_kwargs(self.guidance, self.negative_prompt))
        if self.max_sequence_length is not None:
            kw["max_sequence_length"] = self.max_sequence_length
        kw.update(self.extra)
        return kw

    def with_prompts(self, prompts: list[str]) -> Recipe:
        from dataclasses import replace

        return replace(self, prompts=tuple(prompts))

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe (prompts inline), as stored in the profile's metadata."""
        return {
            "name": self.name,
            "source": self.source,
            "model": {"id": self.model_id, "adapter": self.adapter, "dtype": self.dtype, "offload": self.offload},
            "video": {"height": self.height, "width": self.width, "frames": self.frames},
            "sampling": {"steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                         "negative_prompt": self.negative_prompt, "max_sequence_length": self.max_sequence_length,
                         "extra": dict(self.extra)},
            "tiling": {"tile": list(self.tile) if self.tile else None, "block_size": self.block_size},
            "profile": {"buckets": [list(b) for b in self.buckets], "steps": list(self.profiled_steps),
                        "branch": self.branch, "per_prompt": self.per_prompt, "dense_warmup": self.dense_warmup,
                        "samples": {"heads": self.sample_heads,
                                    "layers": None if self.sample_layers is None else list(self.sample_layers)}},
            "holdout_prompts": list(self.holdout_prompts),
        }


def read_prompts(path: Path, what: str = "prompt file") -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with ``#`` are skipped."""
    lines = read_text(path, what, "a text file with one prompt per line").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"{what} {path} holds no prompts (one per line; '#' starts a comment)")
    return prompts


def _prompts(x, path: str, base: Path) -> tuple[str, ...]:
    if isinstance(x, str):
        p = Path(x).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            return tuple(read_prompts(p))
        except InputError as e:
            raise _fail(path, str(e)) from e
    items = _list(x, path)
    if not items:
        raise _fail(path, "needs at least one prompt")
    return tuple(_str(p, f"{path}[{i}]").strip() for i, p in enumerate(items))


def recipe_from_dict(data: dict, base_dir: Path = Path("."), source: str = "") -> Recipe:
    """Validate a parsed recipe mapping; relative prompt files resolve against ``base_dir``."""
    base_dir = Path(base_dir)
    d = _mapping(data, "", {"model", "video", "sampling", "prompts"},
                 {"name", "holdout_prompts", "tiling", "profile"})
    m = _mapping(d["model"], "model", {"id", "adapter"}, {"dtype", "offload"})
    from compactsearch.adapters import adapter_names
    from compactsearch.adapters.registry import DTYPES  # the model dtypes, by name

    adapter = _str(m["adapter"], "model.adapter")
    if adapter not in adapter_names():
        raise _fail("model.adapter", f"unknown adapter {adapter!r}; known adapters: {', '.join(adapter_names())}")
    v = _mapping(d["video"], "video", {"height", "width", "frames"})
    s = _mapping(d["sampling"], "sampling", {"steps", "guidance"},
                 {"seed", "negative_prompt", "max_sequence_length", "extra"})
    steps = _int(s["steps"], "sampling.steps", 1)
    neg = s.get("negative_prompt")
    if neg is not None and not isinstance(neg, str):
        raise _fail("sampling.negative_prompt", f"expected a string, got {_tname(neg)}")
    msl = s.get("max_sequence_length")
    extra = s.get("extra") or {}
    if not isinstance(extra, dict):
        raise _fail("sampling.extra", f"expected a mapping of pipeline keyword arguments, got {_tname(extra)}")
    tile, block_size = tiling_from_yaml(_mapping(d.get("tiling") or {}, "tiling", set(), {"tile", "block_size"}))

    p = _mapping(d.get("profile") or {}, "profile", set(),
                 {"buckets", "steps", "branch", "per_prompt", "dense_warmup", "samples"})
    raw_buckets = _list(p.get("buckets", [[0, steps]]), "profile.buckets")
    if not raw_buckets:
        raise _fail("profile.buckets", "needs at least one step range")
    buckets, prev = [], 0
    for i, b in enumerate(raw_buckets):
        bp = f"profile.buckets[{i}]"
        b = _list(b, bp, 2)
        lo, hi = _int(b[0], f"{bp}[0]", 0), _int(b[1], f"{bp}[1]", 0)
        if not prev <= lo < hi <= steps:
            raise _fail(bp, f"[{lo}, {hi}) must be non-empty, ascending, disjoint from earlier buckets "
                        f"(from {prev}) and within sampling.steps ({steps})")
        buckets.append((lo, hi))
        prev = hi
    raw_steps = p.get("steps", "all")
    if raw_steps == "all":
        chosen = list(range(steps))
    elif isinstance(raw_steps, dict):
        every = _int(_mapping(raw_steps, "profile.steps", {"every"})["every"], "profile.steps.every", 1)
        chosen = sorted(set(range(0, steps, every)) | {steps - 1})
    elif isinstance(raw_steps, list):
        if not raw_steps:
            raise _fail("profile.steps", "needs at least one step")
        chosen = sorted({_int(x, f"profile.steps[{i}]", 0) for i, x in enumerate(raw_steps)})
        if chosen[-1] >= steps:
            raise _fail("profile.steps", f"step {chosen[-1]} is past the last step ({steps - 1})")
    else:
        raise _fail("profile.steps", f"expected 'all', a list of steps or {{every: N}}, got {raw_steps!r}")
    profiled = [st for st in chosen if any(lo <= st < hi for lo, hi in buckets)]
    if raw_steps != "all" and not isinstance(raw_steps, dict) and len(profiled) != len(chosen):
        stray = next(st for st in chosen if st not in profiled)
        raise _fail("profile.steps", f"step {stray} lies in no bucket of profile.buckets")
    for i, (lo, hi) in enumerate(buckets):
        if not any(lo <= st < hi for st in profiled):
            raise _fail(f"profile.buckets[{i}]", f"[{lo}, {hi}) holds no profiled step (see profile.steps)")
    samples = p.get("samples", {"heads": 1})
    if samples is False:
        sample_heads, sample_layers = 0, ()
    else:
        sm = _mapping(samples, "profile.samples", set(), {"heads", "layers"})
        sample_heads = _int(sm.get("heads", 1), "profile.samples.heads", 0)
        layers = sm.get("layers")
        sample_layers = None if layers is None else tuple(
            _int(x, f"profile.samples.layers[{i}]", 0) for i, x in enumerate(_list(layers, "profile.samples.layers")))
    dense_warmup = _int(p.get("dense_warmup", 0), "profile.dense_warmup", 0)
    if dense_warmup > steps:
        raise _fail("profile.dense_warmup", f"{dense_warmup} is more than sampling.steps ({steps})")
    size = {k: _int(v[k], f"video.{k}", 1) for k in ("frames", "height", "width")}
    check_caps({f"video.{k}": x for k, x in size.items()}
               | {"sampling.steps": steps, "sampling.max_sequence_length": msl}, "")
    check_video_shape(size["frames"], size["height"], size["width"], "video")
    return Recipe(
        name=_str(d.get("name", Path(source).stem or "recipe"), "name"),
        model_id=_str(m["id"], "model.id"),
        adapter=adapter,
        dtype=_choice(m.get("dtype", "bfloat16"), "model.dtype", tuple(DTYPES)),
        offload=_choice(m.get("offload", "none"), "model.offload", _OFFLOAD),
        height=_int(v["height"], "video.height", 1),
        width=_int(v["width"], "video.width", 1),
        frames=_int(v["frames"], "video.frames", 1),
        steps=steps,
        guidance=_number(s["guidance"], "sampling.guidance"),
        seed=_int(s.get("seed", 0), "sampling.seed", 0),
        negative_prompt=neg,
        max_sequence_length=None if msl is None else _int(msl, "sampling.max_sequence_length", 1),
        extra=dict(extra),
        prompts=_prompts(d["prompts"], "prompts", base_dir),
        holdout_prompts=_prompts(d["holdout_prompts"], "holdout_prompts", base_dir) if "holdout_prompts" in d else (),
        tile=tile,
        block_size=block_size,
        buckets=tuple(buckets),
        profiled_steps=tuple(profiled),
        branch=_choice(p.get("branch", "cond"), "profile.branch", ("cond", "uncond")),
        per_prompt=_bool(p.get("per_prompt", False), "profile.per_prompt"),
        dense_warmup=dense_warmup,
        sample_heads=sample_heads,
        sample_layers=sample_layers,
        source=source,
        base_dir=str(base_dir),
    )


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe YAML; errors name the file and the path inside it."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    try:
        return recipe_from_dict(data, path.resolve().parent, str(path))
    except InputError as e:
        raise InputError(f"recipe {path}: {e}") from e
