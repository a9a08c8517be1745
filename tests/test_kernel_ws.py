"""The warp-specialised Gluon kernel (`compact_attn.attention_ws`) on a machine without a GPU.

Gluon has no interpreter, so its output is checked on the GPU (benchmarks/kernel_correctness.py, BENCHMARKS.md). Here:
it compiles for sm_90 with this Triton's own ptxas, without spills, inside the shared memory, with the structure
its speed rests on (register reallocation between producer and consumers, the softmax overlapping the previous
tile's P V product); `available` accepts exactly the inputs it handles; and the host wrapper hands it what its
flat TMA descriptors assume.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from compact_attn import BlockSparseMask, attention_ws, reference  # noqa: E402
from compact_attn._config import AttnConfig  # noqa: E402
from compact_attn.attention import block_sparse_attention_triton  # noqa: E402

H100_SMEM = 227 * 1024  # the most dynamic shared memory one block may use on sm_90


_COMPILE = """
import json, sys, torch
from compact_attn import attention_ws
d, dt, tail, lse, pp, out = json.loads(sys.argv[1])
k = attention_ws.compile_sm90(d, getattr(torch, dt), tail, lse, pp)
open(out + ".cubin", "wb").write(k.asm["cubin"])
open(out + ".ptx", "w").write(k.asm["ptx"])
print(json.dumps({"shared": k.metadata.shared}))
"""


def _compile(head_dim, dtype, has_tail, return_lse, pingpong, tmp) -> tuple[dict, bytes, str]:
    """Compile in a child process without ``TRITON_INTERPRET`` (under it Gluon's own library functions turn into
    interpreter objects and the compile fails): (metadata, cubin, ptx)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = os.path.join(tmp, "k")
    args = json.dumps([head_dim, str(dtype).split(".")[-1], has_tail, return_lse, pingpong, out])
    run = subprocess.run([sys.executable, "-c", _COMPILE, args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads(run.stdout.strip().splitlines()[-1])
    with open(out + ".cubin", "rb") as f, open(out + ".ptx") as g:
        return meta, f.read(), g.read()


def _res_usage(cubin: bytes) -> dict[str, int]:
    """``cuobjdump -res-usage`` of a cubin as ``{REG, STACK, SHARED, LOCAL}`` (Triton ships cuobjdump)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


@pytest.mark.parametrize("head_dim,pingpong,has_tail,return_lse", [
    (128, True, True, False),
    (128, False, False, True),
    (64, False, True, True),
])
def test_compiles_for_sm90_without_spills(head_dim, pingpong, has_tail, return_lse, tmp_path):
    if not attention_ws.HAS_GLUON:  # an older Triton (torch 2.6-2.9 ship 3.2-3.5): the kernel is off, and says so
        _assert_off_on_old_triton()
        return
    meta, cubin, ptx = _compile(head_dim, torch.bfloat16, has_tail, return_lse, pingpong, str(tmp_path))
    res = _res_usage(cubin)
    assert res["LOCAL"] == 0 and res["STACK"] == 0, f"register spills: {res}"
    assert res["REG"] <= attention_ws.MAXNREG
    # Q + two stages of K and V + barriers, one program per SM
    expected = (attention_ws.BLOCK_M + 4 * attention_ws.BLOCK_N) * head_dim * 2
    assert expected <= meta["shared"] <= H100_SMEM, meta["shared"]
    assert f"setmaxnreg.inc.sync.aligned.u32 \t{attention_ws.CONSUMER_REGS};" in ptx
    assert f"setmaxnreg.dec.sync.aligned.u32 \t{attention_ws.PRODUCER_REGS};" in ptx
    # S_j waited alone while P_{j-1} V_{j-1} stays in flight: the softmax overlaps the previous product
    assert "wgmma.wait_group.sync.aligned 1;" in ptx
    assert ptx.count("cp.async.bulk.tensor") >= 3  # Q, K and V through TMA


def _assert_off_on_old_triton():
    import triton

    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    assert (major, minor) < (3, 6), f"Triton {triton.__version__} should have Gluon's list-form warp_specialize"
    assert not attention_ws.available(torch.device("cuda"), 128, torch.bfloat16, 128, 128)


def test_fp16_compiles(tmp_path):
    if not attention_ws.HAS_GLUON:
        _assert_off_on_old_triton()
        return
    meta, cubin, ptx = _compile(128, torch.float16, True, False, True, str(tmp_path))
    assert _res_usage(cubin)["LOCAL"] == 0 and "wgmma.wait_group.sync.aligned 1;" in ptx


def _fake_hopper(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_available_only_for_what_it_handles(monkeypatch):
    cuda = torch.device("cuda")
    assert not attention_ws.available(torch.device("cpu"), 128, torch.bfloat16, 128, 128)
    _fake_hopper(monkeypatch)
    assert attention_ws.available(cuda, 128, torch.bfloat16, 128, 128)
    assert attention_ws.available(cuda, 64, torch.float16, 128, 128)
    assert not attention_ws.available(cuda, 128, torch.float32, 128, 128)
    assert not attention_ws.available(cuda, 96, torch.bfloat16, 128, 128)
    assert not attention_ws.available(cuda, 128, torch.bfloat16, 64, 128)
    assert not attention_ws.available(cuda, 128, torch.bfloat16, 128, 64)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert not attention_ws.available(cuda, 128, torch.bfloat16, 128, 128)  # no wgmma on Blackwell


def test_host_wrapper_hands_the_kernel_flat_contiguous_inputs(monkeypatch):
    """The wrapper's side of the contract: contiguous, 16-byte aligned q, k, v (copied from a [B, N, H, D]
    transpose or a misaligned view), the sparse heads' items only (dense heads went to SDPA), the scale in log2
    units. The stand-in launcher computes the reference for the listed items, so the assembled output is checked
    too."""
    B, H, N, D = 2, 3, 300, 64
    q, k = (torch.randn(B, N, H, D, dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    v = torch.randn(B * H * N * D + 1, dtype=torch.bfloat16)[1:].view(B, H, N, D)  # contiguous, base 2 bytes off
    dense = torch.eye(3, dtype=torch.bool).repeat(H, 1, 1)  # heads 0 and 2 sparse: the diagonal plus a few blocks
    dense[0, 2, 0] = dense[2, 0, 1] = dense[2, 1, 2] = True
    dense[1] = True  # a dense head: SDPA's
    mask = BlockSparseMask.from_dense(dense, 128, 128, N)
    seen = {}

    def launcher(qc, kc, vc, out, lse, kv_num, kv_idx, order, B_, H_, N_, nqb, nkb, qk_scale, return_lse,
                 pingpong=True, persistent=True):
        assert all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (qc, kc, vc)) and out.shape == (B, H, N, D)
        heads = sorted({int(i) // nqb for i in order})
        seen.update(heads=heads, scale=qk_scale, pingpong=pingpong)
        ref = reference.block_sparse_attention(qc, kc, vc, mask)
        for h in heads:
            out[:, h] = ref[:, h]

    monkeypatch.setattr(attention_ws, "available", lambda *a: True)
    monkeypatch.setattr(attention_ws, "block_sparse_attention_ws", launcher)
    cfg = AttnConfig(warp_specialized=True, pingpong=False, dense_heads="sdpa")
    out = block_sparse_attention_triton(q, k, v, mask, config=cfg)
    assert seen["heads"] == [0, 2] and seen["pingpong"] is False
    assert seen["scale"] == pytest.approx(D ** -0.5 * 1.4426950408889634)
    ref = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask)
    assert float((out.float() - ref).abs().max()) < 2e-2


def test_build_failure_falls_back_to_the_triton_kernel(monkeypatch):
    """A Triton whose Gluon cannot build the kernel: one warning, the Triton-language kernel's output, and the
    kernel stays off for the process."""
    from triton.compiler.errors import CompilationError

    q, k, v = (torch.randn(1, 2, 200, 64, dtype=torch.bfloat16) for _ in range(3))
    mask = BlockSparseMask.from_dense(torch.tensor([[[1, 0], [1, 1]], [[1, 1], [0, 1]]], dtype=torch.bool),
                                      128, 128, 200)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise CompilationError(None, None, "unsupported layout (stand-in for a Gluon API change)")

    monkeypatch.setattr(attention_ws, "_disabled", None)
    monkeypatch.setattr(attention_ws, "available", lambda *a: attention_ws._disabled is None)
    monkeypatch.setattr(attention_ws, "block_sparse_attention_ws", failing)
    cfg = AttnConfig(warp_specialized=True, dense_heads="kernel")
    with pytest.warns(UserWarning, match="failed to build.*unsupported layout"):
        out = block_sparse_attention_triton(q, k, v, mask, config=cfg)
    ref = reference.block_sparse_attention(q.float(), k.float(), v.float(), mask)
    assert float((out.float() - ref).abs().max()) < 2e-2
    assert attention_ws._disabled and "unsupported layout" in attention_ws._disabled
    block_sparse_attention_triton(q, k, v, mask, config=cfg)
    assert calls == [1], "not retried once disabled"
