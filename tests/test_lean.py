"""Lean plans: no delta arrays for size-1 axes, no einsum where a product or a broadcast does.

Each call is evaluated once and temporaries are freed when dead; every plan is checked by
finite differences.
"""

from __future__ import annotations

import re
import sys

import numpy as np
from conftest import DERIVATIONS, article_arrays, assert_gradient

import einmlp
from einmlp.codegen import executed_source


def statements(plan) -> list[str]:
    """The plan's statements as printed."""
    return [str(e) for e in plan.equations]


def test_the_article_plan_has_no_delta_for_its_size_1_axis():
    """dW2 = B.T @ Cbar: the output axis of length 1 is neither a delta array nor a reshape."""
    prog = einmlp.load(DERIVATIONS / "article.ein")
    grads = prog.grad(["W1", "W2"])
    text = str(grads.plan)
    assert "_equal" not in text and "einsum" not in text and "_full" not in text, text
    assert "C = B @ W2" in text and "_grad_W2 = B.T @ Cbar" in text, text
    assert "Cbar*W2.T*A" in text, text  # the outer product with W2 broadcast, not a (B,1) @ (1,4) product
    assert len(grads.plan.equations) <= 9, text
    # Ytildebar = 2 Ytilde is read as 2 Ytilde where it is read: Cbar = -6 C^2 Ytilde, no statement of its own
    assert all(e.out != "Ytildebar" and "Ytildebar" not in e.text for e in grads.plan.equations), text
    assert "Cbar = (-6)*" in text, text
    arrays = article_arrays(batch=7)
    assert einmlp.check(grads, arrays).ok
    for w in ("W1", "W2"):
        assert "_equal" not in str(prog.grad(w).plan)
        assert_gradient(prog.grad(w), arrays)


def test_a_constant_scales_the_product_it_multiplies_not_its_result():
    """Cbar = -3 * (...) in one statement, not a product and then a second pass to scale it."""
    plan = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"]).plan
    assert not any(re.fullmatch(r"\S+ = \(-?\d+\)\*_t\d+", s.split("    #")[0]) for s in statements(plan)), str(plan)


def test_a_row_of_length_1_gets_its_gradient_without_a_delta():
    """Seed 000's 1 x Z bias rows: their gradients are sums over the batch, not deltas or copies."""
    prog = einmlp.load(DERIVATIONS / "seed000_matrix.ein")
    for w in ("B1", "B2"):
        d = prog.grad(w)
        assert "_equal" not in str(d.plan) and "_full" not in str(d.plan), str(d.plan)
        rng = np.random.default_rng(2)
        shapes = {"X": (5, 3), "W1": (3, 4), "B1": (1, 4), "W2": (4, 2), "B2": (1, 2), "T": (5, 2)}
        arrays = {k: rng.standard_normal(shape) for k, shape in shapes.items()}
        assert einmlp.check(d, arrays).ok


def test_the_logistic_hessian_is_a_scaled_matrix_product():
    """X.T @ diag(s) @ X runs as a product with X scaled by s, never a three-operand einsum.

    And sigmoid(z) (1 - sigmoid(z)) is one stable call, not sigmoid, 1 - s and a product.
    """
    prog = einmlp.load(DERIVATIONS / "logistic_regression.ein")
    h = prog.hessian("w")
    text = str(h.plan)
    assert "einsum" not in text and "@" in text, text
    assert re.search(r"(_t\d+)\.T @ \1\b", text), text  # Xs.T @ Xs: BLAS syrk, s(1-s) being >= 0
    assert text.count("_dsigmoid(") == 1 and "_sigmoid(" not in text, text
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((30, 4)), "w": rng.standard_normal(4), "y": (rng.random(30) > 0.5) * 1.0}
    s = 1 / (1 + np.exp(-arrays["X"] @ arrays["w"]))
    closed = arrays["X"].T @ ((s * (1 - s))[:, None] * arrays["X"])
    np.testing.assert_allclose(h.compile()(**arrays), closed, rtol=1e-12)
    assert_gradient(h, arrays)


def test_compiled_code_frees_temporaries_when_they_are_dead():
    """The executed source deletes each temporary after its last use; the printed source stays plain."""
    grads = einmlp.load(DERIVATIONS / "article.ein").grad(["W1", "W2"])
    executed, _ = executed_source(grads.plan)
    assert "del " in executed and "del " not in grads.compile().source
    lines = executed.splitlines()
    for k, line in enumerate(lines):
        if line.strip().startswith("del "):
            for name in line.strip()[4:].split(", "):
                assert not any(re.search(rf"(?<![\w.]){name}(?!\w)", later) for later in lines[k + 1:]), name
    np.testing.assert_allclose(grads.compile()(**article_arrays())["W1"],
                               einmlp.load(DERIVATIONS / "article.ein").grad("W1").compile()(**article_arrays()))


def test_all_gradients_of_a_deep_mlp_keep_about_what_backprop_by_hand_keeps():
    """Peak memory of all gradients of an 8-layer MLP, against hand-written backprop (tracemalloc sees numpy)."""
    import tracemalloc
    sys.path.insert(0, str(DERIVATIONS.parent / "benchmarks"))
    from bench_derive import mlp
    layers, batch, width = 8, 256, 64
    source, wrt = mlp(layers)
    fn = einmlp.parse(source).grad(wrt).compile()
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((batch, width)), "T": rng.standard_normal((batch, width)),
              **{f"W{k}": rng.standard_normal((width, width)) / 8 for k in range(1, layers + 1)},
              **{f"c{k}": np.zeros(width) for k in range(1, layers + 1)}}

    def by_hand():
        hs = [arrays["X"]]
        for k in range(1, layers + 1):
            hs.append(np.tanh(hs[-1] @ arrays[f"W{k}"] + arrays[f"c{k}"]))
        d, grads = 2 * (hs[-1] - arrays["T"]), {}
        for k in range(layers, 0, -1):
            d = d * (1 - hs[k] * hs[k])
            grads[f"W{k}"], grads[f"c{k}"] = hs[k - 1].T @ d, d.sum(axis=0)
            d = d @ arrays[f"W{k}"].T
        return grads
    peaks = []
    for f in (lambda: fn(**arrays), by_hand):
        f()
        tracemalloc.start()
        result = f()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        del result
    expected = by_hand()
    for name, value in fn(**arrays).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-10, atol=1e-12)
    assert peaks[0] < 1.1 * peaks[1], peaks


def test_a_batched_transformer_runs_its_products_as_matmul():
    """X[b,t,e] W[e,d] is X @ W, and a weight gradient summed over batch and sequence one product."""
    sys.path.insert(0, str(DERIVATIONS.parent / "benchmarks"))
    from bench_derive import TRANSFORMER_WEIGHTS, transformer, transformer_arrays
    grads = einmlp.parse(transformer(4)).grad(TRANSFORMER_WEIGHTS)
    text = str(grads.plan)
    assert "K = X @ Wk" in text and "Q @ np.transpose(K, (0, 2, 1))" in text, text
    assert "np.reshape(X, (-1, X.shape[-1])).T @ np.reshape(Qbar, (-1, Qbar.shape[-1]))" in text, text
    arrays = transformer_arrays(batch=2, seq=3, width=4, hidden=5)
    assert einmlp.check(grads, arrays).ok


def test_a_hessian_with_a_scale_of_either_sign_is_no_gram_matrix():
    """Only a scale that is never negative may be split into square roots: tanh' * (y - t) is not."""
    prog = einmlp.parse("z[b] = X[b,d] w[d]\nL = (tanh(z[b]) - y[b])^2")
    h = prog.hessian("w")
    assert "np.sqrt" not in str(h.plan), str(h.plan)
    rng = np.random.default_rng(1)
    assert_gradient(h, {"X": rng.standard_normal((9, 3)), "w": rng.standard_normal(3), "y": rng.standard_normal(9)})


def test_sigmoid_times_one_minus_sigmoid_keeps_its_digits_at_large_margins():
    """At z = 40, s (1 - s) is 4.2e-18; 1 - s computed from s = 1.0 would make the curvature 0.

    The reference is mpmath at 50 digits; the rest of the plan is checked by finite differences.
    """
    import mpmath

    mpmath.mp.dps = 50
    h = einmlp.load(DERIVATIONS / "logistic_regression.ein").hessian("w").compile()
    X = np.array([[40.0, 1.0], [-38.0, 2.0], [0.5, -1.0]])
    w = np.array([1.0, 0.0])
    got = h(X=X, w=w, y=np.array([1.0, 0.0, 1.0]))
    slope = [mpmath.exp(-abs(mpmath.mpf(z))) / (1 + mpmath.exp(-abs(mpmath.mpf(z)))) ** 2 for z in X @ w]
    want = np.array([[float(sum(slope[b] * X[b, m] * X[b, n] for b in range(3))) for n in range(2)]
                     for m in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_the_logistic_loss_keeps_its_digits_at_large_margins():
    """Found by fuzzing (seed 208, input 17,805): log(1 - sigmoid(z)) at z = 37.29 read 1 - s
    rounded to one ulp, so the loss was 14.53 for 14.75 and flat in z (its finite differences
    were 0 while the gradient was right); past z = 745 log(sigmoid(-z)) was log(0). Both are
    -softplus now. The reference is mpmath at 400 digits (1 - sigmoid(800) is e^-800)."""
    import mpmath

    prog = einmlp.load(DERIVATIONS / "logistic_regression.ein")
    X = np.array([[37.29, 1.0], [-38.0, 2.0], [0.5, -1.0], [800.0, 0.0], [-800.0, 1.0]])
    w, y = np.array([1.0, 0.0]), np.array([0.4, 0.3, 1.0, 0.0, 1.0])
    got = prog.compile()(X=X, w=w, y=y)
    with mpmath.workdps(400):
        s = [1 / (1 + mpmath.exp(-mpmath.mpf(v))) for v in X @ w]
        want = -sum(mpmath.mpf(yb) * mpmath.log(sb) + (1 - mpmath.mpf(yb)) * mpmath.log(1 - sb) for yb, sb in zip(y, s))
    np.testing.assert_allclose(got, float(want), rtol=1e-14)
    assert "np.log(1 - _sigmoid" not in prog.compile().source


def test_powers_of_sigmoid_and_one_minus_sigmoid_share_the_slope():
    """sigmoid(u)^2 (1 - sigmoid(u)) is sigmoid'(u) sigmoid(u): the rest of a power stays."""
    prog = einmlp.parse("x is 5\nL = sigmoid(x[i])^2")
    d = prog.grad("x")
    assert "_dsigmoid(" in str(d.plan), d.plan
    x = np.array([-3.0, -0.5, 0.0, 0.7, 30.0])
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(d.compile()(x=x), 2 * s * s * (np.exp(-x) * s), rtol=1e-12)  # 1 - s = e^-x s
    assert_gradient(d, {"x": x})
