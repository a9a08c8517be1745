"""The Profile: block attention mass per (step bucket, layer, head), saved as a directory.

Directory layout (format ``compactsearch-profile/v1``)::

    profile.yaml              metadata: model, recipe, geometry, tiling, layers, heads, buckets, prompts, seeds,
                              steps, tool version, sha256 of every data file
    mass/b{B}_l{L}.safetensors
                              "mass": [H, NQB, NKB] float16, mean over prompts, tile order; a query block's
                              row sums to its token count. Optional "per_prompt": [P, H, NQB, NKB] float16.
                              Optional "value_factor": [H, NKB, r] float32 (r <= 32), U with U Uᵀ the best
                              rank-r approximation of the mean over calls of V̄ V̄ᵀ (V̄: per key block the mean
                              value vector), for the search's output fidelity (`compactsearch.search.fidelity`);
                              profiles without it are searched on recall.
    samples/l{L}.safetensors  optional captured tensors for `validate` (keys chosen by the capture code)
    stats.parquet             one row per (bucket, layer, head, prompt); prompt -1 is the mean over prompts

Mass is loaded per layer on demand, so a Wan-14B 720p profile (~2 GB per bucket in float32) never sits in
memory whole. `Profile.from_block_mass` builds one from tensors computed anywhere.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compactsearch import __version__, _schema
from compactsearch._io import atomic_dir, dump_yaml, read_yaml, sha256_file
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry, geometry_from_yaml
from compactsearch.limits import check_attention_shape, check_caps
from compactsearch.profile.stats import head_stats
from compactsearch.tile_choice import default_tile_shape
from compactsearch.tiling import TileLayout, tiling_from_yaml

__all__ = ["Profile", "PROFILE_FORMAT"]

PROFILE_FORMAT = "compactsearch-profile/v1"

MassInput = torch.Tensor | Mapping[tuple[int, int], torch.Tensor]


def _as_dict(x: MassInput | None, lead: int, what: str) -> dict[tuple[int, int], torch.Tensor]:
    """Normalise stacked ``[NB, L, (P,) H, NQB, NKB]`` or mapping input to ``{(bucket, layer): tensor}``."""
    if x is None:
        return {}
    dims = "P, " if lead else ""
    if isinstance(x, torch.Tensor):
        if x.dim() != 5 + lead:
            raise InputError(f"{what} must be [buckets, layers, {dims}H, NQB, NKB], got shape {tuple(x.shape)}")
        return {(b, l): x[b, l] for b in range(x.shape[0]) for l in range(x.shape[1])}
    out = {tuple(k): v for k, v in x.items()}
    for k, v in out.items():
        if v.dim() != 3 + lead:
            raise InputError(f"{what}[{k}] must be [{dims}H, NQB, NKB], got shape {tuple(v.shape)}")
    return out


@dataclass(eq=False)
class Profile:
    """Block-mass profile of one model at one geometry. See the module docstring for the files."""

    geometry: VideoGeometry
    num_layers: int
    num_heads: int
    tile: tuple[int, int, int]
    block_size: int
    buckets: list[tuple[int, int]]
    num_steps: int
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    model: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    tool_version: str = __version__
    hashes: dict = field(default_factory=dict)
    root: Path | None = None
    per_prompt: bool = False
    values: bool = False
    _mass: dict = field(default_factory=dict, repr=False)
    _prompt_mass: dict = field(default_factory=dict, repr=False)
    _value_factor: dict = field(default_factory=dict, repr=False)
    _samples: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------- shape
    def layout(self) -> TileLayout:
        return TileLayout(self.geometry, self.tile, self.block_size)

    @property
    def num_buckets(self) -> int:
        return len(self.buckets)

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.geometry.seq_len / self.block_size)

    def keys(self):
        return [(b, l) for b in range(self.num_buckets) for l in range(self.num_layers)]

    # -------------------------------------------------------------- data
    def _load(self, bucket: int, layer: int, key: str) -> torch.Tensor | None:
        """One tensor of a (bucket, layer) file, read alone (a Wan-14B file with per-prompt tensors is GBs), or
        None when the file has no such tensor."""
        if self.root is None:
            raise InputError(f"profile has no mass for bucket {bucket}, layer {layer}")
        path = self.root / "mass" / f"b{bucket}_l{layer}.safetensors"
        if not path.exists():
            raise InputError(f"profile {self.root} is incomplete: {path.name} is missing; re-run the profile")
        try:
            with safe_open(str(path), framework="pt") as f:
                t = f.get_tensor(key) if key in f.keys() else None
        except Exception as e:  # safetensors raises several types for damaged files
            raise InputError(f"profile {self.root} is corrupt: {path.name} cannot be read ({e})") from e
        if t is not None and key in ("mass", "per_prompt") and not bool(((t >= 0) & torch.isfinite(t)).all()):
            what = "per-prompt block mass" if key == "per_prompt" else "block mass"
            raise InputError(f"profile {self.root} is corrupt: the {what} of bucket {bucket}, layer {layer} "
                             f"({path.name}) contains NaN, inf or negative values (mass is a sum of softmax "
                             "weights); re-run the profile")
        return t

    def mass(self, bucket: int, layer: int) -> torch.Tensor:
        """Mean block mass over prompts, ``[H, NQB, NKB]`` float32."""
        if (bucket, layer) in self._mass:
            return self._mass[(bucket, layer)].float()
        t = self._load(bucket, layer, "mass")
        if t is None:
            raise InputError(f"profile {self.root} is corrupt: b{bucket}_l{layer}.safetensors holds no 'mass' tensor")
        return t.float()

    def prompt_mass(self, bucket: int, layer: int) -> torch.Tensor | None:
        """Per-prompt block mass ``[P, H, NQB, NKB]`` float32, or None when the profile did not keep it."""
        if not self.per_prompt:
            return None
        if (bucket, layer) in self._prompt_mass:
            return self._prompt_mass[(bucket, layer)].float()
        t = self._load(bucket, layer, "per_prompt")
        return None if t is None else t.float()

    @property
    def has_values(self) -> bool:
        """Whether the profile carries value statistics (``value_factor``) for every (bucket, layer)."""
        return self.values

    def value_factor(self, bucket: int, layer: int) -> torch.Tensor | None:
        """``U`` ``[H, NKB, r]`` float32 with ``U Uᵀ`` ~ the mean Gram matrix of the key blocks' mean values, or
        None when the profile has no value statistics."""
        if (bucket, layer) in self._value_factor:
            return self._value_factor[(bucket, layer)].float()
        if self.root is None:
            return None
        t = self._load(bucket, layer, "value_factor")
        return None if t is None else t.float()

    def samples(self, layer: int) -> dict[str, torch.Tensor] | None:
        """Captured tensors of ``layer`` for validation (keys set by the capture code), or None."""
        if layer in self._samples:
            return self._samples[layer]
        if self.root is not None:
            path = self.root / "samples" / f"l{layer}.safetensors"
            if path.exists():
                return load_file(str(path))
        return None

    @property
    def content_hash(self) -> str:
        """sha256 over the data files' hashes (stable across re-saves of the same tensors)."""
        h = hashlib.sha256()
        for name in sorted(self.hashes):
            h.update(f"{name}:{self.hashes[name]}\n".encode())
        return h.hexdigest()

    # ------------------------------------------------------- constructors
    @classmethod
    def from_block_mass(
        cls,
        mass: MassInput,
        *,
        geometry: VideoGeometry,
        tile: tuple[int, int, int] | None = None,
        block_size: int = 128,
        buckets: list[tuple[int, int]] | None = None,
        num_steps: int | None = None,
        per_prompt: MassInput | None = None,
        prompts: list[str] | None = None,
        seeds: list[int] | None = None,
        model: dict | None = None,
        recipe: dict | None = None,
        samples: dict[int, dict[str, torch.Tensor]] | None = None,
        value_factor: MassInput | None = None,
    ) -> Profile:
        """Build a profile from block-mass tensors.

        Args:
            mass: ``[NB, L, H, NQB, NKB]`` or a mapping ``(bucket, layer) -> [H, NQB, NKB]``; mean over prompts,
                tile order, rows summing to the query block's token count.
            geometry: the token grid.
            tile: tile shape; default `default_tile_shape(geometry, block_size)`.
            block_size: kernel block size (64 or 128).
            buckets: step range ``[start, end)`` per bucket; default one bucket ``[0, num_steps)``.
            num_steps: denoising steps; default the end of the last bucket (or 1).
            per_prompt: optional ``[NB, L, P, H, NQB, NKB]`` or mapping ``(bucket, layer) -> [P, H, NQB, NKB]``.
            prompts, seeds, model, recipe: provenance kept in the metadata.
            samples: optional ``layer -> {name: tensor}`` captured tensors for validation.
            value_factor: optional ``[NB, L, H, NKB, r]`` or mapping ``(bucket, layer) -> [H, NKB, r]``: a factor
                ``U`` of the mean of ``V̄ V̄ᵀ`` (``U Uᵀ``; `compactsearch.profile.values.value_block_gram`,
                `gram_factor`), or ``V̄`` itself, for the output fidelity.
        """
        masses = _as_dict(mass, 0, "mass")
        if not masses:
            raise InputError("from_block_mass needs at least one (bucket, layer) tensor")
        tile = tuple(tile) if tile is not None else default_tile_shape(geometry, block_size)
        layout = TileLayout(geometry, tile, block_size)
        nb_keys = 1 + max(b for b, _ in masses)
        nl = 1 + max(l for _, l in masses)
        if set(masses) != {(b, l) for b in range(nb_keys) for l in range(nl)}:
            raise InputError("from_block_mass: mass must cover every (bucket, layer) pair from 0")
        first = next(iter(masses.values()))
        H = first.shape[0]
        nblk = layout.num_blocks
        for (b, l), t in masses.items():
            if t.dim() != 3 or tuple(t.shape) != (H, nblk, nblk):
                raise InputError(f"mass[{b}, {l}] has shape {tuple(t.shape)}; expected [H={H}, {nblk}, {nblk}] "
                                 f"for {geometry.describe()} with {layout.describe()}")
            if not torch.isfinite(t).all():
                raise InputError(f"mass[{b}, {l}] contains NaN or inf")
        if buckets is None:
            end = num_steps or 1
            buckets = [(0, end)] if nb_keys == 1 else [(i, i + 1) for i in range(nb_keys)]
        if len(buckets) != nb_keys:
            raise InputError(f"{len(buckets)} bucket step ranges given for {nb_keys} buckets of mass")
        num_steps = num_steps or buckets[-1][1]
        pp = _as_dict(per_prompt, 1, "per_prompt")
        if pp and set(pp) != set(masses):
            raise InputError("per_prompt must cover the same (bucket, layer) pairs as mass")
        vg = _as_dict(value_factor, 0, "value_factor")
        if vg:
            if set(vg) != set(masses):
                raise InputError("value_factor must cover the same (bucket, layer) pairs as mass")
            for (b, l), t in vg.items():
                if t.dim() != 3 or tuple(t.shape[:2]) != (H, nblk) or not torch.isfinite(t).all():
                    raise InputError(f"value_factor[{b}, {l}] must be a finite [H={H}, {nblk}, r] tensor, got "
                                     f"{tuple(t.shape)}")
        n_prompts = next(iter(pp.values())).shape[0] if pp else 0
        prompts = list(prompts) if prompts is not None else [f"prompt {i}" for i in range(n_prompts)]
        prof = cls(
            geometry=geometry,
            num_layers=nl,
            num_heads=H,
            tile=tile,
            block_size=block_size,
            buckets=[tuple(b) for b in buckets],
            num_steps=num_steps,
            prompts=prompts,
            seeds=list(seeds or []),
            model=dict(model or {}),
            recipe=dict(recipe or {}),
            per_prompt=bool(pp),
            values=bool(vg),
            _mass={k: v.detach().float().cpu() for k, v in masses.items()},
            _prompt_mass={k: v.detach().float().cpu() for k, v in pp.items()},
            _value_factor={k: v.detach().float().cpu() for k, v in vg.items()},
            _samples=dict(samples or {}),
        )
        prof.stats = prof.compute_stats()
        return prof

    def compute_stats(self) -> pd.DataFrame:
        """The statistics table: one row per (bucket, layer, head, prompt), prompt -1 being the mean."""
        layout = self.layout()
        rows = []
        for b, l in self.keys():
            for h, s in enumerate(head_stats(self.mass(b, l), layout)):
                rows.append({"bucket": b, "layer": l, "head": h, "prompt": -1, **s})
            pm = self.prompt_mass(b, l)
            if pm is not None:
                for p in range(pm.shape[0]):
                    for h, s in enumerate(head_stats(pm[p], layout)):
                        rows.append({"bucket": b, "layer": l, "head": h, "prompt": p, **s})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ I/O
    def _meta(self) -> dict:
        return {
            "format": PROFILE_FORMAT,
            "tool_version": self.tool_version,
            "model": self.model,
            "recipe": self.recipe,
            "geometry": self.geometry.to_dict(),
            "layers": self.num_layers,
            "heads": self.num_heads,
            "tiling": {"tile": list(self.tile), "block_size": self.block_size},
            "steps": self.num_steps,
            "buckets": [list(b) for b in self.buckets],
            "prompts": list(self.prompts),
            "seeds": list(self.seeds),
            "per_prompt": self.per_prompt,
            "values": self.values,
            "hashes": dict(self.hashes),
        }

    def save(self, directory: Path) -> Path:
        """Write the profile directory atomically (built under a temp name, then renamed into place)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            (tmp / "mass").mkdir()
            hashes = {}
            for b, l in self.keys():
                tensors = {"mass": self.mass(b, l).to(torch.float16).contiguous()}
                pm = self.prompt_mass(b, l)
                if pm is not None:
                    tensors["per_prompt"] = pm.to(torch.float16).contiguous()
                vf = self.value_factor(b, l)
                if vf is not None:
                    tensors["value_factor"] = vf.contiguous()
                name = f"mass/b{b}_l{l}.safetensors"
                save_file(tensors, str(tmp / name))
                hashes[name] = sha256_file(tmp / name)

            for layer in range(self.num_layers):
                s = self.samples(layer)
                if s:
                    (tmp / "samples").mkdir(exist_ok=True)
                    name = f"samples/l{layer}.safetensors"
                    save_file({k: v.contiguous() for k, v in s.items()}, str(tmp / name))
                    hashes[name] = sha256_file(tmp / name)
            self.stats.to_parquet(tmp / "stats.parquet", index=False)
            hashes["stats.parquet"] = sha256_file(tmp / "stats.parquet")
            self.hashes = hashes
            (tmp / "profile.yaml").write_text(dump_yaml(self._meta()))
        self.root = directory
        self._mass, self._prompt_mass, self._samples, self._value_factor = {}, {}, {}, {}
        return directory

    @classmethod
    def load(cls, directory: Path, verify: bool = False) -> Profile:
        """Open a profile directory; mass is read lazily per layer.

        Args:
            verify: also check every data file's sha256 against the metadata (reads everything once).
        """
        directory = Path(directory)
        if not directory.exists():
            raise InputError(f"profile {directory} does not exist; create one with `compactsearch profile`")
        if not directory.is_dir():
            raise InputError(f"profile {directory} is not a directory; give the profile directory")
        meta = read_yaml(directory / "profile.yaml", "profile metadata")
        if meta.get("format") != PROFILE_FORMAT:
            raise InputError(f"profile {directory}: format must be {PROFILE_FORMAT!r}, got {meta.get('format')!r}")
        try:
            geometry = _check_meta(meta)
        except InputError as e:
            raise InputError(f"profile {directory}/profile.yaml: {e}") from e
        try:
            prof = cls(
                geometry=geometry,
                num_layers=int(meta["layers"]),
                num_heads=int(meta["heads"]),
                tile=tuple(meta["tiling"]["tile"]),
                block_size=int(meta["tiling"]["block_size"]),
                buckets=[tuple(b) for b in meta["buckets"]],
                num_steps=int(meta["steps"]),
                prompts=list(meta.get("prompts") or []),
                seeds=list(meta.get("seeds") or []),
                model=dict(meta.get("model") or {}),
                recipe=dict(meta.get("recipe") or {}),
                tool_version=str(meta.get("tool_version", "")),
                hashes=dict(meta.get("hashes") or {}),
                root=directory,
                per_prompt=bool(meta.get("per_prompt", False)),
                values=bool(meta.get("values", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"profile {directory}/profile.yaml is missing or has a bad field: {e}") from e
        for name in prof.hashes:
            path = directory / name
            if not path.exists():
                raise InputError(f"profile {directory} is incomplete: {name} is missing")
            if verify and sha256_file(path) != prof.hashes[name]:
                raise InputError(f"profile {directory} is corrupt: {name} does not match its recorded sha256")
        stats_path = directory / "stats.parquet"
        if stats_path.exists():
            try:
                prof.stats = pd.read_parquet(stats_path)
            except Exception as e:
                raise InputError(f"profile {directory} is corrupt: stats.parquet cannot be read ({e})") from e
        return prof


def _check_meta(meta: dict) -> VideoGeometry:
    """Check the shape fields of profile.yaml before anything is built from them (the memory limit included);
    returns the geometry."""
    g = _schema.mapping(meta.get("geometry"), "geometry", {"frames", "height", "width"},
                        {"text_tokens", "text_position"}, top="profile.yaml")
    geometry = geometry_from_yaml(g)
    layers = _schema.integer(meta.get("layers"), "layers", 1)
    heads = _schema.integer(meta.get("heads"), "heads", 1)
    _, block_size = tiling_from_yaml(_schema.mapping(meta.get("tiling"), "tiling", {"tile", "block_size"},
                                                     top="profile.yaml"))
    steps = _schema.integer(meta.get("steps"), "steps", 1)
    check_caps({"layers": layers, "heads": heads, "steps": steps}, "")
    raw = _schema.lst(meta.get("buckets"), "buckets")
    if not raw:
        raise _schema.fail("buckets", "needs at least one step range")
    prev = 0
    for i, b in enumerate(raw):
        b = _schema.lst(b, f"buckets[{i}]", 2)
        lo, hi = _schema.integer(b[0], f"buckets[{i}][0]", 0), _schema.integer(b[1], f"buckets[{i}][1]", 0)
        if not prev <= lo < hi <= steps:
            raise _schema.fail(f"buckets[{i}]", f"[{lo}, {hi}) must be non-empty, ascending and within steps ({steps})")
        prev = hi
    model = meta.get("model") or {}
    head_dim = model.get("head_dim", 0) if isinstance(model, dict) else 0
    head_dim = _schema.integer(head_dim if head_dim is not None else 0, "model.head_dim", 0)
    check_caps({"head_dim": head_dim}, "model")
    prompts = meta.get("prompts") or []
    n_prompts = len(prompts) if meta.get("per_prompt") and isinstance(prompts, list) else 0
    check_attention_shape(geometry.seq_len, block_size, heads, head_dim or 128, "profile.yaml", prompts=n_prompts)
    return geometry
