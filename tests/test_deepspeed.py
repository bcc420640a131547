"""DeepSpeed as users run it: the real `deepspeed` launcher, 2 CPU processes (gloo), fp32, the tiny model.

Tolerances: every run here is fp32 on the CPU with the same seed and the same windows on each rank, so
the only differences between plain DDP and a ZeRO stage are the order of floating-point reductions
(bucketed all-reduce vs reduce-scatter over flat partitions). 1e-4 relative on the loss is far above that
rounding and far below any real divergence (a wrong learning rate or a missed gradient changes the
second decimal within a few steps).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from minillm.ds import deepspeed_command, free_port, torchrun_command  # noqa: E402

TINY = ["--model", "embed_dim=32", "--model", "num_heads=4", "--model", "num_layers=2", "--model", "max_seq_len=64",
        "--micro-batch", "4", "--eval-batches", "2", "--warmup-steps", "2", "--log-every", "1", "--sample-tokens", "0"]


PORTS = []   # every launcher port used here: DeepSpeed names its /dev/shm segments after the port


def ds(data, out, *args, procs=2, timeout=600):
    PORTS.append(free_port())
    cmd = deepspeed_command(["--data", str(data), "--out", str(out), *TINY, *args], procs, port=PORTS[-1])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def torchrun(data, out, *args):
    return subprocess.run(torchrun_command(["--data", str(data), "--out", str(out), *TINY, *args], 2), capture_output=True, text=True, timeout=600)


def losses(out): return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Plain DDP, ZeRO-1, ZeRO-2, ZeRO-3 and ZeRO-2 with the optimizer offloaded to CPU: 12 steps each, same seed."""
    base = tmp_path_factory.mktemp("dsruns")
    out = {}
    r = torchrun(data, base / "ddp", "--max-steps", "12", "--eval-every", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    out["ddp"] = base / "ddp"
    for name, flags in (("zero1", ["--zero-stage", "1"]), ("zero2", ["--zero-stage", "2"]), ("zero3", ["--zero-stage", "3"]),
                        ("zero2-offload", ["--zero-stage", "2", "--offload", "optimizer"])):
        r = ds(data, base / name, "--max-steps", "12", "--eval-every", "6", "--deepspeed", *flags)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = base / name
    return out


def test_zero_stages_follow_the_plain_trainer(runs):
    "ZeRO 1, 2, 3 and ZeRO-2 + CPU offload give the plain DDP loss trajectory (fp32 rounding only, see module docstring)."
    ref = losses(runs["ddp"])
    assert len(ref) == 12
    for name, out in runs.items():
        got = losses(out)
        assert len(got) == 12 and all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(ref, got)), (name, ref, got)


def test_each_rank_holds_half_the_optimizer_state(runs):
    """Per rank, after the first step: the optimizer's moments are half of the plain trainer's 8 bytes per parameter
    (exactly the memory lesson's `zero_bytes`); ZeRO-3 also halves the weights; offload moves the optimizer to CPU."""
    for name in ("zero1", "zero2", "zero3", "zero2-offload"):
        rep = json.loads((runs[name] / "zero_memory.json").read_text())
        n, f = rep["num_params"], rep["formula"]
        assert rep["world_size"] == 2 and len(rep["ranks"]) == 2
        for r in rep["ranks"]:
            assert r["optimizer"] == 8 * n // 2, (name, r)
            assert r["weights"] == (4 * n // 2 if name == "zero3" else 4 * n), (name, r)
            assert r["master"] == 4 * n // 2, (name, r)
        if name == "zero2-offload":
            assert f["cpu"]["optimizer"] == 8 * n // 2 and f["gpu"]["optimizer"] == 0
            assert "offload_optimizer" in json.loads((runs[name] / "ds_config.json").read_text())["zero_optimization"]
        else:
            assert all({k: r[k] for k in ("weights", "master", "optimizer")} == {k: f["gpu"][k] for k in ("weights", "master", "optimizer")}
                       for r in rep["ranks"])


def test_no_shared_memory_left_behind(runs):
    """DeepSpeed's CPU backend would map a 69 MB /dev/shm segment per rank for an inference-only all-reduce and never
    unlink it (hundreds of runs filled the RAM of a 24 GB machine). The trainer switches that op off: after the
    runs above, no segment named after any of their ports exists."""
    shm = Path("/dev/shm")
    if not shm.is_dir(): pytest.skip("no /dev/shm")
    left = [p.name for p in shm.glob("deepspeed_allreduce_buffer_*") if any(p.name.endswith((f"_{port}_0", f"_{port}_1")) for port in PORTS)]
    assert PORTS and not left, left


def test_save_at_k_and_resume_reproduces_the_rest(data, tmp_path):
    "ZeRO-2: stop after step 5 (checkpoint), --resume to 12: steps 6..12 equal an uninterrupted run's (same data position, same RNG)."
    straight, split = tmp_path / "straight", tmp_path / "split"
    r = ds(data, straight, "--max-steps", "12", "--eval-every", "100", "--deepspeed", "--zero-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    r = ds(data, split, "--max-steps", "12", "--eval-every", "100", "--stop-at", "5", "--deepspeed", "--zero-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(losses(split)) == 5 and (split / "deepspeed" / "latest").is_dir() and (split / "latest.pt").exists()
    r = ds(data, split, "--max-steps", "12", "--eval-every", "100", "--resume", "--deepspeed", "--zero-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    a, b = losses(straight), losses(split)
    assert len(b) == 12 and all(abs(x - y) <= 1e-6 * abs(x) for x, y in zip(a, b)), (a, b)


def test_consolidated_checkpoint_samples_and_the_plain_trainer_continues(venv_bin, runs, tmp_path):
    """The ZeRO-3 run's consolidated checkpoint: `minillm sample` loads it, its weights equal the shards merged again,
    and the plain trainer resumes the same run folder (weights, step, data position; AdamW moments restart, as it says)."""
    import shutil
    from minillm.ds import consolidated_weights
    out = tmp_path / "z3"
    shutil.copytree(runs["zero3"], out)
    s = subprocess.run([str(venv_bin / "minillm"), "sample", "--run", str(out), "--prompt", "def ", "--max-new-tokens", "10"],
                       capture_output=True, text=True, timeout=300)
    assert s.returncode == 0 and s.stdout.startswith("def "), s.stderr[-2000:]
    ck = torch.load(out / "latest.pt", weights_only=True)
    assert ck["step"] == 12 and ck["optimizer"] is None and ck["deepspeed"]["zero_stage"] == 3
    merged = consolidated_weights(out / "deepspeed", "latest", ck["model"].keys())
    assert all(torch.equal(merged[k], ck["model"][k]) for k in ck["model"])
    data = json.loads((out / "config.json").read_text())["train"]["data"]
    r = subprocess.run([str(venv_bin / "minillm"), "train", "--data", data, "--out", str(out), *TINY, "--max-steps", "14", "--eval-every", "100", "--resume"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no optimizer state" in r.stdout + r.stderr and losses(out)[-1] > 0 and len(losses(out)) == 14


def test_bad_input_names_the_fix(data, tmp_path):
    "DeepSpeed missing, batch arithmetic that does not add up, stage-3-only options on stage 2, more processes than devices."
    cli = "import sys; from minillm.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["train", "--data", str(data), "--out", str(tmp_path / "x"), *TINY, "--max-steps", "2"]
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['deepspeed'] = None; " + cli, *args, "--deepspeed"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "pip install deepspeed" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 30, "gradient_accumulation_steps": 2}))
    r = subprocess.run([sys.executable, "-c", cli, *args, "--deepspeed", str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "train_batch_size 30 != train_micro_batch_size_per_gpu 4 x 1 processes x gradient_accumulation_steps 2 = 8" in r.stderr, r.stderr[-2000:]
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}))
    r = subprocess.run([sys.executable, "-c", cli, *args, "--deepspeed", str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "offload_param only apply to ZeRO stage 3" in r.stderr, r.stderr[-2000:]
    env = dict(os.environ, LOCAL_WORLD_SIZE=str((os.cpu_count() or 1) + 1))
    r = subprocess.run([sys.executable, "-c", cli, *args, "--deepspeed"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "processes on this node but" in r.stderr and "launch at most" in r.stderr, r.stderr[-2000:]


def test_bench_zero_writes_figures(venv_bin, data, tmp_path):
    "`minillm bench zero` runs each mode as its own job and writes tokens/s per mode (figures checked for shape, not speed)."
    out = tmp_path / "bench.json"
    r = subprocess.run([str(venv_bin / "minillm"), "bench", "zero", "--data", str(data), "--procs", "1", "--steps", "8", "--micro-batch", "2",
                        "--modes", "plain", "zero1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [x["mode"] for x in res["runs"]] == ["plain", "zero1"] and all(x["tokens_per_s"] > 0 for x in res["runs"])
    assert abs(res["runs"][0]["final_loss"] - res["runs"][1]["final_loss"]) <= 1e-4 * res["runs"][0]["final_loss"]


def test_one_process_without_the_launcher(venv_bin, data, tmp_path):
    "`minillm train --deepspeed` from a plain shell, no launcher: a process group of one, so DeepSpeed needs no MPI."
    r = subprocess.run([str(venv_bin / "minillm"), "train", "--data", str(data), "--out", str(tmp_path / "one"), *TINY, "--max-steps", "4",
                        "--eval-every", "4", "--deepspeed", "--zero-stage", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DeepSpeed ZeRO-1" in r.stdout + r.stderr and "final: val_loss" in r.stdout and "mpi4py" not in r.stderr
