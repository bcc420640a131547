"""The suite's sync check must catch each kind of drift and name the command that fixes it."""
import json
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from suite import project_files  # noqa: E402


@pytest.fixture
def clone(root, tmp_path):
    "A copy of the project (what a commit would hold) to break on purpose."
    dst = tmp_path / "repo"
    for f in project_files(root):
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dst / f)
    return dst


def sync(repo):
    return subprocess.run([sys.executable, str(repo / "tests" / "suite.py"), "--only", "sync"], cwd=repo,
                          capture_output=True, text=True, timeout=600)


def edit_nb(path, fn):
    nb = json.loads(path.read_text()); fn(nb); path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def test_clean_tree_passes(clone):
    "A fresh clone is in sync: the check passes before any edit, so each failure below is the edit's doing."
    r = sync(clone)
    assert r.returncode == 0, r.stdout + r.stderr


def test_notebook_edited_without_export(clone):
    "A notebook changed but not exported: minillm/ is stale, and the message says `nbdev_export`."
    def change(nb):
        c = next(c for c in nb["cells"] if c["cell_type"] == "code" and "def fp16_tensor_cores" in "".join(c["source"]))
        c["source"] = "".join(c["source"]).replace("(7, 0)", "(7, 5)")
    edit_nb(clone / "nbs" / "01_core.ipynb", change)
    r = sync(clone)
    assert r.returncode == 1 and "minillm/core.py differs" in r.stdout and "run `nbdev_export`" in r.stdout


def test_unclean_notebook(clone):
    "Execution counts left in a notebook: the message says `nbdev_clean`."
    def dirty(nb): next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 3
    edit_nb(clone / "nbs" / "00_exercises.ipynb", dirty)
    r = sync(clone)
    assert r.returncode == 1 and "notebook not clean" in r.stdout and "nbdev_clean" in r.stdout


def test_hand_edited_lesson_and_readme(clone):
    "lessons/ or README.md edited by hand: the message says `minillm lessons`."
    (clone / "README.md").write_text((clone / "README.md").read_text() + "\nhand edit\n")
    (clone / "lessons" / "99_orphan.ipynb").write_text("{}")
    r = sync(clone)
    assert r.returncode == 1 and "README.md differs" in r.stdout and "lessons/99_orphan.ipynb" in r.stdout
    assert "run `minillm lessons`" in r.stdout
