"""Progress on stderr: Rich bars on a terminal, plain lines elsewhere (CI logs, files), so a long run shows how far
it is wherever its stderr goes."""

from __future__ import annotations

import sys
import threading
import time

from compactsearch.cli._common import console

__all__ = ["progress_display", "LineProgress"]


def progress_display(name: str, *columns, **kwargs):
    """Rich progress bars on a terminal; elsewhere (a CI log, a file) the same progress as plain lines
    (`LineProgress`). Both take the subset of `rich.progress.Progress`'s API the commands use."""
    if console.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=console, **kwargs)  # a quiet console (a --parallel rank > 0) shows none
    return LineProgress(name, quiet=console.quiet)


class LineProgress:
    """Progress as plain lines on stderr: one when the first task passes another 10% of its total, at least one
    every `every_s` seconds while anything runs, and one at the end. A line reads
    ``search: 12/40 (30%) heads | 1m05s``."""

    def __init__(self, name: str, every_s: float = 30.0, stream=None, quiet: bool = False):
        self.name, self.every_s, self.stream, self.quiet = name, every_s, stream, quiet
        self.tasks: list[dict] = []
        self.t0 = self.last = time.monotonic()
        self.decile = -1
        self.dirty = False
        self._lock = threading.Lock()

    def __enter__(self) -> LineProgress:
        self.t0 = self.last = time.monotonic()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="compactsearch-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)
        if exc_type is None and self.dirty:
            self._emit()

    def _tick(self) -> None:
        """A line every `every_s` seconds even when nothing reports (a long step, a long unit of heads)."""
        while not self._stop.wait(max(0.05, self.every_s - (time.monotonic() - self.last))):
            if self.tasks and time.monotonic() - self.last >= self.every_s:
                self._emit()

    def add_task(self, description: str = "", total: float | None = None, **_) -> int:
        self.tasks.append({"description": description, "total": total, "completed": 0.0})
        return len(self.tasks) - 1

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               advance: float | None = None, description: str | None = None, **_) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if description is not None:
            t["description"] = description
        self.dirty = True
        self._maybe_emit()

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def reset(self, task: int, total: float | None = None, **_) -> None:
        self.update(task, completed=0, total=total)

    def _maybe_emit(self) -> None:
        first = self.tasks[0] if self.tasks else None
        decile = -1
        if first is not None and first["total"]:
            decile = int(10 * min(first["completed"] / first["total"], 1.0))
        now = time.monotonic()
        if decile > self.decile or now - self.last >= self.every_s:
            self.decile = max(decile, self.decile)
            self._emit()

    def _emit(self) -> None:
        with self._lock:
            self._emit_locked()

    def _emit_locked(self) -> None:
        if self.quiet:
            self.dirty = False
            return
        parts = []
        for t in self.tasks:
            done, total = t["completed"], t["total"]
            count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
            parts.append(f"{count} {t['description']}".strip())
        s = int(time.monotonic() - self.t0)
        elapsed = f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
        stream = self.stream or sys.stderr
        stream.write(f"{self.name}: {' | '.join(parts)} | {elapsed}\n")
        stream.flush()
        self.last = time.monotonic()
        self.dirty = False
