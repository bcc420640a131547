"""Shared checks for the bad-input tests: run a command as a user does, and assert that it failed cleanly.

A clean failure: a non-zero exit code, no Python traceback on either stream, a message that names the flag
or file at fault, and no earlier good file changed (compare `checksums` before and after)."""
import hashlib
import subprocess
from pathlib import Path

from conftest import BIN, minillm as cli  # noqa: F401 (the bad-input tests' runner)


def fails_cleanly(r: subprocess.CompletedProcess, *names: str, rc: int | None = None):
    "Assert `r` failed (exit `rc`, or any non-zero), showed no traceback, and its stderr names every one of `names`."
    out = r.stdout + r.stderr
    assert r.returncode != 0 if rc is None else r.returncode == rc, f"exit {r.returncode}:\n{out[-2000:]}"
    assert "Traceback" not in out, f"traceback shown:\n{out[-3000:]}"
    for n in names: assert n in r.stderr, f"{n!r} not named in stderr:\n{r.stderr[-2000:]}"
    return r


def checksums(*folders) -> dict:
    "sha256 of every file under `folders` (a file counts as itself): compare before and after a failing command."
    out = {}
    for f in map(Path, folders):
        for p in ([f] if f.is_file() else sorted(f.rglob("*")) if f.exists() else []):
            if p.is_file(): out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
