"""Triton block-sparse attention forward over a `BlockSparseMask`, and the dispatch between its two kernels.

On Hopper (sm_90, Triton >= 3.6, 128 x 128 mask blocks, bf16/fp16) `block_sparse_attention_triton` runs the
warp-specialised Gluon kernel of `compact_attn.attention_ws` (``AttnConfig.warp_specialized``, the default
there); everywhere else the Triton-language kernel of this module, described below.

What it computes: for every (batch, head, query row) the softmax attention over the keys of the key blocks its
query block lists, ``o = softmax(q k^T * scale) v``, plus optionally the natural-log row logsumexp. It is the
same function as `compact_attn.reference.block_sparse_attention`.

How: one program per (query tile of ``BLOCK_M`` rows, batch), launched heaviest first (query blocks with the
most key blocks first, so the hardware scheduler packs the short ones into the tail: a longest-processing-time
schedule without a persistent grid); for long sequences head by head, heaviest first within each head, so the
programs in flight share one head's keys and values in L2 (``AttnConfig.order``).
Each program walks its query block's sorted key-block list in one
software-pipelined loop of ``BLOCK_N``-key tiles (``block_k / BLOCK_N`` tiles per listed block, the next index
loaded inside the loop so the pipeliner prefetches it), with an online softmax in base 2 (``log2(e)`` folded
into the scale). Only a ragged last key block (``seq_len % block_k != 0``) is element-masked, in a separate
tail step after the main loop (the list is ascending, so it is always last); every other tile runs unmasked.

Limits, stated plainly:
- Forward only (no backward); q, k, v share one shape ``[B, H, N, D]`` (no GQA, no cross-attention lengths).
- Head dim 64 or 128; bf16 or fp16 (fp32 is accepted and computed with IEEE fp32 dots, slowly).
- ``block_q`` and ``block_k`` are powers of two from 16 to 256; tiles are clamped to them.
- Query rows whose block lists no key block get ``o = 0`` and ``lse = -inf`` (as the reference does).
- Tuned on one H200 (triton 3.6) only; see ``benchmarks/KERNEL_NOTES.md`` for what was measured.
- Tensor descriptors (TMA) and warp specialisation are used only when the Triton build has them (3.4+),
  the GPU is Hopper or newer, and the strides are 16-byte aligned; otherwise the pointer path runs (that is
  also the path of Triton 3.2, torch 2.6's).
- Dense heads (``AttnConfig.dense_heads="sdpa"``, the default except on Hopper at d <= 64): heads whose mask
  lists every key block for every query block run through ``torch.nn.functional.scaled_dot_product_attention``
  (cuDNN first), faster than this kernel run dense at d=128; the kernel's launch list then holds the other
  heads' work items only, and both write into one output. bf16/fp16 only, and not with ``return_lse`` (SDPA
  returns no logsumexp): there, and for fp32, every head runs on the kernel.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError

from compact_attn import attention_ws, check_attention_inputs
from compact_attn._config import (
    DENSE_HEADS,
    HAS_TMA,
    HEAD_ORDER_KV_BYTES,
    INTERPRET,
    AttnConfig,
    attention_autotune_configs,
    attention_config,
    autotune_enabled,
)
from compact_attn.mask import BlockSparseMask

__all__ = ["block_sparse_attention_triton"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_BLOCK_SIZES = (16, 32, 64, 128, 256)


# ----------------------------------------------------------------------------------------------- kernel
@triton.jit
def _mma(a, b, acc, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b (+ acc)`` in fp32. ``UPCAST`` (interpreter + bf16 only: its bf16 dot is wrong) computes the same
    product from fp32 copies of the low-precision operands, which is exact for the products."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if acc is None:
        out = tl.dot(a, b, input_precision=DOT_PREC)
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PREC)
    return out


@triton.jit
def _load_rows(ptr, desc, row0, n_rows, stride_n, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
               USE_TMA: tl.constexpr, MASKED: tl.constexpr):
    """A ``[BLOCK, HEAD_DIM]`` tile starting at row ``row0`` of one head (rows >= n_rows read as zero)."""
    if USE_TMA:
        tile = desc.load([row0, 0])  # out-of-bounds rows are zero-filled by the copy engine
    else:
        rows = row0 + tl.arange(0, BLOCK)
        ptrs = ptr + rows[:, None] * stride_n + tl.arange(0, HEAD_DIM)[None, :]
        if MASKED:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _scores(q, k_ptr, k_desc, kv_row, N, stride_kn, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
            USE_TMA: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Raw scores ``q k^T`` ``[BLOCK_M, BLOCK_N]`` of one key tile; keys past N are -inf when ``MASKED``."""
    k = _load_rows(k_ptr, k_desc, kv_row, N, stride_kn, BLOCK_N, HEAD_DIM, USE_TMA, MASKED)
    qk = _mma(q, tl.trans(k), None, DOT_PREC, UPCAST)
    if MASKED:  # keys past the sequence end (only in the ragged last block)
        cols = kv_row + tl.arange(0, BLOCK_N)
        qk = tl.where(cols[None, :] < N, qk, float("-inf"))
    return qk


@triton.jit
def _softmax_pv(acc, l_i, m_i, qk, v_ptr, v_desc, kv_row, N, stride_vn, qk_scale, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
                UPCAST: tl.constexpr):
    """Online-softmax update with one tile's scores ``qk`` and its values. ``m_i`` is the running row max in log2
    units (the exponent offset of ``acc`` and ``l_i``); every tile rescales ``acc`` and ``l_i`` to the new max.
    Also returns the rescale factor ``alpha`` and the tile's row sums (at the new offset)."""
    v = _load_rows(v_ptr, v_desc, kv_row, N, stride_vn, BLOCK_N, HEAD_DIM, USE_TMA, MASKED)
    # exp2 with log2(e) folded into the scale: p = 2^(qk * scale * log2e - m)
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    alpha = tl.math.exp2(m_i - m_ij)
    acc = acc * alpha[:, None]
    l_i = l_i * alpha
    m_i = m_ij
    p32 = tl.math.exp2(qk * qk_scale - m_i[:, None])
    tile_sum = tl.sum(p32, 1)
    l_i = l_i + tile_sum
    p = p32.to(v.dtype)
    acc = _mma(p, v, acc, DOT_PREC, UPCAST)
    return acc, l_i, m_i, alpha, tile_sum


@triton.jit
def _block_sparse_fwd(
    Q, K, V, O, LSE, BLSE, KV_NUM, KV_IDX, ORDER,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_idx_h, stride_idx_q,
    B, H, N, NQB, NKB, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TAIL: tl.constexpr, EVEN_M: tl.constexpr, USE_TMA: tl.constexpr,
    RETURN_LSE: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, RETURN_BLOCK_LSE: tl.constexpr = False,
):
    """One ``BLOCK_M``-row tile of a (head, query block) item over its listed key blocks. With
    ``RETURN_BLOCK_LSE`` it also writes, per row and listed key block, the log2 of the block's share of the
    softmax denominator (``BLSE[b, h, kb, row] = log2 sum_{c in kb} 2^(s_rc)`` in the scaled log2 units of the
    lse): the block mass is then ``sum over rows of 2^(BLSE - lse2)`` (`compact_attn.mass_kernel`)."""
    MSPLIT: tl.constexpr = BLOCK_Q // BLOCK_M  # programs per query block
    SUB: tl.constexpr = BLOCK_K // BLOCK_N  # key tiles per listed key block
    pid = tl.program_id(0)
    item = tl.load(ORDER + pid // (B * MSPLIT))  # heaviest-first (head, query block) item
    rest = pid % (B * MSPLIT)
    b = rest // MSPLIT
    h = item // NQB
    qb = item % NQB
    q_row = qb * BLOCK_Q + (rest % MSPLIT) * BLOCK_M

    q_ptr = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_ptr = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_ptr = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    if USE_TMA:  # one descriptor per head: rows past N are zero-filled, never another head's
        q_desc = tl.make_tensor_descriptor(q_ptr, shape=[N, HEAD_DIM], strides=[stride_qn, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(k_ptr, shape=[N, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[N, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
    else:
        q_desc = q_ptr
        k_desc = k_ptr
        v_desc = v_ptr
    q = _load_rows(q_ptr, q_desc, q_row, N, stride_qn, BLOCK_M, HEAD_DIM, USE_TMA, not EVEN_M)

    n_blocks = tl.load(KV_NUM + item)
    idx_ptr = KV_IDX + h.to(tl.int64) * stride_idx_h + qb * stride_idx_q
    n_main = n_blocks
    if HAS_TAIL:  # the ragged last key block, when listed, is the list's last entry
        last = tl.load(idx_ptr + tl.maximum(n_blocks - 1, 0))
        has_tail = (n_blocks > 0) & (last == NKB - 1)
        n_main = n_blocks - has_tail.to(tl.int32)

    rows = q_row + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    b_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # the current key block's row sums, at offset m_i
    blse_ptr = BLSE + (b * H + h).to(tl.int64) * NKB * N + rows
    n_tiles = n_main * SUB
    for t in range(0, n_tiles):
        kb = tl.load(idx_ptr + t // SUB, mask=t < n_tiles, other=NKB)
        kv_row = kb * BLOCK_K + (t % SUB) * BLOCK_N
        qk = _scores(q, k_ptr, k_desc, kv_row, N, stride_kn, BLOCK_N, HEAD_DIM, USE_TMA, False, DOT_PREC, UPCAST)
        acc, l_i, m_i, alpha, tile_sum = _softmax_pv(acc, l_i, m_i, qk, v_ptr, v_desc, kv_row, N, stride_vn,
                                                     qk_scale, BLOCK_N, HEAD_DIM, USE_TMA, False, DOT_PREC, UPCAST)
        if RETURN_BLOCK_LSE:  # the block's last tile writes its share (coalesced: rows are contiguous)
            b_i = b_i * alpha + tile_sum
            block_end = (rows * 0 + t % SUB) == SUB - 1  # as a row vector: a mask the interpreter takes too
            tl.store(blse_ptr + kb.to(tl.int64) * N, m_i + tl.math.log2(b_i), mask=(rows < N) & block_end)
            b_i = tl.where(block_end, 0.0, b_i)
    if HAS_TAIL:  # element-masked step over the tiles of the last block that hold keys
        tail_tiles = tl.cdiv(N - (NKB - 1) * BLOCK_K, BLOCK_N)  # tiles wholly past N are skipped
        for t in tl.range(0, (n_blocks - n_main) * tail_tiles, num_stages=1):  # no smem for pipelining this
            kv_row = (NKB - 1) * BLOCK_K + t * BLOCK_N
            qk = _scores(q, k_ptr, k_desc, kv_row, N, stride_kn, BLOCK_N, HEAD_DIM, USE_TMA, True, DOT_PREC, UPCAST)
            acc, l_i, m_i, alpha, tile_sum = _softmax_pv(acc, l_i, m_i, qk, v_ptr, v_desc, kv_row, N, stride_vn,
                                                         qk_scale, BLOCK_N, HEAD_DIM, USE_TMA, True, DOT_PREC,
                                                         UPCAST)
            if RETURN_BLOCK_LSE:
                b_i = b_i * alpha + tile_sum
        if RETURN_BLOCK_LSE:
            tl.store(blse_ptr + tl.full([], NKB - 1, tl.int64) * N, m_i + tl.math.log2(b_i),
                     mask=(rows < N) & (rows * 0 + n_blocks > n_main))

    # Rows with no key block: l = 0 -> o = 0, lse = -inf (as the reference).
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None] * stride_on \
        + tl.arange(0, HEAD_DIM)[None, :]
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=rows[:, None] < N)
    if RETURN_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        tl.store(LSE + (b * H + h).to(tl.int64) * N + rows, lse, mask=rows < N)


def _prune(configs, named_args, **kwargs):
    """Autotune prune: a config's tiles must divide the mask's blocks."""
    args = {**named_args, **kwargs}
    bq, bk = args["BLOCK_Q"], args["BLOCK_K"]
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= bq and c.kwargs["BLOCK_N"] <= bk]
    return keep or configs[:1]


def _triton_config(c: AttnConfig) -> triton.Config:
    return triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "USE_TMA": c.use_tma},
                         num_warps=c.num_warps, num_stages=c.num_stages)


_tuned_kernels: dict[tuple[int, bool], object] = {}


def _autotuned(head_dim: int, tma_ok: bool):
    """The forward wrapped in `triton.autotune` over the opt-in sweep (TMA configs only where usable)."""
    key = (head_dim, tma_ok)
    if key not in _tuned_kernels:
        configs = [c for c in attention_autotune_configs(head_dim) if tma_ok or not c.use_tma]
        _tuned_kernels[key] = triton.autotune(
            [_triton_config(c) for c in configs],
            key=["HEAD_DIM", "BLOCK_Q", "BLOCK_K", "N", "RETURN_LSE", "DOT_PREC"],
            prune_configs_by={"early_config_prune": _prune},
        )(_block_sparse_fwd)
    return _tuned_kernels[key]


# --------------------------------------------------------------------------------------------- host side
_order_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _work_order(mask: BlockSparseMask, order: str) -> torch.Tensor:
    """``[H * NQB]`` int32 work items (``head * NQB + q_block``) in launch order.

    ``"lpt"``: heaviest first over all heads (longest-processing-time). ``"head"``: head by head, heaviest
    first within each head (programs running together share one head's keys and values in L2). ``"natural"``:
    head by head, query blocks in tile order (neighbouring query tiles, which read mostly the same key blocks,
    run together).
    """
    if order == "lpt":
        return mask.heaviest_first().contiguous()
    if order == "head":
        counts = mask.kv_num_blocks.long()
        key = torch.arange(counts.shape[0], device=counts.device)[:, None] * (counts.shape[1] * 256 + 1) - counts
        return torch.argsort(key.flatten(), stable=True).to(torch.int32).contiguous()
    if order == "natural":
        return torch.arange(mask.kv_num_blocks.numel(), dtype=torch.int32, device=mask.kv_num_blocks.device)
    raise ValueError(f"order must be 'lpt', 'head' or 'natural', got {order!r}")


def _mask_tensors(mask: BlockSparseMask, order: str = "lpt") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kv_num_blocks, kv_indices, work order), contiguous int32, cached per mask object and order."""
    per_mask = _order_cache.setdefault(mask, {})
    if order not in per_mask:
        per_mask[order] = (mask.kv_num_blocks.contiguous(), mask.kv_indices.contiguous(), _work_order(mask, order))
    return per_mask[order]


def _dense_split(mask: BlockSparseMask, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense head indices ``[Hd]`` int64, the other heads' work items in launch order ``[(H - Hd) * NQB]``
    int32), on the mask's device, cached per mask object and order.

    A head is dense when every query block lists all ``NKB`` key blocks (``kv_num_blocks == NKB``; the lists are
    strictly ascending in ``[0, NKB)``, so the count alone says it). One device-to-host sync per mask.
    """
    per_mask = _order_cache.setdefault(mask, {})
    key = ("dense_split", order)
    if key not in per_mask:
        full = (mask.kv_num_blocks == mask.num_kv_blocks).all(1)  # [H] bool, on device
        dense_idx = full.nonzero().flatten()
        items = _mask_tensors(mask, order)[2]
        keep = ~full[items.long() // mask.num_q_blocks]
        per_mask[key] = (dense_idx, items[keep].contiguous())
    return per_mask[key]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Dense attention by PyTorch's fused SDPA; on CUDA cuDNN first (on the H200 it beats flash by ~1.6x at
    69,120-75,600 tokens; BENCHMARKS.md), then flash, efficient, math, whichever accepts the shape."""
    if q.device.type != "cuda":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    prio = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(prio, set_priority=True):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def _tma_allocator(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cpu" if INTERPRET else "cuda")


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA needs 16-byte aligned bases and row strides."""
    for t in tensors:
        es = t.element_size()
        if t.data_ptr() % 16 or (t.stride(2) * es) % 16 or t.stride(3) != 1:
            return False
    return True


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    out: torch.Tensor | None = None,
    config: AttnConfig | None = None,
    dense_heads: str | None = None,
    block_lse: torch.Tensor | None = None,
):
    """Block-sparse attention forward with the Triton kernel (dense heads by PyTorch's SDPA, by default).

    Args:
        q, k, v: ``[B, H, N, D]`` in tile order, one dtype (bf16/fp16/fp32), one device (CUDA, or CPU under
            ``TRITON_INTERPRET=1``), ``D`` in {64, 128}; the last dim must be contiguous (else it is copied).
        mask: `BlockSparseMask` with ``H`` heads and ``seq_len == N``, on q's device.
        scale: softmax scale, default ``1/sqrt(D)``.
        return_lse: also return the natural-log row logsumexp ``[B, H, N]`` float32.
        out: optional preallocated ``[B, H, N, D]`` output in q's dtype (benchmarks poison it first).
        config: launch config override (benchmarks and tests); default is the fixed per-GPU config, or an
            autotune sweep when ``COMPACT_ATTN_AUTOTUNE=1``.
        dense_heads: ``"sdpa"`` or ``"kernel"``, overriding ``config.dense_heads`` (see `AttnConfig`): where
            heads whose mask keeps every block run. SDPA is used for bf16/fp16 without ``return_lse`` only.
        block_lse: optional float32 ``[B, H, NKB, N]`` output, filled by the caller with ``-inf``: per key block
            the mask lists and query row, the base-2 log of the block's share of the softmax denominator (see
            `_block_sparse_fwd`; `compact_attn.mass_kernel.block_mass_from_block_lse` makes the block mass).
            Runs the Triton-language kernel at the fixed config (no SDPA heads, no warp specialisation).

    Returns:
        ``o`` ``[B, H, N, D]`` in q's dtype, and ``lse`` when ``return_lse``. Without ``out``, a mask whose
        heads are all dense returns SDPA's own output tensor.

    Raises:
        ValueError: bad inputs (`check_attention_inputs`), block sizes, ``out`` or ``dense_heads``.
    """
    scale = check_attention_inputs(q, k, v, mask, scale)
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1); q is on {q.device}")
    bq, bk = mask.block_q, mask.block_k
    if bq not in _BLOCK_SIZES or bk not in _BLOCK_SIZES:
        raise ValueError(f"the triton backend needs block_q and block_k in {_BLOCK_SIZES}; got ({bq}, {bk})")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, H, N, D = q.shape
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device
                            or out.stride(-1) != 1):
        raise ValueError(f"out must be a [B, H, N, D] {q.dtype} tensor on {q.device} with contiguous last dim")
    c = config or attention_config(q.device, D, q.dtype)
    if block_lse is not None:
        nkb_ = triton.cdiv(N, bk)
        if (tuple(block_lse.shape) != (B, H, nkb_, N) or block_lse.dtype != torch.float32
                or not block_lse.is_contiguous() or block_lse.device != q.device):
            raise ValueError(f"block_lse must be a contiguous float32 [B, H, NKB, N] = {(B, H, nkb_, N)} tensor on "
                             f"{q.device}")
        dense_heads = "kernel"
    mode = dense_heads or c.dense_heads
    if mode not in DENSE_HEADS:
        raise ValueError(f"dense_heads must be one of {', '.join(DENSE_HEADS)}, got {mode!r}")
    order_name = c.order
    if order_name == "auto":
        order_name = "head" if 2 * N * D * q.element_size() > HEAD_ORDER_KV_BYTES else "lpt"
    kv_num, kv_idx, order = _mask_tensors(mask, order_name)
    nqb, nkb = mask.num_q_blocks, mask.num_kv_blocks
    dense_idx = None
    if mode == "sdpa" and not return_lse and q.dtype in (torch.float16, torch.bfloat16):
        dense_idx, order = _dense_split(mask, order_name)  # order: the other heads' items only
        if dense_idx.numel() == H:  # every head dense: one SDPA call, no kernel launch
            o = _sdpa(q, k, v, scale)
            return o if out is None else out.copy_(o)
    if out is None:
        out = torch.empty_like(q)
    if dense_idx is not None and dense_idx.numel():
        # Dense heads gathered, attended by SDPA and scattered into out; the kernel below does the other heads.
        o = _sdpa(*(t.index_select(1, dense_idx) for t in (q, k, v)), scale)
        out.index_copy_(1, dense_idx, o)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device) if return_lse else out  # dummy if unused
    if block_lse is None and c.warp_specialized and attention_ws.available(q.device, D, q.dtype, bq, bk):
        # One flat [B * H * N, D] TMA descriptor per tensor: q, k, v contiguous with 16-byte aligned bases.
        qc, kc, vc = (t.contiguous() for t in (q, k, v))
        qc, kc, vc = (t if t.data_ptr() % 16 == 0 else t.clone() for t in (qc, kc, vc))
        try:
            if order.numel():
                attention_ws.block_sparse_attention_ws(qc, kc, vc, out, lse, kv_num, kv_idx, order, B, H, N, nqb,
                                                       nkb, scale * LOG2E, return_lse, pingpong=c.pingpong,
                                                       persistent=c.persistent)
            return (out, lse) if return_lse else out
        except CompilationError as e:  # a Triton whose Gluon differs: the Triton-language kernel below instead
            attention_ws.disable(str(e).splitlines()[-1] if str(e) else type(e).__name__)

    tma_ok = HAS_TMA and _tma_ok(q, k, v) and (INTERPRET or torch.cuda.get_device_capability(q.device)[0] >= 9)
    if tma_ok:
        triton.set_allocator(_tma_allocator)
    upcast = INTERPRET and q.dtype == torch.bfloat16
    common = dict(HEAD_DIM=D, BLOCK_Q=bq, BLOCK_K=bk, RETURN_LSE=return_lse, UPCAST=upcast,
                  DOT_PREC="ieee" if q.dtype == torch.float32 or upcast else "tf32")
    args = (q, k, v, out, lse, lse if block_lse is None else block_lse, kv_num, kv_idx, order,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            kv_idx.stride(0), kv_idx.stride(1), B, H, N, nqb, nkb)
    n_items = order.numel() * B  # the listed (head, query block) items, each for every batch element

    has_tail = N % bk != 0
    if config is None and block_lse is None and autotune_enabled():
        kernel = _autotuned(D, tma_ok)

        def grid(meta):
            return (n_items * (bq // meta["BLOCK_M"]),)

        kernel[grid](*args, scale * LOG2E, HAS_TAIL=has_tail, EVEN_M=N % bq == 0, **common)
    else:
        bm, bn = min(c.block_m, bq), min(c.block_n, bk)
        use_tma = c.use_tma and tma_ok
        _block_sparse_fwd[(n_items * (bq // bm),)](
            *args, scale * LOG2E,
            BLOCK_M=bm, BLOCK_N=bn, HAS_TAIL=has_tail, EVEN_M=N % bq == 0, USE_TMA=use_tma,
            RETURN_BLOCK_LSE=block_lse is not None, num_warps=c.num_warps, num_stages=c.num_stages, **common,
        )
    return (out, lse) if return_lse else out
