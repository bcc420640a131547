"""The final lesson's `launch`: a real `deepspeed` launch on 2 CPU processes, driven the way a notebook drives it."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("deepspeed")

TINY = ["--model", "embed_dim=32", "--model", "num_heads=4", "--model", "num_layers=2", "--model", "max_seq_len=64",
        "--micro-batch", "4", "--eval-batches", "2", "--warmup-steps", "2", "--log-every", "1", "--sample-tokens", "0"]


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
