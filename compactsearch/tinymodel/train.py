"""Train the tiny video DiT and its text encoder jointly with flow matching, time-boxed and seeded.

    python -m compactsearch.tinymodel.train --device cuda --minutes 15 --out DIR

Writes to ``DIR``: ``tiny-wan.safetensors`` (EMA weights in bfloat16, both modules, configs in the metadata;
copy it to ``compactsearch/tinymodel/weights/``), ``train_log.json`` (settings, step count, loss curve,
timings, weights size and SHA-256), ``samples.png`` (one row per prompt: calibration then held-out prompts,
frames left to right, sampled from the EMA weights) and ``checkpoint.pt`` (for ``--resume``; delete it after).

Recipe (see docs/tiny-model.md for why): every step draws a fresh batch of procedural videos on the device
(`data.make_batch`, seeded by ``seed`` and the step), ``sigma`` from a logit-normal, ``x_t = (1 - sigma) x0 +
sigma noise``, and regresses the velocity ``noise - x0`` (the convention of `FlowMatchEulerDiscreteScheduler`,
timestep ``1000 sigma``). 10% of the prompts are dropped to the empty prompt (for classifier-free guidance).
AdamW (betas 0.9/0.99, weight decay 0.01), linear warm-up then cosine decay to 10% over the time box (or over
``--max-steps``), gradient clipping at 1, bf16 autocast on CUDA, EMA 0.999.

Reproducibility: data, noise and initialisation depend only on ``--seed`` and the step, so a run with
``--max-steps N`` replays the same batches; a time-boxed run stops at a step count that depends on the GPU's
speed (recorded in the log; rerun with ``--max-steps`` to reproduce it, modulo GPU non-determinism).
Resumable: a checkpoint is written every ``--checkpoint-minutes``; ``--resume`` continues from it, counting the
time already spent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from compactsearch._io import atomic_write_text, atomic_write_with
from compactsearch.errors import InputError
from compactsearch.tinymodel.data import calibration_prompts, holdout_prompts, render, sample_specs
from compactsearch.tinymodel.model import (
    TINY_WAN_CONFIG,
    TinyModelSpec,
    build_pipeline,
    build_transformer,
    save_weights,
)
from compactsearch.tinymodel.text import PAD, TextEncoderConfig, TinyTextEncoder, WordTokenizer

__all__ = ["TrainSettings", "TrainResult", "train", "sample_grid", "main"]

WEIGHTS_NAME = "tiny-wan.safetensors"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run (written into the log)."""

    out: Path
    device: str = "cuda"
    minutes: float = 15.0
    max_steps: int | None = None
    batch: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    ema: float = 0.999
    cfg_dropout: float = 0.1
    shape_weight: float = 4.0
    seed: int = 0
    frames: int = 8
    height: int = 32
    width: int = 32
    layers: int = TINY_WAN_CONFIG["num_layers"]
    heads: int = TINY_WAN_CONFIG["num_attention_heads"]
    shift: float = 1.0
    log_every: int = 50
    checkpoint_minutes: float = 2.0
    sample_steps: int = 16
    sample_guidance: float = 4.0
    resume: bool = False
    compile: bool = False

    def transformer_config(self) -> dict:
        return dict(TINY_WAN_CONFIG, num_layers=self.layers, num_attention_heads=self.heads)

    def check(self) -> None:
        if self.minutes <= 0 and self.max_steps is None:
            raise InputError("--minutes must be > 0 (or give --max-steps)")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.shape_weight < 0:
            raise InputError(f"--shape-weight must be >= 0, got {self.shape_weight}")
        if self.batch < 1:
            raise InputError(f"--batch must be >= 1, got {self.batch}")
        if self.height % 2 or self.width % 2:
            raise InputError(f"--height and --width must be even (patch 2), got {self.height}x{self.width}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {self.device}: CUDA is not available here; use --device cpu")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


@dataclass(frozen=True)
class TrainResult:
    """What a run did: steps, seconds, first and last logged loss, the files written."""

    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    weights: Path
    weights_bytes: int
    log: Path
    samples: Path | None
    losses: list = field(default_factory=list)


def _lr_factor(s: TrainSettings, step: int, frac: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from 1 to 0.1 over the run's fraction ``frac``."""
    warm = min(1.0, (step + 1) / max(1, s.warmup_steps))
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**62)


def _batch(s: TrainSettings, tokenizer: WordTokenizer, step: int, device: torch.device):
    """Videos ``[B, 3, F, H, W]``, ids/mask ``[B, L]``, sigma ``[B]``, noise like the videos, per-pixel loss
    weights ``[B, 1, F, H, W]`` (``1 + shape_weight * alpha``); seeded by step."""
    seed = _step_seed(s.seed, step)
    specs = sample_specs(s.batch, seed, s.frames)
    videos, alpha = render(specs, s.frames, s.height, s.width, device, return_alpha=True)
    prompts = [sp.prompt() for sp in specs]
    weight = 1.0 + s.shape_weight * alpha.unsqueeze(1)
    ids, mask = tokenizer(prompts)
    g = torch.Generator().manual_seed(seed)
    drop = torch.rand(s.batch, generator=g) < s.cfg_dropout
    ids[drop] = PAD
    mask[drop] = False
    sigma = torch.sigmoid(torch.randn(s.batch, generator=g))
    noise = torch.randn(videos.shape, generator=g)
    return videos, ids.to(device), mask.to(device), sigma.to(device), noise.to(device), weight


def _loss(transformer, text_encoder, videos, ids, mask, sigma, noise, weight, autocast: bool) -> torch.Tensor:
    """Velocity MSE, weighted per pixel: the shape covers ~5% of a frame, and an unweighted loss learns the
    background long before it learns to draw the prompted shape (seen in a 3-minute trial)."""
    x_t = (1.0 - sigma.view(-1, 1, 1, 1, 1)) * videos + sigma.view(-1, 1, 1, 1, 1) * noise
    target = noise - videos
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        states = text_encoder(ids, mask)
        pred = transformer(hidden_states=x_t, timestep=sigma * 1000.0, encoder_hidden_states=states,
                           return_dict=False)[0]
    return ((pred.float() - target).square() * weight).sum() / (weight.sum() * target.shape[1])


def sample_grid(pipe, prompts: list[str], path: Path, frames: int, height: int, width: int, steps: int,
                guidance: float, seed: int = 0, scale: int = 3) -> Path:
    """Sample one video per prompt (seed ``seed + i``) and save a PNG: rows = prompts, columns = frames."""
    from PIL import Image

    rows = []
    for i, p in enumerate(prompts):
        g = torch.Generator().manual_seed(seed + i)
        video = pipe(p, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                     guidance_scale=guidance, generator=g, output_type="pt").frames[0]  # [F, 3, H, W]
        rows.append(torch.cat(list(video.float().cpu()), dim=2))  # [3, H, F*W]
    grid = (torch.cat(rows, dim=1).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_write_with(Path(path), lambda tmp: img.save(tmp, format="PNG"))
    return Path(path)


def _checkpoint(path: Path, step: int, seconds: float, modules: dict, opt, ema: dict, losses: list) -> None:
    state = {"step": step, "seconds": seconds, "losses": losses, "optimizer": opt.state_dict(),
             "ema": {k: v.cpu() for k, v in ema.items()},
             "modules": {n: m.state_dict() for n, m in modules.items()}}
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def train(s: TrainSettings, progress=None) -> TrainResult:
    """Run the training loop and write the outputs (see the module docstring).

    Args:
        s: the settings.
        progress: optional ``progress(step, loss, seconds)`` callback, called every ``log_every`` steps.
    """
    s.check()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(s.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    transformer = build_transformer(s.transformer_config(), seed=s.seed).to(device).train()
    torch.manual_seed(s.seed + 1)
    text_cfg = TextEncoderConfig(dim=int(transformer.config.text_dim))
    text_encoder = TinyTextEncoder(text_cfg).to(device).train()
    tokenizer = WordTokenizer(max_length=text_cfg.max_length)
    modules = {"transformer": transformer, "text_encoder": text_encoder}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    ema = {f"{n}.{k}": v.detach().clone().float() for n, m in modules.items() for k, v in m.state_dict().items()}

    ckpt = out / "checkpoint.pt"
    step, spent, losses = 0, 0.0, []
    if s.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        for n, m in modules.items():
            m.load_state_dict(state["modules"][n])
        opt.load_state_dict(state["optimizer"])
        ema = {k: v.to(device) for k, v in state["ema"].items()}
        step, spent, losses = state["step"], state["seconds"], state["losses"]
    forward = torch.compile(transformer) if s.compile else transformer
    compiled = s.compile

    budget = s.minutes * 60.0
    t0 = time.perf_counter()
    last_ckpt = t0
    first_loss = losses[0][1] if losses else None
    loss_value = float("nan")
    while True:
        now = time.perf_counter()
        elapsed = spent + (now - t0)
        if s.max_steps is not None and step >= s.max_steps:
            break
        if s.max_steps is None and elapsed >= budget:
            break
        frac = step / s.max_steps if s.max_steps is not None else elapsed / budget
        for group in opt.param_groups:
            group["lr"] = s.lr * _lr_factor(s, step, frac)
        videos, ids, mask, sigma, noise, weight = _batch(s, tokenizer, step, device)
        try:
            loss = _loss(forward, text_encoder, videos, ids, mask, sigma, noise, weight, autocast=cuda)
        except Exception as e:  # torch.compile failures surface at the first call: train eagerly instead
            if forward is transformer:
                raise
            print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "training eagerly", file=sys.stderr, flush=True)
            forward = transformer
            compiled = False
            loss = _loss(forward, text_encoder, videos, ids, mask, sigma, noise, weight, autocast=cuda)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for n, m in modules.items():
                for k, v in m.state_dict().items():
                    e = ema[f"{n}.{k}"]
                    if v.dtype.is_floating_point:
                        e.lerp_(v.float(), 1.0 - s.ema)
                    else:
                        e.copy_(v)
        step += 1
        if step == 1 or step % s.log_every == 0 or (s.max_steps is not None and step == s.max_steps):
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise RuntimeError(f"the loss is {loss_value} at step {step}; lower --lr")
            first_loss = loss_value if first_loss is None else first_loss
            losses.append([step, round(loss_value, 6), round(spent + time.perf_counter() - t0, 2)])
            if progress is not None:
                progress(step, loss_value, spent + time.perf_counter() - t0)
        if time.perf_counter() - last_ckpt > s.checkpoint_minutes * 60.0:
            _checkpoint(ckpt, step, spent + time.perf_counter() - t0, modules, opt, ema, losses)
            last_ckpt = time.perf_counter()
    seconds = spent + time.perf_counter() - t0
    if step == 0:
        raise InputError("no training step ran: raise --minutes or --max-steps")
    _checkpoint(ckpt, step, seconds, modules, opt, ema, losses)

    # the shipped weights are the EMA
    with torch.no_grad():
        for n, m in modules.items():
            m.load_state_dict({k: ema[f"{n}.{k}"].to(v.dtype) for k, v in m.state_dict().items()})
    spec = TinyModelSpec(s.transformer_config(), text_cfg, s.frames, s.height, s.width, s.shift)
    weights = out / WEIGHTS_NAME
    nbytes = save_weights(weights, transformer, text_encoder, spec,
                          extra_meta={"steps": str(step), "seed": str(s.seed)})
    prompts = calibration_prompts() + holdout_prompts()
    samples = None
    if s.sample_steps > 0:
        pipe = build_pipeline(transformer.eval(), text_encoder.eval(), shift=s.shift)
        samples = sample_grid(pipe, prompts, out / "samples.png", s.frames, s.height, s.width, s.sample_steps,
                              s.sample_guidance, seed=s.seed)
    log = {
        "settings": s.to_dict(),
        "steps": step,
        "compiled": compiled,
        "train_seconds": round(seconds, 2),
        "samples_per_second": round(step * s.batch / max(seconds, 1e-9), 1),
        "loss_first": first_loss,
        "loss_last": loss_value if math.isfinite(loss_value) else (losses[-1][1] if losses else None),
        "losses": losses,
        "weights": {"file": WEIGHTS_NAME, "bytes": nbytes,
                    "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "dtype": "bfloat16"},
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in modules.items()},
        "sample_prompts": prompts if samples is not None else [],
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"},
    }
    import diffusers

    log["environment"]["diffusers"] = diffusers.__version__
    log_path = out / "train_log.json"
    atomic_write_text(log_path, json.dumps(log, indent=2) + "\n")
    return TrainResult(step, seconds, first_loss, log["loss_last"], weights, nbytes, log_path, samples, losses)


def _parser() -> argparse.ArgumentParser:
    d = TrainSettings(out=Path("."))
    p = argparse.ArgumentParser(prog="python -m compactsearch.tinymodel.train",
                                description="Train the tiny video DiT (flow matching, procedural videos).")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--device", default=d.device, help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="time box of the training loop")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (overrides the time box)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--shape-weight", type=float, default=d.shape_weight,
                   help="extra loss weight on the shape's pixels (loss weight 1 + w * coverage)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="0: no sample grid")
    p.add_argument("--sample-guidance", type=float, default=d.sample_guidance)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 with a one-line error on bad input)."""
    a = _parser().parse_args(argv)
    s = TrainSettings(out=a.out, device=a.device, minutes=a.minutes, max_steps=a.max_steps, batch=a.batch, lr=a.lr,
                      shape_weight=a.shape_weight,
                      seed=a.seed, layers=a.layers, heads=a.heads, frames=a.frames, height=a.height, width=a.width,
                      warmup_steps=a.warmup_steps, log_every=a.log_every, checkpoint_minutes=a.checkpoint_minutes,
                      sample_steps=a.sample_steps, sample_guidance=a.sample_guidance, resume=a.resume,
                      compile=a.compile)

    def report(step: int, loss: float, seconds: float) -> None:
        print(f"step {step:6d}  loss {loss:.4f}  {seconds:7.1f} s", file=sys.stderr, flush=True)

    try:
        r = train(s, progress=report)
    except InputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps({"steps": r.steps, "seconds": round(r.seconds, 1), "loss_first": r.loss_first,
                      "loss_last": r.loss_last, "weights": str(r.weights), "weights_bytes": r.weights_bytes,
                      "log": str(r.log), "samples": str(r.samples) if r.samples else None}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
