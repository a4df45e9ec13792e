"""The command line: derive, check and shapes; bad input exits 2 with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import DERIVATIONS, ROOT, article_arrays, assert_gradient

ARTICLE = str(DERIVATIONS / "article.ein")
SEED000_MATRIX = str(DERIVATIONS / "seed000_matrix.ein")
SHAPES = ["--shape", "X=10,3", "--shape", "W1=3,4", "--shape", "W2=4,1", "--shape", "Y=10,1"]


def run(*args, cwd=ROOT, stdin=None):
    return subprocess.run([sys.executable, "-m", "einmlp", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, input=stdin)


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


# several --wrt, standard input, --version, --help ---------------------------------------------

def test_derive_with_several_wrt_derives_each():
    result = run("derive", str(DERIVATIONS / "seed000_bias.ein"), "--wrt", "W1", "--wrt", "c1", "--format", "matrix")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["dL/dW1", "dL/dc1"]
    import einmlp
    prog = einmlp.load(DERIVATIONS / "seed000_bias.ein")
    assert lines == [f"dL/d{w} = {prog.grad(w).matrix_form}" for w in ["W1", "c1"]]


def test_derive_text_and_einsum_with_several_wrt():
    text = run("derive", ARTICLE, "--wrt", "W1", "--wrt", "W2")
    assert text.returncode == 0 and "# dDelta/dW1 for article.ein" in text.stdout
    assert "# dDelta/dW2 for article.ein" in text.stdout
    plan = run("derive", ARTICLE, "--wrt", "W1", "--wrt", "W2", "--format", "einsum").stdout
    assert "{'W1': _grad_W1, 'W2': _grad_W2}" in plan and plan.count("A = np.einsum(") == 1  # one shared plan


def test_python_format_with_several_wrt_returns_every_gradient(tmp_path):
    import numpy as np

    import einmlp
    out = tmp_path / "grads.py"
    assert run("derive", ARTICLE, "--wrt", "W1", "--wrt", "W2", "--format", "python", "-o", str(out)).returncode == 0
    namespace: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)  # our own generated file
    arrays = article_arrays()
    grads = namespace["grads_Delta"](**arrays)
    for w in ["W1", "W2"]:
        np.testing.assert_allclose(grads[w], assert_gradient(einmlp.load(ARTICLE).grad(w), arrays), rtol=1e-12)


def test_latex_with_several_wrt_is_one_document():
    result = run("derive", ARTICLE, "--wrt", "W1", "--wrt", "W2", "--format", "latex")
    assert result.returncode == 0 and result.stdout.count(r"\begin{document}") == 1
    assert result.stdout.count("Chain rule") == 2


def test_check_with_several_wrt_checks_each():
    result = run("check", ARTICLE, "--wrt", "W1", "--wrt", "W2", *SHAPES)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["dDelta/dW1", "dDelta/dW2"]
    assert all(": ok: " in line for line in lines)


def test_dash_reads_the_program_from_standard_input():
    result = run("derive", "-", "--wrt", "x", "--format", "matrix", stdin="L = x[i] A[i,j] x[j]\n")
    assert result.returncode == 0 and result.stdout == "(A + A.T) @ x\n"
    shapes = run("shapes", "-", "--shape", "x=3", "--shape", "A=3,3", stdin="L = x[i] A[i,j] x[j]\n")
    assert shapes.returncode == 0 and "L = x[i] A[i,j] x[j]" in shapes.stdout


def test_version():
    import einmlp
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"einmlp {einmlp.__version__}"


@pytest.mark.parametrize("command", ["derive", "check", "shapes", "train"])
def test_every_option_has_help(command):
    from einmlp.cli import parser
    sub = next(a for a in parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help text"
    assert all(a.help for a in parser()._actions)


def test_check_passes_with_exit_code_0():
    """(A check that fails exits 1: test_check_fails_with_exit_1_on_a_non_finite_gradient. A tolerance
    below what finite differences resolve no longer fails a right gradient: that noise is estimated.)"""
    ok = run("check", ARTICLE, "--wrt", "W1", *SHAPES, "--tolerance", "1e-30")
    assert ok.returncode == 0 and "ok: max relative error" in ok.stdout and "noise floor" in ok.stdout
    raw = float(ok.stdout.split("max relative error ")[1].split(",")[0])
    assert 0 < raw < 1e-6  # the raw error is shown, not the 0 left after the noise floor


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
    # several --wrt: each must exist; a Hessian takes one
    ("derive", ARTICLE, "--wrt", "W1", "--wrt", "Q"),
    ("check", ARTICLE, "--wrt", "W1", "--wrt", "Q", *SHAPES),
    ("derive", ARTICLE, "--wrt", "W1", "--wrt", "W2", "--hessian"),
    # train: bad learning rates, step counts, names, plot files
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--lr", "-1"),
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--lr", "0"),
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--lr", "fast"),
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--steps", "0"),
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--steps", "1.5"),
    ("train", ARTICLE, "--wrt", "W1", "--wrt", "Q", *SHAPES),
    ("train", ARTICLE, "--wrt", "W1", "--of", "A", *SHAPES),
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--method", "rmsprop"),
    ("train", ARTICLE, "--wrt", "W1", *SHAPES, "--plot", "loss.xyz"),
    ("train", SEED000_MATRIX, "--wrt", "W1", "--shape", "X=8,3"),  # declared by name only: shapes needed
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


@pytest.mark.parametrize("text, where", [
    # an unclosed bracket is reported where its line ends, not past the file's last line break
    ("A[i] = X[i\n", "line 1, column 11"),
    ("A[i] = (X[i]\n\n\n", "line 1, column 13"),
    ("L = (x[i]  # a comment\n", "line 1, column 10"),
    ("L = x[i]\nA[i] = (x[i]\n", "line 2, column 13"),
    ("L = 3 +\n", "line 1, column 8"),
])
def test_syntax_error_is_reported_on_its_line(tmp_path, text, where):
    bad = tmp_path / "bad.ein"
    bad.write_text(text)
    for result in [run("derive", str(bad), "--wrt", "x"), run("derive", "-", "--wrt", "x", stdin=text)]:
        assert result.returncode == 2 and where in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# train -------------------------------------------------------------------------------------

def _losses(stdout: str) -> tuple[float, float]:
    """`Delta: 14.3493 -> 9.33972 after 1000 steps of sgd (lr 0.001)` -> (14.3493, 9.33972)."""
    head = stdout.strip().splitlines()[-1].split(" after ")[0]
    first, last = head.split(": ")[1].split(" -> ")
    return float(first), float(last)


def test_train_reduces_the_article_loss_and_plots_it(tmp_path):
    mpimg = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed (pip install 'einmlp[plot]')")
    plot, saved = tmp_path / "loss.png", tmp_path / "trained.npz"
    result = run("train", ARTICLE, "--wrt", "W1", "--wrt", "W2", *SHAPES, "--lr", "0.001", "--steps", "1000",
                 "--plot", str(plot), "-o", str(saved))
    assert result.returncode == 0, result.stderr
    first, last = _losses(result.stdout)
    assert last < 0.7 * first, result.stdout  # random targets: 14.35 -> 9.34
    assert "1000/1000" in result.stderr and "loss" in result.stderr  # the progress bar
    image = mpimg.imread(plot)
    assert image.shape[:2] == (400, 600) and image.std() > 0
    import numpy as np
    trained = np.load(saved)
    assert sorted(trained.files) == ["W1", "W2", "X", "Y"] and trained["W1"].shape == (3, 4)


@pytest.mark.parametrize("method, lr", [("momentum", "0.0001"), ("adam", "0.001")])
def test_train_methods(method, lr):
    result = run("train", ARTICLE, "--wrt", "W1", "--wrt", "W2", *SHAPES, "--lr", lr, "--steps", "300",
                 "--method", method)
    assert result.returncode == 0, result.stderr
    first, last = _losses(result.stdout)
    assert last < 0.9 * first and f"of {method}" in result.stdout


def test_train_that_diverges_exits_1_and_says_so():
    result = run("train", ARTICLE, "--wrt", "W1", "--wrt", "W2", *SHAPES, "--lr", "0.5", "--steps", "100")
    assert result.returncode == 1 and "diverged" in result.stdout and "smaller lr" in result.stderr


def test_train_without_tqdm_prints_plain_progress(monkeypatch, capsys):
    from einmlp.cli import main
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    assert main(["train", ARTICLE, "--wrt", "W1", *SHAPES, "--lr", "0.001", "--steps", "20"]) == 0
    err = capsys.readouterr().err
    assert "step 2/20: loss" in err and "step 20/20: loss" in err


def test_train_plot_without_matplotlib_exits_2_with_the_install_line(monkeypatch, capsys, tmp_path):
    from einmlp.cli import main
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["train", ARTICLE, "--wrt", "W2", *SHAPES, "--steps", "5", "--plot", str(tmp_path / "l.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "einmlp: error: plotting needs matplotlib: pip install 'einmlp[plot]'"
    assert not (tmp_path / "l.png").exists()
