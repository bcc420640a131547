"""The `minillm` console script, run as a user runs it: a real subprocess of the installed entry point."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import minillm




def test_help_lists_every_command(venv_bin):
    "Guards `minillm --help`: it must list each registered subcommand (later lessons add theirs)."
    from minillm.cli import COMMANDS
    r = minillm("--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS: assert f"  {name} " in r.stdout


def test_unknown_command_names_the_fix(venv_bin):
    "A typo must fail with exit code 2 and point at `minillm --help`, not a traceback."
    r = minillm("trian")
    assert r.returncode == 2 and "unknown command 'trian'" in r.stderr and "Traceback" not in r.stderr


def test_env_json_matches_torch(venv_bin):
    "`minillm env --json` must report what torch itself sees (device count, fp32 on CPU)."
    r = minillm("env", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if not torch.cuda.is_available(): assert info["precision"] == "fp32" and info["device"] in ("cpu", "mps")
    assert "math" in info["sdpa"]


def test_env_table(venv_bin):
    "`minillm env` prints its table of what the machine can do, with the chosen precision and attention backend."
    r = minillm("env")
    assert r.returncode == 0 and "precision" in r.stdout and "attention" in r.stdout


def test_lessons_check_outside_a_checkout(venv_bin, tmp_path):
    "Outside a checkout, `minillm lessons` must say what is missing instead of a traceback."
    r = minillm("lessons", "--check", cwd=tmp_path)
    assert r.returncode != 0 and "settings.ini" in r.stderr


@pytest.mark.slow
def test_fresh_venv_install(root, tmp_path):
    """`pip install .` in a fresh venv without nbdev: import, `minillm --help` and `minillm env` work.
    Slow (a venv, torch and the runtime requirements: about two minutes)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==" + torch.__version__.split("+")[0]], check=True)
    subprocess.run(pip + [str(root)], check=True)
    py = str(venv / "bin" / "python")
    assert subprocess.run([py, "-c", "import nbdev"], capture_output=True).returncode != 0, "nbdev must not be a runtime requirement"
    subprocess.run([py, "-c", "import minillm, minillm.core, minillm.exercises, minillm.lessons"], check=True)
    subprocess.run([py, "-m", "pip", "check"], check=True)
    for args in (["--help"], ["env"]):
        r = subprocess.run([str(venv / "bin" / "minillm"), *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def prepare_cmd(venv_bin, out, *extra):
    return [str(venv_bin / "minillm"), "prepare", "--corpus", "builtin", "--tokenizer", "bpe", "--vocab-size", "1000",
            "--out", str(out), "--workers", "2", *extra]


def test_prepare_builtin_is_byte_identical_on_rerun(venv_bin, tmp_path):
    """`minillm prepare --corpus builtin`: shards, meta.json and tokenizer appear, are readable like any user file,
    and a second run into a fresh folder gives byte-identical files (no dates, ordered workers)."""
    for out in (tmp_path / "a", tmp_path / "b"):
        r = subprocess.run(prepare_cmd(venv_bin, out), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    files = ["train.bin", "val.bin", "meta.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer.json"]
    for f in files: assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["corpus"] == "builtin" and meta["dtype"] == "uint16" and meta["tokenizer"]["vocab_size"] == 1000
    assert (tmp_path / "a" / "meta.json").stat().st_mode & 0o044, "group/other can read it (umask permitting)"


def test_prepare_interrupted_leaves_no_partial_shard(venv_bin, tmp_path):
    """Ctrl-C while shards are being written: no train.bin, val.bin, meta.json, tokenizer or temporary file remains, and
    the --out folder, which the command made, is gone too."""
    import signal, time
    out = tmp_path / "x"
    cmd = prepare_cmd(venv_bin, out)
    cmd[cmd.index("--workers") + 1] = "1"                      # one process: writing the shards takes seconds, not a blink
    # A terminal delivers Ctrl-C to a process that handles it; a background job (`cmd &`) starts with SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler. Give the child the terminal's setting.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / ".train.bin.tmp").exists():
        assert p.poll() is None and time.time() < deadline, "prepare ended before writing shards"
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    assert p.returncode != 0
    assert not out.exists(), sorted(x.name for x in out.iterdir())   # a new folder, removed again


def test_prepare_bad_input(venv_bin, tmp_path):
    "Bad input exits non-zero with a one-line reason and fix, not a traceback."
    cases = [(["--corpus", str(tmp_path / "none.txt")], "no such file or folder"),
             (["--vocab-size", "100"], "use at least"),
             (["--tokenizer", "wordpiece"], "neither a kind")]
    for args, msg in cases:
        r = subprocess.run([str(venv_bin / "minillm"), "prepare", "--out", str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-500:])


def test_memory_json_recommendation_fits_and_next_notch_does_not(venv_bin):
    """`minillm memory --json`: every figure in bytes plus num_params; the recommendation fits by its own estimate,
    one more sequence per GPU does not, and one ZeRO stage lower does not (the search's contract)."""
    from minillm.memory import estimate, fits
    from minillm.model import preset, param_formula
    r = minillm("memory", "--preset", "xl", "--gpus", "2", "--gpu-mem", "16", "--precision", "fp16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rec = out["recommended"]
    assert rec["num_params"] == param_formula(preset("xl"))["total"]
    assert all(isinstance(rec[k], int) for k in ("weights", "grads", "master", "optimizer", "activations", "temporary", "total"))
    assert fits(rec, 16)
    opt = {k: rec[k] for k in ("zero", "offload", "checkpointing")}
    assert not fits(estimate(preset("xl"), None, rec["micro_batch"] + 1, 2, precision="fp16", **opt), 16)
    if rec["zero"] > 0:
        try: lower = estimate(preset("xl"), None, rec["micro_batch"], 2, precision="fp16", **dict(opt, zero=rec["zero"] - 1))
        except ValueError: lower = None
        assert lower is None or not fits(lower, 16)


def test_memory_table_and_fixed_settings(venv_bin):
    "The table names each part and the verdict; settings the user fixes are kept in the recommendation."
    r = minillm("memory", "--preset", "small", "--zero", "3", "--checkpointing", "full", "--gpu-mem", "16")
    assert r.returncode == 0, r.stderr
    for word in ("weights", "optimizer", "activations", "total", "recommended", "ZeRO-3", "checkpointing full", "minillm train"):
        assert word in r.stdout, word


def test_memory_bad_input_names_the_fix(venv_bin):
    "Impossible settings fail with one line naming the fix, not a traceback."
    for args, msg in ((["--seq-len", "99999"], "exceeds the model's max_seq_len"), (["--zero", "2", "--offload", "all"], "needs ZeRO stage 3"),
                      (["--preset", "huge"], "use one of demo")):
        r = minillm("memory", *args)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = minillm("memory", "--preset", "llama-8b", "--seq-len", "16384", "--gpu-mem", "16")
    assert r.returncode == 0 and ("nothing fits" in r.stdout or "recommended" in r.stdout)
