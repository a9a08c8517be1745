"""Small file helpers: atomic writes, YAML reading with one-line errors, hashing."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from compactsearch.errors import InputError

__all__ = ["atomic_write_text", "atomic_write_with", "atomic_dir", "read_text", "read_yaml", "sha256_file",
           "dump_yaml", "check_output", "os_error_hint"]

# What an OSError means for the user, by errno (the CLI's failure mapping uses the same table).
_ERRNO_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; write somewhere you may write, or fix the permissions",
    errno.EPERM: "operation not permitted; write somewhere you may write, or fix the permissions",
    errno.ENAMETOOLONG: "the path or a name in it is too long; choose a shorter one",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; fix the path",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "it already exists",
    errno.EIO: "input/output error from the device",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
}
TEMP_NAME_EXTRA = 40  # temp names add a prefix and a suffix to the output's name: leave room for them
MIN_FREE_BYTES = 64 * 1024


def os_error_hint(code: int | None, fallback: str = "") -> str:
    """A short explanation of errno ``code`` with what to do, or ``fallback``."""
    return _ERRNO_HINTS.get(code, fallback or (os.strerror(code) if code else "file system error"))


def check_output(path: Path, what: str, kind: str = "file", min_free: int = MIN_FREE_BYTES) -> None:
    """Check before any compute that ``path`` can be written as a ``kind`` (``"file"`` or ``"dir"``).

    Refuses (`InputError`, naming ``what`` and the path): an existing path of the other kind, a path under a
    file, a name or path too long for the file system (temp names included), a directory where nothing can be
    created (read-only, no permission: a probe file is created and removed), a device with less than
    ``min_free`` bytes free. Creates nothing that stays.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if kind == "file" and path.is_dir():
            raise InputError(f"{what} {path} is a directory; give a file path")
        if kind == "dir" and not path.is_dir():
            raise InputError(f"{what} {path} is a file; give a directory path")
    anc = path.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(f"{what} {path}: {anc} is a file, not a directory; fix the path")
    try:
        name_max = os.pathconf(anc, "PC_NAME_MAX")
        path_max = os.pathconf(anc, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.absolute().parts:
        if len(os.fsencode(part)) + TEMP_NAME_EXTRA > name_max:
            raise InputError(f"{what} {path}: the name {part[:32]!r}... is too long ({len(os.fsencode(part))} bytes; "
                             f"at most {name_max - TEMP_NAME_EXTRA} here); choose a shorter one")
    if len(os.fsencode(str(path.absolute()))) + TEMP_NAME_EXTRA > path_max:
        raise InputError(f"{what} {path}: the path is too long (at most {path_max - TEMP_NAME_EXTRA} bytes here)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".compactsearch-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{what} {path} cannot be written in {anc}: {os_error_hint(e.errno, str(e))}") from e
    free = shutil.disk_usage(anc).free
    if free < min_free:
        raise InputError(f"{what} {path}: only {free} bytes free on the device of {anc}; "
                         f"{os_error_hint(errno.ENOSPC)}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory and a rename."""
    atomic_write_with(path, lambda tmp: tmp.write_text(text))


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class atomic_dir:
    """Context manager: build a directory under a temp name, then swap it into place on success."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old.exists():
            shutil.rmtree(old)


MAX_YAML_BYTES = 256 * 10**6  # the largest config (many layers, heads and buckets) is a few MB


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: a small document of nested aliases (a "billion laughs")
    expands to gigabytes once printed or hashed, and no compactsearch file needs them."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not accepted; "
                                              "write the values out", event.start_mark)
        return super().compose_node(parent, index)


def read_text(path: Path, what: str, expected: str, max_bytes: int | None = None) -> str:
    """The text of a file the user named, or an InputError naming it (``what``) and the fix: missing, a
    directory (``expected`` says what to give instead), larger than ``max_bytes``, unreadable or not text."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; give {expected}")
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise InputError(f"{what} {path} is {size / 1e6:.0f} MB, above the {max_bytes // 10**6} MB this tool "
                             "reads; is it the right file?")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} cannot be read as text: {e}") from e


def read_yaml(path: Path, what: str):
    """Parse a YAML file, turning every failure into an InputError naming the file and the fix."""
    path = Path(path)
    text = read_text(path, what, "the YAML file", MAX_YAML_BYTES)
    if not text.strip():
        raise InputError(f"{what} {path} is empty")
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise InputError(f"{what} {path} is not valid YAML{where}: {problem}") from e
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must hold a YAML mapping at the top, got {type(data).__name__}")
    return data


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list):
    # Short lists of scalars (windows, ranges, tiles) read best on one line.
    flow = len(data) <= 8 and all(isinstance(x, (int, float, str, bool)) or x is None for x in data)
    flow = flow or (len(data) <= 4 and all(isinstance(x, list) and len(x) <= 4 for x in data))
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def dump_yaml(data) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
