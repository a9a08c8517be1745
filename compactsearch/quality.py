"""Dense vs sparse generation quality: PSNR, SSIM (LPIPS when installed) and attention time per step.

`evaluate(recipe, configs, prompts)` loads the recipe's pipeline once and, per prompt ``i`` (seed
``sampling.seed + i``), generates the dense video (the model's own attention, timed through the adapter in its
bit-exact ``"dense"`` mode) and, for every config, the sparse one with the same seed (`compactsearch.apply`),
then compares them frame by frame (videos from `compactsearch.video`: ``[F, 3, H, W]`` in [0, 1]).

Metrics (both videos in [0, 1]):
- PSNR over the whole video: ``10 log10(1 / MSE)`` (inf for identical videos, reported as 100 dB);
- SSIM: per frame and channel with an 11-tap Gaussian window (sigma 1.5; smaller for tiny frames),
  ``C1 = 0.01^2``, ``C2 = 0.03^2``, averaged over frames and channels;
- LPIPS (AlexNet) per frame, averaged, only when the ``lpips`` package is importable (its weights must be on
  the machine already).
- attention time per step: the wall time of every self-attention call of a step, summed over layers and the
  step's forwards, averaged over steps, separately for the dense run and for the sparse steps of the sparse
  run (CUDA events on a GPU; ``perf_counter`` on a CPU, where the block-sparse side is the PyTorch reference,
  so CPU times say nothing about the kernel's speed).

The rivals the search is compared with at the same density come from
`compactsearch.search.baselines.baseline_configs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compactsearch.config import Config, summarize
from compactsearch.errors import InputError
from compactsearch.runtime import AttentionTimer, apply, timed_dense
from compactsearch.video import generate_video, side_by_side, write_video

__all__ = ["psnr", "ssim", "lpips_distance", "ConfigResult", "EvalReport", "evaluate"]

PSNR_CAP = 100.0


# ------------------------------------------------------------------------------------------------ metrics
def _as_video(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a video [F, 3, H, W], got shape {tuple(x.shape)}")
    return x.float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos ``[F, 3, H, W]`` in [0, 1] (capped at 100 dB for identical videos)."""
    a, b = _as_video(a), _as_video(b)
    mse = float(((a - b) ** 2).mean())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two videos ``[F, 3, H, W]`` in [0, 1]: per frame and channel, Gaussian window, valid region.

    Frames smaller than the window use the largest odd window that fits (sigma scaled with it).
    """
    a, b = _as_video(a), _as_video(b)
    F, C, H, W = a.shape
    size = min(window, H if H % 2 else H - 1, W if W % 2 else W - 1)
    size = max(size, 1)
    sig = sigma * size / window
    k = _gaussian_window(size, sig).to(a.device)[None, None].expand(C, 1, size, size)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, k, groups=C)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a**2
    sbb = filt(b * b) - mu_b**2
    sab = filt(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return float((num / den).mean())


_LPIPS = {}


def lpips_distance(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Mean LPIPS (AlexNet) over frames, or None when the ``lpips`` package (or its weights) is unavailable."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None
    a, b = _as_video(a), _as_video(b)
    try:
        if "net" not in _LPIPS:
            import lpips

            _LPIPS["net"] = lpips.LPIPS(net="alex", verbose=False).eval()
        net = _LPIPS["net"].to(a.device)
        with torch.no_grad():
            return float(net(a * 2 - 1, b * 2 - 1).mean())
    except Exception:  # missing weights offline, or a too-small frame for AlexNet: no LPIPS
        return None


@dataclass(frozen=True)
class ConfigResult:
    """One config's numbers, means over prompts (``per_prompt`` holds each prompt's)."""

    name: str
    density: float
    psnr: float
    ssim: float
    lpips: float | None
    attention_s_per_step: float
    per_prompt: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "density": round(self.density, 5), "psnr": round(self.psnr, 3),
                "ssim": round(self.ssim, 5), "lpips": None if self.lpips is None else round(self.lpips, 5),
                "attention_ms_per_step": round(1000 * self.attention_s_per_step, 3),
                "per_prompt": list(self.per_prompt)}


@dataclass(frozen=True)
class EvalReport:
    """Dense attention time per step and one `ConfigResult` per config."""

    recipe: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str
    dense_attention_s_per_step: float
    results: tuple[ConfigResult, ...]
    videos: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        dense = self.dense_attention_s_per_step
        return {
            "recipe": self.recipe,
            "device": self.device,
            "prompts": list(self.prompts),
            "seeds": list(self.seeds),
            "dense_attention_ms_per_step": round(1000 * dense, 3),
            "configs": [dict(r.to_json(), attention_speedup=round(dense / r.attention_s_per_step, 3)
                             if r.attention_s_per_step > 0 else None) for r in self.results],
            "videos": list(self.videos),
        }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def evaluate(
    recipe,
    configs: dict[str, Config],
    prompts: list[str],
    *,
    device: str = "cpu",
    backend: str = "auto",
    video_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    pipe=None,
) -> EvalReport:
    """Generate each prompt dense and with every config (same seed), and compare.

    Args:
        recipe: the validated recipe (`compactsearch.profile.recipe.load_recipe`).
        configs: ``name -> Config``; each must fit the recipe's model and geometry (`apply` checks).
        prompts: the prompts (held-out ones, normally); prompt ``i`` runs with seed ``recipe.seed + i``.
        device: torch device of the pipeline.
        backend: kernel backend for `apply`.
        video_dir: when given, write ``<i>_dense_vs_<name>.gif`` (dense | sparse side by side) per prompt/config.
        progress: optional callback with a short label after each generation.
        pipe: an already loaded pipeline (tests); default: load the recipe's.
    """
    from compactsearch.adapters import load_pipeline

    if not configs:
        raise InputError("give at least one config to evaluate")
    if not prompts:
        raise InputError("no prompts to evaluate")
    if pipe is None:
        pipe = load_pipeline(recipe.model_id, recipe.adapter, recipe.dtype, device, recipe.offload,
                             base_dir=Path(recipe.base_dir), video=(recipe.frames, recipe.height, recipe.width))
    dense_timer = AttentionTimer()
    sparse_timers = {name: AttentionTimer() for name in configs}
    ran: dict = {}  # name -> (the config that ran, its step count)
    rows: dict[str, list[dict]] = {name: [] for name in configs}
    seeds, videos = [], []
    for i, prompt in enumerate(prompts):
        seed = recipe.seed + i
        seeds.append(seed)
        with timed_dense(pipe, recipe.adapter, dense_timer):
            dense = generate_video(pipe, recipe, prompt, seed)
        if progress is not None:
            progress(f"prompt {i} dense")
        for name, cfg in configs.items():
            timer = sparse_timers[name]
            with apply(pipe, cfg, model_id=recipe.model_id, backend=backend, timer=timer) as rt:
                sparse = generate_video(pipe, recipe, prompt, seed)
            ran[name] = (rt.config, rt.plan.n if rt.plan else None)  # retargeted to the call's grid and steps
            row = {"prompt": prompt, "seed": seed, "psnr": round(psnr(dense, sparse), 3),
                   "ssim": round(ssim(dense, sparse), 5)}
            lp = lpips_distance(dense, sparse)
            if lp is not None:
                row["lpips"] = round(lp, 5)
            rows[name].append(row)
            if video_dir is not None:
                path = write_video(Path(video_dir) / f"{i}_dense_vs_{name}.gif", side_by_side(dense, sparse))
                videos.append(str(path))
            if progress is not None:
                progress(f"prompt {i} {name}")
    results = []
    for name, cfg in configs.items():
        s = sparse_timers[name].summary()
        results.append(ConfigResult(
            name=name,
            density=float(summarize(ran[name][0], num_steps=ran[name][1])["density"] if name in ran
                          else summarize(cfg)["density"]),
            psnr=_mean([r["psnr"] for r in rows[name]]),
            ssim=_mean([r["ssim"] for r in rows[name]]),
            lpips=_mean([r.get("lpips") for r in rows[name]]),
            attention_s_per_step=s["by_mode"].get("sparse", 0.0),
            per_prompt=tuple(rows[name]),
        ))
    dense_s = dense_timer.summary()["by_mode"].get("dense", 0.0)
    return EvalReport(recipe.source or recipe.name, tuple(prompts), tuple(seeds), str(device), dense_s,
                      tuple(results), tuple(videos))
