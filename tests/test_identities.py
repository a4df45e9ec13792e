"""Textbook matrix calculus: each test states the identity it proves and checks the compiled
derivative against the closed form, the independent autodiff oracle and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SEED000_BIAS, assert_gradient

import einmlp

rng = np.random.default_rng(11)
n, b, d, k = 4, 6, 3, 5
x, a, c = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
X, y = rng.standard_normal((b, d)), rng.standard_normal(b)
w = rng.standard_normal(d)
labels = (rng.random(b) > 0.5).astype(float)
W, onehot = rng.standard_normal((d, k)), np.eye(k)[rng.integers(0, k, b)]
T3 = rng.standard_normal((n, n + 1, n + 2))


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def softmax(v, axis=-1):
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


IDENTITIES = [
    # (name, source, wrt, arrays, closed form, matrix form or None)
    ("d(a.x)/dx = a", "L = a[i] x[i]", "x", {"a": a, "x": x}, a, "a"),
    ("d(x.T A x)/dx = (A + A.T) x", "L = x[i] A[i,j] x[j]", "x", {"x": x, "A": A}, (A + A.T) @ x, "(A + A.T) @ x"),
    ("d(a.T X c)/dX = a c.T", "L = a[i] X[i,j] c[j]", "X", {"a": a, "X": A, "c": c}, np.outer(a, c), "outer(a, c)"),
    ("d tr(X)/dX = I", "L = X[i,i]", "X", {"X": A}, np.eye(n), "I"),
    ("d tr(A X)/dX = A.T", "L = A[i,j] X[j,i]", "X", {"A": A, "X": B}, A.T, "A.T"),
    ("d tr(A X B)/dX = A.T B.T", "L = A[i,j] X[j,k] B[k,i]", "X", {"A": A, "X": B, "B": A @ A},
     A.T @ (A @ A).T, "A.T @ B.T"),
    ("d |X|_F^2/dX = 2 X", "L = X[i,j] X[i,j]", "X", {"X": A}, 2 * A, "2 * X"),
    ("d tr(X.T X)/dX = 2 X", "L = X[j,i] X[j,i]", "X", {"X": A}, 2 * A, "2 * X"),
    ("least squares: d|y - X w|^2/dw = -2 X.T (y - X w)", "L = (y[i] - X[i,j] w[j])^2", "w",
     {"y": y, "X": X, "w": w}, -2 * X.T @ (y - X @ w), "-2 * X.T @ A"),
    ("logistic regression: dL/dw = X.T (sigmoid(X w) - y)",
     "z[b] = X[b,d] w[d]\nL = -(y[b] log(sigmoid(z[b])) + (1 - y[b]) log(1 - sigmoid(z[b])))", "w",
     {"X": X, "w": w, "y": labels}, X.T @ (sigmoid(X @ w) - labels), "X.T @ (-y + sigmoid(z))"),
    ("log-sum-exp: d log sum exp(x) / dx = softmax(x)", "L = log(sum[j](exp(x[j])))", "x", {"x": x},
     softmax(x), None),
    ("softmax cross-entropy: dL/dW = X.T (P - Y) for one-hot Y",
     "Z[b,k] = X[b,d] W[d,k]\nP[b,k] = exp(Z[b,k]) / sum[j](exp(Z[b,j]))\nL = -Y[b,k] log(P[b,k])", "W",
     {"X": X, "W": W, "Y": onehot}, X.T @ (softmax(X @ W) - onehot), None),
    ("d(a (x) b (x) c . T)/dT = a (x) b (x) c", "L = T[i,j,k] a[i] b[j] c[k]", "T",
     {"T": T3, "a": a, "b": rng.standard_normal(n + 1), "c": rng.standard_normal(n + 2)}, None, None),
]


@pytest.mark.parametrize("name, source, wrt, arrays, expected, matrix", IDENTITIES, ids=[i[0] for i in IDENTITIES])
def test_identity(name, source, wrt, arrays, expected, matrix):
    d = einmlp.parse(source).grad(wrt)
    value = assert_gradient(d, arrays)
    if expected is not None:
        np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    if matrix is not None:
        assert d.matrix_form == matrix


def test_order3_gradient_is_the_outer_product():
    """d(T . a(x)b(x)c)/dT = a (x) b (x) c: no matrix form, einsum notation instead."""
    arrays = IDENTITIES[-1][3]
    d = einmlp.parse(IDENTITIES[-1][1]).grad("T")
    np.testing.assert_allclose(d.compile()(**arrays), np.einsum("i,j,k->ijk", arrays["a"], arrays["b"], arrays["c"]))
    assert not d.matrix.exists and d.matrix_form == "einsum('a,b,c->abc', a, b, c)"


HESSIANS = [
    ("d2(x.T A x)/dx2 = A + A.T", "L = x[i] A[i,j] x[j]", "x", {"x": x, "A": A}, A + A.T, "A + A.T"),
    ("least squares: d2/dw2 = 2 X.T X", "L = (y[i] - X[i,j] w[j])^2", "w", {"y": y, "X": X, "w": w},
     2 * X.T @ X, "2 * X.T @ X"),
    ("logistic regression: d2L/dw2 = X.T diag(s (1 - s)) X",
     "z[b] = X[b,d] w[d]\nL = -(y[b] log(sigmoid(z[b])) + (1 - y[b]) log(1 - sigmoid(z[b])))", "w",
     {"X": X, "w": w, "y": labels},
     X.T @ np.diag(sigmoid(X @ w) * (1 - sigmoid(X @ w))) @ X,
     "X.T @ diag((1 - sigmoid(z)) * sigmoid(z)) @ X"),
    ("log-sum-exp: d2/dx2 = diag(p) - p p.T", "L = log(sum[j](exp(x[j])))", "x", {"x": x},
     np.diag(softmax(x)) - np.outer(softmax(x), softmax(x)), None),
]


@pytest.mark.parametrize("name, source, wrt, arrays, expected, matrix", HESSIANS, ids=[h[0] for h in HESSIANS])
def test_hessian(name, source, wrt, arrays, expected, matrix):
    h = einmlp.parse(source).hessian(wrt)
    value = assert_gradient(h, arrays)
    assert value.shape == arrays[wrt].shape * 2
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    if matrix is not None:
        assert h.matrix_form == matrix


def test_hessian_of_an_mlp_weight():
    prog = einmlp.parse(SEED000_BIAS)
    arrays = {"X": rng.standard_normal((4, 3)), "W1": rng.standard_normal((3, 2)), "c1": rng.standard_normal(2),
              "W2": rng.standard_normal((2, 2)), "c2": rng.standard_normal(2), "T": rng.standard_normal((4, 2))}
    value = assert_gradient(prog.hessian("W1"), arrays)
    assert value.shape == (3, 2, 3, 2)


def test_jacobian_of_a_matrix_vector_product():
    """d(A x)/dx = A, shaped of.shape + x.shape."""
    d = einmlp.parse("y[i] = A[i,j] x[j]").grad("x")
    np.testing.assert_allclose(assert_gradient(d, {"A": A, "x": x}), A)
    assert d.matrix_form == "A"


def test_jacobian_of_softmax():
    """d softmax(z)_k / d z_j = p_k (delta_kj - p_j)."""
    prog = einmlp.parse("P[k] = exp(z[k]) / sum[j](exp(z[j]))")
    p = softmax(x)
    np.testing.assert_allclose(assert_gradient(prog.grad("z"), {"z": x}), np.diag(p) - np.outer(p, p), atol=1e-12)


def test_attention_value_gradient_and_all_weights():
    """O = softmax(Q K.T) V: dL/dV = P.T dL/dO; Q and K against the oracles."""
    source = ("S[t,u] = Q[t,e] K[u,e]\nP[t,u] = exp(S[t,u]) / sum[v](exp(S[t,v]))\n"
              "O[t,e] = P[t,u] V[u,e]\nL = (O[t,e] - Y[t,e])^2")
    prog = einmlp.parse(source)
    arrays = {name: 0.5 * rng.standard_normal((5, 3)) for name in ("Q", "K", "V", "Y")}
    P = softmax(arrays["Q"] @ arrays["K"].T)
    dO = 2 * (P @ arrays["V"] - arrays["Y"])
    np.testing.assert_allclose(assert_gradient(prog.grad("V"), arrays), P.T @ dO, rtol=1e-10)
    for wrt in ("Q", "K"):
        assert_gradient(prog.grad(wrt), arrays)


def test_scalar_inputs_and_outputs_of_any_order():
    prog = einmlp.parse("Y[i,j,k] = s T[i,j,k] + t^2\nL = sin(Y[i,j,k]) Y[i,j,k]")
    arrays = {"s": np.array(0.7), "t": np.array(-0.3), "T": T3}
    for wrt in ("s", "t", "T"):
        assert_gradient(prog.grad(wrt), arrays)
    jac = assert_gradient(prog.grad("s", of="Y"), arrays)
    assert jac.shape == T3.shape


def test_a_variable_used_inside_and_outside_a_nonlinearity():
    prog = einmlp.parse("L = sum[i,j](X[i,j] tanh(X[i,k] w[k])) + X[i,j] X[j,k] X[k,i]")
    arrays = {"X": 0.5 * A, "w": x}
    for wrt in ("X", "w"):
        assert_gradient(prog.grad(wrt), arrays)


def test_several_gradients_share_one_plan():
    """grad([W1, c1, W2, c2]) compiles one function: the forward pass appears once."""
    prog = einmlp.parse(SEED000_BIAS)
    arrays = {"X": rng.standard_normal((6, 3)), "W1": rng.standard_normal((3, 5)), "c1": rng.standard_normal(5),
              "W2": rng.standard_normal((5, 2)), "c2": rng.standard_normal(2), "T": rng.standard_normal((6, 2))}
    grads = prog.grad(["W1", "c1", "W2", "c2"])
    out = grads.compile()(**arrays)
    assert set(out) == {"W1", "c1", "W2", "c2"}
    for name, value in out.items():
        np.testing.assert_allclose(value, prog.grad(name).compile()(**arrays), rtol=1e-12)
    assigned = [eq.out for eq in grads.plan.equations]
    for forward in ("A", "H", "O"):
        assert assigned.count(forward) == 1
    assert einmlp.check(grads, arrays).ok
