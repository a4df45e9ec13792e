"""docs/tutorial.ipynb runs from top to bottom and shows what its text promises.

Executed with nbclient on a kernel of the interpreter running the tests (so the einmlp under
test is the one imported); without nbclient, nbformat or ipykernel it is skipped with the reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        pytest.skip(f"the tutorial test needs {module}: pip install 'einmlp[test]'")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after running every cell, on a kernel of this very interpreter."""
    nbformat, nbclient = _require("nbformat"), _require("nbclient")
    _require("ipykernel")
    kernels = tmp_path_factory.mktemp("jupyter")
    spec = kernels / "kernels" / "python3"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(kernels))  # searched first: no other python3 kernel is picked
        patch.setenv("MPLBACKEND", "Agg")
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def _outputs(cell) -> str:
    """Everything a code cell showed, as text: streams, plain text, LaTeX and the kinds of pictures."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for kind, value in out.get("data", {}).items():
            parts.append(kind if kind.startswith("image/") else "".join(value))
    return "\n".join(parts)


def _cell(nb, source_contains: str):
    return next(c for c in nb.cells if c.cell_type == "code" and source_contains in c.source)


def test_the_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"]


def test_the_tutorial_runs_without_errors(executed):
    for cell in executed.cells:
        if cell.cell_type == "code":
            assert all(out.output_type != "error" for out in cell.outputs), cell.source
            assert "Traceback" not in _outputs(cell), cell.source


def test_the_tutorial_shows_the_derivation_the_check_and_the_training(executed):
    assert "inputs:  ['X', 'W1', 'W2', 'Y']" in _outputs(_cell(executed, "prog.inputs"))
    steps = _outputs(_cell(executed, "enumerate(d.steps"))
    assert "Chain rule" in steps and "Contract the deltas" in steps
    shown = next(c for c in executed.cells if c.cell_type == "code" and c.source.strip() == "d")
    assert r"\begin{aligned}" in _outputs(shown) and r"\intertext" not in _outputs(shown)
    forms = _outputs(_cell(executed, "d.matrix_form"))
    assert "matrix form: -2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))" in forms
    checked = _outputs(_cell(executed, "einmlp.check"))
    assert "gradient shape: (3, 4)" in checked and "ok: max relative error" in checked
    assert "is -dDelta/dW1: True" in _outputs(_cell(executed, "article_deltaW1"))
    trained = _outputs(_cell(executed, "einmlp.train"))
    fold = int(trained.split("loss fell ")[1].split("-fold")[0])
    assert fold >= 100, trained
    assert "image/png" in _outputs(_cell(executed, "fit.plot()")), "the loss plot is shown"
