"""The GPU path of the training lesson's speed settings and the static-cache decoding, on CUDA only (flag `gpu`).

Each test compares the fast path with the plain one on the same weights and data, so a wrong kernel, a mask off by
one or a compiled graph that reads a stale buffer fails here, whatever the GPU's speed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

from conftest import tiny_flags  # noqa: E402


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def test_chunked_loss_equals_the_whole_logits_in_bf16():
    """lesson 07's chunked_lm_loss under bf16 autocast on CUDA gives lm_loss's value and gradients. Both round the
    head's product to bf16 (8-bit mantissa): 2e-2 absolute on values of order 1 and gradients of order 1e-2 or less."""
    from minillm.model import chunked_lm_loss, lm_loss
    torch.manual_seed(0)
    x0, w0 = torch.randn(4, 256, 64, device="cuda"), torch.randn(1000, 64, device="cuda") * 0.2
    y = torch.randint(0, 1000, (4, 256), device="cuda")
    y[0, :7] = -100
    got = []
    for f in (lambda x, w: lm_loss(x @ w.T, y), lambda x, w: chunked_lm_loss(x, w, y, chunk=300)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = f(x, w)
        loss.backward()
        got.append((loss, x.grad, w.grad))
    for a, b in zip(*got):
        assert torch.allclose(a.float(), b.float(), atol=2e-2), (a - b).abs().max()


@pytest.mark.parametrize("kw", [{}, dict(attention="gqa", num_kv_heads=2), dict(positional="learned")])
def test_static_compiled_decoding_equals_the_growing_cache(kw):
    """generate on CUDA with the static cache, compiled (CUDA graphs, none skipped), gives the growing cache's greedy
    tokens, past max_seq_len too. fp32 weights with TF32 off: the two paths differ only in summation order (1e-3 on the logits)."""
    from minillm.model import MiniLLM, ModelConfig
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    m = MiniLLM(ModelConfig(vocab_size=97, embed_dim=64, num_heads=4, num_layers=2, max_seq_len=32, **kw)).cuda()
    ids = torch.randint(0, 97, (2, 6), device="cuda")
    from torch._dynamo.utils import counters
    counters.clear()
    a, la = m.generate(ids, 40, temperature=0, return_logits=True, static=False, compile=False)
    b, lb = m.generate(ids, 40, temperature=0, return_logits=True, static=True, compile=True)
    assert torch.equal(a, b) and torch.allclose(la, lb, atol=1e-3), (la - lb).abs().max()
    assert not counters["inductor"]["cudagraph_skips"], "the compiled step ran without CUDA graphs"



def test_repeated_generate_calls_reuse_one_recording():
    """Calls to generate after the first replay the CUDA graph they recorded: the model keeps one static cache per batch
    size, so the graph finds the addresses it was recorded with. With a new cache per call, every call recorded the
    graph again and each recording kept its cache alive, so memory grew call after call. Calls 3 to 6 must hold no more
    memory than call 2 left (equal, barring the allocator's rounding), and decode the same tokens."""
    from minillm.model import MiniLLM, ModelConfig
    torch.manual_seed(0)
    m = MiniLLM(ModelConfig(vocab_size=97, embed_dim=64, num_heads=4, num_layers=2, max_seq_len=32)).cuda()
    ids = torch.randint(0, 97, (2, 6), device="cuda")
    runs, held = [], []
    for _ in range(6):
        runs.append(m.generate(ids, 20, temperature=0, static=True, compile=True))
        torch.cuda.synchronize()
        held.append(torch.cuda.memory_allocated())
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert max(held[2:]) <= held[1], held

def test_default_training_run_uses_every_speed_setting(data, tmp_path):
    """`minillm train` on CUDA with no speed flag: the start-up line names every setting on, the run finishes, its
    loss falls; with each switched off (--no-compile ... --no-pad-vocab, --loss-chunk 0) it starts with them off, and its first loss
    equals the fast run's to bf16 rounding (5e-2 on a loss near ln(vocab))."""
    flags = tiny_flags(log_every=1)
    runs = {}
    for name, extra in (("fast", []), ("plain", ["--no-compile", "--no-fused-adamw", "--no-tf32", "--no-sdpa-flash",
                                                 "--no-pin-memory", "--no-pad-vocab", "--loss-chunk", "0"])):
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "minillm", "train", "--data", str(data), "--out", str(out), *flags,
                            "--max-steps", "8", "--eval-every", "8", *extra],
                           capture_output=True, text=True, timeout=900, env=dict(os.environ, TQDM_DISABLE="1"))
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = (r.stdout + r.stderr, [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()])
    fast_log, fast = runs["fast"]
    assert "compile on, fused_adamw on, tf32 on, sdpa_flash on, pin_memory on, pad_vocab on, loss_chunk 4096" in fast_log, fast_log[-2000:]
    assert "compile off, fused_adamw off, tf32 off, sdpa_flash off, pin_memory off, pad_vocab off, loss_chunk off" in runs["plain"][0]
    assert fast[-1] < fast[0] and abs(fast[0] - runs["plain"][1][0]) < 5e-2, (fast, runs["plain"][1])
