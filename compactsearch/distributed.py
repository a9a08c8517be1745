"""`--parallel ulysses:N`: one `generate` / `evaluate` run spread over N processes started by ``torchrun``.

Every process loads the same pipeline, `enable_ulysses` puts its transformer(s) under diffusers' Ulysses context
parallelism (``ContextParallelConfig(ulysses_degree=N)``), and `compactsearch.apply` then runs each rank's heads
with their masks (`compactsearch.adapters.parallel`). Every rank gets the whole output; rank 0 alone writes files
and prints (`ParallelRun.main`).

Processes: ``torchrun --nproc-per-node N -m compactsearch generate ... --parallel ulysses:N``; torchrun's
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` say which process this is. On CUDA rank ``r`` uses ``cuda:LOCAL_RANK``
and NCCL; on a CPU (tests, no accelerator) gloo.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch

from compactsearch.adapters.parallel import ULYSSES_FAMILIES
from compactsearch.errors import InputError

__all__ = ["ParallelRun", "parse_parallel", "check_recipe", "parallel_run", "enable_ulysses", "torchrun_rank",
           "default_device"]

KINDS = ("ulysses",)


@dataclass(frozen=True)
class ParallelRun:
    """This process's place in a ``--parallel`` run."""

    spec: str  # as given, e.g. "ulysses:2"
    degree: int
    rank: int
    local_rank: int
    device: str

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


def parse_parallel(spec: str) -> int:
    """``"ulysses:N"`` -> ``N`` (>= 2). Ring attention and anything else: one-line `InputError`."""
    kind, _, n = spec.partition(":")
    if kind == "ring":
        raise InputError(f"--parallel {spec}: ring attention is not supported with compactsearch's sparse "
                         "attention; use --parallel ulysses:N")
    if kind not in KINDS or not n.isdigit() or int(n) < 2:
        raise InputError(f"--parallel {spec!r}: write ulysses:N with N >= 2 processes (e.g. ulysses:2)")
    return int(n)


def check_recipe(recipe, spec: str | None) -> None:
    """Refuse a recipe a ``--parallel`` run cannot take, before any process group or model: a family not checked
    under Ulysses, CPU offloading. Nothing without ``spec``."""
    if spec is None:
        return
    parse_parallel(spec)
    _check_family(recipe.adapter)
    if recipe.offload != "none":
        raise InputError(f"--parallel with model.offload: {recipe.offload}: set model.offload: none in the recipe "
                         "(each process holds the whole model on its GPU)")


def _check_family(adapter: str) -> None:
    if adapter not in ULYSSES_FAMILIES:
        raise InputError(f"sequence parallelism (Ulysses) is supported for the {', '.join(ULYSSES_FAMILIES)} "
                         f"adapter only, not {adapter!r}: run this model without it")


def torchrun_rank() -> int | None:
    """This process's ``RANK`` under torchrun, or None outside it."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and rank.isdigit() else None


def default_device(device: str | None) -> str:
    """``device``, or ``cuda`` where there is a GPU and ``cpu`` elsewhere."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _device(device: str | None, local_rank: int) -> str:
    device = default_device(device)
    if device == "cpu":
        return device
    if device != "cuda":
        raise InputError(f"--device {device} with --parallel: each process uses cuda:LOCAL_RANK; give --device "
                         "cuda (or cpu) or leave it out")
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))  # the same check, and line, on every rank
    if max(per_node, local_rank + 1) > torch.cuda.device_count():
        raise InputError(f"--parallel: {per_node} processes on this machine, {torch.cuda.device_count()} GPUs: start "
                         "torchrun with --nproc-per-node at most the GPU count (one GPU per process)")
    return f"cuda:{local_rank}"


@contextlib.contextmanager
def parallel_run(spec: str | None, device: str | None) -> Iterator[ParallelRun | None]:
    """Join the torchrun process group of a ``--parallel`` run (None: yields None, nothing else happens); the
    group is destroyed on exit.

    Raises:
        InputError: a bad ``spec``, no torchrun environment, ``WORLD_SIZE`` other than the degree, a device the
            process cannot use; one line each, before the group is joined.
    """
    if spec is None:
        yield None
        return
    degree = parse_parallel(spec)
    env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if None in env.values():
        raise InputError(f"--parallel {spec} runs under torchrun, one process per GPU: torchrun --nproc-per-node "
                         f"{degree} -m compactsearch ... --parallel {spec}")
    world, rank, local_rank = int(env["WORLD_SIZE"]), int(env["RANK"]), int(env["LOCAL_RANK"])
    if world != degree:
        raise InputError(f"--parallel {spec} under torchrun with {world} processes: start torchrun with "
                         f"--nproc-per-node {degree} (or give --parallel ulysses:{world})")
    device = _device(device, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=torch.device(device))
    else:
        torch.distributed.init_process_group("gloo")
    from compactsearch.adapters.registry import quiet_libraries

    try:
        with quiet_libraries():  # diffusers' context-parallel hooks warn on every call (deprecations, unsplit inputs)
            yield ParallelRun(spec, degree, rank, local_rank, device)
    finally:
        torch.distributed.destroy_process_group()


def enable_ulysses(pipe, adapter: str, degree: int, video: tuple[int, int, int]) -> None:
    """Put every transformer of ``pipe`` under diffusers' Ulysses context parallelism of ``degree`` ranks (the
    process group must exist). ``video`` is the call's ``(frames, height, width)`` in pixels.

    Diffusers 0.42.1 computes ``rank % torch.accelerator.device_count()`` on the way, a division by zero on a
    machine without an accelerator; there the count reads 1 for that call (the mesh is then a CPU mesh, the
    collectives gloo's).

    Raises:
        InputError: a family not checked under Ulysses, a head count or video token count ``degree`` does not
            divide; one line each.
    """
    from diffusers import ContextParallelConfig

    from compactsearch.adapters.registry import get_adapter, quiet_libraries, video_tokens

    family = get_adapter(adapter)
    _check_family(adapter)
    tokens = video_tokens(pipe, family, *video)
    if tokens % degree:
        frames, height, width = video
        raise InputError(f"Ulysses degree {degree}: {frames}x{height}x{width} gives {tokens} video tokens, not "
                         f"divisible by {degree}; change the video size or the degree")
    count = torch.accelerator.device_count()
    for transformer in family.transformers(pipe):
        heads = transformer.config.num_attention_heads
        if heads % degree:
            raise InputError(f"Ulysses degree {degree}: the model has {heads} heads, not divisible by {degree}; "
                             "pick a degree that divides the head count")
        with quiet_libraries(), mock.patch.object(torch.accelerator, "device_count", lambda: max(1, count)):
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
