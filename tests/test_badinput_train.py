"""Bad input to `minillm train` and `minillm sample`, as a user (or a file a user was handed) gives it.

Every case runs the installed console script and asserts: a non-zero exit code (2 for argparse's usage
errors, 1 for the rest, 130 for Ctrl-C), no traceback on either stream, a message that names the flag or
file at fault, and (where an earlier run exists) that none of its files changed (sha256 before and after)."""
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from badinput import BIN, checksums, cli, fails_cleanly
from conftest import tiny_flags

TINY = tiny_flags(heads=2, layers=1, seq_len=32, eval_batches=1, warmup=1, device="cpu")


def train(data, out, *extra, **kw):
    return cli("train", "--data", data, "--out", out, *TINY, *extra, **kw)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    "A tiny finished run (4 steps, checkpoints at 2 and 4); tests copy it before touching it."
    out = tmp_path_factory.mktemp("finished") / "run"
    r = train(data, out, "--max-steps", "4", "--eval-every", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


class Payload:
    "A pickle that creates `marker` when unpickled: what a planted file in a run folder would do."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, "w"))


def plant(path: Path, marker: Path):
    with open(path, "wb") as f: pickle.dump({"model": Payload(marker)}, f)


# --- flags: type, range, one line naming the flag -------------------------------------------------------

@pytest.mark.parametrize("args, flag", [
    (["--lr", "abc"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--micro-batch", "2.5"], "--micro-batch"), (["--micro-batch", "0"], "--micro-batch"),
    (["--seq-len", "-5"], "--seq-len"), (["--time-budget", "-5"], "--time-budget"), (["--max-steps", "0"], "--max-steps"),
    (["--eval-batches", "0"], "--eval-batches"), (["--eval-every", "0"], "--eval-every"), (["--beta2", "1.5"], "--beta2"),
    (["--precision", "fp8"], "--precision"), (["--preset", "huge"], "--preset"), (["--zero-stage", "4"], "--zero-stage"),
    (["--model", "num_heads"], "--model"), (["--epochs", "0"], "--epochs"), (["--keep-every", "-1"], "--keep-every"),
])
def test_train_flag_values(data, tmp_path, args, flag):
    "argparse refuses a value of the wrong type or range before anything runs (exit 2), naming the flag; nothing is created."
    out = tmp_path / "run"
    fails_cleanly(train(data, out, *args), flag, rc=2)
    assert not out.exists()


@pytest.mark.parametrize("args, names", [
    (["--model", "num_heads=abc"], ["num_heads"]), (["--model", "num_heads=3"], ["num_heads"]),
    (["--model", "vocab_size=5000"], ["vocab_size", "5000"]), (["--max-steps", "5", "--epochs", "1"], ["epochs", "max_steps"]),
    (["--min-lr", "1", "--lr", "0.1"], ["min_lr"]), (["--device", "cuda"], ["--device cuda", "CUDA"]),
    (["--device", "tpu"], ["device"]),
])
def test_train_settings_that_cannot_work(data, tmp_path, args, names):
    "Values each valid alone but wrong for this model, data or machine: one line naming them; no run folder left behind."
    if "cuda" in args and torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    fails_cleanly(train(data, out, *args), *names, rc=1)
    assert not out.exists(), "a failed start leaves no half-made run folder"


def test_sample_flag_values(finished):
    "`minillm sample`'s numbers are typed and ranged too."
    for args, flag in ((["--max-new-tokens", "-5"], "--max-new-tokens"), (["--temperature", "nan"], "--temperature"),
                       (["--temperature", "-1"], "--temperature"), (["--top-k", "0"], "--top-k"), (["--top-p", "1.5"], "--top-p")):
        fails_cleanly(cli("sample", "--run", finished, *args), flag, rc=2)


# --- files: config, data, run folder --------------------------------------------------------------------

@pytest.mark.parametrize("name, text, names", [
    ("c.json", '{"lr": 0.001,\n "max_steps": }', ["c.json", "line 2"]),
    ("c.yaml", "lr: 0.001\nmodel: [1, 2\n", ["c.yaml", "line"]),
    ("c.json", "[1, 2]", ["c.json", "object"]),
    ("c.json", '{"learning_rate": 1}', ["c.json", "learning_rate"]),
    ("c.json", '{"model": 5}', ["c.json", "model"]),
    ("c.json", '{"weight_decay": "abc"}', ["weight_decay"]),
    ("c.json", '{"model": {"layers": "../../etc/layers.jsonl", "num_layers": 1}}', ["layers"]),
])
def test_config_files(data, tmp_path, name, text, names):
    "A --config file that is not valid JSON/YAML, not an object, or holds unknown or mistyped keys: its name and the line or key."
    (tmp_path / name).write_text(text)
    fails_cleanly(train(data, tmp_path / "run", "--config", tmp_path / name), *names, rc=1)


def test_missing_inputs(data, tmp_path):
    "A missing data folder, config file or tokenizer is named."
    fails_cleanly(train(tmp_path / "nodata", tmp_path / "run"), "nodata", rc=1)
    fails_cleanly(train(data, tmp_path / "run", "--config", tmp_path / "none.json"), "none.json", rc=1)
    broken = tmp_path / "data"; shutil.copytree(data, broken); shutil.rmtree(broken / "tokenizer")
    fails_cleanly(train(broken, tmp_path / "run"), "tokenizer", rc=1)
    assert not (tmp_path / "run").exists()


def test_data_that_does_not_match(data, tmp_path):
    "Shards cut short, or a tokenizer swapped for another, are caught before training starts, naming the file."
    short = tmp_path / "short"; shutil.copytree(data, short)
    with open(short / "train.bin", "r+b") as f: f.truncate((short / "train.bin").stat().st_size - 3)
    fails_cleanly(train(short, tmp_path / "run"), "train.bin", rc=1)
    swapped = tmp_path / "swapped"; shutil.copytree(data, swapped)
    meta = json.loads((swapped / "meta.json").read_text())
    meta["tokenizer"]["fingerprint"] = "0" * len(str(meta["tokenizer"].get("fingerprint", "0" * 16)))
    (swapped / "meta.json").write_text(json.dumps(meta))
    fails_cleanly(train(swapped, tmp_path / "run"), "meta.json", rc=1)


def test_out_is_a_file(data, tmp_path):
    "--out naming a file, not a folder: refused with --out named (exit 1), and the file is left as it was."
    (tmp_path / "f").write_text("keep me")
    fails_cleanly(train(data, tmp_path / "f"), "--out", rc=1)
    assert (tmp_path / "f").read_text() == "keep me"


@pytest.mark.parametrize("keep", ["best.pt", "metrics.jsonl", "deepspeed", "step_0000002.pt"])
def test_new_run_refuses_any_run_file(data, run_copy, keep):
    "A folder holding any file of a run (not only latest.pt) is refused without --resume/--overwrite, and nothing in it changes."
    shutil.copy(run_copy / "latest.pt", run_copy.parent / "kept.pt")
    for p in list(run_copy.iterdir()):
        if p.name != keep: shutil.rmtree(p) if p.is_dir() else p.unlink()
    if keep == "deepspeed": (run_copy / "deepspeed").mkdir(); (run_copy / "deepspeed" / "x").write_text("shard")
    if keep.startswith("step_"): (run_copy / keep).write_bytes((run_copy.parent / "kept.pt").read_bytes())
    before = checksums(run_copy)
    fails_cleanly(train(data, run_copy, "--max-steps", "2"), keep, "--resume", rc=1)
    assert checksums(run_copy) == before


@pytest.mark.parametrize("bad", [["--model", "num_heads=3"], ["--data", "/nonexistent/data"], ["--config", "/nonexistent.json"],
                                 ["--micro-batch", "100000"]])
def test_overwrite_checks_everything_before_deleting(data, run_copy, bad):
    "--overwrite with a mistake in the model, data, config or batch: refused, and the old run is untouched."
    before = checksums(run_copy)
    args = ["train", "--data", data, "--out", run_copy, *TINY, "--overwrite", "--max-steps", "2", *bad]
    fails_cleanly(cli(*args), rc=1)
    assert checksums(run_copy) == before


def test_overwrite_replaces_the_whole_run(data, run_copy):
    "--overwrite clears every file of the old run (kept steps, metrics, a stale temporary) so the new one is consistent."
    (run_copy / ".latest.pt.999.tmp").write_bytes(b"half")
    r = train(data, run_copy, "--overwrite", "--max-steps", "1", "--eval-every", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    names = {p.name for p in run_copy.iterdir()}
    assert "step_0000002.pt" not in names and not any(n.endswith(".tmp") for n in names)
    assert [json.loads(l)["step"] for l in (run_copy / "metrics.jsonl").read_text().splitlines()] == [1]


def test_resume_problems(data, run_copy, tmp_path):
    "--resume with nothing to resume, with --overwrite, or from a damaged latest.pt: one line, and the intact best.pt is named."
    fails_cleanly(train(data, tmp_path / "new", "--resume"), "latest.pt", rc=1)
    fails_cleanly(train(data, run_copy, "--resume", "--overwrite"), "--overwrite", rc=1)
    before = checksums(run_copy / "best.pt")
    for damage in (b"", b"PK\x03\x04 truncated", b"not a checkpoint at all"):
        (run_copy / "latest.pt").write_bytes(damage)
        r = fails_cleanly(train(data, run_copy, "--resume", "--max-steps", "6"), "latest.pt", "best.pt", "intact", rc=1)
        assert "weights_only" not in r.stderr
    assert checksums(run_copy / "best.pt") == before


def test_resume_from_a_named_checkpoint(data, tmp_path):
    "--keep-every keeps step files; --resume PATH continues from one of them and repeats the losses of the straight run exactly."
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(data, a, "--max-steps", "6", "--keep-every", "2", "--eval-every", "100", "--log-every", "1").returncode == 0
    assert {"step_0000002.pt", "step_0000004.pt", "step_0000006.pt"} <= {p.name for p in a.iterdir()}
    r = train(data, b, "--max-steps", "6", "--eval-every", "100", "--log-every", "1", "--resume", a / "step_0000004.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    straight = [json.loads(l) for l in (a / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(l) for l in (b / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in resumed] == [x["loss"] for x in straight if x["step"] > 4]


def test_epochs_set_the_length(data, tmp_path):
    "--epochs 1 trains the steps one pass over the training windows takes (the trainer's count, checked by its sampler in the lesson)."
    r = train(data, tmp_path / "e", "--epochs", "0.05", "--eval-every", "100000", "--log-every", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    tokens = json.loads((data / "meta.json").read_text())["splits"]["train"]["tokens"]
    windows = (tokens - 1) // 32
    assert rows[-1]["step"] == math.ceil(0.05 * (windows // 4))     # a twentieth of the batches of micro-batch 4 in one pass


def test_planted_payloads_never_run(data, run_copy, tmp_path):
    "A pickle that would run code, planted as latest.pt (resumed), best.pt (sampled) or a --checkpoint, is refused unopened."
    marker = tmp_path / "pwned"
    plant(run_copy / "latest.pt", marker)
    fails_cleanly(train(data, run_copy, "--resume", "--max-steps", "6"), "latest.pt", rc=1)
    plant(run_copy / "best.pt", marker)
    r = fails_cleanly(cli("sample", "--run", run_copy, "--max-new-tokens", "3"), "best.pt", rc=1)
    fails_cleanly(cli("sample", "--checkpoint", run_copy / "best.pt"), "best.pt", rc=1)
    assert not marker.exists() and "weights_only" not in r.stderr


def test_sample_seed_prompt_checkpoint_and_pipe(finished, tmp_path):
    """Each once ended badly: a seed past 2**63 - 1 in an overflow message from inside torch; a prompt of bytes that are
    not UTF-8 in an encoder's error, after the prompt was echoed; --run beside --checkpoint silently ignored; a reader
    that left early (`| head -c 1`) in "[Errno 32] Broken pipe" and exit 1. Now: a ranged seed, a named prompt error,
    --checkpoint as a name in the run (or a path, as in `minillm export`), and the quiet exit 141 of a closed pipe."""
    fails_cleanly(cli("sample", "--run", finished, "--seed", "99999999999999999999999"), "--seed", rc=2)
    r = subprocess.run([str(BIN / "minillm"), "sample", "--run", str(finished), "--prompt", b"ab\xff\xfecd", "--max-new-tokens", "1"],
                       capture_output=True, timeout=120)
    assert r.returncode == 1 and b"--prompt" in r.stderr and b"UTF-8" in r.stderr and b"Traceback" not in r.stderr, r.stderr
    assert not r.stdout, r.stdout   # refused before anything is echoed
    fails_cleanly(cli("sample", "--run", finished, "--checkpoint", "nope.pt"), "its checkpoints: best.pt", rc=1)
    fails_cleanly(cli("sample", "--run", tmp_path / "nope", "--checkpoint", finished / "best.pt"), "nope", rc=1)
    assert cli("sample", "--run", finished, "--checkpoint", "latest.pt", "--max-new-tokens", "2").returncode == 0
    p = subprocess.Popen([str(BIN / "minillm"), "sample", "--run", str(finished), "--max-new-tokens", "100000",
                          "--no-stop-at-eos", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(1)
    p.stdout.close()    # as `head -c 1` does
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141 and not err.strip(), (p.returncode, err[-2000:])


def test_sample_bad_checkpoints(run_copy, tmp_path):
    "sample refuses a missing run, a text file, and weights holding NaN, each in one line naming the file."
    fails_cleanly(cli("sample", "--run", tmp_path / "nope"), "nope", rc=1)
    (tmp_path / "x.pt").write_text("hello")
    fails_cleanly(cli("sample", "--checkpoint", tmp_path / "x.pt"), "x.pt", rc=1)
    ck = torch.load(run_copy / "best.pt", weights_only=True)
    next(iter(ck["model"].values())).view(-1)[0] = float("nan")
    torch.save(ck, run_copy / "best.pt")
    fails_cleanly(cli("sample", "--run", run_copy), "best.pt", "NaN", rc=1)


def test_failed_start_leaves_no_folder(data, tmp_path):
    "A start that fails after the run folder was made (here: --tensorboard without the package) removes it, so a retry works."
    pytest.importorskip("torch")
    try: import tensorboard  # noqa: F401
    except ImportError: pass
    else: pytest.skip("tensorboard is installed")
    out = tmp_path / "run"
    fails_cleanly(train(data, out, "--tensorboard", "--max-steps", "1"), "tensorboard", rc=1)
    assert not out.exists()
    assert train(data, out, "--max-steps", "1", "--eval-every", "1").returncode == 0


def test_sample_streams_and_keeps_text_on_ctrl_c(finished):
    "Ctrl-C during sampling: exit 130, one line, and what was printed stays printed."
    p = subprocess.Popen([str(BIN / "minillm"), "sample", "--run", str(finished), "--max-new-tokens", "100000", "--no-stop-at-eos",
                          "--prompt", "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as a terminal gives it, even when the suite runs in the background
    try:
        os.set_blocking(p.stdout.fileno(), False)
        got, deadline = b"", time.time() + 120
        while len(got) < 20:
            assert p.poll() is None and time.time() < deadline, p.stderr.read()
            got += p.stdout.read() or b""; time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == 130 and b"Traceback" not in err and b"interrupted" in err, err
    assert (got + rest).startswith(b"x") and len(got + rest) >= 20


def test_torchrun_ranks_refuse_alike(data, run_copy, tmp_path):
    """Restarting a finished run under torchrun: the ranks refuse with one line and none shows a traceback (rank 0 alone
    used to refuse while the others crashed with a traceback). At least one refusal is printed, not one per rank: torchrun
    sends SIGTERM to the other ranks as soon as the first exits, which may be before they print. Then a 2-rank --time-budget run ends: the ranks agree on the fitted step count."""
    from minillm.ds import torchrun_command
    from minillm.utils import free_port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(torchrun_command(["--data", str(data), "--out", str(run_copy), *TINY, "--max-steps", "2"], 2, free_port()),
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and r.stderr.count("already holds a run") >= 1, r.stderr[-2000:]
    assert "/minillm/" not in r.stderr, "no rank shows a traceback (torchrun's own ChildFailedError report is torchrun's)"
    out = tmp_path / "budget"
    r = subprocess.run(torchrun_command(["--data", str(data), "--out", str(out), *TINY, "--time-budget", "4", "--warmup-steps", "4",
                                         "--eval-every", "100000"], 2, free_port()), capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "schedule fitted to" in r.stdout + r.stderr, r.stderr[-2000:]


def test_init_from_fine_tunes_from_a_run(data, finished, tmp_path):
    """--init-from RUN starts a new run from RUN's model and weights (fine-tuning, e.g. a `minillm import`ed model): at
    lr 1e-9 one AdamW step moves each weight by about 1e-9, so the new run's weights equal RUN's within 1e-6, while a
    fresh initialisation would differ by ~0.02; the step count starts at 1. --preset or --model beside it are refused,
    naming --init-from, and nothing is written."""
    out = tmp_path / "ft"
    base = ["--micro-batch", "4", "--eval-batches", "1", "--warmup-steps", "1", "--sample-tokens", "0", "--device", "cpu"]
    r = cli("train", "--data", data, "--out", out, "--init-from", finished, *base, "--max-steps", "1", "--lr", "1e-9")
    assert r.returncode == 0 and "initialised from" in r.stdout + r.stderr, r.stderr[-2000:]
    a = torch.load(finished / "latest.pt", weights_only=True)["model"]
    b = torch.load(out / "latest.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    fails_cleanly(train(data, tmp_path / "x", "--init-from", finished), "--init-from", rc=1)
    assert not (tmp_path / "x").exists()
