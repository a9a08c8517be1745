"""The process pool that the search and the report share.

Fork where the platform has it (the workers inherit the loaded profile and need no pickling of it), spawn
elsewhere; every worker runs ``initializer(*initargs)`` once, then the units submitted to it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]


def process_pool(workers: int, initializer: Callable, initargs: tuple) -> ProcessPoolExecutor:
    """A `ProcessPoolExecutor` of ``workers`` processes, each initialised with ``initializer(*initargs)``."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=initializer, initargs=initargs)
