"""Procedural training videos for the tiny model, and the prompt that describes each one.

A video is one shape on a background: ``8`` frames of ``32 x 32`` RGB pixels in ``[-1, 1]`` by default. What
varies, and the words that say it (the whole vocabulary is `VOCABULARY`):

- shape: circle, square, triangle, diamond; size: small (radius 4 px) or big (radius 7 px);
- colour: red, green, blue, yellow, white, purple, orange, cyan;
- motion (screen space): moves left / right / up / down (2-3 px per frame), bounces (a ball bouncing on the
  bottom edge), stays still;
- background: plain, striped (vertical stripes), checkered, gradient (dark to light, left to right), in black,
  gray, navy, olive or maroon (never mixed up with an object colour word);
- camera: on striped and checkered backgrounds only (where a pan is visible), ``the camera pans left`` moves the
  background right in the frame by 1-2 px per frame, ``right`` the other way.

Prompt: ``"a small red circle moves left over a striped navy background, the camera pans right"``. Every word
of a prompt is drawn from the spec, so the prompt is exactly what the video shows.

Everything is deterministic from a seed: `sample_specs(n, seed)` draws specs on the CPU with a
``torch.Generator``; `render(specs, device=...)` draws them batched with torch on any device (anti-aliased by
a one-pixel signed-distance ramp), fast enough to generate each training batch on the GPU on the fly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "MOTIONS",
    "TEXTURES",
    "BACKGROUNDS",
    "PANS",
    "VOCABULARY",
    "VideoSpec",
    "sample_specs",
    "spec_from_prompt",
    "render",
    "make_batch",
    "calibration_prompts",
    "holdout_prompts",
]

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.25),
    "blue": (0.2, 0.4, 1.0),
    "yellow": (1.0, 0.9, 0.15),
    "white": (1.0, 1.0, 1.0),
    "purple": (0.65, 0.25, 0.9),
    "orange": (1.0, 0.55, 0.05),
    "cyan": (0.15, 0.9, 0.9),
}
SIZES = {"small": 4.0, "big": 7.0}  # radius in pixels at 32 x 32 (scaled with the frame size)
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "bounces", "stays still")
TEXTURES = ("plain", "striped", "checkered", "gradient")
BACKGROUNDS = {  # darker colours with their own names, so "a blue square on a blue background" never happens
    "black": (0.04, 0.04, 0.04),
    "gray": (0.35, 0.35, 0.35),
    "navy": (0.05, 0.08, 0.35),
    "olive": (0.3, 0.32, 0.05),
    "maroon": (0.35, 0.05, 0.08),
}
PANS = ("none", "left", "right")
_PANNABLE = ("striped", "checkered")

_FIXED_WORDS = ("a", "over", "background", "the", "camera", "pans", "left", "right", "up", "down", "moves",
                "bounces", "stays", "still")
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    _FIXED_WORDS + SHAPES + tuple(COLOURS) + tuple(SIZES) + TEXTURES + tuple(BACKGROUNDS)))


@dataclass(frozen=True)
class VideoSpec:
    """Everything a video shows. Positions are fractions of the frame so a spec renders at any size.

    Attributes:
        shape, colour, size, motion, texture, background, pan: the prompt's words (see the module docstring).
        x0, y0: the shape's centre at frame 0, as fractions of width and height.
        speed: shape motion per frame as a fraction of the frame size (linear motions).
        phase: bounce phase in [0, 1).
        pan_speed: background motion per frame as a fraction of the width (camera pans).
    """

    shape: str
    colour: str
    size: str
    motion: str
    texture: str
    background: str
    pan: str
    x0: float
    y0: float
    speed: float
    phase: float
    pan_speed: float = 0.0

    def prompt(self) -> str:
        """The sentence that describes this video."""
        text = f"a {self.size} {self.colour} {self.shape} {self.motion} over a {self.texture} {self.background} " \
               "background"
        if self.pan != "none":
            text += f", the camera pans {self.pan}"
        return text

    def centres(self, frames: int) -> torch.Tensor:
        """Shape centre per frame as fractions of the frame, ``[frames, 2]`` (x, y)."""
        f = torch.arange(frames, dtype=torch.float64)
        x = torch.full_like(f, self.x0)
        y = torch.full_like(f, self.y0)
        if self.motion == "moves left":
            x = self.x0 - self.speed * f
        elif self.motion == "moves right":
            x = self.x0 + self.speed * f
        elif self.motion == "moves up":
            y = self.y0 - self.speed * f
        elif self.motion == "moves down":
            y = self.y0 + self.speed * f
        elif self.motion == "bounces":  # |sin| arc: on the floor (y0) at phase 0, up to 0.45 of the frame
            y = self.y0 - 0.45 * torch.sin(math.pi * (f / frames * 1.5 + self.phase)).abs()
        return torch.stack([x, y], dim=1)


def _choice(g: torch.Generator, items) -> object:
    items = list(items)
    return items[int(torch.randint(len(items), (1,), generator=g))]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _sample_one(g: torch.Generator, frames: int) -> VideoSpec:
    shape, colour, size = _choice(g, SHAPES), _choice(g, COLOURS), _choice(g, SIZES)
    motion, texture, background = _choice(g, MOTIONS), _choice(g, TEXTURES), _choice(g, BACKGROUNDS)
    pan = _choice(g, PANS) if texture in _PANNABLE else "none"
    r = SIZES[size] / 32.0
    speed = _uniform(g, 2.0, 3.0) / 32.0
    travel = speed * (frames - 1)
    lo, hi = r + 0.02, 1.0 - r - 0.02
    x0, y0 = _uniform(g, lo, hi), _uniform(g, lo, hi)
    if motion == "moves left":
        x0 = _uniform(g, min(lo + travel, hi), hi)
    elif motion == "moves right":
        x0 = _uniform(g, lo, max(hi - travel, lo))
    elif motion == "moves up":
        y0 = _uniform(g, min(lo + travel, hi), hi)
    elif motion == "moves down":
        y0 = _uniform(g, lo, max(hi - travel, lo))
    elif motion == "bounces":
        y0 = hi
    if motion == "stays still":
        speed = 0.0
    phase = _uniform(g, 0.0, 1.0) if motion == "bounces" else 0.0
    pan_speed = _uniform(g, 1.0, 2.0) / 32.0 if pan != "none" else 0.0
    return VideoSpec(shape, colour, size, motion, texture, background, pan, x0, y0, speed, phase, pan_speed)


def sample_specs(n: int, seed: int, frames: int = 8) -> list[VideoSpec]:
    """``n`` random specs, the same for the same seed (drawn on the CPU)."""
    g = torch.Generator().manual_seed(int(seed))
    return [_sample_one(g, frames) for _ in range(n)]


def spec_from_prompt(prompt: str, frames: int = 8) -> VideoSpec:
    """The canonical spec of a prompt in the vocabulary (centred start, middle speed); raises ValueError else.

    Used for reference videos of calibration and held-out prompts (what the prompt asks for).
    """
    words = prompt.replace(",", " ").split()
    text = " ".join(words)
    found = {}
    for key, options in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("texture", TEXTURES),
                         ("background", BACKGROUNDS)):
        hits = [o for o in options if o in words]
        if len(hits) != 1:
            raise ValueError(f"prompt {prompt!r} must name exactly one {key} ({', '.join(options)})")
        found[key] = hits[0]
    motion = next((m for m in MOTIONS if m in text), None)
    if motion is None:
        raise ValueError(f"prompt {prompt!r} names no motion ({', '.join(MOTIONS)})")
    pan = "none"
    if "camera pans" in text:
        pan = "left" if "camera pans left" in text else "right"
    speed = 2.5 / 32.0
    travel = speed * (frames - 1)
    x0 = y0 = 0.5
    if motion == "moves left":
        x0 = 0.5 + travel / 2
    elif motion == "moves right":
        x0 = 0.5 - travel / 2
    elif motion == "moves up":
        y0 = 0.5 + travel / 2
    elif motion == "moves down":
        y0 = 0.5 - travel / 2
    elif motion == "bounces":
        y0 = 1.0 - SIZES[found["size"]] / 32.0 - 0.02
    if motion == "stays still":
        speed = 0.0
    return VideoSpec(found["shape"], found["colour"], found["size"], motion, found["texture"], found["background"],
                     pan, x0, y0, speed, 0.0, 1.5 / 32.0 if pan != "none" else 0.0)


def _shape_distance(shape_ids: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of each shape, broadcast over ``[B, F, H, W]``."""
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    diamond = (dx.abs() + dy.abs() - 1.15 * r) / math.sqrt(2.0)
    # upward triangle: base at y = +0.6 r, apex at y = -r; three half-planes
    s = math.sqrt(3.0)
    tri = torch.maximum(dy - 0.6 * r, torch.maximum((s * dx - dy) / 2 - 0.55 * r, (-s * dx - dy) / 2 - 0.55 * r))
    ids = shape_ids.view(-1, 1, 1, 1)
    return torch.where(ids == 0, circle, torch.where(ids == 1, square, torch.where(ids == 2, tri, diamond)))


def render(specs: list[VideoSpec], frames: int = 8, height: int = 32, width: int = 32,
           device: torch.device | str = "cpu", return_alpha: bool = False):
    """Draw specs, batched.

    Args:
        specs: ``B`` video specs.
        frames, height, width: output size.
        device: where to draw (the training loop draws on the GPU).
        return_alpha: also return the shape's coverage ``[B, F, H, W]`` in [0, 1] (tests read it).

    Returns:
        ``[B, 3, F, H, W]`` float32 in ``[-1, 1]`` (and alpha when asked).
    """
    B = len(specs)
    dev = torch.device(device)
    scale = torch.tensor([width, height], dtype=torch.float32)
    centres = torch.stack([s.centres(frames).float() for s in specs]) * scale  # [B, F, 2] px
    centres = centres.to(dev)
    r = torch.tensor([SIZES[s.size] * min(height, width) / 32.0 for s in specs], device=dev).view(B, 1, 1, 1)
    shape_ids = torch.tensor([SHAPES.index(s.shape) for s in specs], device=dev)
    colour = torch.tensor([COLOURS[s.colour] for s in specs], device=dev).view(B, 3, 1, 1, 1)
    bg = torch.tensor([BACKGROUNDS[s.background] for s in specs], device=dev).view(B, 3, 1, 1, 1)
    tex = torch.tensor([TEXTURES.index(s.texture) for s in specs], device=dev).view(B, 1, 1, 1)
    pan_px = torch.tensor([(1.0 if s.pan == "left" else -1.0 if s.pan == "right" else 0.0) * s.pan_speed * width
                           for s in specs], device=dev).view(B, 1, 1, 1)

    ys = torch.arange(height, device=dev, dtype=torch.float32).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=dev, dtype=torch.float32).view(1, 1, 1, width) + 0.5
    f = torch.arange(frames, device=dev, dtype=torch.float32).view(1, frames, 1, 1)

    # background: texture coordinates move with the camera (pan left -> content moves right)
    u = xs - pan_px * f  # [B, F, 1, W]
    period = max(2, round(8 * width / 32))
    stripes = (torch.floor(u / (period / 2)) % 2).expand(B, frames, height, width)
    checks = ((torch.floor(u / (period / 2)) + torch.floor(ys / (period / 2))) % 2).expand(B, frames, height, width)
    ramp = (xs / width).expand(B, frames, height, width)
    plain = torch.zeros(B, frames, height, width, device=dev)
    light = torch.where(tex == 1, stripes, torch.where(tex == 2, checks, torch.where(tex == 3, ramp, plain)))
    light = light.unsqueeze(1)  # [B, 1, F, H, W]: 0 -> the background colour, 1 -> a lighter tint of it
    background = bg + light * (0.45 * (1.0 - bg))

    dx = xs - centres[..., 0].view(B, frames, 1, 1)
    dy = ys - centres[..., 1].view(B, frames, 1, 1)
    alpha = (0.5 - _shape_distance(shape_ids, dx, dy, r)).clamp(0.0, 1.0)  # [B, F, H, W]
    video = background * (1 - alpha.unsqueeze(1)) + colour * alpha.unsqueeze(1)
    video = video * 2.0 - 1.0
    return (video, alpha) if return_alpha else video


def make_batch(batch: int, seed: int, frames: int = 8, height: int = 32, width: int = 32,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[str]]:
    """A training batch: ``([B, 3, F, H, W]`` videos in [-1, 1], their ``B`` prompts), deterministic in ``seed``."""
    specs = sample_specs(batch, seed, frames)
    return render(specs, frames, height, width, device), [s.prompt() for s in specs]


def calibration_prompts() -> list[str]:
    """Prompts the tiny recipe profiles on: every shape, motion, texture and both pans at least once."""
    return [
        "a big red circle moves right over a striped navy background",
        "a small yellow square moves left over a plain black background",
        "a big green triangle bounces over a checkered gray background, the camera pans left",
        "a small white diamond moves down over a gradient maroon background",
        "a big cyan square moves up over a striped olive background, the camera pans right",
        "a small orange circle stays still over a checkered navy background",
    ]


def holdout_prompts() -> list[str]:
    """Prompts kept out of the profile, for `compactsearch evaluate` (other combinations of the same words)."""
    return [
        "a big blue diamond moves left over a checkered maroon background",
        "a small purple triangle moves up over a gradient gray background",
        "a big yellow circle bounces over a striped black background, the camera pans right",
        "a small green square moves right over a plain olive background",
    ]
