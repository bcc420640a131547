"""Bad input to `minillm prepare`, through the installed console script as a user runs it.

Each case asserts the exit code, that no traceback is shown, that stderr names the flag or file at fault,
and, where an earlier good preparation exists, that none of its files changed (`checksums`)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from badinput import BIN, checksums, cli, fails_cleanly  # noqa: E402

FAST = ("--tokenizer", "bytes", "--workers", "1", "--no-progress")


def one_line(r):
    "The failure is one line on stderr (argparse's usage line aside)."
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("usage:", " "))]
    assert len(lines) == 1, r.stderr
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A small corpus and a good byte-level preparation of it (`good`), shared by the cases."
    w = tmp_path_factory.mktemp("prep")
    (w / "c.txt").write_text("the first line of a small corpus\nand a second one, é\n" * 40)
    r = cli("prepare", "--corpus", w / "c.txt", "--out", w / "good", *FAST)
    assert r.returncode == 0, r.stderr
    return w


def refused(work, *args, names=(), rc=1, folder=None):
    "Run `minillm prepare ARGS`; assert a clean failure naming `names`, and that `folder` (default: the good one) is unchanged."
    folder = folder or work / "good"
    before = checksums(folder)
    r = cli("prepare", *args)
    fails_cleanly(r, *names, rc=rc)
    assert checksums(folder) == before, "an earlier good file changed"
    return one_line(r)


def test_corpus_missing(work):
    "A corpus path that does not exist: the path is named and the registered corpora listed."
    refused(work, "--corpus", work / "nope.txt", "--out", work / "good", *FAST, names=(str(work / "nope.txt"), "builtin"))


def test_corpus_unknown_name(work):
    "A misspelled corpus name: the name is echoed and every registered name is listed."
    refused(work, "--corpus", "tinyshakespear", "--out", work / "o", *FAST, names=("tinyshakespear", "tinyshakespeare", "fineweb-edu"))


def test_corpus_empty(work):
    "An empty corpus file is refused before any tokenizer training, naming --corpus."
    (work / "empty.txt").write_text("")
    refused(work, "--corpus", work / "empty.txt", "--out", work / "o_empty", "--tokenizer", "bpe", "--vocab-size", "300",
            names=("--corpus", str(work / "empty.txt"), "no text"))


def test_corpus_not_utf8(work):
    "A corpus file that is not UTF-8: the file and the byte offset are named, with a conversion to try."
    (work / "latin.txt").write_bytes(b"caf\xe9 au lait\nsecond line\n")
    refused(work, "--corpus", work / "latin.txt", "--out", work / "o_latin", *FAST, names=(str(work / "latin.txt"), "not valid UTF-8"))


def test_out_is_a_file(work):
    "--out naming a file is refused, and the file is left as it was."
    (work / "afile").write_text("keep me")
    refused(work, "--corpus", work / "c.txt", "--out", work / "afile", *FAST, names=("--out", str(work / "afile"), "is a file"),
            folder=work / "afile")


def test_out_below_a_file(work):
    "--out inside a file (a/file/out) is refused naming --out."
    (work / "afile2").write_text("x")
    refused(work, "--corpus", work / "c.txt", "--out", work / "afile2" / "out", *FAST, names=("--out", "is a file"), folder=work / "afile2")


def test_out_read_only(work):
    "--out inside a folder the user cannot write: refused before any work, naming --out (run as an unprivileged user under root)."
    base = Path(tempfile.mkdtemp()); base.chmod(0o755)
    (base / "c.txt").write_text("hello world\nsecond line\n" * 5); (base / "c.txt").chmod(0o644)
    (base / "ro").mkdir(); (base / "ro").chmod(0o555)
    as_user = []
    if os.geteuid() == 0:                                  # root writes anywhere: run the command as nobody
        if not shutil.which("setpriv"): pytest.skip("running as root without setpriv: no unwritable folder to test with")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*as_user, str(BIN / "minillm"), "--help"], capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:                          # e.g. the checkout lies under a 0700 folder from mktemp -d
            pytest.skip(f"the unprivileged user cannot run {BIN / 'minillm'}: {probe.stderr.strip()[-200:]}")
    r = subprocess.run([*as_user, str(BIN / "minillm"), "prepare", "--corpus", str(base / "c.txt"), "--out", str(base / "ro" / "out"), *FAST],
                       capture_output=True, text=True, timeout=300)
    one_line(fails_cleanly(r, "--out", str(base / "ro" / "out"), "not writable", rc=1))
    assert list((base / "ro").iterdir()) == []


def test_out_prepared_with_another_tokenizer(work):
    "A folder prepared with other settings (bytes) is refused for a bpe run before training, and kept intact."
    refused(work, "--corpus", work / "c.txt", "--out", work / "good", "--tokenizer", "bpe", "--vocab-size", "300", "--no-progress",
            names=("--out", str(work / "good"), "another tokenizer"))


def test_out_prepared_from_another_corpus(work):
    "A folder prepared from another corpus is refused and kept intact."
    (work / "other.txt").write_text("another corpus\nwith two lines\n" * 10)
    refused(work, "--corpus", work / "other.txt", "--out", work / "good", *FAST, names=("--out", str(work / "good"), "another corpus"))


def test_out_with_damaged_meta(work):
    "An --out whose meta.json is not JSON is named, with the fix, rather than overwritten or crashed on."
    bad = work / "badmeta"; bad.mkdir(); (bad / "meta.json").write_text("{half")
    refused(work, "--corpus", work / "c.txt", "--out", bad, *FAST, names=(str(bad / "meta.json"), "not valid JSON"), folder=bad)


@pytest.mark.parametrize("flag,value,says", [
    ("--vocab-size", "abc", "not an integer"), ("--vocab-size", "100", "at least 257"), ("--vocab-size", "5000000000", "at most"),
    ("--vocab-size", "2.5", "not an integer"), ("--workers", "0", "an integer >= 1"), ("--workers", "2.5", "not an integer"),
    ("--max-bytes", "0", "an integer >= 1"), ("--max-bytes", "-5", "an integer >= 1"), ("--sample-bytes", "abc", "not an integer")])
def test_flag_values(work, flag, value, says):
    "A flag value of the wrong type or out of range: argparse's exit 2, naming the flag and the accepted values."
    refused(work, "--corpus", work / "c.txt", "--out", work / "good", "--no-progress", flag, value, names=(flag, says), rc=2)


def test_vocab_size_below_the_kind(work):
    "257 passes the flag's type but leaves a bpe tokenizer no merge: refused naming --vocab-size and 258."
    refused(work, "--corpus", work / "c.txt", "--out", work / "o_v", "--tokenizer", "bpe", "--vocab-size", "257", "--no-progress",
            names=("--vocab-size", "at least 258"))


def test_out_missing(work):
    "--out is required: argparse names it."
    refused(work, "--corpus", work / "c.txt", *FAST, names=("--out",), rc=2)


def test_tokenizer_unknown_kind(work):
    "A tokenizer that is neither a kind nor a path: the kinds are listed."
    refused(work, "--corpus", work / "c.txt", "--out", work / "o_t", "--tokenizer", "wordpiece", "--no-progress",
            names=("--tokenizer", "wordpiece", "sp-unigram"))


def test_tokenizer_damaged_file(work):
    "A saved tokenizer whose tokenizer.json is not JSON: the file is named with the fix (re-run prepare)."
    t = work / "damaged_tok"; t.mkdir(); (t / "tokenizer.json").write_text("{kind")
    refused(work, "--corpus", work / "c.txt", "--out", work / "o_d", "--tokenizer", t, "--no-progress",
            names=(str(t / "tokenizer.json"), "not valid JSON", "minillm prepare"), folder=t)


def test_tokenizer_planted_pattern(work):
    "A bpe tokenizer folder whose regex is not a shipped pattern is refused (the regex is never run)."
    good_tok = work / "good" / "tokenizer"
    t = work / "planted_tok"; t.mkdir()
    from minillm.bpe import train_bpe
    train_bpe(["some text to learn from, some text\n"] * 20, 270, workers=1).save(t)
    meta = json.loads((t / "tokenizer.json").read_text()); meta["pattern"] = "(a+)+$"; (t / "tokenizer.json").write_text(json.dumps(meta))
    assert good_tok.exists()
    refused(work, "--corpus", work / "c.txt", "--out", work / "o_p", "--tokenizer", t, "--no-progress",
            names=(str(t / "tokenizer.json"), "not a shipped one"), folder=t)


def test_tokenizer_corrupt_sentencepiece_model(work):
    "A .model file that is not a SentencePiece model: named, not a parser's internal error."
    m = work / "bad.model"; m.write_bytes(b"\x0a\x05hello not a model")
    refused(work, "--corpus", work / "c.txt", "--out", work / "o_m", "--tokenizer", m, "--no-progress",
            names=(str(m), "not a SentencePiece model"), folder=m)


def test_rerun_same_settings_is_allowed(work):
    "The refusals above are not blanket: the same command into the good folder succeeds and leaves it byte-identical."
    before = checksums(work / "good")
    r = cli("prepare", "--corpus", work / "c.txt", "--out", work / "good", *FAST)
    assert r.returncode == 0, r.stderr
    assert checksums(work / "good") == before


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_keeps_the_previous_preparation(work, tmp_path, workers):
    """Ctrl-C while a second preparation writes its shards (in the process itself, or with two worker processes,
    which must leave Ctrl-C to the parent): exit 130, one line, no temporary file left, the previous good files unchanged."""
    big = tmp_path / "big.txt"
    big.write_text("<|endoftext|>".join(f"document {i}: " + "some words to encode, again and again. " * 40 for i in range(12000)))
    out = tmp_path / "out"
    cmd = [str(BIN / "minillm"), "prepare", "--corpus", str(big), "--out", str(out), "--tokenizer", "bytes", "--workers", workers, "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == 0
    before = checksums(out)
    # A terminal delivers Ctrl-C to a process that handles it; a background job starts with SIGINT ignored. Give the
    # child the terminal's setting, in its own process group (as a shell's foreground job), and signal the group.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setpgid(0, 0)))
    deadline = time.time() + 240
    while not (out / ".train.bin.tmp").exists():
        assert p.poll() is None and time.time() < deadline, "prepare ended before writing shards"
        time.sleep(0.005)
    time.sleep(0.01)                                       # about when the worker processes are forked: the riskiest moment
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    r = subprocess.CompletedProcess(cmd, p.returncode, "", err)
    one_line(fails_cleanly(r, "interrupted", rc=130))
    assert checksums(out) == before, "a previous good file changed"
    assert not [x.name for x in out.iterdir() if x.name.startswith(".")], sorted(x.name for x in out.iterdir())
