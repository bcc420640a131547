"""`minillm train` and `minillm sample` as users run them: real subprocesses, real torchrun/DDP on CPU (gloo)."""
import json
import signal
import subprocess
import time

import torch

from minillm.utils import free_port
from conftest import minillm

SMALL = ["--model", "embed_dim=32", "--model", "num_heads=4", "--model", "num_layers=2", "--model", "max_seq_len=64",
         "--micro-batch", "4", "--eval-batches", "2", "--warmup-steps", "2", "--log-every", "1"]




def test_train_sample_resume(venv_bin, data, tmp_path):
    """The whole user path: train (final eval + sample printed), sample from the run folder, refuse to
    overwrite without --resume, then --resume to a later step."""
    out = tmp_path / "run"
    r = minillm("train", "--data", str(data), "--out", str(out), *SMALL, "--max-steps", "20", "--eval-every", "10", "--sample-tokens", "30")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final: val_loss" in r.stdout and "val_bpb" in r.stdout and "sample:" in r.stdout
    assert {"config.json", "latest.pt", "best.pt", "metrics.jsonl", "tokenizer"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21)) and rows[-1]["val_loss"] < rows[0]["loss"]
    s = minillm("sample", "--run", str(out), "--prompt", "def ", "--max-new-tokens", "20", "--seed", "3")
    assert s.returncode == 0 and s.stdout.startswith("def "), s.stderr
    again = minillm("train", "--data", str(data), "--out", str(out), *SMALL, "--max-steps", "20")
    assert again.returncode != 0 and "pass --resume" in again.stderr
    more = minillm("train", "--data", str(data), "--out", str(out), *SMALL, "--max-steps", "26", "--eval-every", "10", "--resume", "--sample-tokens", "0")
    assert more.returncode == 0 and "resumed from" in more.stdout + more.stderr, more.stderr[-2000:]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 26


def test_sigterm_saves_then_exits(venv_bin, data, tmp_path):
    "SIGTERM mid-run: the step finishes, latest.pt is written, the exit code is 130, and --resume continues from it."
    out = tmp_path / "run"
    p = subprocess.Popen([str(venv_bin / "minillm"), "train", "--data", str(data), "--out", str(out), *SMALL, "--max-steps", "100000",
                          "--eval-every", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-2000:]
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    out_text, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    ck = torch.load(out / "latest.pt", weights_only=True)
    assert ck["step"] >= 3 and "SIGTERM: saved" in out_text + err



def test_signal_in_first_step_stops_at_once(venv_bin, data, tmp_path):
    """SIGTERM while the first step is still compiling stops the process at once, with a line that says so: the step
    may be minutes long, and on a GPU a signal sent to the process group also kills the compiler's workers, after which
    the compilation can wait forever. Before, the trainer noted it and went on compiling, then saved step 1. A fresh
    Inductor cache makes the first step a real compilation (about 30 s here); the signal comes 1 s after the run's
    config.json, written just before the loop. Nothing is saved: a new run's folder is removed, as on any failure."""
    import os
    out = tmp_path / "run"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    p = subprocess.Popen([str(venv_bin / "minillm"), "train", "--data", str(data), "--out", str(out), *SMALL,
                          "--max-steps", "5", "--compile", "--sample-tokens", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not (out / "config.json").exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-2000:]
        time.sleep(0.1)
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "SIGTERM before the first step had finished" in err and "SIGTERM: saved" not in err, err[-2000:]
    assert not (out / "latest.pt").exists()

def test_torchrun_ddp_two_processes(venv_bin, data, tmp_path):
    """`torchrun --nproc_per_node 2 -m minillm.train` on CPU: both ranks train on disjoint windows, only rank 0
    writes (one metrics line per step), and the checkpoint resumes under torchrun."""
    out = tmp_path / "ddp"
    def run(*extra):
        return subprocess.run([str(venv_bin / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "minillm.train",
                               "--data", str(data), "--out", str(out), *SMALL, "--eval-every", "5", "--sample-tokens", "0", *extra],
                              capture_output=True, text=True, timeout=600)
    r = run("--max-steps", "10")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 x cpu" in r.stdout + r.stderr and (r.stdout + r.stderr).count("final: val_loss") == 1
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == list(range(1, 11))
    ck = torch.load(out / "latest.pt", weights_only=True)
    assert ck["step"] == 10 and len(ck["rng"]) == 2 and ck["sampler"]["pos"] == 40   # 10 steps x micro-batch 4 on each rank
    r2 = run("--max-steps", "14", "--resume")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()][-1] == 14


def test_main_job_short(venv_bin, root, tmp_path):
    """The README's first command (`make demo`) with a 15-second budget and its outputs in a temporary folder:
    it prepares the built-in corpus, trains, prints val bits-per-byte and a sample, and `minillm sample` loads the run."""
    venv = venv_bin.parent
    (venv / ".minillm-installed").touch(exist_ok=True)          # the venv is set up: make must not rebuild it
    r = subprocess.run(["make", "-C", str(root), "demo", f"VENV={venv}", "DEMO_SECONDS=15", f"DEMO_DATA={tmp_path / 'data'}",
                        f"DEMO_OUT={tmp_path / 'run'}"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "precision" in r.stdout and "val_bpb" in r.stdout and "sample:" in r.stdout and "time budget 15 s" in r.stdout
    s = minillm("sample", "--run", str(tmp_path / "run"), "--max-new-tokens", "10")
    assert s.returncode == 0 and len(s.stdout) >= 2, s.stderr     # a token at least (15 s of training may give only newlines), then the closing newline
