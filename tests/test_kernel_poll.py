"""The lesson walks' channel workaround (tests/kernel_poll.py), in a real kernel driven by nbclient as the walks drive it."""
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError

from kernel_poll import poll_in_slices

CALCULATOR = 'panel = calculator("small", micro_batch=16, gpus=2, gpu="T4 16GB", precision="fp16", zero=2)'


def test_widget_cells_never_wait_for_the_timeout_and_the_timeout_still_holds(tmp_path):
    """Guards the lost wake-up: without the workaround, 3 of 60 runs of lesson 10's widget calculator cell here each
    waited the whole per-cell timeout (15 s of 15 s) before nbclient found the reply that had long arrived; with it, 0 of
    210. 40 runs, each allowed 12 s with a 6 s bound, fail without the workaround about 9 times in 10 and never with it
    (a run takes under 0.5 s here). Second, the workaround must not swallow a real timeout: a cell that sleeps 4 s under a
    1 s timeout still raises CellTimeoutError, after 1 s give or take one slice (0.5 s) and the kernel's interrupt."""
    cells = [nbformat.v4.new_code_cell("from minillm.memory import calculator")]
    cells += [nbformat.v4.new_code_cell(CALCULATOR) for _ in range(40)]
    nb = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(nb, timeout=12, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        poll_in_slices(client.kc)
        seconds = []
        for i, cell in enumerate(nb.cells):
            t = time.monotonic()
            client.execute_cell(cell, i)
            seconds.append(time.monotonic() - t)
        assert max(seconds[1:]) < 6, f"a widget cell waited {max(seconds[1:]):.1f} s: {[round(s, 1) for s in seconds]}"
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in nb.cells[1].outputs)
        client.timeout = 1
        sleeper = nbformat.v4.new_code_cell("import time; time.sleep(4)")
        t = time.monotonic()
        with pytest.raises(CellTimeoutError):
            client.execute_cell(sleeper, len(nb.cells))
        assert 0.9 < time.monotonic() - t < 2.5
