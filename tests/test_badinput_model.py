"""Bad input to the model's API and to `minillm memory`: each fails with one clear line naming the field, flag or file
and what it accepts; never a traceback, never a figure or a command that is wrong. Also: every command `minillm memory`
prints trains the model it sized (parsed by `minillm train`'s own parser, built on the meta device)."""
import json
import shlex
import time

import pytest
import torch
from badinput import cli, fails_cleanly

from minillm.model import MiniLLM, ModelConfig, check_state_dict, config_from_checkpoint, filter_logits, sample_next


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=97, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=12), **kw})


# ---- minillm memory, through the installed console script ----

@pytest.mark.parametrize("args, names, rc", [
    (["--gpu-mem", "-16"], ["--gpu-mem", "a number > 0"], 2),
    (["--gpu-mem", "0"], ["--gpu-mem"], 2),
    (["--gpu-mem", "nan"], ["--gpu-mem", "finite"], 2),
    (["--gpus", "0"], ["--gpus", "an integer >= 1"], 2),
    (["--seq-len", "-5"], ["--seq-len", "an integer >= 1"], 2),
    (["--micro-batch", "2.5"], ["--micro-batch", "not an integer"], 2),
    (["--num-heads", "abc"], ["--num-heads"], 2),
    (["--ffn-hidden", "-64"], ["--ffn-hidden"], 2),
    (["--model", "num_heads"], ["--model", "KEY=VALUE"], 2),
    (["--model", "num_heads=abc"], ["--model", "num_heads='abc': use an integer >= 1"], 1),
    (["--model", "num_kv_heads=-2", "--model", "attention=gqa"], ["--model", "num_kv_heads=-2"], 1),
    (["--model", "ffn_multiple_of=0"], ["--model", "ffn_multiple_of=0"], 1),
    (["--model", "embed_dims=64"], ["--model", "unknown ModelConfig keys ['embed_dims']"], 1),
    (["--preset", "llama-9b"], ["--preset", "llama-8b"], 1),
    (["--seq-len", "99999"], ["--seq-len", "exceeds the model's max_seq_len"], 1),
    (["--offload", "all", "--zero", "2"], ["--offload all", "--zero 3"], 1),
    (["--zero", "5"], ["--zero"], 2),
    (["--precision", "fp8"], ["--precision"], 2),
])
def test_memory_bad_flag(args, names, rc):
    """Each bad `minillm memory` flag exits non-zero (argparse's 2 for a bad value, 1 for a bad combination) with no
    traceback, naming the flag and the accepted values; sizes below 1 never reach the arithmetic (no negative figure)."""
    fails_cleanly(cli("memory", *args), *names, rc=rc)


def test_memory_nothing_fits_names_the_flags_given():
    """When nothing fits, the advice starts with the flags the user fixed (it advised more GPUs for a micro batch of
    1e11, which no number of GPUs holds, and never named --micro-batch)."""
    r = cli("memory", "--preset", "tiny", "--micro-batch", "100000000000", "--zero", "0")
    assert r.returncode == 0 and "nothing fits" in r.stdout and "lower --micro-batch, drop --zero" in r.stdout, r.stdout[-800:]


def test_memory_help_documents_every_flag():
    "Every flag of `minillm memory` has a help line (argparse shows none for a flag without one)."
    from minillm.memory import memory_parser
    missing = [a.option_strings for a in memory_parser()._actions if a.option_strings and not a.help]
    assert not missing, missing


MEMORY_RUNS = [
    ["--preset", "llama-8b", "--gpus", "8", "--gpu-mem", "80"],                       # a shape train has no preset for
    ["--preset", "mini", "--num-layers", "48", "--embed-dim", "1536", "--num-heads", "12"],   # size flags
    ["--preset", "tiny", "--model", "attention=gqa", "--model", "num_kv_heads=2", "--gpus", "2", "--gpu-mem", "16"],
    ["--preset", "small", "--gpus", "2", "--gpu-mem", "16", "--precision", "fp16", "--seq-len", "512"],
    ["--preset", "mini", "--model", "attention=mla", "--model", "kv_lora_rank=64", "--ffn-hidden", "1000", "--gpu-mem", "24"],
]


@pytest.mark.parametrize("args", MEMORY_RUNS)
def test_memory_command_trains_what_it_sized(args):
    """The command `minillm memory` prints is parsed by `minillm train`'s own parser and config builder, and the model
    it builds (meta device: no memory) has exactly the parameter count memory estimated; the table prints the same
    command. (It once printed `--preset llama-8b`, unknown to train, and dropped size overrides: 1.48B sized, 42M trained.)"""
    from minillm.train import build_configs, train_parser
    r = cli("memory", *args, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    words = shlex.split(out["command"])
    start = words.index("minillm.train") + 1 if "minillm.train" in words else words.index("train") + 1
    mc, tc = build_configs(train_parser().parse_args(words[start:]))
    with torch.device("meta"): m = MiniLLM(mc)
    assert m.num_params() == out["recommended"]["num_params"] == out["estimate"]["num_params"]
    assert tc.micro_batch == out["recommended"]["micro_batch"]
    text = cli("memory", *args)
    assert text.returncode == 0 and out["command"] in text.stdout, text.stdout[-2000:]
    figures = [float(w) for line in text.stdout.splitlines() if line.rstrip().endswith(("GB", "GB per GPU", "GB per rank (pinned)"))
               for w in line.split() if w.replace(".", "").replace(",", "").lstrip("-").isdigit()]
    assert figures and min(figures) >= 0, text.stdout


# ---- the Python API ----

@pytest.mark.parametrize("kw, match", [
    (dict(num_heads=2.5), r"num_heads=2\.5: use an integer >= 1"),
    (dict(embed_dim="abc"), r"embed_dim='abc': use an integer"),
    (dict(num_layers=True), r"num_layers=True"),
    (dict(attention="gqa", num_kv_heads=-1), r"num_kv_heads=-1"),
    (dict(ffn_multiple_of=0), r"ffn_multiple_of=0"),
    (dict(ffn_hidden=-8), r"ffn_hidden=-8"),
    (dict(norm_eps=-1e-6), r"norm_eps=-1e-06: use a finite number > 0"),
    (dict(rope_theta=float("inf")), r"rope_theta=inf"),
    (dict(dropout=float("nan")), r"dropout=nan: use a number in \[0, 1\)"),
    (dict(attention="mla", num_kv_heads=4), r"'mla' has no KV-head count"),
    (dict(attention="mla", qk_rope_head_dim=-2), r"qk_rope_head_dim=-2"),
    (dict(bias="false"), r"bias='false': use true or false"),
    (dict(layers="layers.jsonl"), r"use a list of dicts"),
    (dict(layers=[{"ffn_hidden": 0}, {}]), r"layers\[0\]: ffn_hidden=0"),
])
def test_model_config_rejects(kw, match):
    "ModelConfig refuses a bad field, also in a per-layer override, in its 'invalid ModelConfig:' list naming the field and the fix."
    with pytest.raises(ValueError, match=r"invalid ModelConfig:\n  - (.|\n)*" + match):
        tiny(**kw)


def test_load_refuses_layers_outside_the_config_folder(tmp_path):
    "A saved config cannot make ModelConfig.load read a file outside its folder, through .., an absolute path or a symlink."
    (tmp_path / "secret.jsonl").write_text("{}\n{}\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    for where in ("../secret.jsonl", str(tmp_path / "secret.jsonl"), "link.jsonl"):
        (tmp_path / "cfg" / "config.json").write_text(json.dumps({**tiny().to_dict(), "layers": where}))
        with pytest.raises(ValueError, match=f"layers path '{where}' is outside the config's folder"):
            ModelConfig.load(tmp_path / "cfg" / "config.json")


@pytest.mark.parametrize("call, match", [
    (lambda m, p: m.generate(torch.tensor([[3, 97]]), 2), r"token id 97, outside the vocabulary \[0, 97\)"),
    (lambda m, p: m.generate(torch.tensor([[-1, 3]]), 2), r"token id -1"),
    (lambda m, p: m.generate(p[:, :0], 2), r"0 tokens"),
    (lambda m, p: m.generate(p[0], 2), r"pass shape \(batch, tokens\), e\.g\. ids\[None\]"),
    (lambda m, p: m.generate(p, 2, temperature=float("nan")), r"temperature=nan"),
    (lambda m, p: m.generate(p, 2, temperature=-0.5), r"temperature=-0\.5"),
    (lambda m, p: m.generate(p, 2, top_k=0), r"top_k=0"),
    (lambda m, p: m.generate(p, 2, top_p=1.01), r"top_p=1\.01: use a number in \(0, 1\]"),
    (lambda m, p: m.generate(p, -1), r"max_new_tokens=-1"),
    (lambda m, p: m(torch.tensor([[1, 500]])), r"token id 500, outside the vocabulary"),
    (lambda m, p: sample_next(torch.zeros(97)), r"shape \(batch, vocab\)"),
    (lambda m, p: sample_next(torch.zeros(2, 97), temperature=float("inf")), r"temperature=inf"),
    (lambda m, p: filter_logits(torch.zeros(97), top_k=2), r"shape \(batch, vocab\)"),  # was topk's IndexError
    (lambda m, p: filter_logits(torch.zeros(2, 97), top_k=0), r"top_k=0"),  # was an empty k-th: nothing filtered
    (lambda m, p: filter_logits(torch.zeros(2, 97), top_p=0), r"top_p=0"),  # kept every token
    (lambda m, p: sample_next(torch.tensor([[0.0, float("nan")]]), 0), r"sequence\(s\) \[0\] hold NaN"),  # gave 1
    (lambda m, p: sample_next(torch.tensor([[0.0, 1.0], [-float("inf")] * 2])), r"sequence\(s\) \[1\]"),
])
def test_generation_checks_inputs(call, match):
    "generate, sample_next and forward refuse bad input with a ValueError naming the value (not an IndexError inside the embedding)."
    m, p = MiniLLM(tiny()).eval(), torch.randint(0, 97, (2, 3))
    with pytest.raises(ValueError, match=match):
        call(m, p)


def test_learned_positions_refuse_a_long_prompt():
    "With learned positions a prompt past max_seq_len is refused, saying how to crop it."
    m = MiniLLM(tiny(positional="learned"))
    with pytest.raises(ValueError, match=r"max_seq_len=12.*learned positions.*ids\[:, -12:\]"):
        m.generate(torch.zeros(1, 20, dtype=torch.long), 1)


def test_checkpoint_with_absurd_size_fails_before_allocating():
    """A checkpoint whose config says embed_dim=10**6 (about 10^14 bytes if built) fails on arithmetic, fast, naming the
    file; building it would have raised an out-of-memory error instead (or taken the machine down)."""
    sd = MiniLLM(tiny()).state_dict()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"ck\.pt: the config describes [\d,]+ parameters but the weights hold [\d,]+ numbers"):
        config_from_checkpoint({**tiny().to_dict(), "embed_dim": 10**6}, "ck.pt", state_dict=sd)
    assert time.perf_counter() - t0 < 2


def test_checkpoint_with_mismatched_shape_names_key_and_shapes():
    "A weight whose shape disagrees with the config is named with both shapes, before load_state_dict's error."
    sd = MiniLLM(tiny()).state_dict()
    with pytest.raises(ValueError, match=r"best\.pt: the weights do not match the model config \(blocks\.0\.ffn\.gate\.weight: config \(64, 32\), weights \(128, 32\)"):
        check_state_dict(tiny(ffn_hidden=64), sd, "best.pt")
    check_state_dict(tiny(), sd, "best.pt")


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_nan_logits_end_generation_before_a_token_is_streamed(temperature):
    """A sequence whose logits hold NaN (here: an embedding row of NaN, so only the sequence that starts with that token)
    ends generate with a ValueError naming that sequence. Greedy decoding returned argmax-of-NaN tokens silently, and
    sampling failed inside multinomial (on a GPU: a device-side assert that ends the process); on_token must not be
    handed a token drawn from such logits."""
    m = MiniLLM(tiny(tie_embeddings=False)).eval()
    with torch.no_grad():
        m.tok_emb.weight[5] = float("nan")
    streamed = []
    with pytest.raises(ValueError, match=r"sequence\(s\) \[1\] hold NaN or inf"):
        m.generate(torch.tensor([[1, 2], [5, 2]]), 3, temperature=temperature, on_token=streamed.append)
    assert streamed == []
    with pytest.raises(ValueError, match=r"sequence\(s\) \[1\]"):
        m.generate(torch.tensor([[1, 2], [5, 2]]), 3, temperature=temperature)
    assert m.generate(torch.tensor([[1, 2]]), 3, temperature=temperature).shape == (1, 5)  # the other row is fine
