"""Ulysses sequence parallelism: the all-to-all a processor does itself under diffusers' context parallelism.

Under ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P))`` diffusers splits the
sequence into ``P`` contiguous slices before the first block (``_cp_plan``) and sets ``processor._parallel_config``
on every attention processor that has the attribute; its own processors then do, inside ``dispatch_attention_fn``,
an all-to-all that gives each rank the whole sequence for ``H / P`` heads (rank ``r`` gets heads
``[r H/P, (r + 1) H/P)``), attention, and the all-to-all back to sequence slices. The compactsearch processors
replace that attention call in capture and sparse mode, so they do the same exchange here (dense mode still calls
``dispatch_attention_fn`` with the parallel config: diffusers' own Ulysses path, unchanged):

- `pack_for_heads` / `unpack_heads`: ``[B, H, S/P, D]`` sequence slice -> all-to-all -> ``[B, H/P, S, D]``;
- `pack_for_sequence` / `unpack_sequence`: back, into ``[B, S/P, H, D]`` memory (the processor's reshape to
  ``[B, S/P, H * D]`` is then a view).

The layout functions are pure (tested without a process group); `Ulysses` adds the collective. Ring attention
(``ring_degree > 1``) and ``ulysses_anything`` (uneven splits) are refused: one-line `InputError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from compactsearch.errors import InputError

__all__ = ["Ulysses", "ulysses_of", "check_parallel", "pack_for_heads", "unpack_heads", "pack_for_sequence",
           "unpack_sequence", "ULYSSES_FAMILIES"]

ULYSSES_FAMILIES = ("wan",)  # adapters whose processors were checked under Ulysses (tests/test_ulysses.py)


def pack_for_heads(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, H, S_local, D]`` -> ``[P, B, H/P, S_local, D]`` contiguous: chunk ``p`` (heads of rank ``p``) goes to
    rank ``p`` in an all-to-all along dim 0."""
    B, H, S, D = x.shape
    return x.reshape(B, size, H // size, S, D).transpose(0, 1).contiguous()


def unpack_heads(y: torch.Tensor) -> torch.Tensor:
    """All-to-all result ``[P, B, H/P, S_local, D]`` (chunk ``p``: rank ``p``'s sequence slice) -> ``[B, H/P, S, D]``
    with the slices in rank order (diffusers' shards are contiguous ``chunk``s in rank order: model order)."""
    P, B, Hl, S, D = y.shape
    return y.permute(1, 2, 0, 3, 4).reshape(B, Hl, P * S, D)


def pack_for_sequence(o: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, H/P, S, D]`` -> ``[P, B, H/P, S/P, D]`` contiguous: chunk ``p`` (rank ``p``'s sequence slice) goes to
    rank ``p``."""
    B, Hl, S, D = o.shape
    return o.reshape(B, Hl, size, S // size, D).permute(2, 0, 1, 3, 4).contiguous()


def unpack_sequence(y: torch.Tensor) -> torch.Tensor:
    """All-to-all result ``[P, B, H/P, S_local, D]`` (chunk ``p``: rank ``p``'s heads) -> ``[B, H, S_local, D]``, a
    view of ``[B, S_local, H, D]`` memory."""
    P, B, Hl, S, D = y.shape
    return y.permute(1, 3, 0, 2, 4).contiguous().view(B, S, P * Hl, D).transpose(1, 2)


def _all_to_all(group) -> Callable[[torch.Tensor], torch.Tensor]:
    def exchange(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        torch.distributed.all_to_all_single(out, x, group=group)
        return out

    return exchange


@dataclass(frozen=True)
class Ulysses:
    """One rank's place in a Ulysses group: ``size`` ranks, this one ``rank``; ``exchange`` is the all-to-all along
    dim 0 (chunk ``p`` to rank ``p``, result chunk ``p`` from rank ``p``)."""

    size: int
    rank: int
    exchange: Callable[[torch.Tensor], torch.Tensor]

    def heads(self, num_heads: int) -> tuple[int, int]:
        """``(start, stop)``: the heads this rank attends over."""
        if num_heads % self.size:
            raise InputError(f"the model has {num_heads} heads, not divisible by ulysses_degree {self.size}: pick a "
                             "ulysses_degree that divides the head count")
        n = num_heads // self.size
        return (self.rank * n, (self.rank + 1) * n)

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, S/P, D]`` (this rank's sequence slice) -> ``[B, H/P, S, D]`` (the whole sequence, its heads)."""
        self.heads(x.shape[1])
        return unpack_heads(self.exchange(pack_for_heads(x, self.size)))

    def to_sequence(self, o: torch.Tensor) -> torch.Tensor:
        """``[B, H/P, S, D]`` -> ``[B, H, S/P, D]`` (a view of ``[B, S/P, H, D]`` memory)."""
        return unpack_sequence(self.exchange(pack_for_sequence(o, self.size)))


def _context_parallel(parallel_config):
    return getattr(parallel_config, "context_parallel_config", None) if parallel_config is not None else None


def _check_cp(cp) -> None:
    if (cp.ring_degree or 1) > 1:
        raise InputError(f"ring attention (ring_degree {cp.ring_degree}) is not supported with compactsearch's "
                         "sparse attention: use ContextParallelConfig(ulysses_degree=N) with ring_degree 1")
    if getattr(cp, "ulysses_anything", False):
        raise InputError("ulysses_anything is not supported with compactsearch's sparse attention: use a sequence "
                         "length and head count divisible by ulysses_degree, with ulysses_anything=False")


def ulysses_of(parallel_config) -> Ulysses | None:
    """The `Ulysses` group of a diffusers ``ParallelConfig`` (what ``processor._parallel_config`` holds), or None
    without context parallelism (or ``ulysses_degree`` 1).

    Raises:
        InputError: ring attention or ``ulysses_anything``.
    """
    cp = _context_parallel(parallel_config)
    if cp is None:
        return None
    _check_cp(cp)
    if (cp.ulysses_degree or 1) <= 1:
        return None
    mesh = cp._ulysses_mesh
    if mesh is None:
        raise RuntimeError("the context parallel config was not set up (diffusers' enable_parallelism does that)")
    group = mesh.get_group()
    return Ulysses(cp.ulysses_degree, torch.distributed.get_rank(group), _all_to_all(group))


def check_parallel(transformer, family: str, num_heads: int) -> None:
    """The entry check of `compactsearch.apply` on a transformer that may run under context parallelism.

    Raises:
        InputError: ring attention, ``ulysses_anything``, a family not in `ULYSSES_FAMILIES`, or a head count
            ``ulysses_degree`` does not divide; one line each.
    """
    cp = _context_parallel(getattr(transformer, "_parallel_config", None))
    if cp is None:
        return
    _check_cp(cp)
    degree = cp.ulysses_degree or 1
    if degree <= 1:
        return
    if family not in ULYSSES_FAMILIES:
        raise InputError(f"sequence parallelism (Ulysses) is supported for the {', '.join(ULYSSES_FAMILIES)} "
                         f"adapter only, not {family!r}: run this model without enable_parallelism")
    if num_heads % degree:
        raise InputError(f"the model has {num_heads} heads, not divisible by ulysses_degree {degree}: pick a "
                         "ulysses_degree that divides the head count")
