"""The Triton attention kernel (interpreter mode, CPU) against the PyTorch reference, and the wrappers' errors.

Every test draws fresh random inputs, poisons outputs with NaN first and checks they are fully written.
Tolerance: ``err(kernel, fp32 ref) <= 2 * err(PyTorch in the same low precision, fp32 ref) + atol`` with
relative Frobenius errors. Sizes are tiny (a few hundred tokens): the interpreter is slow. The block-mass kernel's
tests are in tests/test_kernel_mass.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import compact_attn  # noqa: E402
from compact_attn import BlockSparseMask, block_mass, block_sparse_attention, reference  # noqa: E402
from compact_attn._config import INTERPRET, AttnConfig  # noqa: E402
from compact_attn.attention import block_sparse_attention_triton  # noqa: E402

if not INTERPRET:  # pragma: no cover - a misconfigured run must fail loudly, not skip
    raise RuntimeError("tests/test_kernels.py needs TRITON_INTERPRET=1 set before triton is imported")

ATOL = 1e-5


def _rand(*shape, dtype):
    return torch.randn(*shape, dtype=dtype)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def _random_mask(H: int, N: int, bq: int, bk: int, density: float, text: str = "none", text_tokens: int = 0,
                 empty_row: bool = False) -> BlockSparseMask:
    """Random block mask; diagonal kept; text blocks (front or back) dense both ways; optionally one empty row."""
    nq, nk = math.ceil(N / bq), math.ceil(N / bk)
    dense = torch.rand(H, nq, nk) < density
    qb = torch.arange(nq)
    dense[:, qb, torch.clamp(qb * bq // bk, max=nk - 1)] = True
    if text == "front":
        dense[:, : math.ceil(text_tokens / bq), :] = True
        dense[:, :, : math.ceil(text_tokens / bk)] = True
    elif text == "back":
        dense[:, (N - text_tokens) // bq :, :] = True
        dense[:, :, (N - text_tokens) // bk :] = True
    if empty_row:
        dense[0, nq // 2] = False
    return BlockSparseMask.from_dense(dense, bq, bk, N)


def _torch_lowp(q, k, v, mask: BlockSparseMask, scale: float | None = None) -> torch.Tensor:
    """PyTorch attention computed in the inputs' dtype (scores, softmax and PV in bf16/fp16/fp32, as eager
    PyTorch does it); rows with no keys -> 0."""
    tm = mask.token_mask()
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    s = s.masked_fill(~tm[None], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.matmul(p, v)


def _check_attention(q, k, v, mask, config=None):
    out = torch.full_like(q, float("nan"))
    o, lse = block_sparse_attention_triton(q, k, v, mask, return_lse=True, out=out, config=config)
    assert o is out
    assert not torch.isnan(o).any(), "kernel left output elements unwritten (NaN poison survived)"
    ref_o, ref_lse = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask, return_lse=True)
    low = _torch_lowp(q, k, v, mask)
    err, err_torch = _rel(o, ref_o), _rel(low, ref_o)
    assert err <= 2 * err_torch + ATOL, f"kernel error {err:.3e} > 2 x torch {q.dtype} error {err_torch:.3e} + atol"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse is -inf exactly on rows with no key block"
    assert torch.allclose(lse[finite], ref_lse[finite], atol=1e-3, rtol=1e-4)
    return o


# (name, B, H, N, D, dtype, block_q, block_k, density, text, text_tokens)
ATTN_CASES = [
    ("grid3x5x7-bf16-d64", 1, 2, 105, 64, torch.bfloat16, 64, 64, 0.5, "none", 0),
    ("grid2x9x15+text-back-fp16-d128", 1, 2, 270 + 26, 128, torch.float16, 128, 128, 0.4, "back", 26),
    ("grid3x5x13+text-front-bf16-d128", 2, 1, 195 + 13, 128, torch.bfloat16, 64, 64, 0.4, "front", 13),
    ("grid13x4x3-fp32-d64", 1, 2, 156, 64, torch.float32, 64, 64, 0.6, "none", 0),
    ("bq128-bk64-fp16-d64", 1, 2, 333, 64, torch.float16, 128, 64, 0.3, "back", 40),
    ("bq64-bk128-bf16-d128", 1, 1, 200, 128, torch.bfloat16, 64, 128, 0.5, "none", 0),
]


@pytest.mark.parametrize("case", ATTN_CASES, ids=[c[0] for c in ATTN_CASES])
def test_attention_matches_reference(case):
    _, B, H, N, D, dtype, bq, bk, density, text, text_tokens = case
    q, k, v = (_rand(B, H, N, D, dtype=dtype) for _ in range(3))
    mask = _random_mask(H, N, bq, bk, density, text, text_tokens)
    _check_attention(q, k, v, mask)


def test_attention_sub_tiles_and_split_query_blocks():
    """BLOCK_M < block_q (two programs per query block) and BLOCK_N < block_k (two tiles per key block) with a
    ragged tail that leaves the second tile of the last key block empty."""
    q, k, v = (_rand(1, 2, 300, 64, dtype=torch.bfloat16) for _ in range(3))
    mask = _random_mask(2, 300, 128, 128, 0.5, "back", 20)
    _check_attention(q, k, v, mask, config=AttnConfig(block_m=64, block_n=32, num_warps=4, num_stages=1))


def test_attention_tensor_descriptor_path():
    """The TMA path (device-side tensor descriptors, per-head bounds) with a ragged tail and strided inputs."""
    base = _rand(1, 190, 2, 64, dtype=torch.float16)  # [B, N, H, D] as models produce it
    q = base.transpose(1, 2)
    k, v = (_rand(1, 190, 2, 64, dtype=torch.float16).transpose(1, 2) for _ in range(2))
    mask = _random_mask(2, 190, 64, 64, 0.5, "front", 30)
    _check_attention(q, k, v, mask, config=AttnConfig(block_m=64, block_n=64, num_warps=4, num_stages=1,
                                                       use_tma=True))


def _growing_scores_qkv(N: int, D: int, dtype):
    """q, k, v whose score rows keep growing along the keys (a ramp on k), so a row's running max moves well
    after its first tile: the online softmax rescales its accumulator many times along the row."""
    q, k, v = (_rand(1, 2, N, D, dtype=torch.float32) for _ in range(3))
    k = k * torch.linspace(0.5, 6.0, N)[:, None]
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("use_tma", [False, True])
@pytest.mark.parametrize("N", [256, 230])
def test_attention_growing_scores_empty_and_tail_only_rows(use_tma, N):
    """Rows whose max grows mid-row, a query block with no key block, and one that lists only the (ragged) last
    key block."""
    q, k, v = _growing_scores_qkv(N, 64, torch.bfloat16)
    mask = _random_mask(2, N, 64, 64, 0.6, empty_row=True)
    dense = mask.to_dense().clone()
    dense[1, 1] = False
    dense[1, 1, -1] = True  # only the last key block
    mask = BlockSparseMask.from_dense(dense, 64, 64, N)
    cfg = AttnConfig(block_m=64, block_n=32, num_warps=4, num_stages=1, use_tma=use_tma)
    o = _check_attention(q, k, v, mask, config=cfg)
    assert torch.all(o[0, 0, (mask.num_q_blocks // 2) * 64 : (mask.num_q_blocks // 2 + 1) * 64] == 0)


@pytest.mark.parametrize("use_tma", [False, True])
def test_attention_climbing_scores_move_the_running_max(use_tma):
    """Scores that climb by ~40 log2 units per key tile (~350 along the row): a kernel that never moved its
    running max would overflow (2^128) into inf/NaN. (The softmax sits on the last few keys, so the bf16
    rounding of ``p`` does not average out: a fixed tolerance.)"""
    N, D = 256, 64
    q = torch.ones(1, 2, N, D)
    k = torch.linspace(0.0, 30.0, N)[:, None].expand(N, D)[None, None].repeat(1, 2, 1, 1)
    q, k, v = q.bfloat16(), k.bfloat16(), _rand(1, 2, N, D, dtype=torch.bfloat16)
    mask = BlockSparseMask.dense_mask(2, N, 64, 64)
    cfg = AttnConfig(block_m=64, block_n=32, num_warps=4, num_stages=1, use_tma=use_tma)
    out = torch.full_like(q, float("nan"))
    o, lse = block_sparse_attention_triton(q, k, v, mask, return_lse=True, out=out, config=cfg)
    ref_o, ref_lse = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask, return_lse=True)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    assert _rel(o, ref_o) < 1e-2
    assert torch.allclose(lse, ref_lse, rtol=1e-4)


def test_attention_launch_orders_give_identical_output():
    """Launch orders (global heaviest-first, head by head, tile order): each program's work is unchanged, so the
    outputs are bitwise equal."""
    q, k, v = (_rand(1, 3, 200, 64, dtype=torch.float16) for _ in range(3))
    mask = _random_mask(3, 200, 64, 64, 0.4, "back", 20)
    outs = [_check_attention(q, k, v, mask, config=AttnConfig(block_m=64, block_n=64, num_warps=4, num_stages=1,
                                                                 order=order))
            for order in ("lpt", "head", "natural", "auto")]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    from compact_attn.attention import _work_order

    natural = _work_order(mask, "natural")
    assert torch.equal(natural, torch.arange(3 * mask.num_q_blocks, dtype=torch.int32))
    for order in ("lpt", "head"):  # every order is a permutation of the same work items
        assert torch.equal(torch.sort(_work_order(mask, order)).values, natural)
    with pytest.raises(ValueError, match="order must be"):
        _work_order(mask, "random")


def test_attention_empty_query_block_gives_zero_and_minus_inf_lse():
    q, k, v = (_rand(1, 2, 200, 64, dtype=torch.bfloat16) for _ in range(3))
    mask = _random_mask(2, 200, 64, 64, 0.5, empty_row=True)
    o = _check_attention(q, k, v, mask)
    qb = mask.num_q_blocks // 2
    assert torch.all(o[0, 0, qb * 64 : (qb + 1) * 64] == 0)


def test_attention_real_pattern_mask():
    """A layer mask from the pattern language (local, cross and frame-grouped heads, text at the back)."""
    from compactsearch.geometry import VideoGeometry
    from compactsearch.masks import build_layer_mask
    from compactsearch.patterns import FrameGroup, Pattern, Window
    from compactsearch.tiling import TileLayout

    layout = TileLayout(VideoGeometry(4, 6, 10, 17, "back"), (2, 4, 8), 64)
    nt, nh, nw = layout.grid_thw
    patterns = [
        Pattern.local(0, 1, 1),
        Pattern((FrameGroup(0, nt - 1, (Window(nh, 1), Window(1, nw))),)),
        Pattern((FrameGroup(0, 0, (Window(nh, nw),)), FrameGroup(1, nt - 1, (Window(1, 1),)))),
    ]
    mask = build_layer_mask(patterns, layout)
    q, k, v = (_rand(1, 3, layout.seq_len, 128, dtype=torch.bfloat16) for _ in range(3))
    _check_attention(q, k, v, mask)


# ------------------------------------------------------------------------------- dense heads through SDPA
def _mixed_mask(H: int, N: int, bq: int, bk: int, dense_heads: list[int]) -> BlockSparseMask:
    """Random sparse heads with text blocks at the back and, for the heads listed, every block kept."""
    dense = _random_mask(H, N, bq, bk, 0.4, "back", 26).to_dense().clone()
    dense[dense_heads] = True
    return BlockSparseMask.from_dense(dense, bq, bk, N)


def _check_against_reference(o, q, k, v, mask, scale=None):
    assert not torch.isnan(o).any(), "output elements left unwritten (NaN poison survived)"
    ref = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask, scale=scale)
    err, err_torch = _rel(o, ref), _rel(_torch_lowp(q, k, v, mask, scale), ref)
    assert err <= 2 * err_torch + ATOL, f"error {err:.3e} > 2 x torch {q.dtype} error {err_torch:.3e} + atol"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_heads_split_between_sdpa_and_kernel(dtype, monkeypatch):
    """Heads 1 and 3 of 4 keep every block (a gather that is not one slice), the others are sparse with text
    blocks and a ragged tail (296 = 4 x 64 + 40 tokens), batch 2: SDPA does the dense heads, the kernel the rest,
    into one poisoned output. Dense heads equal SDPA's own output and sparse heads the kernel-only run, bitwise."""
    calls = _spy_sdpa(monkeypatch)
    B, H, N, D, scale = 2, 4, 296, 64, 0.2
    q, k, v = (_rand(B, H, N, D, dtype=dtype) for _ in range(3))
    mask = _mixed_mask(H, N, 64, 64, [1, 3])
    cfg = AttnConfig(block_m=64, block_n=32, num_warps=4, num_stages=1)
    out = torch.full_like(q, float("nan"))
    o = block_sparse_attention_triton(q, k, v, mask, scale=scale, out=out, config=cfg)
    assert o is out and calls == [(B, 2, N, D)]
    _check_against_reference(o, q, k, v, mask, scale)
    kernel_only = block_sparse_attention_triton(q, k, v, mask, scale=scale, config=cfg, dense_heads="kernel")
    _check_against_reference(kernel_only, q, k, v, mask, scale)
    sparse, dense = [0, 2], [1, 3]
    assert torch.equal(o[:, sparse], kernel_only[:, sparse])
    assert torch.equal(o[:, dense], F.scaled_dot_product_attention(q[:, dense], k[:, dense], v[:, dense], scale=scale))
    # the default config (dense_heads="sdpa") and the public entry point take the same path
    assert torch.equal(block_sparse_attention(q, k, v, mask, scale=scale, backend="triton")[:, dense], o[:, dense])


def _spy_sdpa(monkeypatch) -> list[tuple[int, ...]]:
    """Record the q shape of every SDPA call the Triton wrapper makes."""
    import compact_attn.attention as attn

    calls, real = [], attn._sdpa
    monkeypatch.setattr(attn, "_sdpa", lambda q, k, v, scale: calls.append(tuple(q.shape)) or real(q, k, v, scale))
    return calls


@pytest.mark.parametrize("N", [256, 230])
def test_dense_heads_all_dense_is_one_sdpa_call(N, monkeypatch):
    """Every head dense (with and without a ragged tail): one SDPA call, into ``out`` when given."""
    calls = _spy_sdpa(monkeypatch)
    q, k, v = (_rand(2, 3, N, 128, dtype=torch.bfloat16) for _ in range(3))
    mask = BlockSparseMask.dense_mask(3, N, 64, 64)
    out = torch.full_like(q, float("nan"))
    o = block_sparse_attention_triton(q, k, v, mask, out=out)
    assert o is out and calls == [(2, 3, N, 128)]
    _check_against_reference(o, q, k, v, mask)
    assert torch.equal(o, F.scaled_dot_product_attention(q, k, v))
    assert torch.equal(block_sparse_attention_triton(q, k, v, mask), o)  # no out: SDPA's own tensor
    kernel_only = block_sparse_attention_triton(q, k, v, mask, dense_heads="kernel")
    assert len(calls) == 2, "dense_heads='kernel' must not call SDPA"
    _check_against_reference(kernel_only, q, k, v, mask)


def test_dense_heads_stay_on_kernel_with_lse_fp32_or_when_asked(monkeypatch):
    """``return_lse`` (SDPA has no lse), fp32 and ``dense_heads="kernel"`` (argument or environment) keep every
    head on the kernel: bitwise the kernel-only output."""
    N = 200
    mask = _mixed_mask(2, N, 64, 64, [0])
    cfg = AttnConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)
    q, k, v = (_rand(1, 2, N, 64, dtype=torch.bfloat16) for _ in range(3))
    calls = _spy_sdpa(monkeypatch)
    kernel_only = block_sparse_attention_triton(q, k, v, mask, config=cfg, dense_heads="kernel")
    o, lse = block_sparse_attention_triton(q, k, v, mask, return_lse=True, config=cfg)
    assert torch.equal(o, kernel_only) and torch.isfinite(lse).all()
    monkeypatch.setenv("COMPACT_ATTN_DENSE_HEADS", "kernel")
    assert torch.equal(block_sparse_attention(q, k, v, mask, backend="triton"),
                       block_sparse_attention_triton(q, k, v, mask, dense_heads="kernel"))
    monkeypatch.delenv("COMPACT_ATTN_DENSE_HEADS")
    q32, k32, v32 = (t.float() for t in (q, k, v))
    assert torch.equal(block_sparse_attention_triton(q32, k32, v32, mask, config=cfg),
                       block_sparse_attention_triton(q32, k32, v32, mask, config=cfg, dense_heads="kernel"))
    assert calls == [], "no SDPA call on these paths"


def test_dense_heads_default_per_device_and_head_dim(monkeypatch):
    """On Hopper dense heads stay on the kernels (the Gluon kernel beat cuDNN at d=128, the Triton one at d=64;
    without Gluon, d=128 goes to SDPA); elsewhere SDPA; the environment wins."""
    import compact_attn._config as cfg

    cuda = torch.device("cuda")
    assert cfg.dense_heads_default(torch.device("cpu"), 64) == "sdpa"
    monkeypatch.setattr(cfg, "_capability", lambda device: (9, 0))
    assert cfg.dense_heads_default(cuda, 64) == "kernel" and cfg.dense_heads_default(cuda, 128) == "kernel"
    monkeypatch.setattr(cfg, "HAS_GLUON", False)
    assert cfg.dense_heads_default(cuda, 64) == "kernel" and cfg.dense_heads_default(cuda, 128) == "sdpa"
    monkeypatch.setattr(cfg, "_capability", lambda device: (8, 0))
    assert cfg.dense_heads_default(cuda, 64) == "sdpa"
    monkeypatch.setenv("COMPACT_ATTN_DENSE_HEADS", "kernel")
    assert cfg.dense_heads_default(cuda, 128) == "kernel"
    monkeypatch.setenv("COMPACT_ATTN_DENSE_HEADS", "SDPA")
    assert cfg.dense_heads_default(cuda, 64) == "sdpa"


def test_dense_heads_option_errors(monkeypatch):
    q, k, v = _qkv()
    mask = BlockSparseMask.dense_mask(2, 64, 64, 64)
    with pytest.raises(ValueError, match="dense_heads must be one of sdpa, kernel, got 'flash'"):
        block_sparse_attention_triton(q, k, v, mask, dense_heads="flash")
    with pytest.raises(ValueError, match="dense_heads must be 'sdpa' or 'kernel', got 'cudnn'"):
        block_sparse_attention(q, k, v, mask, dense_heads="cudnn")
    monkeypatch.setenv("COMPACT_ATTN_DENSE_HEADS", "cudnn")
    with pytest.raises(ValueError, match="COMPACT_ATTN_DENSE_HEADS must be one of sdpa, kernel"):
        block_sparse_attention_triton(q, k, v, mask)


def test_entry_point_backends(monkeypatch):
    q, k, v = (_rand(1, 2, 150, 64, dtype=torch.float16) for _ in range(3))
    mask = _random_mask(2, 150, 64, 64, 0.5)
    tri = block_sparse_attention(q, k, v, mask, backend="triton")
    ref = block_sparse_attention(q, k, v, mask, backend="reference")
    auto = block_sparse_attention(q, k, v, mask)  # CPU tensors -> reference
    assert torch.equal(auto, ref)
    assert torch.equal(ref, reference.block_sparse_attention(q, k, v, mask))
    assert _rel(tri, ref.float()) < 2e-3
    monkeypatch.setenv("COMPACT_ATTN_BACKEND", "triton")
    assert torch.equal(block_sparse_attention(q, k, v, mask), tri)
    assert compact_attn.resolve_backend("reference", torch.device("cpu")) == "reference"
    monkeypatch.setenv("COMPACT_ATTN_BACKEND", "cuda")
    with pytest.raises(ValueError, match="COMPACT_ATTN_BACKEND must be"):
        block_sparse_attention(q, k, v, mask)
    with pytest.raises(ValueError, match="backend must be one of"):
        block_sparse_attention(q, k, v, mask, backend="flash")


# ------------------------------------------------------------------------------------------ wrapper errors
def _qkv(B=1, H=2, N=64, D=64, dtype=torch.float16, device="cpu"):
    return tuple(torch.zeros(B, H, N, D, dtype=dtype, device=device) for _ in range(3))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda q, k, v, m: (q[0], k, v, m), r"q must be \[B, H, N, D\] \(4 dims\)"),
        (lambda q, k, v, m: (q, k[:, :, :32], v, m), "q, k and v must have one shape"),
        (lambda q, k, v, m: (q.int(), k.int(), v.int(), m), "must be bfloat16, float16 or float32"),
        (lambda q, k, v, m: (q, k.bfloat16(), v, m), "must share a dtype"),
        (lambda q, k, v, m: (q, k.to("meta"), v, m), "must be on one device"),
        (lambda q, k, v, m: (*(t[..., :32].contiguous() for t in (q, k, v)), m), "head dim must be 64 or 128"),
        (lambda q, k, v, m: (q, k, v, "dense"), "mask must be a compact_attn.BlockSparseMask"),
        (lambda q, k, v, m: (q, k, v, BlockSparseMask.dense_mask(3, 64, 64, 64)), "mask has 3 heads but q has 2"),
        (lambda q, k, v, m: (q, k, v, BlockSparseMask.dense_mask(2, 70, 64, 64)), "mask.seq_len is 70 but q has 64"),
        (lambda q, k, v, m: (*(t.to("meta") for t in (q, k, v)), m), "mask is on cpu but q is on meta"),
    ],
)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_attention_input_errors(make, message, backend):
    q, k, v = _qkv()
    args = make(q, k, v, BlockSparseMask.dense_mask(2, 64, 64, 64))
    with pytest.raises(ValueError, match=message):
        block_sparse_attention(*args, backend=backend)


def test_attention_triton_only_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        block_sparse_attention(q, k, v, BlockSparseMask.dense_mask(2, 64, 64, 64), scale=-1.0)
    with pytest.raises(ValueError, match=r"block_q and block_k in \(16, 32, 64, 128, 256\); got \(48, 64\)"):
        block_sparse_attention_triton(q, k, v, BlockSparseMask.dense_mask(2, 64, 48, 64))
    with pytest.raises(ValueError, match="out must be"):
        block_sparse_attention_triton(q, k, v, BlockSparseMask.dense_mask(2, 64, 64, 64), out=q[:, :1])


def test_flex_block_mask_when_max_k_is_below_num_kv_blocks():
    """Regression: `to_flex_block_mask` padded to NKB (FlexAttention reads the index width as NKB)."""
    dense = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    dense[:, torch.arange(5), torch.arange(5)] = True
    dense[:, torch.arange(5), (torch.arange(5) + 1) % 5] = False  # no full row: MAXK < NKB
    mask = BlockSparseMask.from_dense(dense, 128, 128, 600)
    assert mask.kv_indices.shape[-1] < 5
    assert torch.equal(mask.to_flex_block_mask().to_dense()[0].bool(), dense)


def test_kernel_bench_rejects_cpu_tensors():
    from compactsearch.kernel.bench import time_against_dense

    q, k, v = _qkv()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        time_against_dense(q, k, v, BlockSparseMask.dense_mask(2, 64, 64, 64))


def test_kernel_modules_do_not_shadow_entry_points():
    import importlib

    importlib.import_module("compact_attn.mass_kernel")
    importlib.import_module("compact_attn.attention")
    assert compact_attn.block_mass is block_mass and callable(compact_attn.block_mass)
    assert callable(compact_attn.block_sparse_attention)
