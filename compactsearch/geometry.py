"""Video geometry: the latent token grid of one self-attention call and where its text tokens sit.

A self-attention sequence is ``[text?][video][text?]``. Video tokens are flattened frame-major, row-major
(``idx = t*H*W + h*W + w``) as every diffusers video DiT does. Text is absent (Wan, LTX), in front
(CogVideoX, 226 tokens) or at the back (HunyuanVideo, 256; Mochi, variable).
"""

from __future__ import annotations

from dataclasses import dataclass

from compactsearch import _schema
from compactsearch.errors import InputError
from compactsearch.limits import check_caps

__all__ = ["VideoGeometry", "TEXT_POSITIONS", "geometry_from_yaml"]

TEXT_POSITIONS = ("none", "front", "back")


@dataclass(frozen=True)
class VideoGeometry:
    """Token grid ``(frames, height, width)`` plus text tokens.

    Args:
        frames: latent frames after temporal patching (T').
        height: token rows after spatial patching (H').
        width: token columns after spatial patching (W').
        text_tokens: number of text tokens in the self-attention sequence (0 when none).
        text_position: ``"none"``, ``"front"`` or ``"back"``.
    """

    frames: int
    height: int
    width: int
    text_tokens: int = 0
    text_position: str = "none"

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"geometry.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.text_tokens, int) or self.text_tokens < 0:
            raise InputError(f"geometry.text_tokens must be a non-negative integer, got {self.text_tokens!r}")
        if self.text_position not in TEXT_POSITIONS:
            raise InputError(
                f"geometry.text_position must be one of {', '.join(TEXT_POSITIONS)}, got {self.text_position!r}"
            )
        if (self.text_tokens == 0) != (self.text_position == "none"):
            raise InputError(
                "geometry: text_position must be 'none' exactly when text_tokens is 0 "
                f"(got text_tokens={self.text_tokens}, text_position={self.text_position!r})"
            )

    @property
    def thw(self) -> tuple[int, int, int]:
        """The video grid as a triple ``(frames, height, width)``."""
        return (self.frames, self.height, self.width)

    @property
    def video_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def seq_len(self) -> int:
        """Total self-attention sequence length, text included."""
        return self.video_tokens + self.text_tokens

    @property
    def video_offset(self) -> int:
        """Index of the first video token in the model's sequence."""
        return self.text_tokens if self.text_position == "front" else 0

    def describe(self) -> str:
        text = "" if self.text_tokens == 0 else f" + {self.text_tokens} text ({self.text_position})"
        return f"{self.frames}x{self.height}x{self.width}{text} = {self.seq_len} tokens"

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "text_tokens": self.text_tokens,
            "text_position": self.text_position,
        }


def geometry_from_yaml(g: dict, path: str = "geometry") -> VideoGeometry:
    """The `VideoGeometry` of a ``geometry:`` mapping whose keys the caller has checked (``frames``, ``height``,
    ``width``, optional ``text_tokens`` and ``text_position``): integers read with their path, sizes within the
    caps (`compactsearch.limits`), then the dataclass's own rules. The one reader of a geometry in a file
    (configs, profiles)."""
    sizes = {k: _schema.integer(g[k], f"{path}.{k}", 1) for k in ("frames", "height", "width")}
    sizes["text_tokens"] = _schema.integer(g.get("text_tokens", 0), f"{path}.text_tokens", 0)
    check_caps(sizes, path)
    text_position = g.get("text_position", "none")
    if text_position not in TEXT_POSITIONS:
        raise _schema.fail(f"{path}.text_position", f"must be one of {', '.join(TEXT_POSITIONS)}, got "
                           f"{text_position!r}")
    return VideoGeometry(sizes["frames"], sizes["height"], sizes["width"], sizes["text_tokens"], text_position)
