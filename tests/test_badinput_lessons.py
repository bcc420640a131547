"""Bad input to the functions the lessons build (data, tokenizers, attention, RoPE, MoE, ZeRO, core, training, the
exercise helpers, the run writers): each refused with a ValueError or TypeError naming the argument, where it gave a
silent wrong answer, a traceback from inside torch, or left state behind. Tested here rather than in the lessons: a
learner's own version of an exercise need not check its input, and these call the package's."""
import json

import numpy as np
import pytest
import torch

from minillm.attention import MultiHeadAttention, attend, repeat_kv
from minillm.bpe import BPETokenizer, count_pretokens, train_bpe
from minillm.checkpointing import blocks_to_checkpoint
from minillm.core import choose_precision, seed_everything
from minillm.data import (EOT, ByteTokenizer, LocalCorpus, TokenDataset, encode_corpus, get_corpus, pack_documents,
                          split_specials, take_chars, window_pair, write_shards)
from minillm.flash import tiled_attention
from minillm.moe import moe_params, moe_problems, route_topk
from minillm.tokenizer import bytes_per_token, train_sentencepiece
from minillm.train import load_checkpoint, lr_at, read_config_file
from minillm.utils import MetricWriters, write_files_atomic
from minillm.variants import GroupedQueryAttention, KVCache, RoPE, cache_bytes_per_token, sinusoidal_positions
from minillm.zero import adamw_, bare_trainer

q4 = torch.randn(1, 2, 4, 8)


@pytest.mark.parametrize("call, err, match", [
    # a name that is no shipped pattern compiled as a literal regex: every other text was dropped (encode gave [])
    (lambda: BPETokenizer([], pattern="gpt3"), ValueError, r"pattern 'gpt3' is neither a shipped name \(gpt2, gpt4\)"),
    (lambda: count_pretokens(["hello world"], pattern="GPT2"), ValueError, r"pattern 'GPT2'"),
    (lambda: train_bpe(["ab"] * 4, 260, pattern=None), ValueError, r"pattern None"),
    (lambda: count_pretokens(["a"], pattern="(open"), ValueError, r"not a valid regex"),
    # one string where a list was meant: each character became a special token, or a document
    (lambda: BPETokenizer([], special_tokens=EOT), TypeError, r"special_tokens is one string"),
    (lambda: train_bpe(["ab"] * 4, 260, special_tokens=EOT), TypeError, r"special_tokens is one string"),
    (lambda: split_specials("a<|endoftext|>b", EOT), TypeError, r"specials is one string"),
    (lambda: split_specials("abc", [""]), ValueError, r"empty string"),
    (lambda: count_pretokens("hello world"), TypeError, r"texts is one string"),
    (lambda: list(encode_corpus("hi", ByteTokenizer(), workers=1)), TypeError, r"texts is one string"),
    (lambda: take_chars("hello world", 3), TypeError, r"texts is one string"),
    # special ids that collide with a byte (5 decoded as the special) or leave a gap (vocab_size 257, id 1000)
    (lambda: BPETokenizer([], special_tokens={EOT: 5}), ValueError, r"id 5, the id of token b'\\x05'"),
    (lambda: BPETokenizer([], special_tokens={EOT: 1000}), ValueError, r"must run 0..n-1"),
    # attention: a 0/1 float mask is added to the scores (masks nothing); 3-D inputs and head or batch mismatches
    (lambda: attend(q4, q4, q4, mask=torch.ones(4, 4).tril()), ValueError, r"mask is torch.float32: use a boolean"),
    (lambda: tiled_attention(*[torch.randn(2, 4, 8)] * 3), ValueError, r"must be 4-D"),
    (lambda: attend(torch.randn(1, 3, 4, 8), *[torch.randn(1, 2, 4, 8)] * 2), ValueError, r"same number of heads, a divisor"),
    (lambda: attend(torch.randn(2, 2, 4, 8), *[torch.randn(1, 2, 4, 8)] * 2), ValueError, r"one batch size"),
    (lambda: tiled_attention(q4, q4, q4, block_q=2.5), ValueError, r"block_q=2.5"),
    (lambda: RoPE(8)(torch.randn(1, 1, 3, 2)), ValueError, r"2 features .* head_dim=8"),  # broadcast to (..., 8)
    # head counts: 0 KV heads was read as "as many as num_heads" (MHA); 0 heads a ZeroDivisionError
    (lambda: GroupedQueryAttention(8, 4, num_kv_heads=0), ValueError, r"num_kv_heads=0: use an integer >= 1"),
    (lambda: MultiHeadAttention(8, 0), ValueError, r"num_heads=0"),
    (lambda: MultiHeadAttention(8, 2.0), ValueError, r"num_heads=2.0"),  # built, then failed in view()
    (lambda: KVCache(1).trim(-1), ValueError, r"keep=-1"),  # emptied the cache
    (lambda: bare_trainer(torch.nn.Linear(2, 2), accum=0), ValueError, r"accum=0"),
    (lambda: repeat_kv(torch.randn(1, 2, 3, 4), 0), ValueError, r"n_rep=0"),  # an empty tensor
    # MoE counting: top_k past the experts counted more active parameters than total; k=0 routed nowhere
    (lambda: moe_params(8, 4, 5, 16), ValueError, r"top_k=5 is more than num_experts=4"),
    (lambda: moe_params(-8, 4, 2, 16), ValueError, r"dim=-8"),
    (lambda: route_topk(torch.rand(4, 3), 0), ValueError, r"k=0: use an integer from 1 to the 3 experts"),
    # a misspelt schedule decayed by cosine; one string trained SentencePiece on its characters; empty text failed
    # inside SentencePiece's C++ ("INTERNAL: ... !sentences_.empty()")
    (lambda: lr_at(5, 100, 1e-3, 1e-4, 10, "Linear"), ValueError, r"kind='Linear': use one of cosine, linear"),
    (lambda: train_sentencepiece("hello world", 300), TypeError, r"texts is one string"),
    (lambda: train_sentencepiece(["  ", ""], 300), ValueError, r"no line to train on"),
    (lambda: train_sentencepiece(["hello"], "300"), ValueError, r"vocab_size='300'"),  # "cannot parse" inside C++
    (lambda: bytes_per_token(ByteTokenizer(), ""), ValueError, r"give some text"),  # ZeroDivisionError
    # a good checkpoint with a device this machine lacks was called "truncated or not a checkpoint"
    (lambda: load_checkpoint(__file__, map_location="cuda"), ValueError, r"no CUDA device: use 'cpu'")
    if not torch.cuda.is_available() else (lambda: load_checkpoint(__file__, map_location="tpu"), ValueError, "no device"),
    (lambda: load_checkpoint(__file__, map_location="bogus"), ValueError, r"map_location='bogus' is no device"),
    # lists of different lengths answered for the shorter one
    (lambda: blocks_to_checkpoint([10, 10, 10], [1], 3), ValueError, r"saved has 3 blocks and kept 1"),
    # core: a device with its index was not a GPU (fp32 on an H100); a str seed failed inside random
    (lambda: choose_precision("cuda"), ValueError, r"needs its \(major, minor\)"),
    (lambda: choose_precision("gpu", (9, 0)), ValueError, r"device='gpu'"),
    (lambda: seed_everything("42"), ValueError, r"seed='42'"),
    (lambda: seed_everything(2**64), ValueError, r"seed=18446744073709551616"),
    # data: a window past the end came back short; the empty corpus read every .txt under the current folder
    (lambda: window_pair(np.arange(10), 6, 4), ValueError, r"start=6: .* starts at 0..5"),
    (lambda: LocalCorpus(""), ValueError, r"corpus '' is empty"),
    (lambda: get_corpus("builtin", max_bytes="100"), ValueError, r"max_bytes='100'"),  # failed at the first document
    (lambda: pack_documents([[1, 2]], None), ValueError, r"eos_id=None"),  # gave [1, 2, None]
    (lambda: write_shards("builtin", ByteTokenizer(), "unused"), TypeError, r"get_corpus\('builtin'\)"),
    (lambda: sinusoidal_positions(torch.arange(4), 5), ValueError, r"dim=5: use an even"),  # gave 6 features
])
def test_refused_by_name(call, err, match):
    "Each call raises the named error with a message naming the argument (before the fix: see each case's comment)."
    with pytest.raises(err, match=match):
        call()


def test_moe_setting_typo_is_named():
    "A misspelt MoE setting in a dict took its default silently (moe_problems said nothing was wrong)."
    p = moe_problems({"num_expert": 4})
    assert len(p) == 1 and p[0].startswith("unknown MoE setting 'num_expert'") and "num_experts" in p[0]
    assert moe_problems({"num_experts": 4}) == []


def test_choose_precision_takes_an_indexed_device():
    "'cuda:1' is a CUDA device: the precision follows its capability (it was fp32, the CPU's answer)."
    assert choose_precision("cuda:1", (9, 0))[0] == "bf16" and choose_precision("cuda:0", (7, 5))[0] == "fp16"


def test_adamw_step_zero_changes_nothing():
    """adamw_ with step 0 divided by 1 - beta**0 = 0 after it had already decayed p and moved m and v: the error now
    comes first, and the tensors are untouched."""
    p, m, v = torch.ones(3), torch.zeros(3), torch.zeros(3)
    with pytest.raises(ValueError, match="step=0"):
        adamw_(p, torch.ones(3), m, v, 0, 1e-3, 0.1, (0.9, 0.95), 1e-8)
    with pytest.raises(ValueError, match="one shape"):
        adamw_(p, torch.ones(4), m, v, 1, 1e-3, 0.1, (0.9, 0.95), 1e-8)
    assert torch.equal(p, torch.ones(3)) and not m.any() and not v.any()


def test_cache_bytes_per_token_leaves_the_layer_as_it_came():
    "A failing measurement (wrong embed_dim) left the layer cast to float16; a working one cast a bf16 layer to fp32."
    g = GroupedQueryAttention(8, 2)
    with pytest.raises(RuntimeError):
        cache_bytes_per_token(g, 16)
    assert next(g.parameters()).dtype == torch.float32
    g.to(torch.bfloat16)
    assert cache_bytes_per_token(g, 8) > 0 and next(g.parameters()).dtype == torch.bfloat16


def test_tokenizer_load_names_a_file_and_a_cut_merges_file(tmp_path):
    """load(file) failed with 'tokenizer.json/tokenizer.json'; a merges.txt that lost its last line loaded and encoded
    differently (vocab.json's last token unreachable). Both are refused, naming the path."""
    tok = train_bpe(["hello world hello"] * 20, 265)
    tok.save(tmp_path)
    with pytest.raises(ValueError, match="is a file: pass the folder"):
        BPETokenizer.load(tmp_path / "tokenizer.json")
    lines = (tmp_path / "merges.txt").read_text().splitlines(True)
    (tmp_path / "merges.txt").write_text("".join(lines[:-1]))
    with pytest.raises(ValueError, match=r"merges.txt: lists \d+ merges, but vocab.json holds \d+ tokens"):
        BPETokenizer.load(tmp_path)


def test_tokenizer_save_replaces_all_three_files_or_none(tmp_path):
    """A save that fails on its third file (tokenizer.json, here a folder) left a new merges.txt and vocab.json beside
    the old tokenizer.json. Now none changes, and no temporary file is left."""
    old = train_bpe(["hello world"] * 20, 262)
    old.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").mkdir()  # the last of the three cannot be written
    with pytest.raises(IsADirectoryError):
        train_bpe(["other text entirely"] * 20, 264).save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == {
        k: v for k, v in before.items() if k != "tokenizer.json"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]


def test_write_files_atomic_all_or_nothing(tmp_path):
    "The second file failing (a folder in its place) leaves the first one's old content and no temporary file."
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "b").mkdir()
    with pytest.raises(IsADirectoryError):
        write_files_atomic({tmp_path / "a.txt": "new", tmp_path / "b": "x"})
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b"]
    write_files_atomic({tmp_path / "a.txt": "new", tmp_path / "c.json": json.dumps([1])})
    assert (tmp_path / "a.txt").read_text() == "new" and json.loads((tmp_path / "c.json").read_text()) == [1]


def test_token_dataset_refuses_a_shard_shorter_than_meta(tmp_path):
    "A train.bin one token short of meta.json's count loaded silently (verify_data caught it; TokenDataset did not)."
    from minillm.data import write_shards, get_corpus

    write_shards(get_corpus("builtin", max_bytes=20_000), ByteTokenizer(), tmp_path, progress=False)
    TokenDataset(tmp_path)
    data = (tmp_path / "train.bin").read_bytes()
    (tmp_path / "train.bin").write_bytes(data[: -np.dtype(json.loads((tmp_path / "meta.json").read_text())["dtype"]).itemsize])
    with pytest.raises(ValueError, match=r"train.bin: holds [\d,]+ tokens but meta.json says [\d,]+"):
        TokenDataset(tmp_path)


def test_metrics_row_that_json_cannot_hold_is_named(tmp_path):
    "A tensor in a metrics row failed with json's 'not JSON serializable' (no key named) and left an empty file."
    w = MetricWriters(tmp_path)
    with pytest.raises(TypeError, match=r"metrics row 'loss' is a Tensor.*tensor.item\(\)"):
        w.write({"step": 1, "loss": torch.tensor(2.0)})
    assert not (tmp_path / "metrics.jsonl").exists()
    w.write({"step": 1, "loss": 2.0})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 2.0}


def test_save_run_never_replaces_what_is_not_a_run(tmp_path):
    """save_run replaced any folder it was given, whole: a user's notes and a training run's metrics went with it. Now
    a folder holding anything is kept unless overwrite=True, and even then only an earlier run (config.json and
    latest.pt) is replaced; a file is refused too (it became a folder, its old copy left hidden beside it)."""
    from minillm.hf import save_run
    from minillm.model import MiniLLM, ModelConfig

    m = MiniLLM(ModelConfig(vocab_size=257, embed_dim=16, num_heads=2, num_layers=1, max_seq_len=8))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    for overwrite, match in ((False, "exists and is not empty: pass overwrite=True"), (True, "is not an earlier run")):
        with pytest.raises(Exception, match=match):
            save_run(m, ByteTokenizer(), notes, overwrite=overwrite)
    assert [p.name for p in notes.iterdir()] == ["mine.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(Exception, match="is a file"):
        save_run(m, ByteTokenizer(), tmp_path / "afile")
    save_run(m, ByteTokenizer(), tmp_path / "run")
    save_run(m, ByteTokenizer(), tmp_path / "run", overwrite=True)  # an earlier run: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "notes", "run"]  # nothing hidden left behind


def test_clear_run_keeps_data_folders_links_targets_and_user_temporaries(tmp_path):
    """`train --overwrite` clears the run's files: pointed at a data folder it deleted the data's tokenizer/; a
    tokenizer/ that is a link failed in rmtree after the checkpoints were gone; and a user's own .x.tmp was removed."""
    from minillm.train import clear_run

    data = tmp_path / "data"
    data.mkdir()
    for n in ("meta.json", "train.bin"):
        (data / n).write_text("{}")
    (data / "tokenizer").mkdir()
    with pytest.raises(ValueError, match="is a prepared data folder"):
        clear_run(data)
    assert (data / "tokenizer").is_dir()
    run, elsewhere = tmp_path / "run", tmp_path / "tok"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "vocab.json").write_text("{}")
    (run / "tokenizer").symlink_to(elsewhere)
    for n in ("latest.pt", ".latest.pt.abc.tmp", ".mine.tmp"):
        (run / n).write_text("x")
    clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == [".mine.tmp"] and (elsewhere / "vocab.json").exists()


class Thing:
    "A class of this module: pickled by reference, so a weights-only load refuses it as code."


def test_checkpoint_errors_say_what_the_file_is(tmp_path):
    """A JSON file given as a checkpoint was said to hold "objects ... code could run" (torch's unpickler refuses its
    first byte as it refuses a class); a pickled object still is."""
    (tmp_path / "config.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="config.json is truncated or not a checkpoint"):
        load_checkpoint(tmp_path / "config.json")
    torch.save({"model": Thing()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match="holds objects a minillm checkpoint never contains"):
        load_checkpoint(tmp_path / "obj.pt")


def test_yaml_config_reads_exponents_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `lr: 3e-4` as the string '3e-4', which TrainConfig refused ("must be float"); a .YAML
    file was parsed as JSON. Strings that only look like numbers stay strings."""
    pytest.importorskip("yaml")
    (tmp_path / "c.YAML").write_text("lr: 3e-4\nmodel:\n  dropout: 1E-1\nout: runs/1e3x\n")
    assert read_config_file(tmp_path / "c.YAML") == {"lr": 3e-4, "model": {"dropout": 0.1}, "out": "runs/1e3x"}
