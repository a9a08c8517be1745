"""`BlockSparseMask`: which key blocks each query block attends to, per head.

The structure (one layer, batch-independent)::

    kv_num_blocks  int32 [H, NQB]          number of key blocks query block q of head h attends to
    kv_indices     int32 [H, NQB, MAXK]    those key blocks, ascending; entries past the count unspecified
    block_q, block_k                       tokens per query / key block (the sequence is in tile order)
    seq_len                                tokens in the sequence; the last block of each side may be ragged

Rebuilding the dense block mask from it is the four-line loop::

    dense = torch.zeros(H, NQB, NKB, dtype=torch.bool)
    for h in range(H):
        for q in range(NQB):
            dense[h, q, kv_indices[h, q, : kv_num_blocks[h, q]]] = True

Only the sequence tail needs element masking (keys at positions >= seq_len); every other computed block is
computed whole, so there is no separate "partial block" list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

__all__ = ["BlockSparseMask"]


@dataclass(frozen=True, eq=False)
class BlockSparseMask:
    """Block-sparse attention mask for one layer. See the module docstring for the tensors' meaning."""

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    block_q: int
    block_k: int
    seq_len: int
    check: bool = field(default=True, repr=False, compare=False)

    _PACK_ROWS: ClassVar[int] = 1024  # rows per chunk in `from_dense`

    def __post_init__(self) -> None:
        """Assert the invariants; ``check=False`` skips the O(size) value checks for trusted constructors."""
        n, idx = self.kv_num_blocks, self.kv_indices
        if n.dtype != torch.int32 or idx.dtype != torch.int32:
            raise ValueError(f"kv_num_blocks and kv_indices must be int32, got {n.dtype} and {idx.dtype}")
        if n.dim() != 2 or idx.dim() != 3 or idx.shape[:2] != n.shape:
            raise ValueError(
                f"kv_num_blocks must be [H, NQB] and kv_indices [H, NQB, MAXK]; got {tuple(n.shape)} and "
                f"{tuple(idx.shape)}"
            )
        if self.block_q < 1 or self.block_k < 1 or self.seq_len < 1:
            raise ValueError("block_q, block_k and seq_len must be positive")
        if n.shape[1] != self.num_q_blocks:
            raise ValueError(
                f"kv_num_blocks has {n.shape[1]} query blocks, but seq_len {self.seq_len} / block_q {self.block_q} "
                f"gives {self.num_q_blocks}"
            )
        if not self.check:
            return
        if n.numel() and (int(n.min()) < 0 or int(n.max()) > min(idx.shape[2], self.num_kv_blocks)):
            raise ValueError("kv_num_blocks must lie in [0, min(MAXK, NKB)]")
        valid = self._valid()
        if valid.any():
            vals = idx[valid]
            if int(vals.min()) < 0 or int(vals.max()) >= self.num_kv_blocks:
                raise ValueError(f"kv_indices must lie in [0, {self.num_kv_blocks})")
            if idx.shape[2] > 1:
                ascending = (idx[..., 1:] > idx[..., :-1]) | ~valid[..., 1:]
                if not bool(ascending.all()):
                    raise ValueError("kv_indices must be strictly ascending within each row")

    # ------------------------------------------------------------------ shape
    @property
    def num_heads(self) -> int:
        return self.kv_num_blocks.shape[0]

    @property
    def num_q_blocks(self) -> int:
        return math.ceil(self.seq_len / self.block_q)

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.seq_len / self.block_k)

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    def _valid(self) -> torch.Tensor:
        maxk = self.kv_indices.shape[2]
        ar = torch.arange(maxk, device=self.kv_indices.device)
        return ar < self.kv_num_blocks[..., None]

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_dense(cls, dense: torch.Tensor, block_q: int, block_k: int, seq_len: int) -> BlockSparseMask:
        """From a bool block mask ``[H, NQB, NKB]`` (True = computed)."""
        if dense.dim() != 3 or dense.dtype != torch.bool:
            raise ValueError(f"dense must be a bool [H, NQB, NKB] tensor, got {dense.dtype} {tuple(dense.shape)}")
        H, nq, nk = dense.shape
        d2 = dense.cpu().reshape(H * nq, nk).numpy()
        rows = d2.shape[0]
        # Each row's True columns in ascending order, a few hundred rows at a time so the temporaries stay in
        # cache: the flat indices of a chunk's Trues are row-major, so each row's count is the distance between
        # two binary searches for its row start, and subtracting the row start gives the columns.
        counts_np = np.zeros(rows, np.int32)
        chunks = []
        for r0 in range(0, rows, cls._PACK_ROWS):
            r1 = min(rows, r0 + cls._PACK_ROWS)
            flat = np.flatnonzero(d2[r0:r1])
            c = np.diff(np.searchsorted(flat, np.arange(0, (r1 - r0 + 1) * nk, nk)))
            counts_np[r0:r1] = c
            cols = flat.astype(np.int32)
            cols -= np.repeat(np.arange(0, (r1 - r0) * nk, nk, dtype=np.int32), c)
            chunks.append(cols)
        maxk = max(int(counts_np.max()) if rows else 0, 1)
        # Left-pack: a row's first `count` slots (a row of `first_slots`) take its columns.
        first_slots = np.arange(maxk, dtype=np.int32) < np.arange(maxk + 1, dtype=np.int32)[:, None]
        # torch's allocator, not numpy's: numpy asks for transparent huge pages on large arrays, and where the
        # kernel compacts memory synchronously for them (defrag=madvise) a build stalls now and then.
        idx = torch.empty(H, nq, maxk, dtype=torch.int32)
        packed = idx.numpy().reshape(rows, maxk)
        for r0, cols in zip(range(0, rows, cls._PACK_ROWS), chunks):
            r1 = min(rows, r0 + cls._PACK_ROWS)
            out = packed[r0:r1]
            out.fill(0)  # past the count: 0, a valid block index
            out[first_slots[counts_np[r0:r1]]] = cols
        idx = idx.to(dense.device)
        counts = torch.from_numpy(counts_np.reshape(H, nq)).to(dense.device)
        return cls(counts, idx, block_q, block_k, seq_len, check=False)

    @classmethod
    def dense_mask(cls, num_heads: int, seq_len: int, block_q: int = 128, block_k: int = 128) -> BlockSparseMask:
        """Every block computed."""
        nq, nk = math.ceil(seq_len / block_q), math.ceil(seq_len / block_k)
        return cls.from_dense(torch.ones(num_heads, nq, nk, dtype=torch.bool), block_q, block_k, seq_len)

    # ---------------------------------------------------------------- views
    def to(self, device: torch.device | str) -> BlockSparseMask:
        return BlockSparseMask(self.kv_num_blocks.to(device), self.kv_indices.to(device), self.block_q,
                               self.block_k, self.seq_len, check=False)

    def to_dense(self) -> torch.Tensor:
        """Bool block mask ``[H, NQB, NKB]``. For tests and pictures."""
        valid = self._valid()
        dense = torch.zeros(self.num_heads, self.num_q_blocks, self.num_kv_blocks + 1, dtype=torch.bool,
                            device=self.device)
        idx = torch.where(valid, self.kv_indices.long(), self.num_kv_blocks)  # invalid -> spill column
        dense.scatter_(2, idx, True)
        return dense[..., : self.num_kv_blocks]

    def token_mask(self) -> torch.Tensor:
        """Bool token mask ``[H, seq_len, seq_len]`` (True = attended). Small sizes only: tests and references."""
        dense = self.to_dense()
        q_blk = torch.arange(self.seq_len, device=self.device) // self.block_q
        k_blk = torch.arange(self.seq_len, device=self.device) // self.block_k
        return dense[:, q_blk][:, :, k_blk]

    def computed_blocks(self) -> int:
        return int(self.kv_num_blocks.sum())

    def density(self) -> float:
        """Computed blocks / all blocks, over all heads."""
        total = self.num_heads * self.num_q_blocks * self.num_kv_blocks
        return self.computed_blocks() / total

    def head_density(self) -> torch.Tensor:
        """Per-head density, ``[H]`` float."""
        return self.kv_num_blocks.sum(-1).double() / (self.num_q_blocks * self.num_kv_blocks)

    def heaviest_first(self) -> torch.Tensor:
        """``[H * NQB]`` int32 (head, query block) work items sorted by key-block count, largest first.

        Item ``i`` encodes ``head * NQB + q_block``. Launching in this order balances a persistent grid.
        """
        return torch.argsort(self.kv_num_blocks.flatten(), descending=True, stable=True).to(torch.int32)

    def to_flex_block_mask(self, batch: int = 1):
        """The same mask as a `torch.nn.attention.flex_attention.BlockMask` (reference and benchmark rival)."""
        from torch.nn.attention.flex_attention import BlockMask

        if self.block_q != self.block_k:
            raise ValueError("FlexAttention's BlockMask needs block_q == block_k here")
        n = self.kv_num_blocks[None].expand(batch, -1, -1).contiguous()
        # BlockMask.from_kv_blocks reads the index tensor's last dim as NKB (it scatters into a dense map that
        # wide), so pad MAXK up to NKB; entries past the count stay unused.
        idx = self.kv_indices[..., : self.num_kv_blocks]
        idx = torch.nn.functional.pad(idx, (0, self.num_kv_blocks - idx.shape[-1]))
        idx = idx[None].expand(batch, -1, -1, -1).contiguous()
        # Every computed block is whole except the sequence tail, which flex masks by seq_len itself.
        return BlockMask.from_kv_blocks(n, idx, BLOCK_SIZE=(self.block_q, self.block_k), seq_lengths=(
            self.seq_len, self.seq_len))

    def ascii(self, head: int = 0, max_size: int = 64) -> str:
        """An ASCII picture of one head (``#`` computed, ``.`` skipped), downsampled to ``max_size``."""
        dense = self.to_dense()[head].float()
        nq, nk = dense.shape
        sq, sk = max(1, math.ceil(nq / max_size)), max(1, math.ceil(nk / max_size))
        if sq > 1 or sk > 1:
            dense = torch.nn.functional.max_pool2d(dense[None, None], (sq, sk), ceil_mode=True)[0, 0]
        return "\n".join("".join("#" if v > 0 else "." for v in row.tolist()) for row in dense)

    def __repr__(self) -> str:
        return (
            f"BlockSparseMask(heads={self.num_heads}, q_blocks={self.num_q_blocks}, kv_blocks={self.num_kv_blocks}, "
            f"max_k={self.kv_indices.shape[2]}, block=({self.block_q}, {self.block_k}), seq_len={self.seq_len}, "
            f"density={self.density():.3f})"
        )
