"""Warp-specialised block-sparse attention forward for Hopper (sm_90), written in Gluon.

What it computes: the same function as `compact_attn.attention` (and `compact_attn.reference`): for every
(batch, head, query row) the softmax attention over the keys of the key blocks its query block lists, plus
optionally the natural-log row logsumexp.

Why a second kernel: the Triton-language kernel runs one warpgroup per program and cannot overlap a tile's
softmax with its own matrix multiplies (Triton 3.6 neither warp-specialises that loop nor keeps a wgmma in
flight across the softmax; benchmarks/KERNEL_NOTES.md sections 3, 4 and 8). Gluon, Triton's lower-level
dialect, exposes what FlashAttention-3 uses for that: warp specialisation, mbarriers and asynchronous wgmma.

How (FlashAttention-3's structure, with a key-block list instead of a key range): work units are (query block
of 128 rows, batch) in the Triton kernel's launch order (`attention._work_order`); persistent programs, one per
SM, take the next unit from a global counter (or one program per unit), each with three partitions:
- a producer warp that takes the unit, posts it to the consumers, loads the query tile and then, for each listed
  key block, its K and V tiles with TMA into a two-stage ring (separate full/empty mbarriers for K and for V);
- two consumer warpgroups, each owning 64 of the 128 query rows. Each issues ``S_j = Q K_j^T`` and
  ``O += P_{j-1} V_{j-1}`` asynchronously, waits for ``S_j`` only, and computes the softmax of tile ``j``
  while the tensor cores still run the previous tile's ``P V`` (intra-warpgroup overlap);
- optionally (``PINGPONG``) the two warpgroups take turns issuing their matrix multiplies (two mbarriers),
  so one's softmax runs while the other's multiplies do (inter-warpgroup ping-pong).
Online softmax in base 2 with ``log2(e)`` folded into the scale, as in the Triton kernel. Only the ragged last
key block (``N % 128 != 0``, always last in an ascending list) is element-masked.

Limits, stated plainly:
- Hopper only (sm_90, Gluon's wgmma and TMA), Triton >= 3.6 (the Gluon API this is written against);
  `available` says whether this build and device can run it. Gluon has no interpreter mode, so the CPU
  tests compile it for sm_90 (`compile_sm90`) and check its resources, and the GPU checks its output against
  the reference (benchmarks/kernel_correctness.py, benchmarks/kernel.py, ``compactsearch validate --kernel triton``).
- Mask blocks of 128 x 128 only; head dim 64 or 128; bf16 or fp16; q, k, v contiguous ``[B, H, N, D]``
  (the wrapper copies otherwise), so one flat ``[B * H * N, D]`` TMA descriptor serves every head: rows a
  ragged last block reads past a head's end belong to the next head (or are zero-filled past the tensor's
  end); their scores are masked (keys) or their outputs never stored (queries).
"""

from __future__ import annotations

import inspect
import warnings

import torch
import triton

try:  # Gluon with the list form of `warp_specialize` (Triton >= 3.6); else `available` is False
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAS_GLUON = (hasattr(gl, "warp_specialize") and hasattr(gl, "NVMMADistributedLayout")
                 and next(iter(inspect.signature(gl.warp_specialize).parameters)) == "functions_and_args")
    # The TMA load was renamed: `async_copy_global_to_shared` (Triton 3.5-3.6), `async_load` (3.7+).
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
except ImportError:  # pragma: no cover - depends on the Triton build
    HAS_GLUON = False

__all__ = ["HAS_GLUON", "available", "block_sparse_attention_ws", "compile_sm90", "disable"]

_disabled: str | None = None  # why the kernel was turned off for this process (a compile failure), if it was

BLOCK_M = 128  # query rows per program (two consumer warpgroups of 64)
BLOCK_N = 128  # keys per tile = the mask's key block
WG_M = 64
STAGES = 2
MAXNREG = 168  # 12 warps x 32 threads x 168 = 64,512 of the 65,536 registers: one program per SM
CONSUMER_REGS = 240
PRODUCER_REGS = 24
if HAS_GLUON:  # the kernel reads these as compile-time constants
    _BM, _BN, _WGM, _ST, _CREGS, _PREGS = (gl.constexpr(x) for x in (BLOCK_M, BLOCK_N, WG_M, STAGES,
                                                                         CONSUMER_REGS, PRODUCER_REGS))


if HAS_GLUON:

    @gluon.jit
    def _decode(ORDER, it, B, NQB):
        """(batch, head, query block, item) of work unit ``it`` (``item * B + batch`` in launch order)."""
        item = gl.load(ORDER + it // B)
        return it % B, item // NQB, item % NQB, item

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, k_empty, v_full,
                  v_empty, unit_smem, KV_NUM, KV_IDX, ORDER, COUNTER, B, H, N, NQB, stride_idx_h, stride_idx_q,
                  TOTAL):
        """One warp. Per work unit: waits until the consumers are done with the previous query tile, posts the
        unit's index to them through shared memory, loads the query tile, then K and V of every listed key block
        through the two-stage ring (slots counted across units). The first unit is the program id, the next ones
        come from a global counter (dynamic scheduling in launch order); past the end it posts ``TOTAL``."""
        slot: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
        t = 0  # tiles issued so far (ring position)
        k = 0  # work units so far (query buffer phase)
        it = gl.program_id(0)
        while it < TOTAL:
            b, h, qb, item = _decode(ORDER, it, B, NQB)
            base = (b * H + h) * N
            mbarrier.wait(q_empty, (k & 1) ^ 1)
            unit_smem.store(gl.full([1], it, gl.int32, slot))
            mbarrier.expect(q_full, q_desc.block_type.nbytes)
            _tma_load(q_desc, [base + qb * _BM, 0], q_full, q_smem)
            n = gl.load(KV_NUM + item)
            idx_ptr = KV_IDX + h.to(gl.int64) * stride_idx_h + qb * stride_idx_q
            for j in range(n):
                s = (t + j) % _ST
                ph = ((t + j) // _ST) & 1
                row = base + gl.load(idx_ptr + j) * _BN
                mbarrier.wait(k_empty.index(s), ph ^ 1)
                mbarrier.expect(k_full.index(s), k_desc.block_type.nbytes)
                _tma_load(k_desc, [row, 0], k_full.index(s), k_smem.index(s))
                mbarrier.wait(v_empty.index(s), ph ^ 1)
                mbarrier.expect(v_full.index(s), v_desc.block_type.nbytes)
                _tma_load(v_desc, [row, 0], v_full.index(s), v_smem.index(s))
            t += n
            k += 1
            it = gl.num_programs(0) + gl.atomic_add(COUNTER, 1)
        mbarrier.wait(q_empty, (k & 1) ^ 1)
        unit_smem.store(gl.full([1], TOTAL, gl.int32, slot))
        mbarrier.arrive(q_full, count=1)

    @gluon.jit
    def _turn_wait(turn, WG: gl.constexpr, r, PINGPONG: gl.constexpr):
        """Ping-pong: wait until it is this warpgroup's turn to issue (round ``r``); WG 0 goes first."""
        if PINGPONG:
            if WG == 0:
                mbarrier.wait(turn.index(0), (r & 1) ^ 1)
            else:
                mbarrier.wait(turn.index(1), r & 1)

    @gluon.jit
    def _turn_pass(turn, WG: gl.constexpr, PINGPONG: gl.constexpr):
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - WG), count=1)

    @gluon.jit
    def _tail_mask(s, j, n, tail_last, N, NKB, s_layout: gl.constexpr, HAS_TAIL: gl.constexpr):
        """Keys past N in the ragged last key block (the list's last entry when listed) score -inf."""
        if HAS_TAIL:
            if tail_last & (j == n - 1):
                cols = (NKB - 1) * _BN + gl.arange(0, _BN, layout=gl.SliceLayout(0, s_layout))
                s = gl.where(gl.expand_dims(cols < N, 0), s, float("-inf"))
        return s

    @gluon.jit
    def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, q_full, q_empty, k_full, k_empty, v_full, v_empty,
                  unit_smem, KV_NUM, KV_IDX, ORDER, B, H, N, NQB, stride_idx_h, stride_idx_q, TOTAL, qk_scale,
                  O, LSE, stride_ob, stride_oh, stride_on, NKB,
                  HEAD_DIM: gl.constexpr, HAS_TAIL: gl.constexpr, RETURN_LSE: gl.constexpr,
                  PINGPONG: gl.constexpr, turn):
        """One warpgroup: rows ``WG * 64 ..`` of each work unit's query tile (the unit index comes from the
        producer), online softmax over its listed key blocks; the query buffer is released after the unit's last
        ``Q K^T``, before its last ``P V`` and the store, so the producer loads the next unit meanwhile."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, _BN, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        dtype: gl.constexpr = q_smem.dtype
        q = q_smem.slice(WG * _WGM, _WGM)
        zero_s = gl.zeros([_WGM, _BN], gl.float32, s_layout)
        slot: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        t = 0  # tiles consumed so far (ring position)
        r = 0  # issue rounds so far (ping-pong turn)
        k = 0  # work units so far (query buffer phase)
        mbarrier.wait(q_full, 0)
        it = gl.max(unit_smem.load(slot), 0)
        while it < TOTAL:
            b, h, qb, item = _decode(ORDER, it, B, NQB)
            n = gl.load(KV_NUM + item)
            idx_ptr = KV_IDX + h.to(gl.int64) * stride_idx_h + qb * stride_idx_q
            tail_last = gl.load(idx_ptr + gl.maximum(n - 1, 0)) == NKB - 1
            m_i = gl.full([_WGM], float("-inf"), gl.float32, row_s)
            l_i = gl.zeros([_WGM], gl.float32, row_s)
            acc = gl.zeros([_WGM, HEAD_DIM], gl.float32, o_layout)
            if n > 0:
                # round 0: S_0 and its softmax
                s0 = t % _ST
                _turn_wait(turn, WG, r, PINGPONG)
                mbarrier.wait(k_full.index(s0), (t // _ST) & 1)
                s_tok = warpgroup_mma(q, k_smem.index(s0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                _turn_pass(turn, WG, PINGPONG)
                s = warpgroup_mma_wait(0, deps=[s_tok])
                mbarrier.arrive(k_empty.index(s0), count=1)
                mbarrier.arrive(q_empty, count=1, pred=n == 1)
                s = _tail_mask(s, 0, n, tail_last, N, NKB, s_layout, HAS_TAIL)
                m_i = gl.max(s, 1) * qk_scale
                p = gl.exp2(s * qk_scale - gl.expand_dims(m_i, 1))
                l_i = gl.sum(p, 1)
                p16 = gl.convert_layout(p.to(dtype), p_layout)
                for j in range(1, n):
                    sj = (t + j) % _ST
                    sp = (t + j - 1) % _ST
                    _turn_wait(turn, WG, r + j, PINGPONG)
                    mbarrier.wait(k_full.index(sj), ((t + j) // _ST) & 1)
                    s_tok = warpgroup_mma(q, k_smem.index(sj).permute((1, 0)), zero_s, use_acc=False,
                                          is_async=True)
                    mbarrier.wait(v_full.index(sp), ((t + j - 1) // _ST) & 1)
                    o_tok = warpgroup_mma(p16, v_smem.index(sp), acc, is_async=True)
                    _turn_pass(turn, WG, PINGPONG)
                    s = warpgroup_mma_wait(1, deps=[s_tok])  # S_j done; P_{j-1} V_{j-1} may still run
                    mbarrier.arrive(k_empty.index(sj), count=1)
                    mbarrier.arrive(q_empty, count=1, pred=j == n - 1)
                    s = _tail_mask(s, j, n, tail_last, N, NKB, s_layout, HAS_TAIL)
                    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
                    alpha = gl.exp2(m_i - m_new)
                    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
                    l_i = l_i * alpha + gl.sum(p, 1)
                    m_i = m_new
                    acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])
                    mbarrier.arrive(v_empty.index(sp), count=1)
                    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                    p16 = gl.convert_layout(p.to(dtype), p_layout)
                sl = (t + n - 1) % _ST
                _turn_wait(turn, WG, r + n, PINGPONG)
                mbarrier.wait(v_full.index(sl), ((t + n - 1) // _ST) & 1)
                o_tok = warpgroup_mma(p16, v_smem.index(sl), acc, is_async=True)
                _turn_pass(turn, WG, PINGPONG)
                acc, p16 = warpgroup_mma_wait(0, deps=[o_tok, p16])
                mbarrier.arrive(v_empty.index(sl), count=1)
                r += n + 1
            else:
                mbarrier.arrive(q_empty, count=1)
            t += n
            k += 1

            # Rows with no key block: l = 0 -> o = 0, lse = -inf (as the reference).
            empty = l_i == 0.0
            l_safe = gl.where(empty, 1.0, l_i)
            o = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)
            rows = qb * _BM + WG * _WGM + gl.arange(0, _WGM, layout=row_o)
            cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
            o_ptrs = (O + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
                      + gl.expand_dims(rows.to(gl.int64) * stride_on, 1) + gl.expand_dims(cols, 0))
            gl.store(o_ptrs, o.to(dtype), mask=gl.expand_dims(rows < N, 1))
            if RETURN_LSE:
                lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
                rows_s = qb * _BM + WG * _WGM + gl.arange(0, _WGM, layout=row_s)
                gl.store(LSE + (b * H + h).to(gl.int64) * N + rows_s, lse, mask=rows_s < N)
            mbarrier.wait(q_full, k & 1)
            it = gl.max(unit_smem.load(slot), 0)

    @gluon.jit
    def _block_sparse_fwd_ws(q_desc, k_desc, v_desc, O, LSE, KV_NUM, KV_IDX, ORDER, COUNTER,
                             stride_ob, stride_oh, stride_on, stride_idx_h, stride_idx_q,
                             B, H, N, NQB, NKB, TOTAL, qk_scale,
                             HEAD_DIM: gl.constexpr, HAS_TAIL: gl.constexpr, RETURN_LSE: gl.constexpr,
                             PINGPONG: gl.constexpr):
        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [_BM, HEAD_DIM], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [_ST, _BN, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [_ST, _BN, HEAD_DIM], v_desc.layout)
        q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_full = gl.allocate_shared_memory(gl.int64, [_ST, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [_ST, 1], mbarrier.MBarrierLayout())
        v_full = gl.allocate_shared_memory(gl.int64, [_ST, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [_ST, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        unit_smem = gl.allocate_shared_memory(gl.int32, [1], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        mbarrier.init(q_full, count=1)
        mbarrier.init(q_empty, count=2)  # both consumer warpgroups release the query tile
        for i in gl.static_range(_ST):
            mbarrier.init(k_full.index(i), count=1)
            mbarrier.init(v_full.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)  # both consumer warpgroups release a stage
            mbarrier.init(v_empty.index(i), count=2)
        for i in gl.static_range(2):
            mbarrier.init(turn.index(i), count=1)
        gl.warp_specialize([
            (_consumer, (0, q_smem, k_smem, v_smem, q_full, q_empty, k_full, k_empty, v_full, v_empty, unit_smem,
                         KV_NUM, KV_IDX, ORDER, B, H, N, NQB, stride_idx_h, stride_idx_q, TOTAL, qk_scale, O, LSE,
                         stride_ob, stride_oh, stride_on, NKB, HEAD_DIM, HAS_TAIL, RETURN_LSE, PINGPONG, turn)),
            (_consumer, (1, q_smem, k_smem, v_smem, q_full, q_empty, k_full, k_empty, v_full, v_empty, unit_smem,
                         KV_NUM, KV_IDX, ORDER, B, H, N, NQB, stride_idx_h, stride_idx_q, TOTAL, qk_scale, O, LSE,
                         stride_ob, stride_oh, stride_on, NKB, HEAD_DIM, HAS_TAIL, RETURN_LSE, PINGPONG, turn)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, k_empty, v_full,
                         v_empty, unit_smem, KV_NUM, KV_IDX, ORDER, COUNTER, B, H, N, NQB, stride_idx_h, stride_idx_q,
                         TOTAL)),
        ], [4, 1], [_CREGS, _PREGS])


def available(device: torch.device, head_dim: int, dtype: torch.dtype, block_q: int, block_k: int) -> bool:
    """True when this kernel can run these inputs: Gluon present, a Hopper GPU (sm_90 exactly), 128 x 128 mask
    blocks, head dim 64/128, bf16/fp16."""
    if not HAS_GLUON or _disabled or device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device) != (9, 0):
        return False
    return block_q == BLOCK_M and block_k == BLOCK_N and head_dim in (64, 128) and dtype in (torch.bfloat16,
                                                                                                  torch.float16)


def disable(reason: str) -> None:
    """Turn the kernel off for this process (the Triton-language kernel runs instead), with one warning."""
    global _disabled
    if _disabled is None:
        warnings.warn(f"compact_attn: the warp-specialised Hopper kernel failed to build on this Triton "
                      f"({triton.__version__}); using the Triton-language kernel instead. {reason}", stacklevel=3)
    _disabled = reason


def _gl_dtype(dtype: torch.dtype):
    return gl.bfloat16 if dtype == torch.bfloat16 else gl.float16


_sm_count: dict[int, int] = {}


def block_sparse_attention_ws(q, k, v, out, lse, kv_num, kv_idx, order, B, H, N, nqb, nkb, qk_scale,
                              return_lse: bool, pingpong: bool = True, persistent: bool = True) -> None:
    """Launch the warp-specialised forward into ``out`` (and ``lse``): the host side of `_block_sparse_fwd_ws`.

    ``q, k, v`` are contiguous ``[B, H, N, D]``; ``order`` lists the (head, query block) items to run (each for
    every batch element), the work units being ``item * B + batch`` in that order; ``qk_scale`` is the softmax
    scale times log2(e). ``persistent``: one program per SM, each taking the next unit of the order from a
    global counter when it is done with one (its loads then overlap the current unit's last product and
    store); else one program per unit.
    Inputs are checked by the caller (`compact_attn.attention.block_sparse_attention_triton`).
    """
    D = q.shape[-1]
    layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], _gl_dtype(q.dtype))
    q_desc, k_desc, v_desc = (TensorDescriptor(t, [B * H * N, D], [D, 1], [BLOCK_M, D], layout) for t in (q, k, v))
    total = order.numel() * B
    dev = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if dev not in _sm_count:
        _sm_count[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    grid = (min(total, _sm_count[dev]) if persistent else total,)
    counter = torch.zeros(1, dtype=torch.int32, device=q.device)  # next work unit past the first grid's
    _block_sparse_fwd_ws[grid](
        q_desc, k_desc, v_desc, out, lse, kv_num, kv_idx, order, counter,
        out.stride(0), out.stride(1), out.stride(2), kv_idx.stride(0), kv_idx.stride(1),
        B, H, N, nqb, nkb, total, qk_scale,
        HEAD_DIM=D, HAS_TAIL=N % BLOCK_N != 0, RETURN_LSE=return_lse, PINGPONG=pingpong,
        num_warps=4, maxnreg=MAXNREG,
    )


def compile_sm90(head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, has_tail: bool = True,
                 return_lse: bool = False, pingpong: bool = True):
    """Compile the kernel for sm_90 without a GPU (Triton's own ptxas); returns the compiled kernel, whose
    ``asm`` holds the PTX/SASS-level artefacts and ``metadata`` the shared memory. For tests and notes."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M, head_dim], _gl_dtype(dtype))
    ty = "bf16" if dtype == torch.bfloat16 else "fp16"
    desc = f"tensordesc<{ty}[{BLOCK_M}, {head_dim}],{layout!r}>"
    sig = {"q_desc": desc, "k_desc": desc, "v_desc": desc, "O": f"*{ty}", "LSE": "*fp32", "KV_NUM": "*i32",
           "KV_IDX": "*i32", "ORDER": "*i32", "COUNTER": "*i32", "stride_ob": "i32", "stride_oh": "i32",
           "stride_on": "i32", "stride_idx_h": "i32", "stride_idx_q": "i32", "B": "i32", "H": "i32", "N": "i32",
           "NQB": "i32", "NKB": "i32", "TOTAL": "i32", "qk_scale": "fp32", "HEAD_DIM": "constexpr",
           "HAS_TAIL": "constexpr", "RETURN_LSE": "constexpr", "PINGPONG": "constexpr"}
    consts = {"HEAD_DIM": head_dim, "HAS_TAIL": has_tail, "RETURN_LSE": return_lse, "PINGPONG": pingpong}
    src = GluonASTSource(_block_sparse_fwd_ws, sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": MAXNREG})
