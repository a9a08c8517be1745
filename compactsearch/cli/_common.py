"""Shared CLI pieces: the stderr console, option aliases, and the JSON printer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["console", "state", "print_json", "ConfigArg", "JsonOpt", "existing_file"]

# Progress, tables and logs go to stderr; results (--json) to stdout.
console = Console(stderr=True, highlight=False)


class _State:
    debug: bool = False


state = _State()

ConfigArg = Annotated[Path, typer.Argument(help="A compactsearch/v1 config YAML.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON object with the results on stdout.")]


def print_json(obj) -> None:
    try:
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
    except OSError as e:  # name the file for the error line (a full disk under `> out.json`)
        raise OSError(e.errno, e.strerror, "stdout") from e


def existing_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise an InputError saying it is missing."""
    from compactsearch.errors import InputError

    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; give the file")
    return path
