"""Typed errors. Domain code raises these; the CLI maps them to one-line messages and exit codes.

`InputError` (exit 2) is bad input the user can fix; `CheckFailed` (exit 1) is a check that ran and failed.
"""

from __future__ import annotations

__all__ = ["CompactSearchError", "InputError", "CheckFailed", "lookup"]


class CompactSearchError(Exception):
    """Base class; `exit_code` tells the CLI how to exit."""

    exit_code = 2


class InputError(CompactSearchError, ValueError):
    """Bad input: a file, a value or a combination the user must change. Exit code 2."""

    exit_code = 2


class CheckFailed(CompactSearchError):
    """A check ran and failed (numerics, density over budget, ...). Exit code 1."""

    exit_code = 1


def lookup(table: dict, name, what: str, plural: str | None = None):
    """``table[name]``, or an `InputError` saying ``unknown {what} {name!r}; known {plural}: ...``."""
    try:
        return table[name]
    except KeyError:
        raise InputError(f"unknown {what} {name!r}; known {plural or what + 's'}: {', '.join(sorted(table))}") from None
