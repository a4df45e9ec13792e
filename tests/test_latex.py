"""LaTeX: display names, and documents that a real pdflatex compiles."""

import shutil
import subprocess

import pytest
from conftest import ARTICLE_ACTIVATED, DERIVATIONS
from test_derivations import OVERFULL

import einmlp
from einmlp.latex import (aligned_rows, break_lines, derivations_latex, display, display_function, display_index,
                          matrix_shapes_latex, program_latex, shapes_latex, to_latex)


@pytest.mark.parametrize("name, expected", [
    ("Delta", r"\Delta"), ("Yhat", r"\hat{Y}"), ("Ytilde", r"\widetilde{Y}"), ("W1", "W^{(1)}"),
    ("W12", "W^{(12)}"), ("X", "X"), ("loss", r"\mathrm{loss}"), ("Yhat2", r"\hat{Y}^{(2)}"),
    ("x_in", r"\mathrm{x\_in}"),
])
def test_display_names(name, expected):
    assert display(name) == expected


def test_index_and_function_names():
    assert display_index("mu") == r"\mu" and display_index("k2") == "k_{2}"
    assert display_function("f2'") == "f_{2}'" and display_function("tanh") == r"\tanh"


def test_align_body_and_document():
    d = einmlp.parse(ARTICLE_ACTIVATED).grad("W1")
    body = d.latex()
    assert r"\intertext" in body and r"\widetilde{Y}" in body and "W^{(1)}" in body
    notebook = d._repr_latex_()  # MathJax 3 has no \intertext: tests/test_notebook.py
    assert notebook.startswith(r"$$\begin{aligned}") and r"\intertext" not in notebook
    doc = d.latex(document=True)
    assert doc.startswith(r"\documentclass") and doc.rstrip().endswith(r"\end{document}")
    assert einmlp.parse(ARTICLE_ACTIVATED)._repr_latex_().startswith("$$")
    assert all(step.title and "&=" in step.latex for step in d.steps)
    assert d.steps[-1].latex.endswith(r"\odot f_{2}'\left(C\right)) \cdot {{W^{(2)}}^{\top}}) \odot f_{1}'\left(A\right))")


@pytest.mark.parametrize("source, wrt", [
    (ARTICLE_ACTIVATED, "W1"),
    ("L = T[i,j,k] a[i] b[j] c[k]", "T"),                       # no matrix form
    ("P[b,k] = exp(z[b,k]) / sum[j](exp(z[b,j]))\nL = -Y[b,k] log(P[b,k])", "z"),
    ("Ŷ_i = relu(μ_i)\nΔ = Ŷ_i Ŷ_i", "mu"),                  # names spelled in Unicode
    ("H1[b,z] = tanh(X[b,d] W1[d,z])\nL = (H1[b,z] - T[b,z])^2", "W1"),  # a layer name raised to a power
    ("Z1 = a2[i] a2[i]\nL = Z1^2 + sqrt(Z1)^3", "a2"),
])
def test_documents_compile(source, wrt, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base)")
    (tmp_path / "d.tex").write_text(einmlp.parse(source).grad(wrt).latex(document=True))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-1500:]


def test_random_programs_compile_in_latex(tmp_path):
    """Property: whatever names and powers the random programs use (T1^2, X3^-1, ...), pdflatex compiles."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base)")
    from programs import random_program
    for seed in range(12):
        generated = random_program(seed)
        prog = einmlp.parse(generated.source)
        d = prog.grad(prog.inputs[seed % len(prog.inputs)])
        (tmp_path / "d.tex").write_text(d.latex(document=True))
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"seed {seed}:\n{generated.source}\n{run.stdout[-1500:]}"


def test_long_lines_break_before_a_term_and_never_inside_left_right():
    rhs = " + ".join(rf"\left({{X_{{i,{k}}}}} - {{Y_{{i,{k}}}}}\right) \delta_{{i,{k}}} {{W^{{(1)}}_{{{k},n}}}}"
                     for k in range(12))
    lines = break_lines(rhs, 300.0)
    assert len(lines) > 2 and " ".join(lines) == rhs  # cut only at spaces: nothing lost or reordered
    assert all(line.startswith("+ ") for line in lines[1:])
    assert all(line.count(r"\left") == line.count(r"\right") for line in lines)
    rows = aligned_rows("L", rhs)  # the room left beside L on the page
    assert rows.startswith("L &= ") and r"\\" + "\n" + r"&\quad {}+ " in rows


def test_a_long_left_right_group_and_code_open_up_to_break():
    inner = " + ".join(rf"\tanh\left({{E_{{b,{k}}}}}\right)^{{{k}}}" for k in range(20))
    lines = break_lines(rf"\left({inner}\right) {{H_{{b,m}}}}", 300.0)
    assert len(lines) > 1 and lines[0].startswith("(") and lines[-1].endswith(r") {H_{b,m}}")
    code = r"\texttt{" + " + ".join(f"4*tanh(E[b,{k}])**2" for k in range(20)) + "}"
    lines = break_lines(code, 300.0)
    assert len(lines) > 1 and all(line.startswith(r"\texttt{") and line.count(r"\texttt") == 1 for line in lines)


def test_program_listings_show_every_sum():
    """A sum that no repeated index shows is written out; a repeated index is left to Einstein notation."""
    article = program_latex(einmlp.parse(ARTICLE_ACTIVATED))
    assert r"{\Delta} &= \sum_{i} {\widetilde{Y}_{i,0}}^{2}" in article
    assert r"{A_{i,k}} &= {W^{(1)}_{j,k}} {X_{i,j}}" in article and article.count(r"\sum") == 1
    softmax = program_latex(einmlp.parse("A[b] = exp(Z[b,j])\nL = sum[b,k](A[b] - Y[b,k])"))
    assert r"{A_{b}} &= \sum_{j} e^{{Z_{b,j}}}" in softmax
    assert r"{L} &= \sum_{b,k} \left({A_{b}} - {Y_{b,k}}\right)" in softmax


def test_a_second_derivative_reads_as_one():
    h = einmlp.parse("L = log(1 + exp(-y[b] X[b,d] w[d]))").hessian("w")
    assert to_latex(h.lhs) == r"\frac{\partial^{2} {L}}{\partial {w_{m}} \partial {w_{n}}}"
    assert r"\mathrm{dL" not in h.latex(document=True)


def test_pages_show_each_statements_shapes_where_declared():
    declared = "X is 10 x 3\nW1 is 3 x 4\nW2 is 4 x 1\nY is 10 x 1\n" + ARTICLE_ACTIVATED
    shapes = shapes_latex(einmlp.parse(declared))
    assert r"A &: [10 \times 3][3 \times 4] = [10 \times 4]" in shapes
    assert r"\Delta &: ([10 \times 1] - [10 \times 1])^{2} = \text{scalar}" in shapes
    assert shapes in einmlp.parse(declared).grad("W1").latex(document=True)
    named = shapes_latex(einmlp.parse("X is B x D\nW is D x Z\nH = tanh(X W)\nL = sum(H)"))
    assert r"H &: \tanh([B \times D][D \times Z]) = [B \times Z]" in named  # dimension names stay names
    assert shapes_latex(einmlp.parse(ARTICLE_ACTIVATED)) == ""               # nothing declared: nothing shown
    assert "The shapes" not in einmlp.parse(ARTICLE_ACTIVATED).grad("W1").latex(document=True)


@pytest.mark.parametrize("name, wrt", [("mlp3", ["W1", "c1", "W3"]), ("attention", ["Wq", "Wv"])])
def test_several_gradients_on_one_page_fit_it(name, wrt, tmp_path):
    """`einmlp derive --wrt A --wrt B --format pdf`: one alignment for all, no line over the text width."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base)")
    prog = einmlp.load(DERIVATIONS / f"{name}.ein")
    (tmp_path / "d.tex").write_text(derivations_latex([prog.grad(w) for w in wrt]))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-1500:]
    overfull = [float(w) for w in OVERFULL.findall((tmp_path / "d.log").read_text(errors="replace"))]
    assert max(overfull, default=0) <= 10, overfull


def test_the_matrix_form_shows_its_shapes_as_the_article_does():
    """The article's linear dW1 = 2 X.T Ytilde W2.T with shapes (3,10)(10,1)(1,4) = (3,4)."""
    linear = einmlp.load(DERIVATIONS / "article_linear.ein").grad("W1")
    assert matrix_shapes_latex(linear) == r"[3 \times 10]\,[10 \times 1]\,[1 \times 4] = [3 \times 4]"
    assert matrix_shapes_latex(linear) in linear.latex(document=True)
    activated = einmlp.load(DERIVATIONS / "article.ein").grad("W1")  # X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))
    assert matrix_shapes_latex(activated) == (r"[3 \times 10]\,((([10 \times 1] \odot [10 \times 1])\,[1 \times 4])"
                                              r" \odot [10 \times 4]) = [3 \times 4]")
    assert matrix_shapes_latex(einmlp.parse(ARTICLE_ACTIVATED).grad("W1")) == ""  # no declarations
