"""Mixture-of-experts models (lesson 08) through every training path as users run them: `minillm train --preset moe` on one
process, torchrun/DDP on 2 CPU processes (gloo), and DeepSpeed ZeRO-2 on 2 CPU processes; fp32 throughout.

Tolerances: DDP and ZeRO-2 run the same seed on the same windows per rank; they differ only in the order of floating-point
reductions (bucketed all-reduce vs reduce-scatter), as in tests/test_deepspeed.py, so 1e-4 relative on the loss is far
above rounding and far below a real difference (a balancing loss left out of one path, or a bias updated per micro-batch).
"""
import json

import pytest
import torch

from minillm.ds import deepspeed_command, run_training, torchrun_command
from minillm.utils import free_port

MOE = ["--preset", "moe", *[a for kv in ("embed_dim=32", "num_heads=2", "num_layers=2", "num_experts=4", "top_k=2", "expert_hidden=32",
                                         "max_seq_len=32") for a in ("--model", kv)],
       "--micro-batch", "4", "--eval-batches", "2", "--warmup-steps", "2", "--log-every", "1", "--sample-tokens", "0",
       "--max-steps", "6", "--eval-every", "3"]


def train(cmd_args, out, procs, deepspeed=False):
    args = ["--data", *cmd_args[:1], "--out", str(out), *cmd_args[1:]]
    cmd = deepspeed_command(args, procs, port=free_port()) if deepspeed else torchrun_command(args, procs)
    return run_training(cmd, out, timeout=600)


def test_moe_preset_one_process(data, tmp_path):
    """`minillm train --preset moe` trains on one process and logs the MoE metrics every step (per-layer loads at
    evaluations); the loss is finite and falls."""
    rows = train([str(data), *MOE], tmp_path / "one", 1)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(k in r for r in rows for k in ("moe_maxvio", "moe_maxvio_run", "moe_dropped", "moe_aux_loss", "moe_z_loss"))
    assert all(("moe_load" in r) == ("val_loss" in r) for r in rows) and len(rows[-1]["moe_load"]) == 2
    assert all(abs(sum(layer) - 1) < 1e-3 for layer in rows[-1]["moe_load"])
    assert rows[-1]["loss"] < rows[0]["loss"] and all(r["loss"] == r["loss"] for r in rows)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """torchrun DDP and DeepSpeed ZeRO 1, 2, 3 and ZeRO-2 with activations recomputed, on 2 processes, the same aux-loss-free
    MoE model, 2 micro-batches per optimizer step, 6 steps each."""
    base, extra = tmp_path_factory.mktemp("moeruns"), ["--model", "balance=aux_free", "--batch-tokens", str(4 * 32 * 2 * 2)]
    out = {"ddp": (base / "ddp", train([str(data), *MOE, *extra], base / "ddp", 2))}
    for name, flags in (("zero1", ["--zero-stage", "1"]), ("zero2", ["--zero-stage", "2"]), ("zero3", ["--zero-stage", "3"]),
                        ("zero2-recompute", ["--zero-stage", "2", "--activation-checkpointing"])):
        out[name] = (base / name, train([str(data), *MOE, *extra, "--deepspeed", *flags], base / name, 2, deepspeed=True))
    return out


def test_ddp_moe_trains_and_moves_the_bias(runs):
    """2-process DDP with MoE layers does not hang (every expert's weights get a gradient, zero when it got no token), the
    loss stays finite, and balance=aux_free moves the bias: bias_steps in latest.pt are nonzero, at most one unit per step."""
    out, rows = runs["ddp"]
    assert [r["step"] for r in rows] == list(range(1, 7)) and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    sd = torch.load(out / "latest.pt", weights_only=True)["model"]
    bias = [v for k, v in sd.items() if k.endswith("ffn.bias_steps")]
    assert len(bias) == 2 and any(b.abs().sum() > 0 for b in bias) and all(b.abs().max() <= 6 for b in bias), bias


def test_deepspeed_moe_follows_ddp(runs):
    """DeepSpeed ZeRO 1-3 on a MoE model give the DDP run's losses (1e-4 relative, see the module docstring) and the same
    aux-free bias: the balancing losses join the loss and the loads are summed across ranks once per optimizer step (not per
    micro-batch). With activations recomputed (torch's non-reentrant checkpoint for MoE models: DeepSpeed's reentrant one
    would leave the balancing losses without a gradient), the same again: a recompute counts no token twice."""
    d_out, ddp = runs["ddp"]
    a = [r["loss"] for r in ddp]
    bias = lambda out: {k: v for k, v in torch.load(out / "latest.pt", weights_only=True)["model"].items() if k.endswith("bias_steps")}
    assert len(a) == 6 and any(v.abs().sum() > 0 for v in bias(d_out).values())
    for name, (out, rows) in runs.items():
        b = [r["loss"] for r in rows]
        assert len(b) == 6 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (name, a, b)
        assert bias(d_out).keys() == bias(out).keys() and all(torch.equal(v, bias(out)[k]) for k, v in bias(d_out).items()), name
    assert "activation_checkpointing" in json.loads((runs["zero2-recompute"][0] / "ds_config.json").read_text())
