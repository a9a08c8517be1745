"""Strict readers for parsed YAML: each checks one value and raises an InputError naming its path.

Shared by the config (`compactsearch.config`) and recipe (`compactsearch.profile.recipe`) loaders, so both give
messages of one form: ``buckets[1].layers[3].heads[7].groups[0].windows[1]: <what is wrong>``.
"""

from __future__ import annotations

import math

from compactsearch.errors import InputError

__all__ = ["fail", "tname", "mapping", "integer", "number", "string", "boolean", "choice", "lst"]


def fail(path: str, msg: str) -> InputError:
    return InputError(f"{path}: {msg}")


def tname(x) -> str:
    return "null" if x is None else type(x).__name__


def mapping(x, path: str, required: set[str], optional: set[str] = frozenset(), top: str = "config") -> dict:
    """``x`` as a mapping with exactly the allowed keys (``top`` names the document in top-level messages)."""
    if not isinstance(x, dict):
        raise fail(path or top, f"expected a mapping, got {tname(x)}")
    unknown = [k for k in x if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join(sorted(required | set(optional)))
        raise fail(f"{path}.{unknown[0]}" if path else str(unknown[0]), f"unknown key (allowed: {allowed})")
    missing = sorted(required - set(x))
    if missing:
        raise fail(path or top, f"missing required key '{missing[0]}'")
    return x


def integer(x, path: str, lo: int | None = None) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise fail(path, f"expected an integer, got {tname(x)} {x!r}")
    if lo is not None and x < lo:
        raise fail(path, f"must be >= {lo}, got {x}")
    return x


def number(x, path: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or math.isnan(x):
        raise fail(path, f"expected a number, got {tname(x)} {x!r}")
    if not lo <= x <= hi:
        raise fail(path, f"must be >= {lo}, got {x}" if hi == math.inf else f"must lie in [{lo}, {hi}], got {x}")
    return float(x)


def string(x, path: str) -> str:
    if not isinstance(x, str) or not x.strip():
        raise fail(path, f"expected a non-empty string, got {tname(x)} {x!r}")
    return x


def boolean(x, path: str) -> bool:
    if not isinstance(x, bool):
        raise fail(path, f"expected true or false, got {tname(x)} {x!r}")
    return x


def choice(x, path: str, choices: tuple[str, ...]) -> str:
    if x not in choices:
        raise fail(path, f"must be one of {', '.join(choices)}, got {x!r}")
    return x


def lst(x, path: str, n: int | None = None) -> list:
    if not isinstance(x, list):
        raise fail(path, f"expected a list, got {tname(x)}")
    if n is not None and len(x) != n:
        raise fail(path, f"expected {n} entries, got {len(x)}")
    return x
