"""The hosted path: a learner opens one generated lesson on Colab or Kaggle, with no checkout beside it. Its setup cell
installs minillm with the runtime requirements only (and the extras its code needs), so every module a lesson imports
must come from there, and the lesson must run in a kernel of such an install."""
import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from badinput import fails_cleanly
from minillm.lessons import code_tree, lesson_sources, make_lesson, read_nb, read_settings, src
from test_lessons import reference_cell

ROOT = Path(__file__).resolve().parents[1]
CFG = read_settings(ROOT)
KERNEL = {"IPython"}             # the Jupyter kernel's own package: every notebook runtime has it
HOSTED_LESSONS = ["01_core.ipynb", "05_attention.ipynb"]   # quick on a CPU; between them, every kind of cell
DEV_ONLY = ["fastcore", "hypothesis", "nbdev", "execnb", "deepspeed"]    # what the dev extra adds


def requirements(key: str) -> list[Requirement]:
    return [Requirement(r) for r in CFG.get(key, "").split()]


def modules_of(reqs: list[Requirement]) -> set[str]:
    "The top-level modules the distributions `reqs` install: read from this venv where it has them, else the name (flash-attn: flash_attn)."
    have = md.packages_distributions()
    out = set()
    for r in reqs:
        mods = {m for m, dists in have.items() if canonicalize_name(r.name) in map(canonicalize_name, dists)}
        out |= mods or {canonicalize_name(r.name).replace("-", "_")}
    return out


EXTRAS = [k[:-len("_requirements")] for k in CFG if k.endswith("_requirements") and k != "dev_requirements"]


def _catches_import_error(t: ast.Try) -> bool:
    types = [h.type for h in t.handlers]
    names = {n.id for t_ in types if t_ is not None for n in ast.walk(t_) if isinstance(n, ast.Name)}
    return None in types or bool(names & {"ImportError", "ModuleNotFoundError", "Exception"})


def required_imports(code: str) -> list[tuple[int, str, bool]]:
    """(line, top-level module, inside a function) of every import in a cell that the cell cannot run without: all of
    them but those in the body of a `try` that catches ImportError (an optional dependency, such as triton)."""
    out = []

    def visit(node, optional, deferred):
        if isinstance(node, ast.Try):
            for n in node.body: visit(n, optional or _catches_import_error(node), deferred)
            for n in [*node.handlers, *node.orelse, *node.finalbody]: visit(n, optional, deferred)
            return
        if not optional and isinstance(node, ast.Import): out.extend((node.lineno, a.name.split(".")[0], deferred) for a in node.names)
        if not optional and isinstance(node, ast.ImportFrom) and not node.level: out.append((node.lineno, node.module.split(".")[0], deferred))
        deferred = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node): visit(child, optional, deferred)

    visit(code_tree(code), False, False)
    return out


def allowed_modules(setup: str) -> set[str]:
    "What a lesson may import: the stdlib, minillm, the runtime requirements, and the extras its setup cell installs."
    extras = [e for m in re.findall(r"minillm\[([\w,]+)\] @", setup) for e in m.split(",")]
    reqs = requirements("requirements") + [r for e in extras for r in requirements(f"{e}_requirements")]
    return set(sys.stdlib_module_names) | {"minillm"} | KERNEL | modules_of(reqs)


def test_import_check_can_fail():
    """The checker finds a dev-only import wherever it stands (a function body, a cell with IPython magics), and lets
    an optional import under `try/except ImportError` pass; lesson 05 may not import deepspeed, lesson 13 may."""
    code = "%pip install x\nimport torch, os.path\ndef f():\n    from fastcore.test import test_eq\ntry:\n    import triton\nexcept ImportError: triton = None"
    assert required_imports(code) == [(2, "torch", False), (2, "os", False), (4, "fastcore", True)]
    lessons = {p.name: make_lesson(read_nb(p), p.name, CFG) for p in lesson_sources(ROOT)}
    setup = {k: src(next(c for c in nb["cells"] if c["cell_type"] == "code")) for k, nb in lessons.items()}
    plain, ds = allowed_modules(setup["05_attention.ipynb"]), allowed_modules(setup["13_deepspeed.ipynb"])
    assert {"torch", "numpy", "regex", "sentencepiece", "tqdm", "matplotlib", "ipywidgets", "json"} <= plain
    assert not set(DEV_ONLY) & plain and "deepspeed" in ds
    assert "flash_attn" in modules_of(requirements("flash_requirements")) and "deepspeed" in EXTRAS and "dev" not in EXTRAS


def test_lessons_import_runtime_requirements_only():
    """Every module a generated lesson's code imports (outside `try/except ImportError`) is the stdlib, minillm, a
    runtime requirement of settings.ini, or one the lesson's setup cell installs (an extra): on Colab or Kaggle
    nothing else is there. A function may import another extra's module (flash-attn's kernel, called only where
    the package found it installed); never a dev-only one. Lessons are generated here as `minillm lessons` writes them."""
    problems, extras = [], modules_of([r for e in EXTRAS for r in requirements(f"{e}_requirements")])
    for p in lesson_sources(ROOT):
        nb = make_lesson(read_nb(p), p.name, CFG)
        codes = [(i, src(c)) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
        allowed = allowed_modules(codes[0][1])
        for i, code in codes:
            for line, mod, deferred in required_imports(code):
                if mod not in allowed and not (deferred and mod in extras):
                    problems.append(f"lessons/{p.name} cell {i} line {line}: imports {mod}, which a hosted runtime lacks "
                                    "(not the stdlib, minillm, a runtime requirement or an extra its setup cell installs)")
    assert not problems, "\n".join(problems)


def test_ipywidgets_range_admits_colab():
    "Colab ships ipywidgets 7.7.x and its widget frontend breaks on 8: the runtime range must admit 7.7 and 8 alike."
    spec = next(r.specifier for r in requirements("requirements") if r.name == "ipywidgets")
    assert all(spec.contains(v) for v in ("7.7.1", "7.7.5", "8.0.0", "8.1.9")), spec


TQDM_CELL = ("import ipywidgets, tqdm.auto, tqdm.notebook\nbar = tqdm.auto.tqdm(range(3), desc='steps')\nfor _ in bar: pass\n"
             "print('ipywidgets', ipywidgets.__version__, 'tqdm.notebook' if isinstance(bar, tqdm.notebook.tqdm) else 'text bar')")


def tqdm_widget(outputs) -> str:
    """What tqdm.auto printed in a kernel, after asserting it chose the notebook bar and drew it as a widget (a widget
    view in the outputs, no 'IProgress not found' warning)."""
    text = "".join(o.get("text", "") for o in outputs)
    assert "tqdm.notebook" in text and "IProgress not found" not in text, text
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    return text


def run_cell(code: str, cwd: Path) -> list:
    "The outputs of `code` run in a fresh kernel of this venv (with this process's environment)."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb.cells[0].outputs


def test_tqdm_auto_with_colabs_ipywidgets(tmp_path, monkeypatch):
    """tqdm.auto draws its widget bar with ipywidgets 7.7 (Colab's) and with the dev venv's 8. For 7.7 the kernel
    imports it from a folder put first on its path (pip, from its cache after the first run)."""
    target = tmp_path / "ipywidgets7"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "ipywidgets==7.7.*",
                        "ipython_genutils==0.2.*"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    monkeypatch.setenv("PYTHONPATH", str(target))
    assert "ipywidgets 7.7." in tqdm_widget(run_cell(TQDM_CELL, tmp_path))
    monkeypatch.delenv("PYTHONPATH")
    assert f"ipywidgets {md.version('ipywidgets')} " in tqdm_widget(run_cell(TQDM_CELL, tmp_path))
