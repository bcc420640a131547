"""Test flags for tests/, mirroring the notebooks' (settings.ini tst_flags): tests marked slow, gpu or
multigpu are skipped unless MINILLM_TEST_FLAGS names the flag (`MINILLM_TEST_FLAGS="slow gpu"`)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: the console scripts a user runs
FLAGS = ("slow", "gpu", "multigpu")


def minillm(*args, cwd=None, env=None, timeout=600, input=None) -> subprocess.CompletedProcess:
    "`minillm ARGS` through the installed console script, as a user runs it (output captured as text)."
    return subprocess.run([str(BIN / "minillm"), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout, input=input)


def tiny_flags(heads=4, layers=2, seq_len=64, micro_batch=4, eval_batches=2, warmup=2, log_every=None, device=None,
               embed_dim=32) -> list[str]:
    """`minillm train` flags for a model and run small enough that a step takes milliseconds on a CPU: the shared
    base of the training tests (each adds its length, engine and output)."""
    out = []
    for k, v in dict(embed_dim=embed_dim, num_heads=heads, num_layers=layers, max_seq_len=seq_len).items():
        out += ["--model", f"{k}={v}"]
    out += ["--micro-batch", str(micro_batch), "--eval-batches", str(eval_batches), "--warmup-steps", str(warmup)]
    out += ["--log-every", str(log_every)] if log_every is not None else []
    return out + ["--sample-tokens", "0"] + (["--device", device] if device else [])


def pytest_configure(config):
    for f in FLAGS: config.addinivalue_line("markers", f"{f}: skipped unless MINILLM_TEST_FLAGS contains '{f}'")


def pytest_collection_modifyitems(config, items):
    on = set(os.environ.get("MINILLM_TEST_FLAGS", "").split())
    for item in items:
        for f in FLAGS:
            if f in item.keywords and f not in on:
                item.add_marker(pytest.mark.skip(reason=f"flag '{f}' not set (MINILLM_TEST_FLAGS)"))


@pytest.fixture
def root() -> Path: return ROOT


@pytest.fixture
def venv_bin() -> Path: return Path(sys.executable).parent


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    "Byte-token shards of a slice of the built-in corpus (one file: its last 10% of lines are val), shared by the training tests."
    from minillm.data import BuiltinCorpus
    d = tmp_path_factory.mktemp("data")
    (d / "src.txt").write_text("".join(t for _, t in zip(range(40), BuiltinCorpus().split("train"))))
    r = subprocess.run([sys.executable, "-m", "minillm", "prepare",
                        "--corpus", str(d / "src.txt"), "--tokenizer", "bytes", "--out", str(d / "shards"), "--workers", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d / "shards"
