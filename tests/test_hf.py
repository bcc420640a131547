"""The Hugging Face bridge (minillm.hf, `minillm export`, `minillm import`): MiniLLM against transformers' own Llama and
GPT-2, both ways, on tiny models built from a config (nothing is downloaded)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")   # a guard for machines without the hf extra; CI has it
pytest.importorskip("safetensors")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from minillm.cli import main as cli  # noqa: E402
from minillm.data import ByteTokenizer  # noqa: E402
from minillm.hf import (export_run, hf_family, import_checkpoint, interleaved_to_half, save_run,  # noqa: E402
                        to_hf_state_dict)
from minillm.model import MiniLLM, ModelConfig  # noqa: E402
from minillm.train import load_model  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
V = 257   # the byte tokenizer's vocabulary: every run below has a real tokenizer
# init_std / initializer_range 0.2, ten times the usual: logits of order one, so a wrong mapping cannot hide in tiny numbers
TINY = dict(vocab_size=V, embed_dim=64, num_heads=4, num_layers=2, max_seq_len=64, init_std=0.2)
LLAMA = {f"llama-{a}-{'tied' if t else 'untied'}": dict(TINY, attention=a, num_kv_heads=2 if a == "gqa" else None, tie_embeddings=t)
         for a in ("mha", "gqa", "mqa") for t in (True, False)}
GPT2 = {f"gpt2-{'tied' if t else 'untied'}": dict(TINY, positional="learned", norm="layernorm", ffn="gelu", bias=True, tie_embeddings=t)
        for t in (True, False)}
GPT2["gpt2-tanh"] = dict(GPT2["gpt2-tied"], gelu_approximate="tanh")   # exported as transformers' gelu_pytorch_tanh
# a vocabulary padded to 384 rows (training's pad_vocab): the export leaves the padding behind, the logits still agree
LLAMA["llama-gqa-padded"] = dict(LLAMA["llama-gqa-untied"], vocab_multiple=128)
GPT2["gpt2-padded"] = dict(GPT2["gpt2-tied"], vocab_multiple=128)
ATOL = 1e-4   # fp32: the two programs sum the same products in other orders (differences ~1e-6 on logits of order 1)


def greedy_hf(hf, ids, n=32):
    return hf.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n, pad_token_id=0)


# Greedy decoding (32 tokens, both programs) is the slow part: it runs for one Llama and one GPT-2 each way. A wrong
# RoPE permutation is the same bug for every Llama attention kind, so one GQA model (separate q and kv heads) finds it.
GREEDY = {"llama-gqa-untied", "gpt2-tied", "llama-kv2-untied", "gpt2-untied", "llama-gqa-padded"}


def assert_same(mine: MiniLLM, hf, seed=0, greedy=True):
    "Logits within ATOL on a random batch, and 32 greedy tokens identical (a wrong RoPE permutation fails the latter)."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, 24), generator=g)
    with torch.no_grad():
        a, b = mine(ids)[0], hf(ids).logits
    assert a.abs().max() > 0.5, "logits too small to test anything"
    assert (a - b).abs().max() < ATOL, (a - b).abs().max()
    if not greedy:
        return
    prompt = ids[:1, :8]
    assert torch.equal(mine.generate(prompt, 32, temperature=0), greedy_hf(hf, prompt))


@pytest.mark.parametrize("name", [*LLAMA, *GPT2])
def test_export_matches_transformers(name, tmp_path):
    """A MiniLLM run exported, then loaded by transformers' AutoModelForCausalLM: the same logits (fp32, atol 1e-4) and
    the same 32 greedy tokens (for the GREEDY cases), for MHA, GQA and MQA, tied and untied, Llama and GPT-2, padded
    vocabulary or not. The exported weights are each stored once (safetensors refuses shared storage): a tied head is
    not in the file."""
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(**{**LLAMA, **GPT2}[name])).eval()
    save_run(model, ByteTokenizer(), tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "hf", log=lambda *a: None)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert_same(model, hf, greedy=name in GREEDY)
    assert ("lm_head.weight" in load_file(tmp_path / "hf" / "model.safetensors")) != model.config.tie_embeddings


def hf_llama(kv, tied):
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=kv, max_position_embeddings=64,
                                        tie_word_embeddings=tied, initializer_range=0.2)).eval()


def hf_gpt2(tied, act="gelu"):
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
                                      activation_function=act, tie_word_embeddings=tied)).eval()


HF_MODELS = {f"llama-kv{kv}-{'tied' if t else 'untied'}": (lambda kv=kv, t=t: hf_llama(kv, t)) for kv in (4, 2, 1) for t in (True, False)}
HF_MODELS |= {f"gpt2-{'tied' if t else 'untied'}": (lambda t=t: hf_gpt2(t)) for t in (True, False)}
HF_MODELS["gpt2-gelu_new"] = lambda: hf_gpt2(True, "gelu_new")   # GPT-2's own activation: the tanh approximation


@pytest.mark.parametrize("name", HF_MODELS)
def test_import_matches_transformers(name, tmp_path):
    """A transformers-made Llama or GPT-2 (saved with save_pretrained, a byte tokenizer beside it) imported as a run:
    load_model gives a MiniLLM with the same logits and greedy tokens. Exporting that run gives back the very tensors
    transformers saved (torch.equal: the round trip only renames and transposes)."""
    torch.manual_seed(0)
    hf = HF_MODELS[name]()
    hf.save_pretrained(tmp_path / "hf")
    ByteTokenizer().save(tmp_path / "tok")
    import_checkpoint(tmp_path / "hf", tmp_path / "run", tokenizer=tmp_path / "tok", log=lambda *a: None)
    mine, tok = load_model(tmp_path / "run")
    assert tok.fingerprint() == ByteTokenizer().fingerprint()
    assert_same(mine, hf, greedy=name in GREEDY)
    export_run(tmp_path / "run", tmp_path / "back", log=lambda *a: None)
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_minillm(tmp_path):
    """MiniLLM -> export -> import: identical tensors, the same config and the same tokenizer (kept in
    minillm_tokenizer/), for a Llama-like and a GPT-2-like model."""
    for name in ("llama-gqa-untied", "gpt2-tied"):
        torch.manual_seed(0)
        model = MiniLLM(ModelConfig(**{**LLAMA, **GPT2}[name]))
        save_run(model, ByteTokenizer(), tmp_path / name)
        export_run(tmp_path / name, tmp_path / f"{name}-hf", log=lambda *a: None)
        import_checkpoint(tmp_path / f"{name}-hf", tmp_path / f"{name}-back", log=lambda *a: None)
        back, tok = load_model(tmp_path / f"{name}-back")
        sd, sd2 = model.state_dict(), back.state_dict()
        assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
        assert tok.fingerprint() == ByteTokenizer().fingerprint()
        c, c2 = model.config.to_dict(), back.config.to_dict()
        # init_std is not in a checkpoint; ffn_hidden comes back as the number the default gave
        assert {k for k in c if c[k] != c2[k]} <= {"init_std", "ffn_hidden"}, (c, c2)


@pytest.mark.parametrize("change,field", [(dict(attention="mla"), "attention='mla'"), (dict(ffn="moe"), "ffn='moe'"),
                                          (dict(positional="sinusoidal"), "positional='sinusoidal'"),
                                          (dict(norm="layernorm"), "norm='layernorm'"),
                                          (dict(layers=[{}, {"ffn": "gelu"}]), "layers")])
def test_refusals_name_the_field(change, field, tmp_path, capsys):
    """Architectures no transformers family holds are refused by hf_family, and by `minillm export` before anything is
    written, in one line naming the field."""
    c = ModelConfig(**dict(TINY, **change))
    with pytest.raises(ValueError, match=field.replace("[", r"\[")):
        hf_family(c)
    save_run(MiniLLM(c), ByteTokenizer(), tmp_path / "run")
    assert cli(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert field in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_import_refusals(tmp_path, capsys):
    """Checkpoints that do not map, and folders that are not checkpoints, are refused in one line naming the field or
    the fix; nothing is written."""
    torch.manual_seed(0)
    hf_gpt2(True).save_pretrained(tmp_path / "gpt2")
    ByteTokenizer().save(tmp_path / "tok")
    cases = []
    for key, value, shows in (("activation_function", "relu", "activation_function='relu'"),
                              ("model_type", "mistral", "model_type='mistral'")):
        d = tmp_path / f"bad-{key}"
        hf_gpt2(True).save_pretrained(d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(cfg | {key: value}))
        cases.append((["--from", str(d)], shows))
    d = tmp_path / "llama-scaled"
    hf_llama(2, True).save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    cases.append((["--from", str(d)], "rope_scaling="))
    for family, key in (("llama", "num_hidden_layers"), ("gpt2", "n_layer")):  # one layer of two was dropped, silently
        d = tmp_path / f"{family}-fewer-layers"
        (hf_llama(2, True) if family == "llama" else hf_gpt2(True)).save_pretrained(d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(cfg | {key: 1}))
        cases.append((["--from", str(d)], "the weights hold 2 layers but config.json says 1"))
    nan = hf_gpt2(True)  # a run whose load_model would refuse it was written
    with torch.no_grad():
        nan.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    nan.save_pretrained(tmp_path / "nan")
    cases.append((["--from", str(tmp_path / "nan")], "the weights hold NaN or inf"))
    cases.append((["--from", str(tmp_path / "tok")], "has no config.json"))
    cases.append((["--from", str(tmp_path / "gpt2")], "holds no tokenizer minillm reads"))
    for args, shows in cases:
        assert cli(["import", *args, "--out", str(tmp_path / "run"), "--tokenizer", str(tmp_path / "tok")]
                   if shows != "holds no tokenizer minillm reads" else ["import", *args, "--out", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err
        assert shows in err and len(err.strip().splitlines()) == 1, (shows, err)
        assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_import_refuses_broken_folders(tmp_path, capsys):
    """A config.json that is not JSON (the message now names the file), a cut-short model.safetensors (it was reported
    as a bug), and a minillm run given as the source (it said "no model_type") are refused in one line, nothing written."""
    torch.manual_seed(0)
    for name in ("badjson", "cut"):
        hf_gpt2(True).save_pretrained(tmp_path / name)
        ByteTokenizer().save(tmp_path / name / "minillm_tokenizer")
    (tmp_path / "badjson" / "config.json").write_text("{model_type: gpt2")
    w = tmp_path / "cut" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    save_run(MiniLLM(ModelConfig(**LLAMA["llama-mha-tied"])), ByteTokenizer(), tmp_path / "run")
    for src, shows in (("badjson", "config.json is not valid JSON"), ("cut", "model.safetensors is truncated or corrupt"),
                       ("run", "is a minillm run")):
        assert cli(["import", "--from", str(tmp_path / src), "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert shows in err and len(err.strip().splitlines()) == 1 and "a bug" not in err, (src, err)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.glob(".*")]


def test_export_bad_input(tmp_path, capsys):
    """`minillm export` and `minillm import` refuse in one line naming the fix, and lose nothing: a missing run, a run
    without the asked checkpoint (its checkpoints listed), a non-empty --out without --overwrite, an --out that is the
    folder being read or holds it (with --overwrite these once deleted the run), a folder of other files under
    --overwrite (it once deleted them), an --out that cannot be written. --overwrite replaces an earlier export whole,
    and what is written has the umask's permissions (mkdtemp's 0700 once leaked through)."""
    torch.manual_seed(0)
    save_run(MiniLLM(ModelConfig(**LLAMA["llama-mha-tied"])), ByteTokenizer(), tmp_path / "sb" / "run")
    run, sb = tmp_path / "sb" / "run", tmp_path / "sb"
    (sb / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "c.txt").write_text("a file")
    for args, shows in (
            (["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such run folder"),
            (["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no best.pt or latest.pt"),
            (["--run", str(run), "--out", str(tmp_path / "o"), "--checkpoint", "nope.pt"], "its checkpoints: latest.pt"),
            (["--run", str(run), "--out", str(tmp_path / "full")], "--overwrite"),
            (["--run", str(run), "--out", str(tmp_path / "full"), "--overwrite"], "is not an earlier export"),
            (["--run", str(run), "--out", str(run), "--overwrite"], "which is being read"),
            (["--run", str(run), "--out", str(sb), "--overwrite"], "which is being read"),
            (["--run", str(run), "--out", str(tmp_path / "c.txt" / "sub")], "cannot write beside"),
            (["--run", str(run), "--out", "/proc/minillm-x"], "cannot write beside")):
        assert cli(["export", *args]) == 1, args
        err = capsys.readouterr().err
        assert shows in err and len(err.strip().splitlines()) == 1 and ".tmp" not in err, (args, err)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "latest.pt", "tokenizer"]
    assert (sb / "notes.txt").exists() and (tmp_path / "full" / "keep.txt").exists() and not (tmp_path / "o").exists()
    # --checkpoint takes a file name in the run or a path; --overwrite replaces an earlier export
    assert cli(["export", "--run", str(run), "--out", str(tmp_path / "o"), "--checkpoint", str(run / "latest.pt")]) == 0
    (tmp_path / "o" / "stale.txt").write_text("from before")
    assert cli(["export", "--run", str(run), "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert not (tmp_path / "o" / "stale.txt").exists() and (tmp_path / "o" / "model.safetensors").exists()
    mask = os.umask(0); os.umask(mask)
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "o" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    # import: the source folder is never the output
    assert cli(["import", "--from", str(tmp_path / "o"), "--out", str(tmp_path / "o"), "--overwrite"]) == 1
    assert "which is being read" in capsys.readouterr().err and (tmp_path / "o" / "model.safetensors").exists()
    assert not [p for p in tmp_path.rglob(".*")], "a temporary folder was left behind"


def test_exported_tokenizer_reads_in_transformers(tmp_path):
    """The byte tokenizer is exported as a GPT-2 byte-level BPE without merges (vocab.json, merges.txt): transformers'
    AutoTokenizer encodes text, end-of-text included, to the ids minillm's tokenizer gives."""
    torch.manual_seed(0)
    save_run(MiniLLM(ModelConfig(**GPT2["gpt2-tied"])), ByteTokenizer(), tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "hf", log=lambda *a: None)
    ht = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello, world!  Ünïcödé<|endoftext|>next"
    assert ht(text)["input_ids"] == ByteTokenizer().encode(text)


def test_cli_end_to_end(tmp_path):
    """The commands as a user runs them: export a run (a real process), import the folder (the same entry point, in this
    process: a second transformers start-up costs seconds), sample from the imported run (a real process)."""
    torch.manual_seed(0)
    save_run(MiniLLM(ModelConfig(**LLAMA["llama-gqa-tied"])), ByteTokenizer(), tmp_path / "run")
    py = [sys.executable, "-m", "minillm"]
    r = subprocess.run(py + ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "as a llama checkpoint" in r.stdout, r.stderr[-2000:]
    assert cli(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    r = subprocess.run(py + ["sample", "--run", str(tmp_path / "back"), "--max-new-tokens", "8", "--prompt", "hi", "--device", "cpu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("hi"), r.stderr[-2000:]


def test_without_the_extra(tmp_path):
    """Without transformers the package imports, the other commands work, and export/import say what to install in one
    line."""
    code = ("import sys; sys.modules['transformers'] = None; import minillm.hf; from minillm.cli import main; "
            f"sys.exit(main(['export', '--run', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "minillm export: needs the hf extra: pip install 'minillm[hf]'", r.stderr


def test_rope_permutation_needed_only_for_interleaved():
    """MiniLLM and transformers' Llama share the half-split RoPE layout, so to_hf_state_dict copies q and k as they are;
    interleaved_to_half (Meta's layout -> half-split) is a permutation within each head, and its own inverse only for
    d = 4 (checked on d = 8, where it is not)."""
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(**LLAMA["llama-mha-tied"]))
    assert torch.equal(to_hf_state_dict(model)["model.layers.0.self_attn.q_proj.weight"], model.blocks[0].attn.q_proj.weight)
    w = torch.arange(16.0)[:, None]
    assert interleaved_to_half(w, 2)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
