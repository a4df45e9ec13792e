"""The function table: each row's derivative agrees with sympy and finite differences."""

import numpy as np
import pytest
import sympy as sp
from conftest import assert_gradient

import einmlp
from einmlp.functions import BUILTINS

x = sp.Symbol("x", real=True)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_table_derivative_matches_sympy(name):
    row = BUILTINS[name]
    assert sp.simplify(sp.diff(row.sympy(x), x) - row.derivative(x)) == 0


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_each_function_compiles_and_differentiates(name):
    prog = einmlp.parse(f"L = {name}(x[i]) w[i]")
    values = np.array([0.3, 0.7, 1.4, 2.1])  # positive, away from relu's and abs's kink
    assert_gradient(prog.grad("x"), {"x": values, "w": np.array([1.0, -2.0, 0.5, 3.0])})


def test_forward_values_match_numpy():
    prog = einmlp.parse("S[i] = sigmoid(x[i])\nR[i] = relu(x[i])\nP[i] = softplus(x[i])")
    v = np.array([-40.0, -1.0, 0.0, 2.0, 40.0])
    np.testing.assert_allclose(prog.compile(of="S")(x=v), 1 / (1 + np.exp(-v)), rtol=1e-12)
    np.testing.assert_allclose(prog.compile(of="R")(x=v), np.maximum(v, 0))
    np.testing.assert_allclose(prog.compile(of="P")(x=v), np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0))


def test_relu_derivative_at_zero_is_zero():
    d = einmlp.parse("L = relu(x[i])").grad("x")
    np.testing.assert_array_equal(d.compile()(x=np.array([-1.0, 0.0, 1.0])), [0.0, 0.0, 1.0])


@pytest.mark.parametrize("power", ["3", "-2", "0.5", "1.5", "-0.5"])
def test_powers(power):
    prog = einmlp.parse(f"L = x[i]^{power} w[i]")
    assert_gradient(prog.grad("x"), {"x": np.array([0.5, 1.2, 2.0]), "w": np.array([1.0, 2.0, -1.0])})


def test_user_definitions_and_nesting():
    prog = einmlp.parse("g(x) = x^3 - 2 x\nh(x) = g(x)^2 + exp(-x)\nL = h(tanh(X[i,j] w[j]))")
    d = prog.grad("w")
    assert "h'" in d.index_form
    rng = np.random.default_rng(3)
    assert_gradient(d, {"X": rng.standard_normal((4, 3)), "w": rng.standard_normal(3)})
