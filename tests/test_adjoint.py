"""Reverse mode: adjoints are the textbook backprop equations, agree with the flat chain, scale linearly."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ARTICLE_ACTIVATED, DERIVATIONS, article_arrays, assert_gradient
from test_derivations import cases, directives

import einmlp


def mlp(layers: int) -> tuple[str, list[str]]:
    lines = [f"H{k}[b,z] = tanh({'X' if k == 1 else f'H{k - 1}'}[b,y] W{k}[y,z] + c{k}[z])"
             for k in range(1, layers + 1)]
    lines.append(f"L = (H{layers}[b,z] - T[b,z])^2")
    return "\n".join(lines), [f"W{k}" for k in range(1, layers + 1)] + [f"c{k}" for k in range(1, layers + 1)]


def residual(blocks: int) -> str:
    lines = [f"H{k}[b,z] = tanh({'X' if k == 1 else f'H{k - 1}'}[b,y] W{k}[y,z]) + {'X' if k == 1 else f'H{k - 1}'}[b,z]"
             for k in range(1, blocks + 1)]
    return "\n".join(lines + [f"L = (H{blocks}[b,z] - T[b,z])^2"])


def test_the_article_backpropagates_as_the_textbook_writes_it():
    """delta_l = (delta_{l+1} @ W_{l+1}.T) * f'(Z_l), statement by statement."""
    d = einmlp.Derivation(einmlp.parse(ARTICLE_ACTIVATED), "Delta", "W1", mode="adjoint")
    text = "\n".join(str(s) for s in d.steps)
    for line in ["Ytildebar[i,0] = 2*Ytilde[i,0]", "Yhatbar[i,0] = -Ytildebar[i,0]",
                 "Cbar[i,0] = Yhatbar[i,0]*f2'(C[i,0])", "Bbar[i,k] = Cbar[i,0]*W2[k,0]", "Bbar = Cbar @ W2.T",
                 "Abar[i,k] = Bbar[i,k]*f1'(A[i,k])", "Abar = Bbar * f1'(A)", "dDelta/dW1[m,n] = Abar[i,n]*X[i,m]"]:
        assert line in text, line
    assert d.matrix_form == "X.T @ Abar"
    np.testing.assert_allclose(d.compile()(**article_arrays()),
                               einmlp.parse(ARTICLE_ACTIVATED).grad("W1").compile()(**article_arrays()), rtol=1e-12)


def test_the_article_keeps_its_flat_chain():
    d = einmlp.parse(ARTICLE_ACTIVATED).grad("W1")
    assert d.mode == "flat" and d.matrix_form == "-2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))"


@pytest.mark.parametrize("path, wrt, hessian", list(cases()))
def test_flat_chain_and_adjoints_agree(path, wrt, hessian):
    """Every derivation in derivations/, derived both ways, compiles to the same numbers."""
    prog = einmlp.load(path)
    shapes = directives(path)["shapes"]
    rng = np.random.default_rng(3)
    arrays = {name: rng.standard_normal(shapes[name]) * 0.5 for name in prog.inputs}
    results = []
    for mode in ("flat", "adjoint"):
        d = einmlp.Derivation(prog, prog.targets[-1], wrt, mode=mode)
        if hessian:
            d = einmlp.Derivation(prog, prog.targets[-1], wrt, base=d)
        results.append(d.compile()(**arrays))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_all_gradients_of_an_mlp_compute_each_adjoint_once():
    """Hand-written backprop: one matrix product forward, two backward per layer (none into X)."""
    layers = 6
    source, wrt = mlp(layers)
    plan = einmlp.parse(source).grad(wrt).plan
    products = sum(len(re.findall(r" @ ", e.code or e.text)) + (e.op == "einsum" and "," in e.text and not e.code)
                   for e in plan.equations)
    assert products == layers + 2 * layers - 1, str(plan)


@pytest.mark.parametrize("blocks", [3, 6])
def test_residual_networks_all_gradients(blocks):
    prog = einmlp.parse(residual(blocks))
    rng = np.random.default_rng(blocks)
    arrays = {"X": rng.standard_normal((4, 3)), "T": rng.standard_normal((4, 3)),
              **{f"W{k}": 0.4 * rng.standard_normal((3, 3)) for k in range(1, blocks + 1)}}
    grads = prog.grad([f"W{k}" for k in range(1, blocks + 1)])
    assert einmlp.check(grads, arrays).ok
    assert_gradient(prog.grad("W1"), arrays)  # the oracle too
    hessian = prog.hessian("W1")
    assert hessian.mode == "adjoint"  # reverse over reverse: 2^blocks chains
    assert einmlp.check(hessian, arrays, tolerance=1e-5).ok


def test_a_transformer_block_all_weights():
    prog = einmlp.load(DERIVATIONS / "transformer.ein")
    shapes = directives(DERIVATIONS / "transformer.ein")["shapes"]
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shapes[name]) * 0.5 for name in prog.inputs}
    arrays["G"] = 1 + 0.1 * rng.standard_normal(shapes["G"])
    weights = ["Wq", "Wk", "Wv", "G", "W1", "b1", "W2", "b2"]
    grads = prog.grad(weights)
    assert einmlp.check(grads, arrays).ok
    together = grads.compile()(**arrays)
    for w in weights:
        np.testing.assert_allclose(together[w], assert_gradient(prog.grad(w), arrays), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("source, wrt", [
    ("\n".join(["A1[b,z] = tanh(X[b,y] W[y,z])", "A2[b,z] = tanh(A1[b,y] V[y,z])"]
               + [f"A{k}[b,z] = tanh(A{k - 1}[b,z] + A{k - 2}[b,z])" for k in range(3, 13)]
               + ["L = A12[b,z] A12[b,z]"]), ["W", "V"]),
    ("P[i0,i6] = " + " ".join(f"X[i{k},i{k + 1}]" for k in range(6)) + "\nL = P[i0,i6] P[i0,i6]", ["X"]),
])
def test_graphs_that_are_not_chains(source, wrt):
    prog = einmlp.parse(source)
    rng = np.random.default_rng(1)
    arrays = {name: 0.4 * rng.standard_normal((3, 3)) for name in prog.inputs}
    assert einmlp.check(prog.grad(wrt), arrays).ok
