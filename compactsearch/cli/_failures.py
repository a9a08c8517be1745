"""The one mapping of failures to a one-line message and an exit code, used by `compactsearch.cli.main`.

Exit codes (the CLI contract):

- 0: success;
- 1: a check ran and failed (`CheckFailed`; `validate` also reports a check that could not run as failed);
- 2: bad input or an expected failure of the environment, with one ``error:`` line naming what to fix: typed
  errors (`CompactSearchError`), file-system errors (`OSError`: read-only, full disk, a path that is a
  directory or sits under a file, a name too long, no permission), safetensors files that cannot be read or
  written, the Optuna storage (SQLite or a server) failing, a diffusers pipeline refusing the recipe's
  arguments, running out of memory;
- 3: an unexpected error (a bug): one ``internal error:`` line that says to re-run with ``--debug`` for the
  traceback;
- 130: interrupted.

Domain code raises typed errors where it knows the fix; everything else that is expected is recognised here,
by type (and, for library errors that carry no type of their own, by the module that raised them), not by
try/except blocks in each command.
"""

from __future__ import annotations

import os
import re
import traceback

from compactsearch._io import os_error_hint
from compactsearch.errors import CompactSearchError

__all__ = ["describe", "EXIT_INTERNAL"]

EXIT_INTERNAL = 3



def _chain(exc: BaseException):
    """``exc`` and its causes/contexts, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short(path: str, n: int = 120) -> str:
    return path if len(path) <= n else path[: n // 2] + "..." + path[-n // 2 + 3:]


def _os_error(e: OSError) -> str:
    hint = os_error_hint(e.errno, e.strerror or _first_line(e))
    names = [x for x in (e.filename, e.filename2) if x is not None]
    where = " -> ".join(_short(os.fsdecode(x)) for x in names)
    return f"{where}: {hint}" if where else hint


def _module_of_raise(exc: BaseException) -> str:
    """The file that raised ``exc`` (last traceback frame), or ''."""
    tb = traceback.extract_tb(exc.__traceback__)
    return tb[-1].filename if tb else ""


def _type_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def describe(exc: BaseException) -> tuple[str, int]:
    """``(one line without the 'error:' prefix, exit code)`` for an exception reaching the CLI."""
    if isinstance(exc, CompactSearchError):
        return _first_line(exc), exc.exit_code
    for e in _chain(exc):
        names = _type_names(e)
        if isinstance(e, OSError) and e.errno is not None:
            return _os_error(e), 2
        if "safetensors_rust.SafetensorError" in names or type(e).__name__ == "SafetensorError":
            m = re.search(r"(?:code: |os error )(\d+)", str(e))
            if m:
                return f"writing or reading a safetensors file failed: {os_error_hint(int(m.group(1)))}", 2
            return f"a safetensors file cannot be read or written: {_first_line(e)}", 2
        if any(n.startswith(("sqlalchemy.exc.", "sqlite3.")) for n in names) or \
                "optuna.exceptions.StorageInternalError" in names:
            msg = _first_line(e)
            if "StorageInternalError" in type(e).__name__ and e.__cause__ is not None:
                continue  # the database's own message is more useful: it is further down the chain
            return (f"the Optuna storage failed: {msg}; check that its file or server is writable and has space "
                    "(see --storage)"), 2
        if isinstance(e, MemoryError) or "torch.OutOfMemoryError" in names:
            return ("out of memory: lower the sizes (video.frames/height/width, geometry) or use a machine with "
                    "more memory; see the memory limit in README.md"), 2
    if isinstance(exc, ValueError) and f"{os.sep}diffusers{os.sep}" in _module_of_raise(exc):
        return (f"the diffusers pipeline rejected the recipe: {_first_line(exc)}; fix video/sampling in the recipe"), 2
    return (f"internal error: {type(exc).__name__}: {_first_line(exc)} (a bug; run `compactsearch --debug ...` for "
            "the traceback and report it)"), EXIT_INTERNAL
