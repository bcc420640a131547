"""The final lesson's `launch`: a real `deepspeed` launch on 2 CPU processes, driven the way a notebook drives it."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_flags

pytest.importorskip("deepspeed")

TINY = tiny_flags(log_every=1)


def test_kernel_interrupt_stops_cleanly_and_keeps_the_checkpoint(data, tmp_path):
    """A KeyboardInterrupt in the process running `launch` (what the notebook's stop button raises) reaches every rank:
    they stop at the same step, write latest.pt and the ZeRO shards, and leave no process behind; --resume continues."""
    out = tmp_path / "run"
    base = ["--data", str(data), "--out", str(out), *TINY, "--eval-every", "100000", "--deepspeed", "--zero-stage", "2"]
    args = [*base, "--max-steps", "100000"]
    driver = ("import json, sys; from minillm.launch import launch; "
              f"r = launch({args!r}, 2, {str(out)!r}, plot=False); "
              "print('RESULT', json.dumps(dict(returncode=r['returncode'], interrupted=r['interrupted'], steps=len(r['rows']))))")
    p = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as a kernel has it, even under a background suite
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)                      # the kernel's interrupt: KeyboardInterrupt inside launch()
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.split("RESULT", 1)[1])
    assert result["interrupted"] and result["steps"] >= 3
    ck = torch.load(out / "latest.pt", weights_only=True)
    assert ck["step"] >= 3 and (out / "deepspeed" / "latest").is_dir()
    assert "saves a checkpoint" in stdout and ": saved" in stdout
    import psutil                                     # a DeepSpeed dependency
    left = [q.pid for q in psutil.process_iter(["cmdline"]) if str(out) in " ".join(q.info["cmdline"] or [])]
    assert not left, f"processes of the run still alive: {left}"
    r = subprocess.run([sys.executable, "-c", "import sys; from minillm.ds import deepspeed_command; import subprocess; "
                        f"sys.exit(subprocess.run(deepspeed_command({base + ['--max-steps', str(ck['step'] + 2), '--resume']!r}, 2)).returncode)"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == ck["step"] + 2


SRUN_TINY = ["--model", "embed_dim=32", "--model", "num_heads=4", "--model", "num_layers=2", "--model", "max_seq_len=32",
             "--micro-batch", "2", "--eval-batches", "2", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "2",
             "--sample-tokens", "0", "--device", "cpu", "--max-steps", "3"]


def _slurm_env(procid: int, ntasks: int, **extra) -> dict:
    "What `srun --ntasks N` gives each task: SLURM's names, none of torchrun's."
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("SLURM_")}
    return {**env, "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid),
            "SLURM_NTASKS_PER_NODE": str(ntasks), "SLURM_STEP_ID": "0", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            **extra}


def test_srun_tasks_form_one_group(data, tmp_path):
    """Two `python -m minillm.train` processes started the way `srun --ntasks 2` starts them (SLURM_PROCID, SLURM_LOCALID,
    SLURM_NTASKS; MASTER_ADDR/MASTER_PORT exported by the sbatch script) form one group of 2: one DDP run over 2 ranks whose
    rank 0 alone logs and writes metrics, where reading only RANK/WORLD_SIZE would start two independent rank-0 runs."""
    from minillm.utils import free_port
    out, port = tmp_path / "run", str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "minillm.train", "--data", str(data), "--out", str(out), *SRUN_TINY],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_slurm_env(i, 2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for i in range(2)]
    try: results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
    for (o, e), rc in results: assert rc == 0, e[-3000:]
    (out0, _), (out1, _) = results[0][0], results[1][0]
    assert "over 2 ranks" in out0 and "engine" not in out1, (out0[-1500:], out1[-1500:])   # rank 1 logs nothing
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]                                                              # one writer, not two


def test_srun_without_master_address_fails_cleanly(data, tmp_path):
    """`srun` tasks need an address to meet at: without MASTER_ADDR/MASTER_PORT the trainer stops at once with one line
    naming both and the sbatch line that sets them, instead of hanging or training N copies."""
    from badinput import cli, fails_cleanly
    r = cli("train", "--data", str(data), "--out", str(tmp_path / "o"), *SRUN_TINY, env=_slurm_env(0, 2), timeout=120)
    fails_cleanly(r, "MASTER_ADDR", "MASTER_PORT", "sbatch", "SLURM_NTASKS")
    assert len(r.stderr.strip().splitlines()) == 1


def test_launch_refuses_bad_arguments_before_starting(tmp_path):
    """launch's arguments are checked before any process starts: one string instead of a list (split into characters
    before), a process count below 1 (0 and -1 silently trained on one process before), and an `out` other than the
    --out in train_args (the curves were read from a folder the run never wrote: no rows, no word)."""
    from minillm.launch import launch
    out = str(tmp_path / "run")
    cases = [(("--data x", 1, out), TypeError, "list of strings"), ((["--data", "x"], 0, out), ValueError, ">= 1"),
             ((["--data", "x"], -1, out), ValueError, ">= 1"), ((["--data", "x"], 2.0, out), ValueError, ">= 1"),
             ((["--out", str(tmp_path / "a")], 1, out), ValueError, "name the same folder"),
             (([f"--out={tmp_path / 'a'}"], 1, out), ValueError, "name the same folder")]
    for args, kind, msg in cases:
        with pytest.raises(kind, match=msg):
            launch(*args, plot=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "a").exists()


def test_a_failed_launch_returns_no_rows_of_an_earlier_run(data, tmp_path):
    """A launch into a folder that holds an earlier run's metrics (refused there: no --resume) returns no rows. It used
    to return the earlier run's rows, which the notebook then plotted as if this run had written them."""
    from minillm.launch import launch
    out = tmp_path / "run"
    out.mkdir()
    earlier = [dict(step=s, loss=5.0 - s, lr=1e-3, tokens=64 * s, tokens_per_s=100.0, elapsed_s=float(s)) for s in (1, 2)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    r = launch(["--data", str(data), *TINY, "--max-steps", "2", "--device", "cpu"], 1, out, plot=False, print_fn=lambda *a: None)
    assert r["returncode"] != 0 and r["rows"] == [], r
