"""Capture: the sink the adapters call in ``"capture"`` mode, accumulating block mass per (bucket, layer).

For every self-attention call at a profiled step and on the captured branch (``cond`` by default), each
selected batch item's q and k (``[1, H, N, D]``, model order) are permuted to TILE order with the profile's
`TileLayout`, and their block mass ``[H, NQB, NKB]`` is added to the (bucket, layer) accumulator:
`compact_attn.block_mass` (the Triton kernel on a GPU), or its PyTorch reference (chunked, so no N x N
tensor ever exists) on a CPU. A prompt's result is the mean over the profiled steps of each bucket (and the
selected batch items); the profile is the mean of those over prompts.

Masked keys: HunyuanVideo and Mochi pad the text to a fixed length and mask the padding out of the keys.
The mass is then computed over the valid prefix of the tile-order sequence (video, then the valid text; the
padding sits at the very end) and the padded text queries' rows are computed against the valid keys, so
padded key blocks get zero mass and every query block's row still sums to its token count.

Samples: on request, the first captured call of each chosen layer keeps ``q``, ``k``, ``v`` of a few heads
(tile order, ``[1, h, N, D]``, the model's dtype) for `compactsearch validate`, with ``heads`` (int64
``[h]``), ``step`` and ``bucket`` (int64 ``[1]``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

import compact_attn
from compact_attn import permute
from compact_attn import reference as _reference
from compact_attn.mask import BlockSparseMask
from compactsearch.adapters.base import AttentionCall
from compactsearch.errors import InputError
from compactsearch.geometry import VideoGeometry
from compactsearch.profile.timing import SectionTimer
from compactsearch.profile.values import VALUE_RANK, gram_factor, value_block_gram
from compactsearch.tile_choice import default_tile_shape, default_tiling
from compactsearch.tiling import TileLayout

__all__ = ["ONE_PASS", "block_mass", "masked_block_mass", "BlockMassCapture", "PromptCapture"]


def block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, lse: torch.Tensor | None = None) -> torch.Tensor:
    """Block mass ``[B, H, NQB, NKB]`` float32 of ``q, k`` ``[B, H, N, D]`` (tile order).

    Uses the `compact_attn.block_mass` entry point (Triton on CUDA, the reference on CPU) for head dims 64
    and 128, which it supports; other head dims (tiny test models) go to the chunked PyTorch reference. With
    ``lse`` (the rows' natural-log logsumexp ``[B, H, N]``, e.g. from the attention forward) it is one pass.
    """
    if q.shape[-1] not in (64, 128):
        return _reference.block_mass(q, k, block_size, block_size, lse=lse)
    return compact_attn.block_mass(q, k, block_size, block_size, lse=lse)


def masked_block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, key_valid: int | None = None,
                      lse: torch.Tensor | None = None) -> torch.Tensor:
    """Block mass of one batch item whose keys past ``key_valid`` (tile order) are masked out.

    Args:
        q, k: ``[1, H, N, D]`` in tile order.
        block_size: kernel block size.
        key_valid: number of leading valid keys; None or ``>= N`` means all.
        lse: optional ``[1, H, n]`` logsumexp of the first ``n = min(N, key_valid)`` rows over the valid keys.

    Returns:
        ``[H, NQB, NKB]`` float32; key blocks past ``key_valid`` get zero mass; every query row sums to 1.
    """
    N = q.shape[2]
    if key_valid is None or key_valid >= N:
        return block_mass(q, k, block_size, lse)[0]
    H, D = q.shape[1], q.shape[3]
    nb = math.ceil(N / block_size)
    out = torch.zeros(H, nb, nb, dtype=torch.float32, device=q.device)
    m = block_mass(q[:, :, :key_valid], k[:, :, :key_valid], block_size, lse)[0]
    out[:, : m.shape[1], : m.shape[2]] = m
    # Padded (text) queries still attend to the valid keys; their few rows are done directly.
    qp = q[0, :, key_valid:].float()
    kf = k[0, :, :key_valid].float()
    rows = torch.arange(key_valid, N, device=q.device) // block_size
    pad = nb * block_size - key_valid
    for h in range(H):
        p = torch.softmax((qp[h] @ kf[h].T) / math.sqrt(D), dim=-1)
        p = torch.nn.functional.pad(p, (0, pad)).view(p.shape[0], nb, block_size).sum(-1)
        out[h].index_add_(0, rows, p)
    return out


ONE_PASS = ("auto", "on", "fused", "off")  # BlockMassCapture's one_pass (the profile's --one-pass)


def _attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask):
    """``(o, lse)`` of `compact_attn.block_sparse_attention` (the reference for head dims the kernel lacks)."""
    if q.shape[-1] in (64, 128):
        return compact_attn.block_sparse_attention(q, k, v, mask, return_lse=True)
    return _reference.block_sparse_attention(q, k, v, mask, return_lse=True)


@dataclass
class PromptCapture:
    """What one prompt produced: mean block mass per (bucket, layer) and the kept samples.

    Attributes:
        mass: ``(bucket, layer) -> [H, NQB, NKB]`` float32 on CPU, mean over the bucket's captured calls.
        calls: ``(bucket, layer) -> number of captured (step, batch item) pairs``.
        samples: ``layer -> {name: tensor}`` (see the module docstring).
        experts: ``bucket -> sorted expert indices`` that ran in it.
        value_factor: ``(bucket, layer) -> [H, NKB, r]`` float32 on CPU: ``U`` with ``U Uᵀ`` the best rank-``r``
            approximation of the mean over the same calls of ``V̄ V̄ᵀ`` (`value_block_gram`, `gram_factor`).
    """

    mass: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    experts: dict = field(default_factory=dict)
    value_factor: dict = field(default_factory=dict)


class BlockMassCapture:
    """The capture sink: ``capture(call, q, k, v)`` from the processors; one prompt at a time.

    Args:
        bucket_of_step: ``step -> bucket`` for every profiled step (other steps are ignored).
        branch: ``"cond"`` or ``"uncond"``: which guidance branch to record.
        tile: tile shape; None picks the default for the first call's geometry.
        block_size: kernel block size (64 or 128); None with no tile: `default_tiling` picks both.
        geometry: the expected geometry; None accepts the first call's and holds every later call to it.
        sample_layers: layers whose q/k/v to keep (None: every layer), when `start_prompt` asks for samples.
        sample_heads: heads kept per sampled layer.
        one_pass: ``"auto"``, ``"on"``, ``"fused"`` or ``"off"``: run captured calls' attention through the
            kernel with the logsumexp and take the block mass from it in one pass (`capture_attention`), instead
            of the model's attention plus a two-pass block mass; ``"fused"``: the forward itself also writes
            each key block's share of every row's softmax denominator and the mass is summed from those
            (`compact_attn.attention_with_block_mass`: no second pass over the keys; ``[H, NKB, N]`` float32 of
            GPU memory per call, else ``"on"``). ``"auto"``: on CUDA in bf16/fp16, ``"fused"`` at head dim 128
            (measured faster: 255 against 295 ms a Wan 14B 720p layer) and ``"on"`` at 64; else ``"off"``.
        timer: a `SectionTimer` to charge attention, block mass, value statistics, tile order and samples to.
    """

    def __init__(
        self,
        bucket_of_step: Mapping[int, int],
        *,
        branch: str = "cond",
        tile: Sequence[int] | None = None,
        block_size: int | None = 128,
        geometry: VideoGeometry | None = None,
        sample_layers: Sequence[int] | None = None,
        sample_heads: int = 1,
        one_pass: str = "auto",
        timer: SectionTimer | None = None,
    ):
        if branch not in ("cond", "uncond"):
            raise InputError(f"profile.branch must be cond or uncond, got {branch!r}")
        if one_pass not in ONE_PASS:
            raise InputError(f"one_pass must be one of {', '.join(ONE_PASS)}, got {one_pass!r}")
        self.bucket_of_step = dict(bucket_of_step)
        self.one_pass = one_pass
        self.timer = timer
        self._cache: dict = {}
        self.branch = branch
        self.tile = tuple(tile) if tile is not None else None
        self.block_size = block_size
        self.layout: TileLayout | None = None
        if geometry is not None:
            self._set_layout(geometry)
        self.sample_layers = None if sample_layers is None else set(sample_layers)
        self.sample_heads = sample_heads
        self.num_heads: int | None = None
        self.head_dim: int | None = None
        self._sums: dict = {}
        self._counts: dict = {}
        self._samples: dict = {}
        self._experts: dict = {}
        self._keep_samples = False

    def _set_layout(self, geometry: VideoGeometry, head_dim: int | None = None) -> None:
        if self.tile is None and self.block_size is None:
            tile, self.block_size = default_tiling(geometry, head_dim)
        else:
            self.block_size = self.block_size or 128
            tile = self.tile or default_tile_shape(geometry, self.block_size)
        self.layout = TileLayout(geometry, tile, self.block_size)

    def start_prompt(self, keep_samples: bool = False) -> None:
        """Clear the accumulators before the next prompt."""
        self._sums, self._counts, self._samples, self._experts, self._grams = {}, {}, {}, {}, {}
        self._keep_samples = keep_samples

    # ------------------------------------------------------------------------------------------- selection
    def _items(self, call: AttentionCall, head_dim: int) -> tuple[int | None, list[int]]:
        """``(bucket, captured batch items)`` of a call; ``(None, [])`` when nothing of it is recorded. Sets up
        the layout on the first captured call and checks later ones against it."""
        bucket = self.bucket_of_step.get(call.step)
        if bucket is None:
            return None, []
        items = [i for i, b in enumerate(call.batch_branches) if b == self.branch]
        if not items:
            return None, []
        if self.layout is None:
            self._set_layout(call.geometry, head_dim)
        elif call.geometry != self.layout.geometry:
            raise InputError(f"layer {call.layer} runs on {call.geometry.describe()}, but this profile is for "
                             f"{self.layout.geometry.describe()}: every prompt must give the same sequence "
                             "(fix max_sequence_length or the resolution)")
        if call.key_valid is not None and call.geometry.text_position == "front":
            raise InputError("masked text keys in front of the video are not supported")
        return bucket, items

    def _section(self, name: str, device: torch.device):
        return self.timer.section(name, device) if self.timer is not None else contextlib.nullcontext()

    def _record(self, call: AttentionCall, bucket: int, i: int, q: torch.Tensor, qt: torch.Tensor,
                kt: torch.Tensor, vt: torch.Tensor, lse: torch.Tensor | None, mass: torch.Tensor | None = None
                ) -> None:
        """Add batch item ``i``'s block mass (``mass`` when the forward made it) and value Gram (tile order
        ``[1, H, N, D]``) to the accumulators."""
        key = (bucket, call.layer)
        kv = None if call.key_valid is None else call.key_valid[i]
        with self._section("block mass", q.device):
            m = masked_block_mass(qt, kt, self.block_size, kv, lse) if mass is None else mass
        with self._section("value statistics", q.device):
            gram = value_block_gram(vt[0], self.block_size, kv)
        if key in self._sums:
            self._sums[key] += m
            self._grams[key] += gram
        else:
            self._sums[key] = m
            self._grams[key] = gram
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._keep_samples and call.layer not in self._samples and (
            self.sample_layers is None or call.layer in self.sample_layers
        ):
            with self._section("samples", q.device):
                hs = min(self.sample_heads, q.shape[1])
                self._samples[call.layer] = {
                    "q": qt[:, :hs].detach().cpu().contiguous(),
                    "k": kt[:, :hs].detach().cpu().contiguous(),
                    "v": vt[:, :hs].detach().cpu().contiguous(),
                    "heads": torch.arange(hs, dtype=torch.int64),
                    "step": torch.tensor([call.step], dtype=torch.int64),
                    "bucket": torch.tensor([bucket], dtype=torch.int64),
                }
        self._experts.setdefault(bucket, set()).add(call.expert)

    # ---------------------------------------------------------------------------------------- two passes
    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Record a call whose attention output was computed elsewhere (block mass in its own passes)."""
        bucket, items = self._items(call, q.shape[-1])
        if bucket is None:
            return
        self.num_heads, self.head_dim = q.shape[1], q.shape[3]
        with torch.no_grad():
            for i in items:
                with self._section("tile order", q.device):
                    qt, kt, vt = (self._permute(self.layout, x[i : i + 1]) for x in (q, k, v))
                self._record(call, bucket, i, q, qt, kt, vt, None)

    # ------------------------------------------------------------------------------------------ one pass
    def one_pass_for(self, q: torch.Tensor) -> bool:
        """Whether a captured call runs its attention through the kernel with the logsumexp (`one_pass`)."""
        if self.one_pass in ("on", "fused"):
            return True
        if self.one_pass == "off":
            return False
        return q.is_cuda and q.shape[-1] in (64, 128) and q.dtype in (torch.bfloat16, torch.float16)

    def capture_attention(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          dense, from_bhnd):
        """The adapter's capture-mode attention (`SelfAttentionProcessor._attend`): returns the call's output.

        Calls that record nothing run the model's own dense attention. Recorded calls either run it too and
        then take the block mass in two passes (`__call__`), or (`one_pass_for`) run the attention forward
        through `compact_attn.block_sparse_attention` with an all-dense mask and ``return_lse``, and take
        the block mass in one pass from that logsumexp. Keys a model masks (padded text at the back) are cut
        off per batch item as `compactsearch.runtime` does: the forward runs on the valid prefix and the
        padded queries attend densely to the valid keys.
        """
        bucket, items = self._items(call, q.shape[-1])
        if bucket is None or not self.one_pass_for(q):
            with self._section("attention", q.device):
                out = dense()
            if bucket is not None:
                self(call, q, k, v)
            return out
        self.num_heads, self.head_dim = q.shape[1], q.shape[3]
        B, H, N, _ = q.shape
        out = torch.empty_like(q)
        with torch.no_grad():
            for i in range(B):
                n = N if call.key_valid is None else min(N, int(call.key_valid[i]))
                layout = self.layout if n == N else self._prefix_layout(n)
                sl = slice(i, i + 1)
                with self._section("tile order", q.device):
                    perm = self._perm(layout, q.device)
                    qt, kt, vt = permute.to_tile_order(q[sl, :, :n], k[sl, :, :n], v[sl, :, :n], perm)
                mass = None
                with self._section("attention", q.device):
                    if i in items and n == N and self._fused_for(qt):  # the mass comes with the forward
                        ot, lse, mass = compact_attn.attention_with_block_mass(qt, kt, vt,
                                                                               self._dense_mask(H, n, q.device))
                        mass = mass[0]
                    else:
                        ot, lse = _attention_lse(qt, kt, vt, self._dense_mask(H, n, q.device))
                    if n < N:  # padded queries attend to the valid keys, as the model computes them
                        out[sl, :, n:] = torch.nn.functional.scaled_dot_product_attention(
                            q[sl, :, n:], k[sl, :, :n], v[sl, :, :n])
                with self._section("tile order", q.device):
                    out[sl, :, :n] = permute.to_model_order(ot, perm)
                if i in items:
                    if n < N:  # the record's tensors span the whole padded sequence (padding at the end)
                        qt, kt, vt = (self._permute(self.layout, x[sl]) for x in (q, k, v))
                    self._record(call, bucket, i, q, qt, kt, vt, lse, mass)
        return from_bhnd(out)

    def _fused_for(self, qt: torch.Tensor) -> bool:
        """Whether this call's block mass comes from the forward (`one_pass` ``"fused"``, or ``"auto"`` at head
        dim 128): kernel head dims, and on CUDA the per-block buffer ``[H, NKB, N]`` float32 within half the free
        memory."""
        fused = self.one_pass == "fused" or (self.one_pass == "auto" and qt.shape[-1] == 128)
        if not fused or qt.shape[-1] not in (64, 128):
            return False
        if not qt.is_cuda:
            return True
        H, N = qt.shape[1], qt.shape[2]
        need = 4 * H * N * math.ceil(N / self.block_size)
        return need <= torch.cuda.mem_get_info(qt.device)[0] // 2

    def _perm(self, layout: TileLayout, device: torch.device) -> torch.Tensor:
        """The layout's permutation, kept on the device (copying it from the host on every call would
        synchronise the GPU each time)."""
        key = ("perm", layout.geometry.seq_len, str(device))
        if key not in self._cache:
            self._cache[key] = layout.perm.to(device)
        return self._cache[key]

    def _permute(self, layout: TileLayout, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, H, N, D]`` to tile order."""
        return x.index_select(2, self._perm(layout, x.device))

    def _prefix_layout(self, n: int) -> TileLayout:
        """The layout of the same grid with only the valid text (``n`` tokens in all)."""
        g = self.layout.geometry
        text = n - g.video_tokens
        if text < 0:
            raise InputError(f"a batch item has {n} valid keys, fewer than the {g.video_tokens} video tokens")
        key = ("prefix", n)
        if key not in self._cache:
            geo = VideoGeometry(g.frames, g.height, g.width, text, g.text_position if text else "none")
            self._cache[key] = TileLayout(geo, self.layout.tile_thw, self.block_size)
        return self._cache[key]

    def _dense_mask(self, heads: int, n: int, device: torch.device) -> BlockSparseMask:
        key = ("dense", heads, n, str(device))
        if key not in self._cache:
            self._cache[key] = BlockSparseMask.dense_mask(heads, n, self.block_size, self.block_size).to(device)
        return self._cache[key]

    def prompt_result(self) -> PromptCapture:
        """The finished prompt: means over each bucket's captured calls, on CPU."""
        mass = {key: (s / self._counts[key]).cpu() for key, s in self._sums.items()}
        factors = {key: gram_factor(g / self._counts[key], VALUE_RANK).cpu() for key, g in self._grams.items()}
        experts = {b: sorted(e) for b, e in self._experts.items()}
        return PromptCapture(mass, dict(self._counts), dict(self._samples), experts, factors)
