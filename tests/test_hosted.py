"""The hosted path: a learner opens one generated lesson on Colab or Kaggle, with no checkout beside it. Its setup cell
installs minillm with the runtime requirements only (and the extras its code needs), so every module a lesson imports
must come from there, and the lesson must run in a kernel of such an install."""
import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import kernel_poll
from badinput import fails_cleanly
from kernel_poll import poll_in_slices
from minillm.lessons import code_tree, lesson_sources, make_lesson, read_nb, read_settings, src
from test_lessons import reference_cell

ROOT = Path(__file__).resolve().parents[1]
CFG = read_settings(ROOT)
KERNEL = {"IPython"}             # the Jupyter kernel's own package: every notebook runtime has it
HOSTED_LESSONS = ["01_core.ipynb", "05_attention.ipynb"]   # quick on a CPU: exercises, plots, a gpu-guarded cell
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


def test_lessons_stay_below_their_folder():
    """A lesson opened alone (Colab's /content, Kaggle's /kaggle/working) has no checkout above it: a path such as
    Path("../data") or open("../x") names a folder outside the learner's (on Colab, /data). Lessons find data/ and runs/ with
    `project_root()`, which is the checkout's root in a clone and the cwd elsewhere."""
    found = {}
    for p in lesson_sources(ROOT):
        for i, c in enumerate(make_lesson(read_nb(p), p.name, CFG)["cells"]):
            if c["cell_type"] != "code": continue
            for n in ast.walk(code_tree(src(c))):
                if not (isinstance(n, ast.Call) and n.args and getattr(n.func, "id", getattr(n.func, "attr", None)) in ("Path", "open")): continue
                a = n.args[0]
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and (a.value == ".." or a.value.startswith("../")):
                    found.setdefault(p.name, []).append(f"cell {i} line {n.lineno}: {a.value!r}")
    assert not found, f"paths above the lesson's folder (use minillm.lessons.project_root()): {found}"


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
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.on_notebook_start = lambda notebook: poll_in_slices(client.kc)
    client.execute()
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


def solved_lesson(name: str) -> nbformat.NotebookNode:
    "Lesson `name` as `minillm lessons` writes it, run as a learner who solved it: each stub replaced by the reference, slow cells left out."
    nb = nbformat.from_dict(make_lesson(read_nb(ROOT / "nbs" / name), name, CFG))
    nb.cells = [c for c in nb.cells if not c.source.startswith("# Slow on a CPU")]
    for c in nb.cells:
        if c.cell_type == "code" and c.source.startswith("# \u270f\ufe0f Exercise"):
            c.source = reference_cell(name, re.search(r"^def (\w+)\(", c.source, re.M).group(1))
    return nb


# the runner runs where there is no checkout: the channel workaround travels in its text
RUNNER = Path(kernel_poll.__file__).read_text() + """
import sys, nbformat
from nbclient import NotebookClient
for path in sys.argv[2:]:
    nb = nbformat.read(path, 4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[1]}})
    client.on_notebook_start = lambda notebook: poll_in_slices(client.kc)
    try: client.execute()
    except Exception as e: sys.exit(f"{path}: {e}")
    finally: nbformat.write(nb, path)
"""


def test_lessons_run_in_a_fresh_install(tmp_path):
    """A fresh venv gets torch, then `pip install .` with no extras (what a lesson's setup cell installs from GitHub),
    then only ipykernel and nbclient to run a kernel. In it, from an empty folder (Colab's /content: no checkout):
    lessons 01 and 05 run top to bottom with their exercises solved (a lesson importing fastcore, hypothesis or
    deepspeed fails here: none of them is installed), tqdm.auto draws a widget with the ipywidgets pip chose, and
    `minillm train --deepspeed` fails in one line naming the extra. 80 s on 2 cores (the venv in /dev/shm)."""
    shm = Path("/dev/shm")         # RAM: a gigabyte of torch is written and removed there in seconds, on this disk in minutes
    base = Path(tempfile.mkdtemp(prefix="minillm-hosted-", dir=shm)) if shm.is_dir() and shutil.disk_usage(shm).free > 4e9 else tmp_path
    venv, src_dir, content = base / "venv", tmp_path / "src", tmp_path / "content"
    shutil.copytree(ROOT / "minillm", src_dir / "minillm", ignore=shutil.ignore_patterns("__pycache__"))   # what a clone has
    for f in ("setup.py", "settings.ini", "MANIFEST.in", "LICENSE", "README.md"): shutil.copy(ROOT / f, src_dir / f)
    content.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter"), MPLBACKEND="module://matplotlib_inline.backend_inline")
    py = str(venv / "bin" / "python")

    def run(*args, timeout=600, cwd=None):
        t = time.monotonic()
        r = subprocess.run([*map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
        print(f"{time.monotonic() - t:5.1f} s  {' '.join(map(str, args))[:100]}")
        assert r.returncode == 0, f"{' '.join(map(str, args))}:\n{(r.stdout + r.stderr)[-3000:]}"
        return r

    try:
        run(sys.executable, "-m", "venv", "--without-pip", venv)   # this venv's pip installs into it (--python): no ensurepip
        pip = [sys.executable, "-m", "pip", "--python", py]
        run(*pip, "install", "-q", "--no-compile", "torch==2.13.0")
        run(*pip, "install", "-q", "--no-compile", src_dir, "ipykernel", "nbclient")
        run(*pip, "check")
        missing = run(py, "-c", f"import importlib.util as u; print(*[m for m in {DEV_ONLY!r} if u.find_spec(m) is None])").stdout.split()
        assert missing == DEV_ONLY, f"a fresh install without extras has {set(DEV_ONLY) - set(missing)}: the check below proves nothing"

        paths = []
        for name in HOSTED_LESSONS:
            nb = solved_lesson(name)   # first, the kernel is this venv's (not one a user kernelspec points elsewhere)
            nb.cells.insert(0, nbformat.v4.new_code_cell(f"import os, sys\nassert os.path.samefile(sys.prefix, {str(venv)!r}), sys.prefix"))
            nbformat.write(nb, p := tmp_path / name); paths.append(p)
        nb.cells.append(nbformat.v4.new_code_cell(TQDM_CELL)); nbformat.write(nb, paths[-1])   # the last lesson ends with it
        (tmp_path / "runner.py").write_text(RUNNER)
        run(py, tmp_path / "runner.py", content, *paths)
        assert "ipywidgets " in tqdm_widget(nbformat.read(paths[-1], 4).cells[-1].outputs)

        (content / "c.txt").write_text("hello hosted world\n" * 300)
        run(venv / "bin" / "minillm", "prepare", "--corpus", "c.txt", "--tokenizer", "bytes", "--out", "d", "--workers", "1", cwd=content)
        r = subprocess.run([venv / "bin" / "minillm", "train", "--data", "d", "--out", "run", "--preset", "tiny", "--max-steps", "2", "--deepspeed"],
                           capture_output=True, text=True, env=env, timeout=300, cwd=content)
        fails_cleanly(r, 'pip install "minillm[deepspeed]"', rc=1)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        shutil.rmtree(venv if base == tmp_path else base, ignore_errors=True)      # about a gigabyte, mostly torch
