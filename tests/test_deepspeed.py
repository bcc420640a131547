"""DeepSpeed as users run it: the real `deepspeed` launcher, 2 CPU processes (gloo), fp32, the tiny model.

Tolerances: every run here is fp32 on the CPU with the same seed and the same windows on each rank, so
the only differences between plain DDP and a ZeRO stage are the order of floating-point reductions
(bucketed all-reduce vs reduce-scatter over flat partitions). 1e-5 relative on the loss (the engines
issue's bound) is above that rounding (lesson 13 measures 0 on its ten steps) and far below any real
divergence (a wrong learning rate or a missed gradient changes the second decimal within a few steps).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from badinput import checksums, cli, fails_cleanly  # noqa: E402
from minillm.ds import deepspeed_command, torchrun_command  # noqa: E402
from minillm.utils import free_port  # noqa: E402
from conftest import tiny_flags

TINY = tiny_flags(log_every=1)


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
    """Plain DDP, ZeRO-1 (chosen with --engine deepspeed), ZeRO-2, ZeRO-3, ZeRO-2 with the optimizer offloaded to CPU,
    and recompute: 12 steps each, same seed."""
    base = tmp_path_factory.mktemp("dsruns")
    out = {}
    r = torchrun(data, base / "ddp", "--max-steps", "12", "--eval-every", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    out["ddp"] = base / "ddp"
    for name, flags in (("zero1", ["--engine", "deepspeed", "--zero-stage", "1"]), ("zero2", ["--zero-stage", "2"]), ("zero3", ["--zero-stage", "3"]),
                        ("zero2-offload", ["--zero-stage", "2", "--offload", "optimizer"]),
                        ("zero3-recompute", ["--zero-stage", "3", "--activation-checkpointing"]),
                        ("zero3-max", ["zero3-max"])):
        args = flags if flags[0] == "--engine" else ["--deepspeed", *flags]     # --engine deepspeed means --deepspeed
        r = ds(data, base / name, "--max-steps", "12", "--eval-every", "6", *args)
        assert r.returncode == 0, r.stderr[-3000:]
        (base / f"{name}.log").write_text(r.stdout + r.stderr)
        out[name] = base / name
    return out


def test_zero_stages_follow_the_plain_trainer(runs):
    "ZeRO 1, 2, 3 and ZeRO-2 + CPU offload give the plain DDP loss trajectory (fp32 rounding only, see module docstring)."
    ref = losses(runs["ddp"])
    assert len(ref) == 12
    for name, out in runs.items():
        got = losses(out)
        worst = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
        assert len(got) == 12 and worst <= 1e-5, (name, worst, ref, got)


def test_recompute_gives_the_same_losses(runs):
    """ZeRO-3 with activations recomputed by deepspeed.checkpointing (--activation-checkpointing, and the shipped
    zero3-max: stage 3, everything offloaded to CPU, recompute) gives the losses of the same run without it (ZeRO-2's
    recompute goes through the same trainer code; its run was dropped to keep the suite inside its time budget):
    recomputing a forward changes no number. deepspeed.checkpointing.configure must run after DeepSpeed's communication
    starts: before, two processes stopped on a batch-size mismatch and one on "backend not set"."""
    for name, ref in (("zero3-recompute", "zero3"), ("zero3-max", "zero3")):
        a, b = losses(runs[ref]), losses(runs[name])
        assert len(b) == 12 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (name, a, b)
        assert "activation_checkpointing" in json.loads((runs[name] / "ds_config.json").read_text())
        assert "activations recomputed (deepspeed.checkpointing)" in (runs[name].parent / f"{name}.log").read_text(), name
    assert "activations recomputed" not in (runs["zero2"].parent / "zero2.log").read_text()
    assert "offload_param" in json.loads((runs["zero3-max"] / "ds_config.json").read_text())["zero_optimization"]


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
    assert "engine deepspeed: ZeRO-1" in r.stdout + r.stderr and "final: val_loss" in r.stdout and "mpi4py" not in r.stderr


# --- a run folder is data, never code -----------------------------------------------------------------------------

def plant(path: Path, marker: Path, raw_pickle: bool = False):
    "A file that creates `marker` when unpickled without restriction (torch.load(weights_only=False), pickle.load)."
    import pickle

    class Payload:
        def __reduce__(self): return (open, (str(marker), "w"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw_pickle: path.write_bytes(pickle.dumps({"optimizer_state_dict": Payload()}))
    else: torch.save({"optimizer_state_dict": Payload()}, path)


def test_planted_shards_in_a_fresh_out_are_never_read(data, tmp_path):
    """A new --out whose deepspeed/latest/ and deepspeed/latest.tmp/ already hold shard-named payloads (rank 0's and an
    extra rank's optimizer shard, the model states): after each save rank 0 merges every *_optim_states.pt of the tag
    folder, so a planted one ran. The trainer saves into an emptied folder, merges only the files this run wrote, and
    clears the old ones unread: the run either trains or refuses cleanly, and the marker is never created."""
    out, marker = tmp_path / "fresh", tmp_path / "pwned"
    for tag in ("latest", "latest.tmp", "best"):
        for f in ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_2_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"):
            plant(out / "deepspeed" / tag / f, marker)
    r = ds(data, out, "--max-steps", "3", "--eval-every", "3", "--deepspeed", "--zero-stage", "2")
    assert not marker.exists()
    if r.returncode == 0:
        assert sorted(p.name for p in (out / "deepspeed" / "latest").iterdir()) == [
            "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
        assert torch.load(out / "latest.pt", weights_only=True)["step"] == 3
    else: fails_cleanly(r, str(out))


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    "A ZeRO-2 run on 2 processes, stopped at step 3 of 6: its deepspeed/latest/ holds a model and two optimizer shards."
    out = tmp_path_factory.mktemp("stopped") / "run"
    r = ds(data, out, "--max-steps", "6", "--eval-every", "100", "--stop-at", "3", "--deepspeed", "--zero-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("how", ["replace rank 1's optimizer shard", "add a raw pickle", "add a torch.save file"])
def test_resume_refuses_a_planted_shard(stopped, tmp_path, how):
    """--resume: every rank loads each file of the tag folder with weights_only=True (only SHARD_GLOBALS allowed) before
    DeepSpeed's load_checkpoint (weights_only=False) sees any. A planted file ends the command with one line naming it;
    the marker is never created, and the run's other files are unchanged."""
    import shutil
    out, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(stopped, out)
    tag = out / "deepspeed" / "latest"
    bad = {"replace rank 1's optimizer shard": tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt",
           "add a raw pickle": tag / "extra_optim_states.pt", "add a torch.save file": tag / "a_model_states.pt"}[how]
    plant(bad, marker, raw_pickle=how == "add a raw pickle")
    before = checksums(out)
    r = ds(json.loads((out / "config.json").read_text())["train"]["data"], out, "--max-steps", "6", "--eval-every", "100", "--resume",
           "--deepspeed", "--zero-stage", "2")
    assert not marker.exists()
    fails_cleanly(r, str(bad), "did not write")
    assert checksums(out) == before


def test_safe_load_accepts_every_shard_deepspeed_writes(runs):
    """The allow-list is enough: every file of every run above (ZeRO 1-3, offload, recompute; model and optimizer
    shards) passes verify_shards, and a check that it can fail: a file holding a class outside it is refused."""
    from minillm.ds import verify_shards
    from minillm.utils import UserError
    for name, out in runs.items():
        if name == "ddp": continue
        for tag in ("latest", "best"): verify_shards(out / "deepspeed" / tag)
    import argparse, tempfile
    with tempfile.TemporaryDirectory() as d:
        torch.save({"x": argparse.Namespace(a=1)}, Path(d) / "mp_rank_00_model_states.pt")   # harmless, but not a type DeepSpeed writes
        with pytest.raises(UserError, match="did not write"): verify_shards(Path(d))


# --- one micro batch ---------------------------------------------------------------------------------------------

def test_the_sampler_draws_the_engines_micro_batch(data, tmp_path):
    """A ds_config's train_micro_batch_size_per_gpu (2) wins over --micro-batch (4), and the sampler must draw what the
    engine was built for: the Trainer builds its sampler after the engine's setup, from the config the DeepSpeed engine
    resolved. Before, the engine expected 2 while every batch held 4."""
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1}}))
    code = ("import json, sys\nfrom minillm.train import Trainer, build_configs, train_parser\n"
            "mc, tc = build_configs(train_parser().parse_args(sys.argv[1:]))\nt = Trainer(mc, tc)\nx, y = t.sampler.next_batch()\n"
            "print(json.dumps(dict(sampler=x.shape[0], engine=t.engine.engine.train_micro_batch_size_per_gpu(), cfg=t.cfg.micro_batch)))")
    r = subprocess.run([sys.executable, "-c", code, "--data", str(data), "--out", str(tmp_path / "o"), *TINY, "--deepspeed", str(cfg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == dict(sampler=2, engine=2, cfg=2), got
    assert "micro batch 2 from" in r.stdout


# --- bad --deepspeed values: one line, before anything starts -----------------------------------------------------

def _unreadable(p: Path) -> Path:
    p.write_text("{}"); p.chmod(0); return p


BAD_DS = {   # name: (write the value into folder d -> the --deepspeed argument, strings stderr must hold)
    "misspelled shipped name": (lambda d: "zero3max", ["--deepspeed zero3max", "zero2-offload", "zero3-max", "did you mean zero3-max"]),
    "missing file": (lambda d: str(d / "nope.json"), ["nope.json", "no such file", "shipped"]),
    "a JSON list": (lambda d: (d / "l.json").write_text("[1, 2]") and str(d / "l.json"), ["l.json", "JSON object", "a list"]),
    "a JSON number": (lambda d: (d / "n.json").write_text("3") and str(d / "n.json"), ["n.json", "JSON object", "a number"]),
    "a syntax error": (lambda d: (d / "s.json").write_text('{\n  "zero_optimization": {"stage": 2},\n  "bf16": {enabled: true}\n}') and str(d / "s.json"),
                       ["s.json", "not valid JSON at line 3"]),
    "an empty file": (lambda d: (d / "e.json").write_text("") is not None and str(d / "e.json"), ["e.json", "not valid JSON at line 1"]),
    "a folder": (lambda d: str(d), [" cannot read it", "give a readable ds_config.json"]),
    "not UTF-8": (lambda d: (d / "b.json").write_bytes(b"\xff\xfe\x00{") and str(d / "b.json"), ["b.json", "not UTF-8"]),
    "a section that is not an object": (lambda d: (d / "z.json").write_text('{"zero_optimization": 2}') and str(d / "z.json"),
                                        ["z.json", "zero_optimization must be an object"]),
    "a batch size that is a string": (lambda d: (d / "m.json").write_text('{"train_micro_batch_size_per_gpu": "4"}') and str(d / "m.json"),
                                      ["m.json", "train_micro_batch_size_per_gpu must be a positive integer"]),
    "unreadable": (lambda d: str(_unreadable(d / "u.json")), ["u.json", "cannot read it"]),
}


@pytest.mark.parametrize("case", list(BAD_DS))
def test_bad_deepspeed_value_fails_cleanly(data, tmp_path, case):
    """Each bad --deepspeed value ends `minillm train` (one process, no launcher) with one line naming the value or the
    file and what to give instead, before DeepSpeed starts: exit 1, no traceback, no run folder made."""
    if case == "unreadable" and os.geteuid() == 0: pytest.skip("root reads a file without read permission")
    d = tmp_path / "cfg"; d.mkdir()
    make, names = BAD_DS[case]
    out = tmp_path / "out"
    r = cli("train", "--data", data, "--out", out, *TINY, "--max-steps", "2", "--deepspeed", make(d))
    fails_cleanly(r, "minillm train", *names, rc=1)
    assert len(r.stderr.strip().splitlines()) <= 3 and "DeepSpeed ZeRO" not in r.stdout
    assert not out.exists()
