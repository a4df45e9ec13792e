"""The command line: derive, check and shapes; bad input exits 2 with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import DERIVATIONS, ROOT

ARTICLE = str(DERIVATIONS / "article.ein")
SEED000_MATRIX = str(DERIVATIONS / "seed000_matrix.ein")
SHAPES = ["--shape", "X=10,3", "--shape", "W1=3,4", "--shape", "W2=4,1", "--shape", "Y=10,1"]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "einmlp", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_derive_prints_the_steps_and_ends_in_the_article_matrix_form():
    result = run("derive", ARTICLE, "--wrt", "W1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for title in ["Chain rule", "Link through Yhat", "Product of all deltas", "Contract the deltas", "Matrix form"]:
        assert title in out
    assert "matrix form: -2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))" in out


@pytest.mark.parametrize("fmt, expected", [
    ("matrix", "-2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))\n"),
    ("einsum", "grad_W1 = "),
    ("latex", r"\begin{align*}"),
    ("python", "def dDelta_dW1(X, W1, W2, Y):"),
])
def test_derive_formats(fmt, expected):
    result = run("derive", ARTICLE, "--wrt", "W1", "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_python_format_is_standalone_and_right(tmp_path):
    import numpy as np

    import einmlp
    out = tmp_path / "grad.py"
    assert run("derive", ARTICLE, "--wrt", "W1", "--format", "python", "-o", str(out)).returncode == 0
    namespace: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)  # our own generated file
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((10, 3)), "W1": rng.standard_normal((3, 4)),
              "W2": rng.standard_normal((4, 1)), "Y": rng.standard_normal((10, 1))}
    expected = einmlp.load(ARTICLE).grad("W1").compile()(**arrays)
    np.testing.assert_allclose(namespace["dDelta_dW1"](**arrays), expected, rtol=1e-12)


def test_derive_pdf(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base)")
    out = tmp_path / "dW1.pdf"
    result = run("derive", ARTICLE, "--wrt", "W1", "--format", "pdf", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"%PDF")


def test_hessian_flag():
    result = run("derive", str(DERIVATIONS / "quadratic_form.ein"), "--wrt", "x", "--hessian", "--format", "matrix")
    assert result.stdout == "A + A.T\n"


def test_check_passes_with_exit_code_0():
    """(A check that fails exits 1: test_check_fails_with_exit_1_on_a_non_finite_gradient. A tolerance
    below what finite differences resolve no longer fails a right gradient: that noise is estimated.)"""
    ok = run("check", ARTICLE, "--wrt", "W1", *SHAPES, "--tolerance", "1e-30")
    assert ok.returncode == 0 and "ok: max relative error" in ok.stdout


def test_shapes_prints_the_dimension_algebra():
    result = run("shapes", str(DERIVATIONS / "seed000_bias.ein"), "--shape", "X=8,3", "--shape", "W1=3,5",
                 "--shape", "c1=5", "--shape", "W2=5,2", "--shape", "c2=2", "--shape", "T=8,2")
    assert result.returncode == 0, result.stderr
    assert "tanh([8 x 3][3 x 5] + [5]) = [8 x 5]" in result.stdout


BAD = [
    ("derive", "missing.ein", "--wrt", "W1"),
    ("derive", ARTICLE, "--wrt", "Q"),
    ("derive", ARTICLE, "--wrt", "W1", "--of", "Nope"),
    ("derive", ARTICLE, "--wrt", "W1", "--format", "pdf"),
    ("check", SEED000_MATRIX, "--wrt", "W1", "--shape", "X=8,3"),  # declared by name only: shapes needed
    ("check", ARTICLE, "--wrt", "W1", "--shape", "X=ten"),
    ("check", ARTICLE, "--wrt", "W1", "--shape", "X=10,3", "--shape", "W1=4,4", "--shape", "W2=4,1",
     "--shape", "Y=10,1"),
    ("shapes", ARTICLE, "--shape", "Z=1"),
    # lengths that are too large, malformed or negative seeds: one line, not a traceback
    ("check", ARTICLE, "--wrt", "W1", *SHAPES[:1], "X=100000,100000", *SHAPES[2:]),
    ("check", ARTICLE, "--wrt", "W1", "--shape", "X=100000000000000000000,3"),
    ("check", ARTICLE, "--wrt", "W1", "--shape", "X=10,,3"),
    ("check", ARTICLE, "--wrt", "W1", *SHAPES, "--seed", "-1"),
    ("check", ARTICLE, "--wrt", "W1", *SHAPES, "--tolerance", "lots"),
    # argparse's own errors
    ("derive",),
    ("derive", ARTICLE, "--wrt", "W1", "--format", "bogus"),
    ("frobnicate",),
]


@pytest.mark.parametrize("args", BAD)
def test_bad_input_exits_2_with_one_line(args):
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("einmlp: error: ")


def test_check_fails_with_exit_1_on_a_non_finite_gradient(tmp_path):
    program = tmp_path / "sqrt.ein"
    program.write_text("L = sqrt(x[i] - 10)\n")
    result = run("check", str(program), "--wrt", "x", "--shape", "x=3")
    assert result.returncode == 1 and "not finite" in result.stdout


def test_a_near_miss_function_name_is_a_warning(tmp_path):
    program = tmp_path / "sigmod.ein"
    program.write_text("L = sigmod(x[i])\n")
    result = run("derive", str(program), "--wrt", "x", "--format", "matrix")
    assert result.returncode == 0 and "did you mean sigmoid?" in result.stderr


def test_parse_error_in_file_exits_2(tmp_path):
    bad = tmp_path / "bad.ein"
    bad.write_text("A[i = X[i]\n")
    result = run("derive", str(bad), "--wrt", "X")
    assert result.returncode == 2 and "line 1, column 5" in result.stderr
