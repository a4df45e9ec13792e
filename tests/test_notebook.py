"""What a notebook shows: LaTeX that MathJax 3 typesets, HTML tables, readable reprs.

The MathJax test runs the real MathJax (`mathjax-full` under tests/.node, installed by .ci/run
where npm exists) on every derivation's notebook LaTeX; without node or the package it is
skipped with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ARTICLE_ACTIVATED, DERIVATIONS, article_arrays
from test_derivations import directives

import einmlp
from einmlp.grad import Step
from einmlp.latex import mathjax_text, notebook_latex

HERE = Path(__file__).resolve().parent
MATHJAX = HERE / ".node" / "node_modules" / "mathjax-full"
INSTALL = "npm install --prefix tests/.node mathjax-full@3"


def notebook_sources() -> list[tuple[str, str]]:
    """(what, LaTeX) for every derivation, its steps, the gradients together and the program."""
    out = []
    for path in sorted(DERIVATIONS.glob("*.ein")):
        found, prog = directives(path), einmlp.load(path)
        out.append((f"{path.stem} program", prog._repr_latex_()))
        for wrt in found["derive"]:
            out.append((f"{path.stem}.{wrt}", prog.grad(wrt)._repr_latex_()))
        for wrt in found["hessian"]:
            out.append((f"{path.stem}.hessian-{wrt}", prog.hessian(wrt)._repr_latex_()))
        gradients = prog.grad(found["derive"])
        out.append((f"{path.stem} gradients", gradients._repr_latex_()))
    steps = einmlp.parse(ARTICLE_ACTIVATED).grad("W1").steps
    out.append(("one step", steps[0]._repr_latex_()))
    lhs = steps[0].lhs
    out.append(("title with TeX specials", notebook_latex([Step(r"cost_1 {$} \ 50% & #", lhs, "a_b > c {x}")])))
    return out


SOURCES = notebook_sources()


def _inner(source: str) -> str:
    assert source.startswith("$$") and source.endswith("$$"), source[:80]
    return source[2:-2]


def test_notebook_latex_is_display_math_without_intertext():
    for what, source in SOURCES:
        inner = _inner(source)
        assert r"\intertext" not in inner and "$$" not in inner, what
        assert inner.count("{") - inner.count(r"\{") == inner.count("}") - inner.count(r"\}"), what


def test_mathjax_typesets_every_notebook_latex():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so MathJax cannot run here")
    if not MATHJAX.is_dir():
        pytest.skip(f"mathjax-full is not installed: {INSTALL}")
    inputs = [_inner(source) for _, source in SOURCES]
    run = subprocess.run([node, str(HERE / "mathjax_check.js")], input=json.dumps(inputs), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    errors = {what: error for (what, _), error in zip(SOURCES, json.loads(run.stdout)) if error}
    assert not errors, errors


def test_mathjax_check_catches_what_mathjax_does_not_know():
    """The checker itself: \\intertext (which the pdflatex documents use) is an error for MathJax."""
    node = shutil.which("node")
    if node is None or not MATHJAX.is_dir():
        pytest.skip("node or mathjax-full is not installed" + ("" if node is None else f": {INSTALL}"))
    body = einmlp.parse(ARTICLE_ACTIVATED).grad("W1").latex()  # the align* body for pdflatex
    run = subprocess.run([node, str(HERE / "mathjax_check.js")], input=json.dumps([body, r"\frac{a}{b}"]),
                         capture_output=True, text=True, timeout=120)
    assert json.loads(run.stdout) == ["Undefined control sequence \\intertext", None]


def test_mathjax_text_escapes_only_what_mathjax_reads():
    assert mathjax_text(r"a_b {$} \ 50%") == r"a_b \{\$\} \\ 50%"


def test_a_step_shows_its_title_and_equation():
    step = einmlp.parse(ARTICLE_ACTIVATED).grad("W1").steps[1]
    latex = step._repr_latex_()
    assert latex.startswith(r"$$\begin{aligned}&\textbf{Link through}") and "&=" in latex


def test_shapes_print_as_text_and_show_as_a_table():
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    table = prog.shapes(X=(10, 3), W1=(3, 4), W2=(4, 1), Y=(10, 1))
    assert isinstance(table, str) and "\n    [10 x 3][3 x 4] = [10 x 4]" in table
    assert repr(table) == str(table)  # no quotes and no literal \n
    html = table._repr_html_()
    assert html.count("<tr>") == 4 and "<code>[10 x 3][3 x 4] = [10 x 4]</code>" in html
    assert "<code>A[i,k]    = X[i,j] W1[j,k]</code>" in html


def test_check_and_train_results_show_as_tables():
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    arrays = article_arrays()
    html = einmlp.check(prog.grad("W1"), arrays)._repr_html_()
    assert "noise floor" in html and "<table>" in html
    fit = einmlp.train(prog, arrays, wrt=["W1"], lr=1e-3, steps=10)
    assert "<svg" in fit._repr_html_()
    assert repr(prog.grad(["W1", "W2"])) == "<Gradients dDelta/d(W1, W2)>"
    assert np.isfinite(fit.loss)


def test_gradients_show_index_and_matrix_forms():
    latex = einmlp.parse(ARTICLE_ACTIVATED).grad(["W1", "W2"])._repr_latex_()
    assert latex.count("&= ") == 4
    assert re.search(r"\\cdot \{\{W\^\{\(2\)\}\}\^\{\\top\}\}", latex)
