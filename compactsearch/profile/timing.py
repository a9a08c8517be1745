"""Where `profile` spends its time: a section timer and the breakdown table it prints.

`SectionTimer.section(name)` brackets GPU work with CUDA events (recorded without synchronising, read once at
the end, so timing does not slow the loop down) and CPU work with ``time.perf_counter``; `SectionTimer.add`
records host-measured seconds (loading, writes, whole prompts). `breakdown` turns the sums into the rows of
the table: load, then inside the prompts attention (every self-attention call), block mass, value statistics
(the value blocks' Gram matrices), tile order (permutations), samples and the rest of the model, then the
value factors (each head's top Gram eigenvectors, per prompt), writes (prompt files, the merged profile) and
anything else; and the start-up estimate (the first prompt's extra time over the later ones: Triton compiling, cuDNN
planning, allocator warm-up).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch

__all__ = ["SectionTimer", "breakdown", "SECTIONS"]

# the sections measured inside a prompt (the capture sink's), in table order
INNER = ("attention", "block mass", "value statistics", "tile order", "samples")
SECTIONS = ("load", *INNER, "model (rest)", "value factors", "writes", "other")


class SectionTimer:
    """Accumulated wall time per named section (see the module docstring)."""

    def __init__(self) -> None:
        self._events: dict[str, list] = {}
        self._host: dict[str, float] = {}
        self.prompt_seconds: list[float] = []

    @contextlib.contextmanager
    def section(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        """Time the block; CUDA events when ``device`` is a CUDA device, else the host clock."""
        if device is not None and device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self._host[name] = self._host.get(name, 0.0) + float(seconds)

    def totals(self) -> dict[str, float]:
        """Seconds per section (synchronises CUDA once when events were recorded)."""
        out = dict(self._host)
        if self._events:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                out[name] = out.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
            self._host.update({k: v for k, v in out.items() if k in self._events})
            self._events = {}
        return out


def breakdown(timer: SectionTimer, total_seconds: float) -> dict:
    """The timing table of one profile run.

    Returns:
        ``{"rows": [{"section", "seconds", "share"}], "total", "prompts", "per_prompt", "startup"}``:
        ``per_prompt`` the median prompt's wall time after the first (the first alone when there is one),
        ``startup`` the load time plus the first prompt's extra time over that median.
    """
    t = timer.totals()
    prompts = timer.prompt_seconds
    in_prompts = sum(prompts)
    rows = [("load", t.get("load", 0.0))]
    rows += [(name, t.get(name, 0.0)) for name in INNER]
    rows.append(("model (rest)", max(0.0, in_prompts - sum(t.get(name, 0.0) for name in INNER))))
    rows.append(("value factors", t.get("value factors", 0.0)))
    rows.append(("writes", t.get("writes", 0.0)))
    accounted = sum(s for _, s in rows)
    rows.append(("other", max(0.0, total_seconds - accounted)))
    later = prompts[1:]
    per_prompt = statistics.median(later) if later else (prompts[0] if prompts else 0.0)
    first_extra = max(0.0, prompts[0] - per_prompt) if later else 0.0
    return {
        "rows": [{"section": n, "seconds": round(s, 3), "share": round(s / total_seconds, 4) if total_seconds else 0.0}
                 for n, s in rows],
        "total": round(total_seconds, 3),
        "prompts": len(prompts),
        "per_prompt": round(per_prompt, 3),
        "startup": round(t.get("load", 0.0) + first_extra, 3),
    }
