"""Plans run on blocks of rows (einmlp/rows.py and compiled.py's `_Blocked`).

Which plans separate over an axis is read from their index forms; these tests check the
verdicts on programs that do and programs that do not, run every derivation on blocks of
one to three rows against its whole run, check the blocked gradients against finite
differences and autograd over the oracle, and run a batch large enough for the real
thresholds. test_programs.py runs random programs on blocks against the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DERIVATIONS, article_arrays, assert_gradient, flat_results
from test_derivations import directives

import einmlp
from einmlp import compiled


def _cuts(plan) -> set:
    """The (input, axis) pairs some blocking of `plan` cuts."""
    return {(name, axis) for b in plan.blocks for name, axis in zip(plan.inputs, b.inputs) if axis is not None}


SEPARABLE = {  # program, gradients, the input axis cut into rows
    "article": ((DERIVATIONS / "article.ein").read_text(), ["W1", "W2"], ("X", 0)),
    "softmax": ((DERIVATIONS / "softmax_classifier.ein").read_text(), ["W", "c"], ("X", 0)),
    "logistic": ((DERIVATIONS / "logistic_regression.ein").read_text(), ["w"], ("X", 0)),
    "mean by a count": ("Z[i] = X[i,j] w[j]\nL = sum[i](Z[i]^2) / 7", ["w"], ("X", 0)),
    "two sums of rows": ("Z[i] = X[i,j] w[j]\nL = 3 sum[i](Z[i]) - sum[i](tanh(Z[i]))", ["w"], ("X", 0)),
}

NOT_SEPARABLE = {  # each couples rows: centring, a log of a sum over rows, a square of the loss, pairs of rows
    "centred": "Z[i] = X[i,j] w[j]\nC[i] = Z[i] - sum[k](Z[k])\nL = sum[i](C[i]^2)",
    "log of a sum over rows": "Z[i] = X[i,j] w[j]\nL = log(sum[i](exp(Z[i])))",
    "square of the loss": "Z[i] = X[i,j] w[j]\nS = sum[i](Z[i]^2)\nL = S^2",
    "pairs of rows": "Z[i] = X[i,j] w[j]\nL = sum[i,k](tanh(Z[i] Z[k])^2)",
    "softmax over rows": "Z[i] = X[i,j] w[j]\nP[i] = exp(Z[i]) / sum[k](exp(Z[k]))\nL = sum[i](P[i] t[i])",
    "a count in a row": "Z[i] = X[i,j] w[j] sum[k](t[k]^0)\nL = sum[i](tanh(Z[i]) t[i])",
    "one row read": "Z[i] = X[i,j] w[j]\nL = sum[i](Z[i]^2) + Z[0]^2",
}


def _numpy_loss(name, X, w, t):
    """The NOT_SEPARABLE programs in numpy, written from their text."""
    z = X @ w
    if name == "centred":
        return np.sum((z - z.sum()) ** 2)
    if name == "log of a sum over rows":
        return np.log(np.sum(np.exp(z)))
    if name == "square of the loss":
        return np.sum(z ** 2) ** 2
    if name == "pairs of rows":
        return np.sum(np.tanh(z[:, None] * z[None, :]) ** 2)
    if name == "softmax over rows":
        return np.sum(np.exp(z) / np.sum(np.exp(z)) * t)
    if name == "a count in a row":
        return np.sum(np.tanh(z * len(t)) * t)
    raise KeyError(name)


@pytest.mark.parametrize("name", SEPARABLE)
def test_a_plan_over_rows_separates_over_them(name):
    text, wrt, cut = SEPARABLE[name]
    prog = einmlp.parse(text)
    for plan in (prog.grad(wrt).plan, prog.compile().plan, _compiled_of(prog.value_and_grad(wrt).compile()).plan):
        assert cut in _cuts(plan), plan


@pytest.mark.parametrize("name", NOT_SEPARABLE)
def test_a_plan_that_couples_rows_does_not_separate(name):
    prog = einmlp.parse(NOT_SEPARABLE[name])
    for plan in (prog.grad(["w"]).plan, prog.compile().plan, prog.grad("w").plan, prog.grad("X").plan):
        assert ("X", 0) not in _cuts(plan), plan


@pytest.mark.parametrize("name", [n for n in NOT_SEPARABLE if n != "one row read"])
def test_a_plan_that_couples_rows_gives_its_value_when_blocks_are_asked_for(name, rows_in_blocks):
    rng = np.random.default_rng(3)
    arrays = {"X": rng.standard_normal((7, 3)) * 0.5, "w": rng.standard_normal(3) * 0.5,
              "t": rng.standard_normal(7)}
    prog = einmlp.parse(NOT_SEPARABLE[name])
    arrays = {k: v for k, v in arrays.items() if k in prog.inputs}
    t = arrays.get("t", np.zeros(7))
    value = prog.compile()(**arrays)
    np.testing.assert_allclose(value, _numpy_loss(name, arrays["X"], arrays["w"], t), rtol=1e-12)
    for wrt in ("w", "X"):
        assert_gradient(prog.grad(wrt), arrays)
    assert not [b for b in rows_in_blocks if any(axis == 0 for axis in b.blocking.inputs[:1])]


@pytest.mark.parametrize("path", sorted(DERIVATIONS.glob("*.ein")), ids=lambda p: p.stem)
@pytest.mark.parametrize("step", [1, 2, 3])
def test_every_derivation_gives_its_numbers_on_blocks_of_rows(path, step, rows_in_blocks, monkeypatch):
    rows_in_blocks.steps = (step,)
    prog = einmlp.load(path)
    d = directives(path)
    rng = np.random.default_rng(11)
    arrays = {name: rng.standard_normal(d["shapes"][name]) * 0.5 for name in prog.inputs}
    targets = [prog.grad(d["derive"]), prog.value_and_grad(d["derive"]), prog,
               *[prog.hessian(w) for w in d["hessian"]]]
    with monkeypatch.context() as whole:  # the plain run, for reference
        whole.setattr(compiled, "BLOCK_FROM", float("inf"))
        expected = [flat_results(t.compile()(**arrays)) for t in targets]
    rows_in_blocks[:] = []
    for target, want in zip(targets, expected):
        got = flat_results(target.compile()(**arrays))
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert np.shape(got[key]) == np.shape(value) and got[key].dtype == value.dtype, key
            scale = max(1.0, float(np.max(np.abs(value))))
            np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12 * scale, err_msg=key)
    blocked = bool(rows_in_blocks)
    assert blocked == bool(prog.grad(d["derive"]).plan.blocks), path.stem


def test_the_articles_gradients_on_blocks_match_finite_differences_and_autograd(rows_in_blocks):
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays(batch=10)
    for w in ("W1", "W2", "X"):
        assert_gradient(prog.grad(w), arrays)
    assert rows_in_blocks and all(b.rows == 10 for b in rows_in_blocks)


def test_a_large_batch_runs_on_blocks_with_the_real_thresholds():
    """A batch of 70,001 rows: blocks of 16,384 with the last one carrying the 4,465 left over."""
    prog = einmlp.load(DERIVATIONS / "article.ein")
    arrays = article_arrays(batch=70_001, seed=2)
    fn = prog.value_and_grad(["W1", "W2", "X"]).compile()
    value, grads = fn(**arrays)
    whole = prog.value_and_grad(["W1", "W2", "X"]).compile()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(compiled, "BLOCK_FROM", float("inf"))
        value_whole, grads_whole = whole(**arrays)
    np.testing.assert_allclose(value, value_whole, rtol=1e-12)
    for name in grads_whole:
        np.testing.assert_allclose(grads[name], grads_whole[name], rtol=1e-11, atol=1e-12, err_msg=name)
    X, W1, W2, Y = arrays["X"], arrays["W1"], arrays["W2"], arrays["Y"]
    A = X @ W1
    C = (A * A) @ W2
    Ytilde = Y - C ** 3
    np.testing.assert_allclose(value, np.sum(Ytilde ** 2), rtol=1e-12)
    G = (-2 * Ytilde * 3 * C * C) @ W2.T * 2 * A
    np.testing.assert_allclose(grads["W1"], X.T @ G, rtol=1e-11)
    np.testing.assert_allclose(grads["X"], G @ W1.T, rtol=1e-11)
    inner = _compiled_of(fn)
    runs = [f for _, f in inner._signatures.values()]
    assert len(runs) == 1 and isinstance(runs[0], compiled._Blocked), runs
    assert runs[0].step == 16_384 and runs[0].rows == 70_001


def _compiled_of(fn) -> compiled.Compiled:
    if isinstance(fn, compiled.Compiled):
        return fn
    (found,) = [c.cell_contents for c in fn.__closure__ if isinstance(c.cell_contents, compiled.Compiled)]
    return found
