"""The `minillm` console script, run as a user runs it: a real subprocess of the installed entry point."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def minillm(venv_bin, *args, cwd=None):
    return subprocess.run([str(venv_bin / "minillm"), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_every_command(venv_bin):
    "Guards `minillm --help`: it must list each registered subcommand (later lessons add theirs)."
    from minillm.cli import COMMANDS
    r = minillm(venv_bin, "--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS: assert f"  {name} " in r.stdout


def test_unknown_command_names_the_fix(venv_bin):
    "A typo must fail with exit code 2 and point at `minillm --help`, not a traceback."
    r = minillm(venv_bin, "trian")
    assert r.returncode == 2 and "unknown command 'trian'" in r.stderr and "Traceback" not in r.stderr


def test_env_json_matches_torch(venv_bin):
    "`minillm env --json` must report what torch itself sees (device count, fp32 on CPU)."
    r = minillm(venv_bin, "env", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if not torch.cuda.is_available(): assert info["precision"] == "fp32" and info["device"] in ("cpu", "mps")
    assert "math" in info["sdpa"]


def test_env_table(venv_bin):
    r = minillm(venv_bin, "env")
    assert r.returncode == 0 and "precision" in r.stdout and "attention" in r.stdout


def test_lessons_check_outside_a_checkout(venv_bin, tmp_path):
    "Outside a checkout, `minillm lessons` must say what is missing instead of a traceback."
    r = minillm(venv_bin, "lessons", "--check", cwd=tmp_path)
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
