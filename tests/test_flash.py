"""Lesson 14's kernels outside the notebook: the Triton kernels (when triton is installed) and the module without triton."""
import subprocess
import sys

import pytest
import torch

import minillm.flash as flash


def with_grads(f, q, k, v):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, lse = f(q, k, v)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out.float() * g).sum().backward()
    return out, lse, q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("causal", [True, False])
def test_triton_kernels_equal_the_definition(dtype, tol, causal):
    "The Triton kernels (Triton's interpreter on a CPU) give the definition's output, logsumexp and gradients: GQA, q shorter than k, lengths not multiples of the block."
    pytest.importorskip("triton")
    ok, why = flash.triton_status("cpu", dtype)
    if not ok: pytest.skip(why)
    torch.manual_seed(0)
    for h, hkv, tq, tk, d, dv in [(4, 2, 37, 37, 16, 16), (4, 1, 5, 50, 8, 12)]:
        q, k, v = (torch.randn(2, n, t, e).to(dtype) for n, t, e in [(h, tq, d), (hkv, tk, d), (hkv, tk, dv)])
        ref = with_grads(lambda q, k, v: flash.naive_attention(q, k, v, causal), q, k, v)
        got = with_grads(lambda q, k, v: flash.triton_attention(q, k, v, causal, return_lse=True), q, k, v)
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), ref, got):
            assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol if dtype != torch.float32 else 0), (h, hkv, tq, tk, name)


def test_without_triton_the_tiled_kernel_runs_and_triton_says_how_to_install():
    "triton is optional: with it unimportable, minillm.flash imports, the tiled kernel works, and backend 'triton' fails with one clear line."
    code = ("import sys; sys.modules['triton'] = None\nimport torch, minillm.flash as f\n"
            "q = torch.randn(1, 2, 9, 8); assert torch.allclose(f.flash_attend(q, q, q), f.naive_attention(q, q, q)[0], atol=1e-5)\n"
            "try: f.flash_attend(q, q, q, backend='triton')\nexcept RuntimeError as e: print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "attention backend 'triton' unavailable: triton is not installed (pip install triton)" in r.stdout
