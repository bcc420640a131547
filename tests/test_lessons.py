"""Generated lessons, run in a real Jupyter kernel (nbclient), as a learner runs them."""
import json
import os
import re
import time
import warnings
from collections import Counter
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from minillm.lessons import make_lesson, read_nb, read_settings, split_directives, src

import prose
from kernel_poll import poll_in_slices

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted(p.name for p in (ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = [(name, fn) for name in LESSONS for fn in re.findall(
    r"# ✏️ Exercise.*?\ndef (\w+)\(", "\n".join(c.source for c in nbformat.read(ROOT / "lessons" / name, 4).cells), re.S)]


def load(name):
    return nbformat.read(ROOT / "lessons" / name, as_version=4)


def reference_cell(name, func):
    "The source of the cell defining `func` in nbs/ (the reference implementation), directives removed."
    nb = json.loads((ROOT / "nbs" / name).read_text())
    return next(split_directives(src(c))[1] for c in nb["cells"] if c["cell_type"] == "code" and f"def {func}(" in src(c))


os.environ.setdefault("MINILLM_SHORT_RUN", "1")     # the launch lesson trains 40 steps, even on a GPU


def test_every_lesson_has_an_exercise():
    "Each lesson must give the learner at least one self-checking exercise."
    assert LESSONS and {n for n, _ in EXERCISES} == set(LESSONS)


MIN_EXERCISES = 3   # ../shared/COURSE.md, "Exercises": at least three per lesson


def test_every_lesson_has_three_exercises():
    """Each lesson has the learner write at least MIN_EXERCISES of the algorithms it teaches (the course's standard,
    ../shared/COURSE.md). Guards against a lesson that ships with fewer: a new lesson with one exercise, or an exercise
    turned back into plain code. Lessons and exercises are found as test_every_lesson_has_an_exercise finds them, in
    the generated lessons/."""
    counts = Counter(n for n, _ in EXERCISES)
    few = {n: counts[n] for n in LESSONS if counts[n] < MIN_EXERCISES}
    assert LESSONS and not few, f"lessons with fewer than {MIN_EXERCISES} exercises (how many each has): {few}"


# (notebook, exercise) -> why its self-check may compare it with the package's own copy; none so far.
SELF_REFERENCE_ALLOWED: dict[tuple[str, str], str] = {}


def test_self_checks_use_independent_references():
    """A self-check whose reference is the package's own copy of the function it checks (reference="minillm.mod.NAME"
    after exercise NAME) compares that function with itself: the notebook's test, where the learner's function IS that
    copy, can never fail. Each self-check must name an independent reference instead: a PyTorch op or library function,
    or a naive version written in the self-check cell (check() still takes the hints from the package's function).
    An exception needs an entry, with its reason, in SELF_REFERENCE_ALLOWED."""
    same = []
    for path in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        cells = [src(c) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for cell, selfcheck in zip(cells, cells[1:]):
            directives, code = split_directives(cell)
            if "exercise" not in directives or not (m := re.search(r"^def (\w+)\(", code, re.M)):
                continue
            names = [r.rpartition(".")[2] for r in re.findall(r"""reference\s*=\s*["']minillm\.([\w.]+)["']""", selfcheck)]
            if m.group(1) in names and (path.name, m.group(1)) not in SELF_REFERENCE_ALLOWED:
                same.append(f"{path.name}: {m.group(1)}")
    assert not same, ("self-checks whose reference is the package's copy of the checked function (they cannot fail): "
                      + ", ".join(same))

WRONG = [   # (lesson, exercise, a plausible wrong answer, what its self-check failure must show)
    # > instead of >=: a GPU of exactly compute capability 8.0 (A100) is misjudged.
    ("01_core.ipynb", "bf16_capable", "def bf16_capable(capability):\n    return tuple(capability) > (8, 0)",
     ["inputs:   ((8, 0))", "expected: True", "got:      False"]),
    # The square mask aligned top-left: a single cached query would see only key 0.
    ("05_attention.ipynb", "causal_mask", "import torch\ndef causal_mask(t_q, t_k, device=None):\n    return torch.ones(t_q, t_k, dtype=torch.bool).tril()",
     ["inputs:   (1, 5)", "expected: tensor(shape=(1, 5)", "got:      tensor(shape=(1, 5), dtype=bool, values=[[True, False"]),
    # Lesson 05. Scores scaled by 1/d instead of 1/sqrt(d): the softmax is too flat.
    ("05_attention.ipynb", "manual_attention", "import math, torch\ndef manual_attention(q, k, v, causal=True, scale=None, dropout_p=0.0):\n"
     "    scale = 1 / q.size(-1) if scale is None else scale\n    scores = (q @ k.transpose(-2, -1)) * scale\n"
     "    if causal: scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2)), float('-inf'))\n"
     "    w = torch.softmax(scores.float(), -1).to(q.dtype)\n    if dropout_p: w = torch.nn.functional.dropout(w, dropout_p)\n    return w @ v, w",
     ["wrong answer", "inputs:   (tensor(shape=(1, 1, 4, 8)"]),
    # The mask applied after the softmax: masked weights are zeroed, and the rows no longer sum to 1.
    ("05_attention.ipynb", "manual_attention", "import math, torch\ndef manual_attention(q, k, v, causal=True, scale=None, dropout_p=0.0):\n"
     "    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale\n    w = torch.softmax(((q @ k.transpose(-2, -1)) * scale).float(), -1).to(q.dtype)\n"
     "    if causal: w = w.masked_fill(~causal_mask(q.size(-2), k.size(-2)), 0.0)\n"
     "    if dropout_p: w = torch.nn.functional.dropout(w, dropout_p)\n    return w @ v, w",
     ["wrong answer", "inputs:   (tensor(shape=(1, 1, 4, 8)"]),
    # The square mask aligned top-left: right when t_q == t_k, wrong for queries that are the last t_q of t_k positions.
    ("05_attention.ipynb", "manual_attention", "import math, torch\ndef manual_attention(q, k, v, causal=True, scale=None, dropout_p=0.0):\n"
     "    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale\n    scores = (q @ k.transpose(-2, -1)) * scale\n"
     "    if causal: scores = scores.masked_fill(~torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril(), float('-inf'))\n"
     "    w = torch.softmax(scores.float(), -1).to(q.dtype)\n    if dropout_p: w = torch.nn.functional.dropout(w, dropout_p)\n    return w @ v, w",
     ["wrong answer", "inputs:   (tensor(shape=(2, 3, 2, 16)"]),
    # Dropout ignored: the weights a training step uses are never dropped.
    ("05_attention.ipynb", "manual_attention", "import math, torch\ndef manual_attention(q, k, v, causal=True, scale=None, dropout_p=0.0):\n"
     "    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale\n    scores = (q @ k.transpose(-2, -1)) * scale\n"
     "    if causal: scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2)), float('-inf'))\n"
     "    w = torch.softmax(scores.float(), -1).to(q.dtype)\n    return w @ v, w", ["wrong answer", "dropout_p=1.0)"]),
    # A view straight to (b, h, t, d): the right shape, but head 0 gets the first tokens' features, not every token's first d.
    ("05_attention.ipynb", "split_heads", "def split_heads(x, num_heads):\n    b, t, c = x.shape\n    return x.view(b, num_heads, t, c // num_heads)",
     ["wrong answer", "expected: tensor(shape=(1, 2, 3, 2), dtype=float32, values=[[[[0.0, 1.0], [4.0, 5.0]",
      "got:      tensor(shape=(1, 2, 3, 2), dtype=float32, values=[[[[0.0, 1.0], [2.0, 3.0]"]),
    # A reshape without the transpose back: each token's row mixes features of several tokens of one head.
    ("05_attention.ipynb", "merge_heads", "def merge_heads(y):\n    b, h, t, d = y.shape\n    return y.reshape(b, t, h * d)",
     ["wrong answer", "expected: tensor(shape=(1, 3, 4), dtype=float32, values=[[[0.0, 1.0, 6.0, 7.0]",
      "got:      tensor(shape=(1, 3, 4), dtype=float32, values=[[[0.0, 1.0, 2.0, 3.0]"]),
    # Lesson 06. The interleaved RoPE layout (pairs 2i, 2i+1): a valid RoPE, but not the half-split one the package uses.
    ("06_variants.ipynb", "apply_rotary", "import torch\ndef apply_rotary(x, cos, sin):\n    x1, x2 = x[..., 0::2], x[..., 1::2]\n"
     "    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)",
     ["wrong answer", "inputs:   (tensor(shape=(5, 8)"]),
    # New steps put before the cached ones: the newest token is no longer last.
    ("06_variants.ipynb", "cache_append", "import torch\ndef cache_append(cached, new):\n    return new if cached is None else torch.cat([new, cached], dim=-2)",
     ["wrong answer", "inputs:   (tensor(shape=(2, 3, 3, 8)"]),
    # Time hard-coded as dim 2 (right for 4-d keys): an MLA latent (b, t, r) is joined on its feature axis.
    ("06_variants.ipynb", "cache_append", "import torch\ndef cache_append(cached, new):\n    return new if cached is None else torch.cat([cached, new], dim=2)",
     ["raised RuntimeError", "inputs:   (tensor(shape=(2, 5, 6)"]),
    # The key up-projection applied untransposed: the same shape when dn == r, and the wrong scores.
    ("06_variants.ipynb", "absorb_query", "def absorb_query(q_nope, w_uk):\n    return q_nope @ w_uk.transpose(-2, -1)",
     ["wrong answer", "inputs:   (tensor(shape=(2, 3, 4, 6)"]),
    # Mean instead of mean of squares.
    ("07_model.ipynb", "rms_norm", "import torch\ndef rms_norm(x, weight, eps=1e-5):\n    return (x / torch.sqrt(x.mean(-1, keepdim=True) ** 2 + eps) * weight).to(x.dtype)",
     ["wrong answer", "inputs:   (tensor(shape=(2, 3, 8)"]),
    # Lesson 03. Each part compared with the next, and skipped only when the part before it was merged: the pairs of
    # "aaa" overlap, and the middle a is merged twice, once with each neighbour.
    ("03_bpe.ipynb", "merge", "def merge(parts, pair):\n    out = []\n    for i, p in enumerate(parts):\n"
     "        if i + 1 < len(parts) and (p, parts[i + 1]) == pair: out.append(p + parts[i + 1])\n"
     "        elif i == 0 or (parts[i - 1], p) != pair: out.append(p)\n    return out",
     ["wrong answer", "inputs:   ([b'a', b'a', b'a'], (b'a', b'a'))", "expected: [b'aa', b'a']", "got:      [b'aa', b'aa']"]),
    # Each pre-token's pair counted once: "aaa" holds (a, a) twice.
    ("03_bpe.ipynb", "count_pairs", "from collections import Counter\ndef count_pairs(words, word_counts):\n    c = Counter()\n"
     "    for w, parts in words.items():\n        for pair in set(zip(parts, parts[1:])): c[pair] += word_counts[w]\n    return c",
     ["wrong answer", "inputs:   ({b'aaa': [b'a', b'a', b'a']}, {b'aaa': 1})", "expected: Counter({(b'a', b'a'): 2})", "got:      Counter({(b'a', b'a'): 1})"]),
    # Every position counted once, whatever the pre-token's count.
    ("03_bpe.ipynb", "count_pairs", "from collections import Counter\ndef count_pairs(words, word_counts):\n"
     "    return Counter(p for parts in words.values() for p in zip(parts, parts[1:]))", ["wrong answer", "{b'the': 5, b'then': 2}"]),
    # Ties broken by the joined bytes: (ab, c) and (a, bc) are both "abc".
    ("03_bpe.ipynb", "best_pair", "def best_pair(counts):\n    return max(counts, key=lambda p: (counts[p], p[0] + p[1]))",
     ["wrong answer", "expected: (b'ab', b'c')", "got:      (b'a', b'bc')"]),
    # No tie-break: the first pair counted wins.
    ("03_bpe.ipynb", "best_pair", "def best_pair(counts):\n    return max(counts, key=counts.get)", ["wrong answer", "expected: (b'c', b'd')", "got:      (b'a', b'b')"]),
    # The leftmost learned pair merged first, not the earliest learned.
    ("03_bpe.ipynb", "encode_by_rank", "def encode_by_rank(word, ranks):\n    parts = [bytes([b]) for b in word]\n    while True:\n"
     "        learned = [p for p in zip(parts, parts[1:]) if p in ranks]\n        if not learned: return parts\n        parts = merge(parts, learned[0])",
     ["inputs:   (b'abc', {(b'b', b'c'): 0, (b'a', b'b'): 1})", "expected: [b'a', b'bc']", "got:      [b'ab', b'c']"]),
    # The merges applied in the order the dict stores them, not by rank.
    ("03_bpe.ipynb", "encode_by_rank", "def encode_by_rank(word, ranks):\n    parts = [bytes([b]) for b in word]\n"
     "    for pair in ranks: parts = merge(parts, pair)\n    return parts", ["inputs:   (b'abc', {(b'a', b'b'): 1, (b'b', b'c'): 0})", "got:      [b'ab', b'c']"]),
    # Lesson 07. Post-norm (the original Transformer's) instead of pre-norm.
    ("07_model.ipynb", "pre_norm_block", "def pre_norm_block(x, norm1, attn, norm2, ffn):\n    x = norm1(x + attn(x))\n    return norm2(x + ffn(x))",
     ["wrong answer", "inputs:   (tensor(shape=(2, 3, 8)"]),
    # A parallel block: the feed-forward layer reads the block's input, not the stream attention updated.
    ("07_model.ipynb", "pre_norm_block", "def pre_norm_block(x, norm1, attn, norm2, ffn):\n    return x + attn(norm1(x)) + ffn(norm2(x))",
     ["wrong answer", "expected: tensor(shape=(2, 3, 8)"]),
    # Ignored positions counted as zeros in the mean.
    ("07_model.ipynb", "lm_loss", "def lm_loss(logits, labels, ignore_index=-100):\n    logp = logits.float().log_softmax(-1)\n    keep = labels != ignore_index\n"
     "    nll = -logp.gather(-1, labels.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)\n    return (nll * keep).sum() / labels.numel()",
     ["wrong answer", "inputs:   (tensor(shape=(2, 5, 11)"]),
    # The labels shifted again, although the data pipeline already did.
    ("07_model.ipynb", "lm_loss", "import torch.nn.functional as F\ndef lm_loss(logits, labels, ignore_index=-100):\n"
     "    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=ignore_index)", ["wrong answer"]),
    # top_p drops the token that crosses the threshold (off by one).
    ("07_model.ipynb", "filter_logits", "def filter_logits(logits, top_k=None, top_p=None):\n    if top_k is not None:\n"
     "        kth = logits.topk(min(top_k, logits.size(-1))).values[:, -1:]\n        logits = logits.masked_fill(logits < kth, float('-inf'))\n"
     "    if top_p is not None and top_p < 1:\n        s, idx = logits.sort(-1, descending=True)\n"
     "        logits = logits.scatter(-1, idx, s.masked_fill(s.softmax(-1).cumsum(-1) > top_p, float('-inf')))\n    return logits",
     ["wrong answer", "top_p=0.6)", "got:      tensor(shape=(1, 3), dtype=float32, values=[[-inf, -0.69"]),
    # top_k keeps exactly k tokens: one of two tied logits is dropped.
    ("07_model.ipynb", "filter_logits", "import torch\ndef filter_logits(logits, top_k=None, top_p=None):\n    if top_k is not None:\n"
     "        idx = logits.topk(min(top_k, logits.size(-1))).indices\n"
     "        logits = torch.full_like(logits, float('-inf')).scatter(-1, idx, logits.gather(-1, idx))\n    return logits",
     ["wrong answer", "inputs:   (tensor(shape=(1, 5), dtype=float32, values=[[3.0, 2.0, 2.0, 1.0, 0.0]]), top_k=2)"]),
    # A common mistake: mixed precision without the fp32 master weights.
    ("10_memory.ipynb", "model_state_bytes", "def model_state_bytes(n_params, precision='bf16', n_tensors=0):\n    r = RECIPES[precision]\n"
     "    return dict(weights=r.weights * n_params, grads=r.grads * n_params, master=0, optimizer=r.moments * n_params + 4 * n_tensors)",
     ["wrong answer", "inputs:   (1000, 'bf16')", "'master': 4000"]),
    # The bias moved with the load instead of against it: an overloaded expert gets chosen even more often.
    ("08_moe.ipynb", "aux_free_update", "import torch\ndef aux_free_update(bias, loads, rate):\n    loads = loads.to(bias.dtype)\n"
     "    return bias + rate * torch.sign(loads - loads.mean())", ["wrong answer"]),
    # The top-k scores used as they are: at k > 1 the gates of a token no longer sum to 1.
    ("08_moe.ipynb", "route_topk", "def route_topk(scores, k, bias=None):\n"
     "    idx = (scores if bias is None else scores + bias).topk(k, dim=-1).indices\n    return idx, scores.gather(-1, idx)",
     ["wrong answer", "inputs:   (tensor(shape=(5, 6)", "got:      (tensor(shape=(5, 2), dtype=int64, values=[[4, 5]", "dtype=float32, values=[[0.365043, 0.312097]"]),
    # The gates taken from the biased scores: the balancing bias, meant to steer only the choice, scales the outputs.
    ("08_moe.ipynb", "route_topk", "def route_topk(scores, k, bias=None):\n    top = (scores if bias is None else scores + bias).topk(k, dim=-1)\n"
     "    return top.indices, (top.values / top.values.sum(-1, keepdim=True) if k > 1 else top.values)",
     ["wrong answer", "inputs:   (tensor(shape=(6, 8)", "bias=tensor(shape=(8,)"]),
    # The factor E left out: a perfectly balanced router scores 1/E, so the loss's scale changes with the number of experts.
    ("08_moe.ipynb", "load_balance_loss", "import torch\ndef load_balance_loss(probs, idx, num_experts):\n"
     "    f = torch.bincount(idx.flatten(), minlength=num_experts).to(probs.dtype) / idx.numel()\n    return (f * probs.mean(0)).sum()",
     ["wrong answer", "inputs:   (tensor(shape=(6, 4)", "expected: tensor(shape=(), dtype=float32, values=1.19",
      "got:      tensor(shape=(), dtype=float32, values=0.29"]),
    # Each micro-batch's mean loss backpropagated as it is: the gradients come out `steps` times too large.
    ("13_deepspeed.ipynb", "accumulate_grads", "def accumulate_grads(model, batches):\n"
     "    for x, y in batches: model(x, labels=y)[1].backward()\n    return {n: p.grad for n, p in model.named_parameters()}",
     ["wrong answer", "inputs:   (<MiniLLM of ", "got:      {'"]),
    # The gradients cleared before each micro-batch: only the last one counts.
    ("13_deepspeed.ipynb", "accumulate_grads", "def accumulate_grads(model, batches):\n    for x, y in batches:\n"
     "        model.zero_grad(); (model(x, labels=y)[1] / len(batches)).backward()\n"
     "    return {n: p.grad for n, p in model.named_parameters()}", ["wrong answer", "inputs:   (<MiniLLM of "]),
    # Lesson 09. Floor division and no check: a batch that is not a whole multiple is silently truncated.
    ("09_train.ipynb", "accumulation_steps", "def accumulation_steps(batch_tokens, micro_batch, seq_len, world_size=1):\n"
     "    return 1 if batch_tokens is None else max(1, batch_tokens // (micro_batch * seq_len * world_size))", ["should raise a ValueError"]),
    # Warmup off by one: step 0 gets a learning rate of zero (a wasted step).
    ("09_train.ipynb", "lr_at", "import math\ndef lr_at(step, max_steps, lr, min_lr, warmup, kind='cosine'):\n    if step < warmup: return lr * step / warmup\n"
     "    p = min(1.0, (step - warmup) / max(1, max_steps - warmup))\n"
     "    return lr + (min_lr - lr) * p if kind == 'linear' else min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (lr - min_lr)",
     ["wrong answer", "inputs:   (0, 100, 1.0, 0.1, 10)", "expected: 0.1", "got:      0.0"]),
    # Cosine decay to zero instead of min_lr.
    ("09_train.ipynb", "lr_at", "import math\ndef lr_at(step, max_steps, lr, min_lr, warmup, kind='cosine'):\n    if step < warmup: return lr * (step + 1) / warmup\n"
     "    p = min(1.0, (step - warmup) / max(1, max_steps - warmup))\n"
     "    return lr + (min_lr - lr) * p if kind == 'linear' else 0.5 * (1 + math.cos(math.pi * p)) * lr",
     ["wrong answer", "inputs:   (55, 100, 1.0, 0.1, 10)"]),
    # The linear variant ignored: always cosine.
    ("09_train.ipynb", "lr_at", "import math\ndef lr_at(step, max_steps, lr, min_lr, warmup, kind='cosine'):\n    if step < warmup: return lr * (step + 1) / warmup\n"
     "    p = min(1.0, (step - warmup) / max(1, max_steps - warmup))\n    return min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (lr - min_lr)",
     ["wrong answer", "inputs:   (35, 110, 1.0, 0.0, 10, 'linear')"]),
    # Adam with L2: the decay added to the gradient, so Adam's normalisation scales it away.
    ("09_train.ipynb", "adamw_update", "def adamw_update(p, g, m, v, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):\n    b1, b2 = betas\n"
     "    g = g + weight_decay * p\n    m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2)\n"
     "    p.sub_(lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps))\n    return p, m, v",
     ["wrong answer", "inputs:   (tensor(shape=(4,)"]),
    # No bias correction: the first steps are far too small (moments start at zero).
    ("09_train.ipynb", "adamw_update", "def adamw_update(p, g, m, v, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):\n    b1, b2 = betas\n"
     "    p.mul_(1 - lr * weight_decay); m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2)\n    p.sub_(lr * m / (v.sqrt() + eps))\n    return p, m, v",
     ["wrong answer", "inputs:   (tensor(shape=(4,)"]),
    # eps inside the root: invisible while the gradient's square dwarfs it, a 100x smaller step when it does not.
    ("09_train.ipynb", "adamw_update", "def adamw_update(p, g, m, v, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):\n    b1, b2 = betas\n"
     "    p.mul_(1 - lr * weight_decay); m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2)\n"
     "    p.sub_(lr * (m / (1 - b1 ** step)) / (v / (1 - b2 ** step) + eps).sqrt())\n    return p, m, v",
     ["wrong answer", "inputs:   (tensor(shape=(3,)"]),
    # eps left out: the same as torch until a gradient is as small as eps.
    ("09_train.ipynb", "adamw_update", "def adamw_update(p, g, m, v, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):\n    b1, b2 = betas\n"
     "    p.mul_(1 - lr * weight_decay); m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2)\n"
     "    p.sub_(lr * (m / (1 - b1 ** step)) / (v / (1 - b2 ** step)).sqrt())\n    return p, m, v",
     ["wrong answer", "inputs:   (tensor(shape=(3,)"]),
    # The decay applied after the update: it shrinks the step too.
    ("09_train.ipynb", "adamw_update", "def adamw_update(p, g, m, v, step, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):\n    b1, b2 = betas\n"
     "    m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2)\n"
     "    p.sub_(lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)); p.mul_(1 - lr * weight_decay)\n    return p, m, v",
     ["wrong answer", "inputs:   (tensor(shape=(4,)"]),
    # Lesson 10. ZeRO-2 taken to shard the weights (only stage 3 does: every GPU runs the whole model).
    ("10_memory.ipynb", "zero_bytes", "import math\ndef zero_bytes(n_params, precision='bf16', stage=0, gpus=1, offload='none', n_tensors=0):\n"
     "    s = model_state_bytes(n_params, precision, n_tensors)\n    if stage >= 1 and not s['master']: s['master'] = 4 * n_params\n"
     "    split = {'weights': stage >= 2, 'grads': stage >= 2, 'master': stage >= 1, 'optimizer': stage >= 1}\n"
     "    gpu = {k: math.ceil(v / gpus) if split[k] else v for k, v in s.items()}\n    cpu = dict.fromkeys(s, 0)\n"
     "    if offload != 'none':\n        for k in ('master', 'optimizer'): cpu[k], gpu[k] = gpu[k], 0\n        cpu['grads'] = math.ceil(4 * n_params / gpus)\n"
     "    if offload == 'all': cpu['weights'], gpu['weights'] = gpu['weights'], 0\n    return dict(gpu=gpu, cpu=cpu)",
     ["wrong answer", "inputs:   (1000, 'bf16', 2, 4)"]),
    # No fp32 master for an fp32 model: DeepSpeed's ZeRO still steps a flat fp32 copy of each partition.
    ("10_memory.ipynb", "zero_bytes", "import math\ndef zero_bytes(n_params, precision='bf16', stage=0, gpus=1, offload='none', n_tensors=0):\n"
     "    s = model_state_bytes(n_params, precision, n_tensors)\n"
     "    split = {'weights': stage >= 3, 'grads': stage >= 2, 'master': stage >= 1, 'optimizer': stage >= 1}\n"
     "    gpu = {k: math.ceil(v / gpus) if split[k] else v for k, v in s.items()}\n    cpu = dict.fromkeys(s, 0)\n"
     "    if offload != 'none':\n        for k in ('master', 'optimizer'): cpu[k], gpu[k] = gpu[k], 0\n        cpu['grads'] = math.ceil(4 * n_params / gpus)\n"
     "    if offload == 'all': cpu['weights'], gpu['weights'] = gpu['weights'], 0\n    return dict(gpu=gpu, cpu=cpu)",
     ["wrong answer", "inputs:   (1000, 'fp32', 1, 2)"]),
    # Query heads instead of KV heads: GQA's and MQA's saving is lost.
    ("10_memory.ipynb", "kv_cache_bytes", "def kv_cache_bytes(c, batch, seq_len, bytes_per_el=2):\n    per = 0\n    for i in range(c.num_layers):\n"
     "        lc = c.layer(i)\n        if lc.attention == 'mla': per += lc.mla.latent + lc.mla.rope\n"
     "        else: per += 2 * lc.num_heads * lc.head_dim\n    return per * batch * seq_len * bytes_per_el", ["wrong answer"]),
    # MLA cached as full keys and values: the latent is the whole point.
    ("10_memory.ipynb", "kv_cache_bytes", "def kv_cache_bytes(c, batch, seq_len, bytes_per_el=2):\n"
     "    return sum(2 * c.layer(i).kv_heads * c.layer(i).head_dim for i in range(c.num_layers)) * batch * seq_len * bytes_per_el", ["wrong answer"]),
    # Lesson 11. No detach: inside backward the rerun reaches back into the forward's graph (and a leaf's .grad counts twice).
    ("11_checkpointing.ipynb", "rerun_and_backprop", "import torch\ndef rerun_and_backprop(fn, inputs, grads):\n"
     "    xs = [x.requires_grad_(x.requires_grad) for x in inputs]\n    with torch.enable_grad(): out = fn(*xs)\n"
     "    torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads)\n    return tuple(x.grad if x.requires_grad else None for x in xs)",
     ["inside backward", "raised RuntimeError"]),
    # No enable_grad: autograd runs backward with gradients off, so the rerun records no graph.
    ("11_checkpointing.ipynb", "rerun_and_backprop", "import torch\ndef rerun_and_backprop(fn, inputs, grads):\n"
     "    xs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]\n    out = fn(*xs)\n"
     "    torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads)\n    return tuple(x.grad if x.requires_grad else None for x in xs)",
     ["inside backward", "raised RuntimeError", "does not require grad"]),
    # The saved state set but the caller's never restored: the training loop's later draws change.
    ("11_checkpointing.ipynb", "replay_rng", "import torch\ndef replay_rng(cpu_state, cuda_state, fn, *args):\n    torch.set_rng_state(cpu_state)\n    return fn(*args)",
     ["wrong answer", "the caller's next draw"]),
    # The caller's state kept but the forward's never set: the rerun drops other units than the forward did.
    ("11_checkpointing.ipynb", "replay_rng", "import torch\ndef replay_rng(cpu_state, cuda_state, fn, *args):\n    with torch.random.fork_rng():\n        return fn(*args)",
     ["wrong answer", "inputs:"]),
    # Strictly under the budget: a total equal to it fits.
    ("11_checkpointing.ipynb", "blocks_to_checkpoint", "def blocks_to_checkpoint(saved, kept, budget):\n    for k in range(len(saved) + 1):\n"
     "        if sum(kept[:k]) + sum(saved[k:]) < budget: return k\n    return None",
     ["inputs:   ([10, 10, 10, 10], [2, 2, 2, 2], 40)", "expected: 0", "got:      1"]),
    # The last k blocks counted instead of the first k the model checkpoints.
    ("11_checkpointing.ipynb", "blocks_to_checkpoint", "def blocks_to_checkpoint(saved, kept, budget):\n    n = len(saved)\n    for k in range(n + 1):\n"
     "        if sum(saved[:n - k]) + sum(kept[n - k:]) <= budget: return k\n    return None",
     ["inputs:   ([5, 20, 8], [1, 2, 1], 27)", "expected: 2", "got:      1"]),
    # Every block when nothing fits, instead of saying so.
    ("11_checkpointing.ipynb", "blocks_to_checkpoint", "def blocks_to_checkpoint(saved, kept, budget):\n    for k in range(len(saved) + 1):\n"
     "        if sum(kept[:k]) + sum(saved[k:]) <= budget: return k\n    return len(saved)",
     ["inputs:   ([10, 10, 10, 10], [2, 2, 2, 2], 7)", "expected: None", "got:      4"]),
    # Lesson 13. Each rank's slice merged on its own: a parameter that straddles two ranks is cut at the slice's end.
    ("13_deepspeed.ipynb", "merge_shards", "import math\ndef merge_shards(shards, shapes):\n    out, r, off = {}, 0, 0\n"
     "    for name, shape in shapes.items():\n        n = math.prod(shape)\n"
     "        if off + n > shards[r].numel(): r, off = r + 1, 0\n"
     "        out[name] = shards[r][off:off + n].view(shape); off += n\n    return out",
     ["raised RuntimeError: shape '[5, 3]' is invalid for input of size 11", "{'wte': (5, 3), 'ln': (7,)})"]),
    # The parameters taken in name order instead of buffer order: right sizes, the wrong numbers in them.
    ("13_deepspeed.ipynb", "merge_shards", "import math, torch\ndef merge_shards(shards, shapes):\n    flat, out, off = torch.cat(shards), {}, 0\n"
     "    for name, shape in sorted(shapes.items()):\n        n = math.prod(shape)\n"
     "        out[name] = flat[off:off + n].view(shape); off += n\n    return out",
     ["wrong answer", "{'wte': (5, 3), 'ln': (7,)})", "got:      {'ln': tensor(shape=(7,), dtype=float32, values=[1.541, -0.293429"]),
    # Floor division: a global batch that is not a multiple is silently rounded down.
    ("13_deepspeed.ipynb", "batch_triple", "def batch_triple(train_batch_size, micro, accum, world_size):\n"
     "    if accum is None: accum = train_batch_size // (micro * world_size)\n"
     "    return micro * world_size * accum if train_batch_size is None else train_batch_size, micro, accum", ["should raise a ValueError"]),
    # The processes forgotten: each one's micro-batches counted as if it were alone.
    ("13_deepspeed.ipynb", "batch_triple", "def batch_triple(train_batch_size, micro, accum, world_size):\n"
     "    if accum is None: accum = train_batch_size // micro\n    return micro * accum if train_batch_size is None else train_batch_size, micro, accum",
     ["inputs:   (32, 4, None, 2)", "expected: (32, 4, 4)", "got:      (32, 4, 8)"]),
    # Every complete bucket launched at once: a rank whose earlier bucket still waits for a gradient starts its collectives
    # in another order than the other ranks (they sum unrelated tensors, or deadlock).
    ("12_zero.ipynb", "buckets_to_launch", "def buckets_to_launch(buckets, ready, launched):\n"
     "    return [b for b in range(launched, len(buckets)) if all(i in ready for i in buckets[b])]",
     ["wrong answer", "inputs:   ([[0, 1], [2], [3, 4]], {2, 3, 4}, 0)", "expected: []", "got:      [1, 2]"]),
    # Floor division: the last numel % world elements belong to no rank.
    ("12_zero.ipynb", "shard_bounds", "def shard_bounds(numel, world, rank):\n    size = numel // world\n    return rank * size, (rank + 1) * size, size * world",
     ["wrong answer", "inputs:   (10, 4, 3)", "expected: (9, 12, 12)", "got:      (6, 8, 8)"]),
    # The shard updated but never gathered: the other ranks' slices of the weights stay stale on this rank.
    ("12_zero.ipynb", "zero1_step", "def zero1_step(flat, grad_shard, exp_avg, exp_avg_sq, step, rank, world, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8, gather=None):\n"
     "    s = flat.numel() // world\n    adamw_(flat[rank * s:(rank + 1) * s], grad_shard, exp_avg, exp_avg_sq, step, lr, weight_decay, betas, eps)\n"
     "    return flat, exp_avg, exp_avg_sq",
     ["wrong answer", "inputs:   (tensor(shape=(6,)", "FakeGather(rank=1)"]),
    # The running sum not rescaled when the max moves: each chunk's terms are summed against different maxima.
    ("14_flash.ipynb", "online_softmax_update", "import torch\ndef online_softmax_update(m, l, s):\n    m_new = torch.maximum(m, s.amax(-1))\n"
     "    return m_new, l + torch.exp(s - m_new[..., None]).sum(-1)", ["wrong answer", "values=[0.5, 2.0, -1.0]"]),
    # The causal mask aligned top-left inside a tile: queries that are the last t_q of t_k keys see too few keys.
    ("14_flash.ipynb", "forward_tile", "import torch\ndef forward_tile(q, k, v, m, l, acc, i0, j0, t_q, t_k, scale, causal=True):\n"
     "    s = (q @ k.transpose(-2, -1)) * scale\n    if causal:\n        i = torch.arange(i0, i0 + q.size(-2))[:, None]\n"
     "        j = torch.arange(j0, j0 + k.size(-2))\n        s = s.masked_fill(j > i, float('-inf'))\n"
     "    m_new = torch.maximum(m, s.amax(-1))\n    m_safe = torch.where(m_new == float('-inf'), 0.0, m_new)\n"
     "    alpha, p = torch.exp(m - m_safe), torch.exp(s - m_safe[..., None])\n    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v",
     ["wrong answer", "4, 6, 8, 12, 0.35)"]),
    # D = rowsum(dO) instead of rowsum(dO * O): the softmax's backward subtracts the wrong per-row term.
    ("14_flash.ipynb", "softmax_backward_tile", "def softmax_backward_tile(p, do, v, o):\n    D = do.sum(-1)\n"
     "    return D, p * (do @ v.transpose(-2, -1) - D[..., None])", ["wrong answer", "inputs:   (tensor(shape=(3, 5)"]),
    # Every line parsed: the half-written last line of a growing metrics file breaks the reader.
    ("16_launch.ipynb", "complete_rows", "import json\ndef complete_rows(text):\n    return [json.loads(l) for l in text.splitlines() if l.strip()]",
     ["raised JSONDecodeError"]),
    # Lesson 01. Bits, not bytes: torch.finfo(dtype).bits is 8 times the size of an element.
    ("01_core.ipynb", "tensor_bytes", "import math, torch\ndef tensor_bytes(shape, dtype):\n    return math.prod(shape) * torch.finfo(dtype).bits",
     ["wrong answer", "inputs:   ((), torch.float32)", "expected: 4", "got:      32"]),
    # Every element taken as fp32's 4 bytes: bf16's halving of memory is lost.
    ("01_core.ipynb", "tensor_bytes", "import math\ndef tensor_bytes(shape, dtype):\n    return math.prod(shape) * 4",
     ["wrong answer", "inputs:   ((2, 3), torch.bfloat16)", "expected: 12", "got:      24"]),
    # The dimensions summed, not multiplied: a scalar takes no bytes.
    ("01_core.ipynb", "tensor_bytes", "def tensor_bytes(shape, dtype):\n    return sum(shape) * dtype.itemsize",
     ["wrong answer", "inputs:   ((), torch.float32)", "expected: 4", "got:      0"]),
    # A multiply-add counted as one FLOP: half the vendors' count, so MFU would look twice as good.
    ("01_core.ipynb", "matmul_flops", "def matmul_flops(m, k, n):\n    return m * k * n",
     ["wrong answer", "inputs:   (1, 1, 1)", "expected: 2", "got:      1"]),
    # The inner dimension forgotten: m x n outputs counted, not the k terms of each.
    ("01_core.ipynb", "matmul_flops", "def matmul_flops(m, k, n):\n    return 2 * m * n",
     ["wrong answer", "inputs:   (3, 5, 7)", "expected: 210", "got:      42"]),
    # The GPUs forgotten: eight GPUs' tokens over one GPU's peak.
    ("01_core.ipynb", "mfu", "def mfu(tokens_per_s, flops_per_token, peak, world_size=1):\n"
     "    return None if peak is None else tokens_per_s * flops_per_token / peak",
     ["wrong answer", "world_size=8)", "expected: 0.357", "got:      2.86"]),
    # An unknown peak not handled: a GPU missing from the table crashes the training log.
    ("01_core.ipynb", "mfu", "def mfu(tokens_per_s, flops_per_token, peak, world_size=1):\n"
     "    return tokens_per_s * flops_per_token / (peak * world_size)",
     ["raised TypeError", "inputs:   (1000.0, 6000000000.0, None)", "expected: None"]),
    # Lesson 04. Characters, not UTF-8 bytes: text outside ASCII looks shorter than it is.
    ("04_tokenizer.ipynb", "bytes_per_token", "def bytes_per_token(tok, text):\n    return len(text) / len(tok.encode(text))",
     ["wrong answer", "naïve café 😀"]),
    # Greedy longest match instead of the best total score.
    ("04_tokenizer.ipynb", "viterbi_segment", "def viterbi_segment(text, scores, unk_score=None):\n    longest, out, i = max(map(len, scores)), [], 0\n"
     "    while i < len(text):\n        n = next((n for n in range(min(longest, len(text) - i), 0, -1) if text[i:i + n] in scores), 1)\n"
     "        out.append(text[i:i + n]); i += n\n    return out",
     ["wrong answer", "inputs:   ('abc', {'a': -3.0", "expected: ['ab', 'c']", "got:      ['abc']"]),
    # Ties go to the last candidate (>=): the shortest last piece, not SentencePiece's choice.
    ("04_tokenizer.ipynb", "viterbi_segment", "def viterbi_segment(text, scores, unk_score=None):\n"
     "    if unk_score is None: unk_score = min(scores.values()) - 10\n    longest = max(map(len, scores))\n"
     "    best, back = [0.0] + [float('-inf')] * len(text), [0] * (len(text) + 1)\n    for end in range(1, len(text) + 1):\n"
     "        for start in range(max(0, end - longest), end):\n            s = scores.get(text[start:end], unk_score if end - start == 1 else None)\n"
     "            if s is not None and best[start] + s >= best[end]: best[end], back[end] = best[start] + s, start\n"
     "    pieces, end = [], len(text)\n    while end: pieces.append(text[back[end]:end]); end = back[end]\n    return pieces[::-1]",
     ["wrong answer", "inputs:   ('ab', {'a': -1.0, 'b': -1.0, 'ab': -2.0})", "expected: ['ab']", "got:      ['a', 'b']"]),
    # An unknown character scored the lowest score, without SentencePiece's penalty of 10.
    ("04_tokenizer.ipynb", "viterbi_segment", "def viterbi_segment(text, scores, unk_score=None):\n"
     "    if unk_score is None: unk_score = min(scores.values())\n    longest = max(map(len, scores))\n"
     "    best, back = [0.0] + [float('-inf')] * len(text), [0] * (len(text) + 1)\n    for end in range(1, len(text) + 1):\n"
     "        for start in range(max(0, end - longest), end):\n            s = scores.get(text[start:end], unk_score if end - start == 1 else None)\n"
     "            if s is not None and best[start] + s > best[end]: best[end], back[end] = best[start] + s, start\n"
     "    pieces, end = [], len(text)\n    while end: pieces.append(text[back[end]:end]); end = back[end]\n    return pieces[::-1]",
     ["wrong answer", "inputs:   ('xab',", "expected: ['xa', 'b']", "got:      ['x', 'ab']"]),
    # Off by one: a piece as long as the longest one is never tried.
    ("04_tokenizer.ipynb", "viterbi_segment", "def viterbi_segment(text, scores, unk_score=None):\n"
     "    if unk_score is None: unk_score = min(scores.values()) - 10\n    longest = max(map(len, scores))\n"
     "    best, back = [0.0] + [float('-inf')] * len(text), [0] * (len(text) + 1)\n    for end in range(1, len(text) + 1):\n"
     "        for start in range(max(0, end - longest + 1), end):\n            s = scores.get(text[start:end], unk_score if end - start == 1 else None)\n"
     "            if s is not None and best[start] + s > best[end]: best[end], back[end] = best[start] + s, start\n"
     "    pieces, end = [], len(text)\n    while end: pieces.append(text[back[end]:end]); end = back[end]\n    return pieces[::-1]",
     ["wrong answer", "inputs:   ('abcd',", "expected: ['abcd']", "got:      ['a', 'b', 'c', 'd']"]),
    # The code point instead of the UTF-8 bytes: é becomes <0xE9>, a byte that alone is not UTF-8.
    ("04_tokenizer.ipynb", "byte_fallback", "def byte_fallback(pieces, vocab):\n    out = []\n"
     "    for p in pieces: out += [p] if p in vocab else [f'<0x{ord(c):02X}>' for c in p]\n    return out",
     ["wrong answer", "expected: ['a', '<0xC3>', '<0xA9>', 'b']", "got:      ['a', '<0xE9>', 'b']"]),
    # No zero padding: a newline becomes <0xA>, a piece no model has.
    ("04_tokenizer.ipynb", "byte_fallback", "def byte_fallback(pieces, vocab):\n    out = []\n"
     "    for p in pieces: out += [p] if p in vocab else [f'<0x{b:X}>' for b in p.encode('utf-8')]\n    return out",
     ["wrong answer", "inputs:   (['\\n', '\\t'], set())", "got:      ['<0xA>', '<0x9>']"]),
    # Lesson 02. The specials joined in the order given: where two overlap, the first listed wins, not the longest.
    ("02_data.ipynb", "split_specials", "import re\ndef split_specials(text, specials):\n"
     "    if not specials: return [(text, False)] if text else []\n    out, pos = [], 0\n"
     "    for m in re.finditer('|'.join(map(re.escape, specials)), text):\n"
     "        if m.start() > pos: out.append((text[pos:m.start()], False))\n        out.append((m.group(), True)); pos = m.end()\n"
     "    return out + [(text[pos:], False)] * (pos < len(text))",
     ["wrong answer", "inputs:   ('x<|endoftext|><|x|>y<|endoftext|>'", "expected: [('x', False), ('<|endoftext|><|x|>', True)",
      "got:      [('x', False), ('<|endoftext|>', True), ('<|x|>y', False)"]),
    # The specials not escaped: regex reads the | inside <|endoftext|> as "or", and a lone < counts as a special.
    ("02_data.ipynb", "split_specials", "import re\ndef split_specials(text, specials):\n"
     "    specials = sorted(set(specials), key=len, reverse=True)\n    if not specials: return [(text, False)] if text else []\n"
     "    out, pos = [], 0\n    for m in re.finditer('|'.join(specials), text):\n"
     "        if m.start() > pos: out.append((text[pos:m.start()], False))\n        out.append((m.group(), True)); pos = m.end()\n"
     "    return out + [(text[pos:], False)] * (pos < len(text))",
     ["wrong answer", "inputs:   ('a<|endoftext|>b', ['<|endoftext|>'])", "got:      [('a', False), ('<', True)"]),
    # The separator only between documents: the last document never ends, and a shard's next run glues on.
    ("02_data.ipynb", "pack_documents", "def pack_documents(docs, eos_id):\n    out = []\n    for i, d in enumerate(docs):\n"
     "        if i: out.append(eos_id)\n        out += list(d)\n    return out",
     ["wrong answer", "inputs:   ([[5, 6, 7]], 0)", "expected: [5, 6, 7, 0]", "got:      [5, 6, 7]"]),
    # The separator before each document: the stream starts with it, and no document is followed by its end.
    ("02_data.ipynb", "pack_documents", "def pack_documents(docs, eos_id):\n    out = []\n    for d in docs: out += [eos_id] + list(d)\n    return out",
     ["wrong answer", "inputs:   ([[5, 6, 7]], 0)", "expected: [5, 6, 7, 0]", "got:      [0, 5, 6, 7]"]),
    # The targets shifted the wrong way: the model would learn to predict the previous token.
    ("02_data.ipynb", "window_pair", "import numpy as np, torch\ndef window_pair(tokens, start, seq_len):\n"
     "    w = torch.from_numpy(np.asarray(tokens[start:start + seq_len + 1]).astype(np.int64))\n    return w[1:], w[:-1]",
     ["wrong answer", "inputs:   (array([100, 101", "expected: (tensor(shape=(4,), dtype=int64, values=[100, 101, 102, 103]), "
      "tensor(shape=(4,), dtype=int64, values=[101, 102, 103, 104]))",
      "got:      (tensor(shape=(4,), dtype=int64, values=[101, 102, 103, 104]), tensor(shape=(4,), dtype=int64, values=[100, 101, 102, 103]))"]),
    # The window read without the extra token: the targets come out one short.
    ("02_data.ipynb", "window_pair", "import numpy as np, torch\ndef window_pair(tokens, start, seq_len):\n"
     "    w = torch.from_numpy(np.asarray(tokens[start:start + seq_len]).astype(np.int64))\n    return w, w[1:]",
     ["wrong answer", "expected: (tensor(shape=(4,), dtype=int64, values=[100, 101, 102, 103]), "
      "tensor(shape=(4,), dtype=int64, values=[101, 102, 103, 104]))",
      "got:      (tensor(shape=(4,), dtype=int64, values=[100, 101, 102, 103]), tensor(shape=(3,), dtype=int64, values=[101, 102, 103]))"]),
    # The shard's dtype kept: uint16 tensors, which an embedding cannot index.
    ("02_data.ipynb", "window_pair", "import numpy as np, torch\ndef window_pair(tokens, start, seq_len):\n"
     "    w = torch.from_numpy(np.asarray(tokens[start:start + seq_len + 1]))\n    return w[:-1], w[1:]",
     ["wrong answer", "expected: (tensor(shape=(4,), dtype=int64, values=[100, 101, 102, 103]), "
      "tensor(shape=(4,), dtype=int64, values=[101, 102, 103, 104]))",
      "got:      (tensor(shape=(4,), dtype=uint16, values=[100, 101, 102, 103])"]),
    # One start too many: the last window's last target lies past the end of the split.
    ("02_data.ipynb", "eval_starts", "def eval_starts(n_tokens, seq_len, rank=0, world_size=1):\n"
     "    s = list(range(0, n_tokens - seq_len + 1, seq_len))\n    s = s[:len(s) - len(s) % world_size]\n    return s[rank::world_size]",
     ["wrong answer", "inputs:   (20, 4)", "expected: [0, 4, 8, 12]", "got:      [0, 4, 8, 12, 16]"]),
    # The count not cut to a multiple of the ranks: rank 0 runs a forward pass the others never join.
    ("02_data.ipynb", "eval_starts", "def eval_starts(n_tokens, seq_len, rank=0, world_size=1):\n"
     "    return list(range(0, n_tokens - seq_len, seq_len))[rank::world_size]",
     ["wrong answer", "inputs:   (23, 4, 0, 2)", "expected: [0, 8]", "got:      [0, 8, 16]"]),
    # Contiguous blocks instead of round-robin: a valid split, but not the one the self-check (and the package) deals.
    ("02_data.ipynb", "eval_starts", "def eval_starts(n_tokens, seq_len, rank=0, world_size=1):\n"
     "    s = list(range(0, n_tokens - seq_len, seq_len))\n    k = len(s) // world_size\n    return s[rank * k:(rank + 1) * k]",
     ["wrong answer", "inputs:   (23, 4, 0, 2)", "expected: [0, 8]", "got:      [0, 4]"]),
    # Lesson 16. The memory cap taken as the micro batch without checking it divides the GPU's share: 10 x 1 x 2 is 20 sequences, not 32.
    ("16_launch.ipynb", "split_batch", "def split_batch(global_batch, gpus, max_micro):\n    share = global_batch // gpus\n"
     "    micro = min(max_micro, share)\n    return micro, share // micro",
     ["wrong answer", "inputs:   (32, 2, 10)", "expected: (8, 2)", "got:      (10, 1)"]),
    # The GPUs forgotten: each GPU accumulates the whole global batch, so two GPUs train twice the batch.
    ("16_launch.ipynb", "split_batch", "def split_batch(global_batch, gpus, max_micro):\n"
     "    micro = next(m for m in range(min(max_micro, global_batch), 0, -1) if global_batch % m == 0)\n    return micro, global_batch // micro",
     ["wrong answer", "inputs:   (32, 2, 16)", "expected: (16, 1)", "got:      (16, 2)"]),
    # round() instead of rounding down: 208.9 steps become 209, past the time budget.
    ("16_launch.ipynb", "steps_in_time", "def steps_in_time(seconds, flops_per_token, batch_tokens, gpus, peak_flops, mfu):\n"
     "    return round(seconds * gpus * peak_flops * mfu / (flops_per_token * batch_tokens))",
     ["wrong answer", "inputs:   (900, 854654976, 32768, 1, 65000000000000.0, 0.1)", "expected: 208", "got:      209"]),
    # The GPU count left out: two GPUs are planned as one.
    ("16_launch.ipynb", "steps_in_time", "import math\ndef steps_in_time(seconds, flops_per_token, batch_tokens, gpus, peak_flops, mfu):\n"
     "    return math.floor(seconds * peak_flops * mfu / (flops_per_token * batch_tokens))",
     ["wrong answer", "inputs:   (900, 854654976, 32768, 2, 65000000000000.0, 0.1)", "expected: 417", "got:      208"]),
    # Local ranks numbered on across nodes instead of restarting at 0: node2's processes would look for GPUs 2 and 3.
    ("16_launch.ipynb", "rank_layout", "def rank_layout(nodes):\n    out = []\n    for host, slots in nodes:\n"
     "        for _ in range(slots): out.append((host, len(out)))\n    return out",
     ["wrong answer", "inputs:   ([('node1', 2), ('node2', 2)])", "got:      [('node1', 0), ('node1', 1), ('node2', 2), ('node2', 3)]"]),
    # Round-robin over the nodes (a cyclic distribution), not node by node.
    ("16_launch.ipynb", "rank_layout", "def rank_layout(nodes):\n    out, left = [], [[h, s, 0] for h, s in nodes]\n"
     "    while any(n[1] for n in left):\n        for n in left:\n"
     "            if n[1]: out.append((n[0], n[2])); n[1] -= 1; n[2] += 1\n    return out",
     ["wrong answer", "inputs:   ([('node1', 2), ('node2', 2)])", "got:      [('node1', 0), ('node2', 0), ('node1', 1), ('node2', 1)]"]),
    # The first node's slots taken for every node: unequal nodes index past the list.
    ("16_launch.ipynb", "rank_layout", "def rank_layout(nodes):\n    n = nodes[0][1]\n"
     "    return [(nodes[r // n][0], r % n) for r in range(sum(s for _, s in nodes))]",
     ["raised IndexError", "inputs:   ([('a', 1), ('b', 3)])"]),
    # Lesson 07. rms_norm computed in the input's dtype: bf16 arithmetic rounds every product to 8 bits (the bf16 case).
    ("07_model.ipynb", "rms_norm", "import torch\ndef rms_norm(x, weight, eps=1e-5):\n    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight",
     ["wrong answer", "inputs:   (tensor(shape=(3, 16), dtype=bfloat16"]),
    # Lesson 00. The natural log: the entropy comes out in nats, not bits.
    ("00_first_model.ipynb", "unigram_entropy", "import math\nfrom collections import Counter\ndef unigram_entropy(data):\n    n = len(data)\n"
     "    return sum(c / n * math.log(n / c) for c in Counter(data).values()) if n else 0.0",
     ["wrong answer", "inputs:   (b'ab')", "expected: 1.0", "got:      0.693"]),
    # The entropy of the counts, not of the probabilities: counts of 1 give 0 bits.
    ("00_first_model.ipynb", "unigram_entropy", "import math\nfrom collections import Counter\ndef unigram_entropy(data):\n"
     "    return -sum(c * math.log2(c) for c in Counter(data).values())",
     ["wrong answer", "inputs:   (b'ab')", "expected: 1.0", "got:      -0.0"]),
    # Every byte value summed, those that never occur too: 0 * log 0 is nan.
    ("00_first_model.ipynb", "unigram_entropy", "import torch\ndef unigram_entropy(data):\n"
     "    p = torch.bincount(torch.tensor(list(data), dtype=torch.long), minlength=256).double() / max(1, len(data))\n"
     "    return float(-(p * p.log2()).sum())", ["wrong answer", "got:      nan"]),
    # Targets not shifted: the model is asked to copy its input.
    ("00_first_model.ipynb", "input_target", "import torch\ndef input_target(ids, starts, seq_len):\n"
     "    w = torch.stack([ids[s:s + seq_len] for s in starts])\n    return w, w.clone()",
     ["wrong answer", "inputs:   (tensor(shape=(12,)", "expected: (tensor(shape=(1, 4), dtype=int64, values=[[100, 101, 102, 103]]), tensor(shape=(1, 4), dtype=int64, values=[[101, 102, 103, 104]]))",
      "got:      (tensor(shape=(1, 4), dtype=int64, values=[[100, 101, 102, 103]]), tensor(shape=(1, 4), dtype=int64, values=[[100, 101, 102, 103]]))"]),
    # A window of seq_len tokens, then shifted: one prediction short.
    ("00_first_model.ipynb", "input_target", "import torch\ndef input_target(ids, starts, seq_len):\n"
     "    w = torch.stack([ids[s:s + seq_len] for s in starts])\n    return w[:, :-1], w[:, 1:]",
     ["wrong answer", "got:      (tensor(shape=(1, 3), dtype=int64, values=[[100, 101, 102]]), tensor(shape=(1, 3), dtype=int64, values=[[101, 102, 103]]))"]),
    # Nats left as they are: no division by ln 2.
    ("00_first_model.ipynb", "bits_per_byte", "def bits_per_byte(loss, n_tokens, n_bytes):\n    return loss * n_tokens / n_bytes",
     ["wrong answer", "inputs:   (0.6931471805599453, 1, 1)", "expected: 1.0", "got:      0.6931471805599453"]),
    # Bytes per token instead of tokens per byte.
    ("00_first_model.ipynb", "bits_per_byte", "import math\ndef bits_per_byte(loss, n_tokens, n_bytes):\n    return loss / math.log(2) * n_bytes / n_tokens",
     ["wrong answer", "inputs:   (2.0, 100, 380)"]),
    # The temperature multiplies the logits: 0.5 flattens instead of sharpening.
    ("00_first_model.ipynb", "sample_tokens", "import torch\ndef sample_tokens(model, ids, max_new_tokens, temperature=1.0, seed=0):\n"
     "    g, T = torch.Generator().manual_seed(seed), model.config.max_seq_len\n    for _ in range(max_new_tokens):\n"
     "        logits = model(ids[:, -T:])[0][:, -1].float()\n"
     "        nxt = logits.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial((logits * temperature).softmax(-1), 1, generator=g)\n"
     "        ids = torch.cat([ids, nxt], 1)\n    return ids",
     ["wrong answer", "inputs:   (TinyLM(vocab_size=7, max_seq_len=6), tensor(shape=(2, 2)", "6, 0.5, 1)"]),
    # The whole sequence fed to the model: past max_seq_len it refuses.
    ("00_first_model.ipynb", "sample_tokens", "import torch\ndef sample_tokens(model, ids, max_new_tokens, temperature=1.0, seed=0):\n"
     "    g = torch.Generator().manual_seed(seed)\n    for _ in range(max_new_tokens):\n        logits = model(ids)[0][:, -1].float()\n"
     "        nxt = logits.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)\n"
     "        ids = torch.cat([ids, nxt], 1)\n    return ids",
     ["raised ValueError", "exceed max_seq_len", "inputs:   (TinyLM(vocab_size=7, max_seq_len=6), tensor(shape=(1, 5)"]),
    # The prompt's logits reused at every step: new tokens are never read.
    ("00_first_model.ipynb", "sample_tokens", "import torch\ndef sample_tokens(model, ids, max_new_tokens, temperature=1.0, seed=0):\n"
     "    g, T = torch.Generator().manual_seed(seed), model.config.max_seq_len\n    logits = model(ids[:, -T:])[0][:, -1].float()\n"
     "    for _ in range(max_new_tokens):\n"
     "        nxt = logits.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)\n"
     "        ids = torch.cat([ids, nxt], 1)\n    return ids",
     ["wrong answer", "inputs:   (TinyLM(vocab_size=7, max_seq_len=6), tensor(shape=(1, 3)", "got:      tensor(shape=(1, 7), dtype=int64, values=[[1, 2, 3, 2, 2, 2, 2]])"]),
    # The first position's logits, not the last's.
    ("00_first_model.ipynb", "sample_tokens", "import torch\ndef sample_tokens(model, ids, max_new_tokens, temperature=1.0, seed=0):\n"
     "    g, T = torch.Generator().manual_seed(seed), model.config.max_seq_len\n    for _ in range(max_new_tokens):\n"
     "        logits = model(ids[:, -T:])[0][:, 0].float()\n"
     "        nxt = logits.argmax(-1, keepdim=True) if temperature == 0 else torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)\n"
     "        ids = torch.cat([ids, nxt], 1)\n    return ids",
     ["wrong answer", "inputs:   (TinyLM(vocab_size=7, max_seq_len=6), tensor(shape=(1, 3)"]),
    # Lesson 07. The final norm left out: the head reads the raw residual stream.
    ("07_model.ipynb", "decoder_forward", "import torch\ndef decoder_forward(model, input_ids):\n    c = model.config\n"
     "    x = model.tok_emb(input_ids)\n    pos = torch.arange(input_ids.size(1), device=input_ids.device)\n"
     "    if c.positional == 'learned': x = x + model.pos_emb(pos)\n    elif c.positional == 'sinusoidal': x = x + sinusoidal_positions(pos, c.embed_dim).to(x.dtype)\n"
     "    for block in model.blocks: x = block(x)\n    return model.lm_head(x)",
     ["wrong answer", "expected: tensor(shape=(2, 7, 50)"]),
    # Positions never added: right for RoPE, wrong for a model with learned or sinusoidal positions.
    ("07_model.ipynb", "decoder_forward", "def decoder_forward(model, input_ids):\n    x = model.drop(model.tok_emb(input_ids))\n"
     "    for block in model.blocks: x = block(x)\n    return model.lm_head(model.norm(x))",
     ["wrong answer", "got:      tensor(shape=(2, 7, 50)"]),
    # Lesson 17. SwiGLU's gate and up projections swapped: silu lands on the other half, and the logits differ.
    ("17_hf.ipynb", "llama_name", "def llama_name(name):\n    outside = {'tok_emb.weight': 'model.embed_tokens.weight', 'norm.weight': 'model.norm.weight'}\n"
     "    if not name.startswith('blocks.'): return outside.get(name, name)\n    _, i, rest = name.split('.', 2)\n    module, kind = rest.rsplit('.', 1)\n"
     "    renamed = {f'attn.{p}_proj': f'self_attn.{p}_proj' for p in 'qkvo'}\n"
     "    renamed |= {'ffn.gate': 'mlp.up_proj', 'ffn.up': 'mlp.gate_proj', 'ffn.proj': 'mlp.down_proj', 'norm1': 'input_layernorm', 'norm2': 'post_attention_layernorm'}\n"
     "    return f'model.layers.{i}.{renamed[module]}.{kind}'",
     ["wrong answer", "inputs:   ('blocks.1.ffn.gate.weight')", "expected: 'model.layers.1.mlp.gate_proj.weight'", "got:      'model.layers.1.mlp.up_proj.weight'"]),
    # The two norms swapped, reading post_attention_layernorm as the norm of attention's input.
    ("17_hf.ipynb", "llama_name", "def llama_name(name):\n    outside = {'tok_emb.weight': 'model.embed_tokens.weight', 'norm.weight': 'model.norm.weight'}\n"
     "    if not name.startswith('blocks.'): return outside.get(name, name)\n    _, i, rest = name.split('.', 2)\n    module, kind = rest.rsplit('.', 1)\n"
     "    renamed = {f'attn.{p}_proj': f'self_attn.{p}_proj' for p in 'qkvo'}\n"
     "    renamed |= {'ffn.gate': 'mlp.gate_proj', 'ffn.up': 'mlp.up_proj', 'ffn.proj': 'mlp.down_proj', 'norm1': 'post_attention_layernorm', 'norm2': 'input_layernorm'}\n"
     "    return f'model.layers.{i}.{renamed[module]}.{kind}'",
     ["wrong answer", "inputs:   ('blocks.0.norm1.weight')", "expected: 'model.layers.0.input_layernorm.weight'"]),
    # GPT-2's Conv1D pieces not transposed: right shapes for a square C x C, values transposed.
    ("17_hf.ipynb", "split_gpt2_qkv", "def split_gpt2_qkv(weight, bias):\n    C = weight.size(0)\n    return tuple(weight.split(C, dim=1)), tuple(bias.split(C))",
     ["wrong answer", "inputs:   (tensor(shape=(2, 6)", "expected: ((tensor(shape=(2, 2), dtype=float32, values=[[0.0, 6.0], [1.0, 7.0]])"]),
    # One permutation over all rows, heads ignored: right for one head, mixes heads for two.
    ("17_hf.ipynb", "interleaved_to_half", "def interleaved_to_half(w, num_heads):\n    return w.view(w.size(0) // 2, 2, *w.shape[1:]).transpose(0, 1).reshape(w.shape)",
     ["wrong answer", "inputs:   (tensor(shape=(16, 3)", ", 2)"]),
    # The inverse permutation (half-split -> interleaved): the same for d = 4, not for d = 8.
    ("17_hf.ipynb", "interleaved_to_half", "def interleaved_to_half(w, num_heads):\n    d = w.size(0) // num_heads\n"
     "    return w.view(num_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)",
     ["wrong answer", "inputs:   (tensor(shape=(8, 1)", "got:      tensor(shape=(8, 1), dtype=float32, values=[[0.0], [4.0], [1.0]"]),
    # 6N alone: the attention term (the score and weighted-sum matmuls, which grow with the context) forgotten.
    ("15_scaling.ipynb", "flops_per_token_of", "from minillm.model import param_formula\ndef flops_per_token_of(c, seq_len):\n"
     "    return 6 * param_formula(c)['matmul']", ["wrong answer", "expected:", "got:"]),
    # 6N with every parameter, not the ones a token multiplies: a MoE layer's idle experts counted, norms included.
    ("15_scaling.ipynb", "flops_per_token_of", "from minillm.model import param_formula, attention_params\ndef flops_per_token_of(c, seq_len):\n"
     "    attn = sum(6 * seq_len * c.layer(i).num_heads * sum(attention_params(c.layer(i))[2:]) for i in range(c.num_layers))\n"
     "    return 6 * param_formula(c)['total'] + attn", ["wrong answer", "expected:", "got:"]),
    # The 6 of C = 6ND forgotten: N too large by sqrt(6).
    ("15_scaling.ipynb", "compute_optimal", "import math\ndef compute_optimal(flops, tokens_per_param=20.0):\n"
     "    n = math.sqrt(flops / tokens_per_param)\n    return n, tokens_per_param * n", ["inputs:   (5.76e+23)", "expected:", "got:"]),
    # The parabola fitted in N instead of ln N: the vertex lands elsewhere.
    ("15_scaling.ipynb", "isoflop_minimum", "import numpy as np\ndef isoflop_minimum(params, losses):\n"
     "    a, b, _ = np.polyfit(np.asarray(params, dtype=float), np.asarray(losses, dtype=float), 2)\n    return float(-b / (2 * a))",
     ["wrong answer", "expected:", "got:"]),
] 


def test_every_exercise_has_a_wrong_answer():
    """Each exercise has at least one plausible wrong answer in WRONG, which test_lesson_exercises runs against its
    self-check. Guards against a self-check that nothing proves can fail: one whose cases are too few or too easy
    passes wrong code, and the learner is told a mistake is right."""
    have = {(lesson, func) for lesson, func, *_ in WRONG}
    missing = [f"{n}: {f}" for n, f in EXERCISES if (n, f) not in have]
    assert EXERCISES and not missing, ("exercises with no wrong answer in WRONG (add a mistake a learner makes, that "
                                       "its self-check rejects): " + ", ".join(missing))


class SlowStep(UserWarning):
    "A lesson cell, or the kernel's start and stop, that took over SLOW seconds: named in the suite's output."


SLOW = float(os.environ.get("MINILLM_SLOW_STEP", 120))   # seconds; the slowest lesson cell takes about 60 s here
CELL_SECONDS, WALKING = [], [""]   # this walk's cell times, and its lesson


def run_cell(client, cell, index) -> str | None:
    "Run one cell in the lesson's kernel: None if it ran, else the error as the learner sees it."
    cell.outputs = []
    t = time.monotonic()
    try: client.execute_cell(cell, index)
    except CellExecutionError as e: return str(e)
    finally:
        CELL_SECONDS.append(dt := time.monotonic() - t)
        if dt > SLOW: warnings.warn(SlowStep(f"{WALKING[0]} cell {index} took {dt:.0f} s: {cell.source.strip().splitlines()[0][:80]!r}"))
    return None


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_exercises(name, tmp_path):
    """One kernel walks the lesson top to bottom, as a learner would (cells flagged slow left out, as nbdev_test does),
    with the notebook's hidden test cells kept (the lesson as generated, plus them: the suite need not run it twice).
    At each exercise: the stub as shipped fails its self-check, saying it is not implemented and giving the tier-1 hint;
    each plausible wrong answer of WRONG fails it, showing inputs, expected and got; the reference passes it; the lesson
    then goes on with the reference, so every later cell runs, to the end. One kernel per lesson, not one per check:
    the lesson's expensive cells (training runs) run once. Last, the prose-number scan (tests/prose.py): every number
    in the lesson's prose is computed or printed by a code cell near it, or cites its source."""
    nb = nbformat.from_dict(make_lesson(read_nb(ROOT / "nbs" / name), name, read_settings(ROOT), keep_hidden=True))
    every_cell = list(nb.cells)                          # for the prose scan: a slow cell's source still counts
    nb.cells = [c for c in nb.cells if not c.source.startswith("# Slow on a CPU")]
    wrong = {}
    for lesson, func, answer, shows in WRONG:
        if lesson == name: wrong.setdefault(func, []).append((answer, shows))
    mine = [f for n, f in EXERCISES if n == name]
    assert set(wrong) <= set(mine), f"WRONG names exercises {set(wrong) - set(mine)} that {name} does not have"
    client, problems, passed = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}), [], []
    CELL_SECONDS.clear(); WALKING[0] = name
    t0 = time.monotonic()
    with client.setup_kernel():
        poll_in_slices(client.kc)   # else a lost zmq wake-up now and then holds a cell for the full 600 s timeout
        i = 0
        while i < len(nb.cells):
            cell = nb.cells[i]
            func = next((f for f in mine if cell.cell_type == "code" and "\u270f\ufe0f" in cell.source and f"def {f}(" in cell.source), None)
            if func is None:
                if cell.cell_type == "code" and (err := run_cell(client, cell, i)): pytest.fail(f"{name} cell {i} failed:\n{err[-3000:]}")
                i += 1
                continue
            check = nb.cells[i + 1]
            assert check.source.startswith("# Self-check"), f"{name}: exercise {func} must be followed by its self-check"
            assert run_cell(client, cell, i) is None, f"{name}: the stub of {func} does not even define it"
            err = run_cell(client, check, i + 1) or ""
            if not ("ExerciseFailed" in err and "not implemented yet" in err and "hint:" in err):
                problems.append(f"{func}: the stub did not fail its self-check with the hint:\n{err[-1500:]}")
            for answer, shows in wrong.get(func, []):
                cell.source = answer
                err = (run_cell(client, cell, i) or "") or (run_cell(client, check, i + 1) or "")
                missing = [x for x in shows if x not in err]
                if missing: problems.append(f"{func}: a wrong answer was not rejected showing {missing}:\n{answer}\n---\n{err[-1500:]}")
            cell.source = reference_cell(name, func)
            if (err := run_cell(client, cell, i) or run_cell(client, check, i + 1)): pytest.fail(f"{name}: the reference of {func} fails:\n{err[-3000:]}")
            out = "".join(o.get("text", "") for o in check.get("outputs", []))
            if f"\u2713 {func}" not in out: problems.append(f"{func}: the self-check printed no pass: {out[-500:]}")
            passed.append(func)
            i += 2
    if (rest := time.monotonic() - t0 - sum(CELL_SECONDS)) > SLOW:   # a stall outside the cells: the kernel's start or stop
        warnings.warn(SlowStep(f"{name}: {rest:.0f} s outside its {len(CELL_SECONDS)} cells (kernel start and stop)"))
    assert passed == mine, (passed, mine)
    assert not problems, "\n\n".join(problems)
    typed = prose.unsupported(every_cell)
    assert not typed, (f"{name}: numbers in the prose that no code cell near them computes or prints, and that cite no source "
                       "(compute them in a cell, print them, or name the source):\n" + "\n".join(typed))
