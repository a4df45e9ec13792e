"""Matrix forms: each test states the identity it proves; no wrong formula, ever."""

import numpy as np
import pytest
from conftest import ARTICLE_ACTIVATED, ARTICLE_LINEAR, SEED000_BIAS

import einmlp

MATRIX_FORMS = [
    # the article
    (ARTICLE_ACTIVATED, "W1", None, "-2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))"),
    (ARTICLE_ACTIVATED, "W2", None, "-2 * B.T @ (Ytilde * f2'(C))"),
    (ARTICLE_LINEAR, "W1", None, "-2 * X.T @ Ytilde @ W2.T"),
    # seed 000's biased MLP
    (SEED000_BIAS, "W2", None, "2 * H.T @ (-T + O)"),
    (SEED000_BIAS, "c2", None, "2 * (-T + O).sum(axis=0)"),
    (SEED000_BIAS, "W1", None, "2 * X.T @ (((-T + O) @ W2.T) * (1 - H**2))"),
    # textbook identities
    ("L = x[i] A[i,j] x[j]", "x", None, "(A + A.T) @ x"),
    ("L = a[i] X[i,j] b[j]", "X", None, "outer(a, b)"),
    ("L = a[i,0] X[i,j] b[j,0]", "X", None, "a @ b.T"),
    ("L = X[i,j] X[i,j]", "X", None, "2 * X"),
    ("L = X[i,j] Y[j,k] Z[k,i]", "X", None, "Z.T @ Y.T"),               # d tr(XYZ)/dX = (YZ)^T
    ("L = (y[i] - X[i,j] w[j])^2", "w", None, "-2 * X.T @ A"),     # A = y - X w, named by einmlp
    ("z[b] = X[b,d] w[d]\nL = -(y[b] log(sigmoid(z[b])) + (1 - y[b]) log(1 - sigmoid(z[b])))", "w", None,
     "X.T @ (-y + sigmoid(z))"),
]


@pytest.mark.parametrize("source, wrt, of, expected", MATRIX_FORMS)
def test_matrix_form(source, wrt, of, expected):
    d = einmlp.parse(source).grad(wrt, of=of)
    assert d.matrix.exists
    assert d.matrix_form == expected


def test_article_names_its_pieces_D_and_F():
    """D = Ytilde * f2'(C), F = D @ W2.T, dW1 = -2 X.T @ (F * f1'(A))."""
    m = einmlp.parse(ARTICLE_ACTIVATED).grad("W1").matrix
    pieces = {name: step for name, step in m.pieces}
    assert list(pieces) == ["D", "F"]
    assert m.named_text() == "-2 * X.T @ (F * f1'(A))"


NO_MATRIX_FORM = [
    ("L = T[i,j,k] a[i] b[j] c[k]", "T", "axes"),
    ("L = T[i,j,k] a[i] b[j] c[k]", "a", "not a matrix"),
]


@pytest.mark.parametrize("source, wrt, reason", NO_MATRIX_FORM)
def test_no_matrix_form_falls_back_to_einsum(source, wrt, reason):
    d = einmlp.parse(source).grad(wrt)
    assert not d.matrix.exists
    assert reason in d.matrix.note
    assert d.matrix_form.startswith("einsum(")


def _evaluate_matrix_form(text: str, env: dict):
    """Evaluate a matrix-form string built only from names in env (test-side check)."""
    import ast
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Attribute, ast.Call,
               ast.Constant, ast.Mult, ast.MatMult, ast.Add, ast.Sub, ast.Pow, ast.USub, ast.keyword)
    assert all(isinstance(node, allowed) for node in ast.walk(tree)), text
    return eval(compile(tree, "<matrix form>", "eval"), {}, env)


@pytest.mark.parametrize("source, wrt, of, expected", MATRIX_FORMS[3:11])
def test_matrix_form_evaluates_to_the_gradient(source, wrt, of, expected):
    """The printed matrix form, run as numpy, equals the compiled gradient."""
    prog = einmlp.parse(source)
    rng = np.random.default_rng(0)
    shapes = {"X": (5, 3), "W1": (3, 4), "c1": (4,), "W2": (4, 2), "c2": (2,), "T": (5, 2), "x": (3,),
              "A": (3, 3), "a": (5,), "b": (3,), "y": (5,), "w": (3,), "Y": (3, 4), "Z": (4, 5)}
    if "a[i,0]" in source:
        shapes.update(a=(5, 1), b=(3, 1))
    arrays = {n: rng.standard_normal(shapes[n]) for n in prog.inputs}
    env = dict(arrays)
    for name in prog.intermediates:
        env[name] = prog.compile(of=name)(**arrays)
    env.update(tanh=np.tanh, sigmoid=lambda v: 1 / (1 + np.exp(-v)), outer=np.outer)
    text = prog.grad(wrt).matrix_form
    np.testing.assert_allclose(_evaluate_matrix_form(text, env), prog.grad(wrt).compile()(**arrays), rtol=1e-10)
