"""The article's derivations, seed 000's MLP and deeper networks, against independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ARTICLE_ACTIVATED, ARTICLE_LINEAR, SEED000_BIAS, article_arrays, assert_gradient, random_arrays

import einmlp
import sympy as sp
from einmlp.functions import UserFunction
from einmlp.symbolic import index


def handwritten_linear(X, W1, W2, Y):
    """The article's closed forms, as true gradients (minus the article's dW)."""
    Ytilde = Y - X @ W1 @ W2
    return {"W1": -2 * X.T @ Ytilde @ W2.T, "W2": -2 * (X @ W1).T @ Ytilde}


def handwritten_activated(X, W1, W2, Y):
    """The article's numpy check, with Ytilde where its code writes Y."""
    A = X @ W1
    B = A ** 2
    C = B @ W2
    Ytilde = Y - C ** 3
    gradf1, gradf2 = 2 * A, 3 * C ** 2
    deltaW2 = 2 * np.dot(B.T, Ytilde * gradf2)
    deltaW1 = 2 * np.dot(X.T, np.dot(Ytilde * gradf2, W2.T) * gradf1)
    return {"W1": -deltaW1, "W2": -deltaW2}


@pytest.mark.parametrize("batch", [10, 1000])
@pytest.mark.parametrize("source, closed_form", [(ARTICLE_LINEAR, handwritten_linear),
                                                  (ARTICLE_ACTIVATED, handwritten_activated)])
@pytest.mark.parametrize("wrt", ["W1", "W2"])
def test_article_gradient_matches_its_closed_form(source, closed_form, wrt, batch):
    """dDelta/dW equals the article's hand-written numpy to 1e-10 relative."""
    prog = einmlp.parse(source)
    arrays = article_arrays(batch)
    value = prog.grad(wrt).compile()(**arrays)
    expected = closed_form(**arrays)[wrt]
    assert value.shape == arrays[wrt].shape
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    if batch == 10:
        assert_gradient(prog.grad(wrt), arrays)


def test_article_index_form_for_W1():
    """dDelta/dW1[m,n] = -2 Ytilde[i,0] f2'(C[i,0]) W2[n,0] f1'(A[i,n]) X[i,m]."""
    d = einmlp.parse(ARTICLE_ACTIVATED).grad("W1")
    assert len(d.form.terms) == 1
    term = d.form.terms[0]
    assert term.coeff == -2
    assert sorted(map(str, term.factors)) == sorted(["Ytilde[i, 0]", "f2'(C[i, 0])", "W2[n, 0]",
                                                     "f1'(A[i, n])", "X[i, m]"])
    assert [s.name for s in term.summed] == ["i"]


def test_article_linear_index_forms():
    """dDelta/dW2[m,0] = -2 Ytilde[i,0] (X W1)[i,m] and dDelta/dW1 = -2 Ytilde[i,0] X[i,m] W2[n,0]."""
    prog = einmlp.parse(ARTICLE_LINEAR)
    assert prog.grad("W1").index_form == "-2*W2[n,0]*X[i,m]*Ytilde[i,0]"
    assert prog.grad("W1").matrix_form == "-2 * X.T @ Ytilde @ W2.T"


@pytest.mark.parametrize("wrt", ["W1", "c1", "W2", "c2"])
def test_seed000_biased_mlp(wrt):
    """Every weight and bias of h = tanh(X W1 + c1), O = h W2 + c2, L = |O - T|^2."""
    prog = einmlp.parse(SEED000_BIAS)
    arrays = random_arrays(prog, {"X": (6, 3), "W1": (3, 5), "c1": (5,), "W2": (5, 2), "c2": (2,), "T": (6, 2)})
    assert_gradient(prog.grad(wrt), arrays)


def mlp_source(layers: int) -> str:
    lines = ["H0[b,k] = X[b,k]"]
    for layer in range(1, layers + 1):
        lines.append(f"H{layer}[b,k] = tanh(H{layer - 1}[b,j] W{layer}[j,k] + c{layer}[k])")
    lines.append(f"L = (H{layers}[b,k] - T[b,k])^2")
    return "\n".join(lines)


@pytest.mark.parametrize("layers", [2, 8, 32])
def test_deep_tanh_mlp_first_layer(layers):
    """The first-layer gradient of a deep tanh MLP derives, compiles and passes the check."""
    prog = einmlp.parse(mlp_source(layers))
    shapes = {"X": (5, 3), "T": (5, 3)}
    shapes.update({f"W{k}": (3, 3) for k in range(1, layers + 1)})
    shapes.update({f"c{k}": (3,) for k in range(1, layers + 1)})
    arrays = random_arrays(prog, shapes, seed=layers)
    rng = np.random.default_rng(layers)
    for k in range(1, layers + 1):  # orthogonal weights keep the gradient from vanishing
        arrays[f"W{k}"] = 1.2 * np.linalg.qr(rng.standard_normal((3, 3)))[0]
    d = prog.grad("W1")
    result = einmlp.check(d, arrays)
    assert result.ok, str(result)


def test_gradient_of_unrelated_input_is_zero():
    prog = einmlp.parse("A[i] = x[i] x[i]\nL = y[j] A[j]")
    d = prog.grad("x", of="A")
    assert d.compile()(x=np.ones(3), y=np.ones(3)).shape == (3, 3)
    z = einmlp.parse("A[i] = 2 x[i]\nB[i] = 3 y[i]\nL = B[i]").grad("x")
    assert z.index_form == "0"
    np.testing.assert_array_equal(z.compile()(x=np.ones(4), y=np.ones(4)), np.zeros(4))


def test_jacobian_shape_of_tensor_output():
    """grad of a tensor-valued output is the Jacobian, shaped of.shape + wrt.shape."""
    prog = einmlp.parse(ARTICLE_ACTIVATED)
    d = prog.grad("W1", of="Yhat")
    arrays = article_arrays(7)
    value = assert_gradient(d, arrays)
    assert value.shape == (7, 1, 3, 4)


def test_the_article_chain_has_its_letters_and_one_substitution_per_summed_index():
    """C[mu,nu], B[l,s], A[r,e] with the program's own k and j, as the article writes the chain;
    the contraction names what each summed index finally becomes, once, in chain order."""
    d = einmlp.parse(ARTICLE_ACTIVATED).grad("W1")
    links = {s.subject: s.text.splitlines()[1].strip() for s in d.steps if s.title == "Link through"}
    assert links["C"].startswith("dC[mu,nu]/dW1[m,n] = W2[k,0]*") and "dB[l,s]/dW1[m,n]" in links["C"]
    assert links["B"].startswith("dB[l,s]/dW1[m,n] = ") and "dA[r,e]/dW1[m,n]" in links["B"]
    assert links["A"] == "dA[r,e]/dW1[m,n] = X[r,j]*delta(e,n)*delta(j,m)"
    contraction = next(s for s in d.steps if s.title == "Contract the deltas")
    olds = [old for old, _ in contraction.renames]
    assert len(olds) == len(set(olds))  # one substitution per summed index
    assert dict(contraction.renames) == {"alpha": "i", "beta": "0", "gamma": "i", "kappa": "0", "mu": "i", "nu": "0",
                                         "l": "i", "s": "n", "r": "i", "e": "n", "j": "m", "k": "n"}
    assert olds.index("mu") < olds.index("l") < olds.index("r")  # in the chain's order
    # made at once in the product of all deltas, the substitutions turn every delta into 1
    # and every other factor into the contracted form's
    product = next(s for s in d.steps if s.title == "Product of all deltas").expr
    at = {index(a): sp.Integer(int(b)) if b.isdigit() else index(b) for a, b in contraction.renames}
    assert {delta.xreplace(at) for delta in product.atoms(sp.KroneckerDelta)} == {1}
    factors = {f.xreplace(at) for f in product.atoms(sp.Indexed, UserFunction)
               if not any(isinstance(p, UserFunction) and f in p.args for p in product.atoms(UserFunction))}
    assert factors == set(d.form.terms[0].factors)
