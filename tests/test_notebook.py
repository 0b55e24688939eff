"""The quickstart notebook runs headless, end to end (a few steps on a data subset)."""

import json
import os
import pathlib

import pytest


NOTEBOOK = (
    pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
)


def notebook_script(path: pathlib.Path) -> str:
    """The notebook's code cells as one script, without IPython magics and shell
    lines (`%pip install ...`)."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            magic = lambda ln: ln.lstrip().startswith(("%", "!"))
            lines += [ln for ln in source.splitlines() if not magic(ln)]
    return "\n".join(lines)


@pytest.mark.heavy
def test_quickstart_notebook_runs(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    monkeypatch.setenv("TADIFFEQ_NOTEBOOK_STEPS", "4")
    monkeypatch.setenv("TADIFFEQ_NOTEBOOK_SUBSET", "512")
    namespace = {"__name__": "__notebook__"}
    exec(compile(notebook_script(NOTEBOOK), str(NOTEBOOK), "exec"), namespace)
    results = namespace["results"]
    assert set(results) == {"unregularized", "local"}
    assert all(nfe > 0 and 0.0 <= acc <= 1.0 for acc, nfe in results.values())
    assert namespace["mean"].shape[0] == 101  # statistics at the 101 grid times
    assert os.environ["TADIFFEQ_NOTEBOOK_STEPS"] == "4"
