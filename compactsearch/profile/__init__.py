"""Profiles: block attention mass per (step bucket, layer, head) and its statistics."""

from __future__ import annotations

from compactsearch.profile.stats import LABELS, head_stats
from compactsearch.profile.store import PROFILE_FORMAT, Profile

__all__ = ["Profile", "PROFILE_FORMAT", "head_stats", "LABELS"]
