"""The Einstein rules: implicit sums made explicit; implicit and explicit forms agree."""

import numpy as np
import pytest
from conftest import assert_gradient, random_arrays

import einmlp
from einmlp.parse import parse_syntax
from einmlp.summation import check_program
from einmlp.syntax import SumOver


def summed(text):
    """The indices each explicit sum of the first statement sums, outermost first."""
    found = []

    def walk(node):
        if isinstance(node, SumOver):
            found.append(node.indices)
        for name in ("expr", "body", "left", "right", "arg", "operand"):
            if hasattr(node, name):
                walk(getattr(node, name))
    walk(check_program(parse_syntax(text)).statements[0].expr)
    return found


@pytest.mark.parametrize("text, sums", [
    ("A[i,k] = X[i,j] W[j,k]", [("j",)]),                        # rule 2: two factors
    ("L = (Y[i,0] - Yhat[i,0])^2", [("i",)]),                   # rule 3: summed at the end
    ("H[b,z] = tanh(X[b,d] W[d,z] + c[z])", [("d",)]),          # bias broadcast
    ("Y[i,0] = f(X[i,j] W1[j,k]) W2[k,0]", [("k",), ("j",)]),   # j inside the call, k outside
    ("L = X[i,i]", [("i",)]),                                    # trace
    ("d[i] = X[i,i]", []),                                       # diagonal
    ("P[b,k] = exp(z[b,k]) / sum[j](exp(z[b,j]))", [("j",)]),   # explicit sum
    ("r[i] = x[i] / y[i]", []),                                  # left indices are never summed
])
def test_rules(text, sums):
    assert summed(text) == sums


EQUIVALENT = [
    # implicit Einstein sum vs explicit sum[...]
    ("A[i,k] = X[i,j] W[j,k]\nL = A[i,k] A[i,k]", "A[i,k] = sum[j](X[i,j] W[j,k])\nL = sum[i,k](A[i,k] A[i,k])"),
    ("L = x[i] A[i,j] x[j]", "L = sum[i](x[i] sum[j](A[i,j] x[j]))"),
    ("L = (Y[i,0] - X[i,j] w[j,0])^2", "L = sum[i]((Y[i,0] - sum[j](X[i,j] w[j,0]))^2)"),
    ("L = tanh(X[b,d] w[d] + c)", "L = sum[b](tanh(sum[d](X[b,d] w[d]) + c))"),
]


@pytest.mark.parametrize("implicit, explicit", EQUIVALENT)
def test_implicit_and_explicit_sums_derive_the_same_gradient(implicit, explicit):
    a, b = einmlp.parse(implicit), einmlp.parse(explicit)
    shapes = {"X": (5, 3), "W": (3, 4), "A": (3, 3), "x": (3,), "Y": (5, 1), "w": (3, 1), "c": ()}
    shapes["w"] = (3, 1) if "w[j,0]" in implicit else (3,)
    arrays = random_arrays(a, shapes)
    for wrt in a.inputs:
        ga = a.grad(wrt).compile()(**arrays)
        gb = b.grad(wrt).compile()(**arrays)
        np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-12)
        assert_gradient(a.grad(wrt), arrays)
