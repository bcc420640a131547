"""The package as a learner reads it: what each module exports is something they can call or read."""
import importlib
import inspect
import pkgutil
import typing

import minillm


def test_all_holds_public_functions_classes_and_constants():
    """Every name in a module's __all__ exists and is a function, a class or a constant: never a bare classmethod,
    staticmethod or property object (a method written as a module-level function and attached to its class by
    assignment, which nobody can call from the module), and never a module. Type aliases (`Offload =
    Literal[...]`) are constants."""
    bad = []
    for m in pkgutil.iter_modules(minillm.__path__):
        if m.name.startswith("_"): continue
        mod = importlib.import_module(f"minillm.{m.name}")
        for name in getattr(mod, "__all__", []):
            if not hasattr(mod, name): bad.append(f"minillm.{m.name}.{name}: in __all__ but not defined"); continue
            o = getattr(mod, name)
            if isinstance(o, (classmethod, staticmethod, property)) or inspect.ismodule(o):
                bad.append(f"minillm.{m.name}.{name}: a {type(o).__name__} object")
            elif callable(o) and not (inspect.isfunction(o) or inspect.isclass(o) or inspect.isbuiltin(o)
                                      or typing.get_origin(o) is not None):   # a type alias: Literal[...]
                bad.append(f"minillm.{m.name}.{name}: a callable {type(o).__name__}")
    assert not bad, "\n".join(bad)


def _imports(mod_name: str):
    "(imported minillm module, names, at module level?) for each `from .x import ...` / `from minillm.x import ...` in a module."
    import ast
    from pathlib import Path
    tree = ast.parse(Path(minillm.__file__).with_name(f"{mod_name}.py").read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            target = node.module if node.level else node.module.removeprefix("minillm.")
            if node.level or node.module.startswith("minillm."):
                yield target.split(".")[0], [a.name for a in node.names], id(node) in top


def _order() -> dict[str, str]:
    "Each module's notebook name (its lesson order): minillm.zero -> '12_zero'."
    from pathlib import Path
    out, root = {}, Path(minillm.__file__).parent
    for p in root.glob("*.py"):
        first = p.read_text().splitlines()[0]
        if "File to edit: ../nbs/" in first: out[p.stem] = first.split("../nbs/")[1].split(".ipynb")[0]
    return out


def test_no_private_cross_module_imports():
    """A module never imports another module's _private names: what one lesson uses from another is that lesson's
    public API (a learner reading the import line can look each name up)."""
    bad = [f"minillm.{m} imports {n} from minillm.{t}" for m in _order() for t, names, _ in _imports(m) for n in names
           if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_modules_import_only_earlier_lessons_at_import_time():
    """A module's top-level imports come from its own or earlier notebooks, so lesson N runs with only what lessons
    before it exported and the import graph has no cycle (later engines are found by name, on demand)."""
    order = _order()
    bad = [f"minillm.{m} ({order[m]}) imports minillm.{t} ({order[t]}) at import time"
           for m in order for t, _, top in _imports(m) if top and t in order and order[t] > order[m]]
    assert not bad, "\n".join(bad)


def test_exported_lines_fit_in_120_columns():
    """No line of the package is over 120 characters, so a learner reads it without scrolling sideways. The one
    exception is nbdev's own generated `__all__ = [...]` line, which nbdev wraps at 120 before adding its prefix."""
    from pathlib import Path
    root = Path(minillm.__file__).parent
    long = [f"{p.name}:{i}: {len(line)} characters" for p in sorted(root.glob("*.py")) if p.name != "_modidx.py"
            for i, line in enumerate(p.read_text(encoding="utf-8").split("\n"), 1)
            if len(line) > 120 and not line.startswith("__all__ = ")]
    assert not long, "\n".join(long)


def test_methods_are_attached_with_patch_not_assignment():
    """A method written after its class is added with `@patch` (which names it `Class.method` and keeps it out of the
    module's __all__), never by assigning module-level functions to the class (`Cls.a, Cls.b = _a, _b`)."""
    import re
    from pathlib import Path
    root = Path(minillm.__file__).parent
    assign = re.compile(r"^([A-Z]\w*)\.\w+(\s*,\s*\1\.\w+)*\s*=(?!=)")
    bad = [f"{p.name}:{i}: {line.strip()[:80]}" for p in sorted(root.glob("*.py"))
           for i, line in enumerate(p.read_text(encoding="utf-8").split("\n"), 1) if assign.match(line)]
    assert not bad, "\n".join(bad)


def test_no_unused_imports_or_undefined_names():
    """pyflakes' checks (ruff's F rules) on the exported package: an import used only by a notebook's demonstration
    cell belongs in that cell, not in the module a learner reads; an undefined name is a bug waiting for its branch."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    root = Path(minillm.__file__).parent
    files = [str(p) for p in sorted(root.glob("*.py")) if p.name != "_modidx.py"]
    r = subprocess.run([ruff, "check", "--no-cache", "--select", "F", "--output-format", "concise", *files],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_exported_cells_are_formatted():
    """Every exported cell is as `ruff format` (120 columns, quotes kept) writes it, so the package has one layout
    and a diff shows only real changes. Fix: `make format` (or `make sync`)."""
    from minillm.lessons import find_root, format_exports
    changed = format_exports(find_root(), check=True)
    assert not changed, "not formatted (run `make format`): " + ", ".join(changed)


def test_every_test_says_what_it_guards():
    """Each test in tests/ has a docstring (what it guards and why its tolerance is what it is): a failing test must
    tell its reader what broke without reading its body."""
    import ast
    from pathlib import Path
    missing = []
    for f in sorted(Path(__file__).parent.glob("test_*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_") and not ast.get_docstring(n):
                missing.append(f"{f.name}:{n.lineno} {n.name}")
    assert not missing, "tests without a docstring:\n" + "\n".join(missing)


def test_importing_the_package_leaves_triton_alone():
    """Importing every minillm module but flash imports neither torch._dynamo nor triton. Lesson 14 sets
    TRITON_INTERPRET=1 on a CPU before triton's first import, and triton reads it only then; torch._dynamo imports
    triton. A `torch.compiler` decorator at module level once pulled both into `import minillm.attention`, and lesson
    14 then failed wherever triton is installed without a GPU (a CUDA build of torch on a CPU machine)."""
    import subprocess
    import sys
    from pathlib import Path
    mods = sorted(p.stem for p in Path(minillm.__file__).parent.glob("*.py")
                  if p.stem not in ("flash", "__init__", "__main__", "_modidx"))
    code = "import sys, importlib\n" + "".join(f"importlib.import_module('minillm.{m}')\n" for m in mods)
    code += "print('torch._dynamo' in sys.modules, 'triton' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], (mods, r.stdout, r.stderr[-2000:])
