"""Bad input to the smaller commands (`minillm bench`, `env`, `lessons`, the command itself): typed values
with ranges, one line naming the flag, no traceback."""
import pytest

from badinput import cli, fails_cleanly


@pytest.mark.parametrize("args, flag", [
    (["bench", "model", "--presets", "huge"], "--presets"), (["bench", "model", "--batch", "0"], "--batch"),
    (["bench", "model", "--device", "tpu"], "--device"), (["bench", "model", "--steps", "2.5"], "--steps"),
    (["bench", "bpe", "--vocabs", "100"], "--vocabs"), (["bench", "bpe", "--sizes-mb", "-1"], "--sizes-mb"),
    (["bench", "train", "--data", "d", "--budgets", "0"], "--budgets"), (["bench", "zero", "--data", "d", "--steps", "3"], "--steps"),
    (["bench", "zero", "--data", "d", "--modes", "zero9"], "--modes"), (["bench", "zero", "--data", "d", "--procs", "0"], "--procs"),
    (["bench", "flops"], "flops"), (["env", "--jsn"], "--jsn"),
    (["bench"], "{model,bpe,train,"), (["sweep"], "{isoflop,ablations,demo}"),   # not argparse's "required: name"
])
def test_bench_and_env_flags(args, flag):
    "argparse refuses each before any work starts (exit 2), naming the flag or the unknown choice."
    fails_cleanly(cli(*args), flag, rc=2)


def test_bench_model_device_and_backend():
    """A GPU-only choice on a machine without one fails in one line naming the flag, before any timing (both were
    reported as "unexpected ... (a bug)" with torch's own message)."""
    import torch
    if torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    fails_cleanly(cli("bench", "model", "--presets", "demo", "--device", "cuda", "--steps", "1"), "--device cuda", "--device cpu", rc=1)
    fails_cleanly(cli("bench", "model", "--presets", "demo", "--backends", "flash", "--steps", "1"), "--backends flash", "sdpa", rc=1)
    fails_cleanly(cli("bench", "model", "--presets", "demo", "--seq-len", "100000", "--steps", "1"), "--seq-len 100000", "or less", rc=1)


def test_bench_missing_data(tmp_path):
    """A benchmark pointed at a missing data folder fails in one line naming it and the prepare command, before any
    process starts, and writes no JSON (`bench zero` once let torchrun fail with a page of its own report)."""
    for kind, *extra in (("train", "--budgets", "1", "--compile", "off"), ("zero",), ("engines",)):
        r = fails_cleanly(cli("bench", kind, "--data", tmp_path / "none", *extra, "--json", tmp_path / "b.json"),
                          "none", "minillm prepare", rc=1)
        assert not (tmp_path / "b.json").exists() and len(r.stderr.strip().splitlines()) == 1, r.stderr
