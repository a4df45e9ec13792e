"""Every derivations/*.ein is a test case: golden text and LaTeX, pdflatex, finite differences.

Regenerate the golden files after a deliberate change (and read their diff):

    python -m pytest tests/test_derivations.py --update-golden
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import DERIVATIONS, assert_gradient

import einmlp
from einmlp.cli import text_report


def directives(path: Path) -> dict:
    """The `# derive:` and `# hessian:` comment lines of a .ein file, and its shapes: the numeric
    declarations (`X is 10 x 3`), or a `# shapes: X=10,3 ...` line where the declarations use names."""
    text = path.read_text()
    found = {key: re.search(rf"^# {key}:(.*)$", text, re.M) for key in ("derive", "hessian", "shapes")}
    wrt = [w.strip() for w in found["derive"].group(1).split(",")] if found["derive"] else []
    hessian = [w.strip() for w in found["hessian"].group(1).split(",")] if found["hessian"] else []
    shapes = {}
    for item in (found["shapes"].group(1).split() if found["shapes"] else []):
        name, dims = item.split("=")
        shapes[name] = tuple(int(d) for d in dims.split(",") if d)
    return {"derive": wrt, "hessian": hessian, "shapes": shapes or einmlp.load(path).declared_shapes}


# Files in another spelling, and the same program in brackets, written here by hand for the oracle
TWINS = {
    "mission": (DERIVATIONS / "article.ein").read_text(),
    "seed000_matrix": "O[b,k] = tanh(X[b,d] W1[d,z] + B1[0,z]) W2[z,k] + B2[0,k]\n"
                      "L = sum[b,k]((O[b,k] - T[b,k])^2)\n",
}


def cases():
    for path in sorted(DERIVATIONS.glob("*.ein")):
        d = directives(path)
        assert d["derive"], f"{path.name} needs a '# derive: W, ...' line"
        for wrt in d["derive"]:
            yield pytest.param(path, wrt, False, id=f"{path.stem}.{wrt}")
        for wrt in d["hessian"]:
            yield pytest.param(path, wrt, True, id=f"{path.stem}.hessian-{wrt}")


def derivation(path: Path, wrt: str, hessian: bool):
    prog = einmlp.load(path)
    return prog.hessian(wrt) if hessian else prog.grad(wrt)


def golden(path: Path, wrt: str, hessian: bool, suffix: str) -> Path:
    return path.with_name(f"{path.stem}.{'hessian-' if hessian else ''}{wrt}{suffix}")


@pytest.mark.parametrize("path, wrt, hessian", list(cases()))
def test_golden_text_and_latex(path, wrt, hessian, update_golden):
    """The derived text and LaTeX equal the files beside the .ein (a stale file fails)."""
    d = derivation(path, wrt, hessian)
    outputs = {golden(path, wrt, hessian, ".txt"): text_report(d), golden(path, wrt, hessian, ".tex"): d.latex(document=True)}
    for file, text in outputs.items():
        if update_golden:
            file.write_text(text)
        assert file.exists(), f"{file.name} is missing: run pytest tests/test_derivations.py --update-golden"
        assert file.read_text() == text, f"{file.name} is stale: run pytest tests/test_derivations.py --update-golden"


OVERFULL = re.compile(r"Overfull \\hbox \(([0-9.]+)pt too wide\)")


@pytest.mark.parametrize("path, wrt, hessian", list(cases()))
def test_latex_compiles_with_pdflatex_and_fits_the_page(path, wrt, hessian, tmp_path):
    """pdflatex compiles the page, and no line sticks out of the text more than 10pt (long ones are broken)."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base)")
    tex = tmp_path / "derivation.tex"
    tex.write_text(derivation(path, wrt, hessian).latex(document=True))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "derivation.pdf").stat().st_size > 1000
    log = (tmp_path / "derivation.log").read_text(errors="replace")
    overfull = [float(width) for width in OVERFULL.findall(log)]
    assert max(overfull, default=0) <= 10, f"lines too wide by {overfull} pt"


@pytest.mark.parametrize("path, wrt, hessian", list(cases()))
def test_compiled_derivative_is_right(path, wrt, hessian):
    """Finite differences and autograd agree with the compiled derivative."""
    d = derivation(path, wrt, hessian)
    shapes = directives(path)["shapes"]
    rng = np.random.default_rng(7)
    arrays = {name: rng.standard_normal(shapes[name]) * 0.5 for name in d.program.inputs}
    if "y" in arrays and "logistic" in path.name:
        arrays["y"] = (rng.random(shapes["y"]) > 0.5).astype(float)
    if "T" in arrays and "softmax" in path.name:
        arrays["T"] = np.eye(shapes["T"][1])[rng.integers(0, shapes["T"][1], shapes["T"][0])]
    value = assert_gradient(d, arrays, twin=TWINS.get(path.stem))
    expected_shape = arrays[wrt].shape * (2 if hessian else 1)
    assert value.shape == expected_shape
