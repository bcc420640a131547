"""Generated lessons, run in a real Jupyter kernel (nbclient), as a learner would run them."""
import copy
import json

import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
import nbformat

from minillm.lessons import split_directives, src


def lesson_cells(root, name="01_core.ipynb"):
    return nbformat.reads((root / "lessons" / name).read_text(), as_version=4)


def reference_cell(root, name, func):
    "The source of the exported cell defining `func` in nbs/, directives removed."
    nb = json.loads((root / "nbs" / name).read_text())
    return next(split_directives(src(c))[1] for c in nb["cells"] if c["cell_type"] == "code" and f"def {func}(" in src(c))


def execute(nb, cwd):
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def upto_selfcheck(nb, func):
    "The lesson up to the self-check of exercise `func`, and the index of the exercise cell."
    i = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and f"def {func}(" in c.source)
    assert nb.cells[i + 1].source.startswith("# Self-check")
    out = copy.deepcopy(nb); out.cells = out.cells[: i + 2]
    return out, i


def outputs(cell): return "".join(o.get("text", "") for o in cell.outputs)


def test_stub_fails_its_selfcheck(root, tmp_path):
    "The lesson as shipped: the stub must fail its self-check, telling the learner it is not implemented and the hint."
    nb, _ = upto_selfcheck(lesson_cells(root), "bf16_capable")
    with pytest.raises(CellExecutionError) as e: execute(nb, tmp_path)
    assert "ExerciseFailed" in str(e.value) and "not implemented yet" in str(e.value) and "hint" in str(e.value)


def test_reference_passes_and_whole_lesson_runs(root, tmp_path):
    "With the reference body filled in, the self-check passes and every later cell of the lesson runs."
    nb = lesson_cells(root)
    _, i = upto_selfcheck(nb, "bf16_capable")
    nb.cells[i].source = reference_cell(root, "01_core.ipynb", "bf16_capable")
    execute(nb, tmp_path)
    assert "✓ bf16_capable" in outputs(nb.cells[i + 1])


def test_off_by_one_fails_with_inputs_expected_got(root, tmp_path):
    "A plausible wrong answer (> instead of >=) must fail and show inputs, expected and got."
    nb, i = upto_selfcheck(lesson_cells(root), "bf16_capable")
    nb.cells[i].source = "def bf16_capable(capability):\n    return tuple(capability) > (8, 0)"
    with pytest.raises(CellExecutionError) as e: execute(nb, tmp_path)
    msg = str(e.value)
    assert "wrong answer" in msg and "inputs:   ((8, 0))" in msg and "expected: True" in msg and "got:      False" in msg
